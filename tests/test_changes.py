"""The ring of table changes: derived from snapshots owner by owner, dated by Docker events, bounded."""

from __future__ import annotations

import json
import queue
import urllib.request
from collections.abc import Iterator

import pytest

from dockerdns.app import App
from dockerdns.changes import MAX_CHANGES, Change, Changes, ChangeWatcher, iso_utc
from dockerdns.config import Address, ForwardSettings, HttpSettings, Settings
from dockerdns.records import Record
from dockerdns.table import RecordTable

T0 = 1_700_000_000.0  # seconds since the epoch: 2023-11-14T22:13:20Z


def a(name: str, value: str, owner: str = "c1", owner_name: str = "web") -> Record:
    return Record(name, "A", value, 5, owner, owner_name)


WEB = a("web.docker.", "10.0.0.2")
WEB_NET = a("web.front.docker.", "10.0.0.2")
WEB_NEW = a("web.docker.", "10.0.0.3")


def look(changes: Changes, table: RecordTable, now: float) -> list[dict[str, object]]:
    return [c.as_json() for c in changes.observe(now)]


@pytest.mark.parametrize("before, after, added, removed", [
    ((), (WEB, WEB_NET), ["web.docker.", "web.front.docker."], []),
    ((WEB, WEB_NET), (), [], ["web.docker.", "web.front.docker."]),
    ((WEB, WEB_NET), (WEB,), [], ["web.front.docker."]),
    ((WEB,), (WEB_NEW,), ["web.docker."], ["web.docker."]),  # a name whose records changed is in both
])
def test_change_names_added_and_removed(before: tuple[Record, ...], after: tuple[Record, ...],
                                        added: list[str], removed: list[str]) -> None:
    """One owner's new records make one change naming the names gained and lost."""
    table = RecordTable()
    changes = Changes(lambda: table.snapshot)
    table.replace("c1", before)
    look(changes, table, T0)
    table.replace("c1", after)
    [change] = look(changes, table, T0 + 1)
    assert change == {"time": "2023-11-14T22:13:21.000Z", "container": "web", "added": added,
                      "removed": removed, "delay_ms": None}


def test_unchanged_table_makes_no_change() -> None:
    """Looking again at the same table, or at an owner rewritten with equal records, records nothing."""
    table = RecordTable()
    changes = Changes(lambda: table.snapshot)
    table.replace("c1", [WEB])
    table.replace("c2", [a("db.docker.", "10.0.0.4", "c2", "db")])
    assert sorted(c["container"] for c in look(changes, table, T0)) == ["db", "web"]
    assert look(changes, table, T0 + 1) == []
    table.replace("c1", [Record("web.docker.", "A", "10.0.0.2", 5, "c1", "web")])  # equal, not identical
    table.replace("c3", [])
    assert look(changes, table, T0 + 2) == []


def test_two_owners_in_one_snapshot_are_two_changes() -> None:
    """Writes folded into one snapshot still give one change per owner; the order of the ring is kept."""
    table = RecordTable()
    changes = Changes(lambda: table.snapshot)
    table.replace("c1", [WEB])
    table.replace("c2", [a("db.docker.", "10.0.0.4", "c2", "db")])
    look(changes, table, T0)
    table.remove("c1")
    table.replace("c2", [])
    assert sorted(c["container"] for c in look(changes, table, T0 + 1)) == ["db", "web"]
    assert [c.seq for c in changes.recent()] == [1, 2, 3, 4]


def test_ring_keeps_the_last_hundred() -> None:
    """Only the last MAX_CHANGES (100) changes are kept, oldest first."""
    table = RecordTable()
    changes = Changes(lambda: table.snapshot)
    for i in range(MAX_CHANGES + 20):
        table.replace("c1", [a("web.docker.", f"10.0.{i // 250}.{i % 250 + 1}")])
        changes.observe(T0 + i)
    kept = changes.recent()
    assert len(kept) == MAX_CHANGES
    assert kept[0].seq == 21 and kept[-1].seq == MAX_CHANGES + 20
    assert [c.time for c in kept] == sorted(c.time for c in kept)


@pytest.mark.parametrize("events, delay_ms", [
    ([(T0 + 0.010, "c1")], 5.0),                       # the event 5 ms before the change was seen
    ([(T0 + 0.000, "c2")], None),                      # another container's event dates nothing here
    ([(T0 + 0.020, "c1")], None),                      # an event after the change did not cause it
    ([(T0 - 0.250, "c1"), (T0 + 0.013, "c1")], 2.0),   # connect, then start: the latest event before wins
])
def test_delay_from_the_latest_event_before_the_change(events: list[tuple[float, str]],
                                                       delay_ms: float | None) -> None:
    """A change's delay runs from the latest Docker event of that container that came before it."""
    table = RecordTable()
    changes = Changes(lambda: table.snapshot)
    table.replace("c1", [WEB])
    changes.observe(T0 + 0.015)  # seen by the watcher before the source's hook ran
    for at, owner in events:
        changes.event(owner, at, T0 + 0.030)
    [change] = changes.recent()
    assert change.as_json()["delay_ms"] == delay_ms


def test_event_looks_at_its_owner_at_once() -> None:
    """The hook after an event records that container's change itself, dated from the event."""
    table = RecordTable()
    changes = Changes(lambda: table.snapshot)
    table.replace("c1", [WEB])
    assert [c.container for c in changes.event("c1", T0, T0 + 0.004)] == ["web"]
    assert changes.recent()[0].as_json()["delay_ms"] == 4.0
    assert changes.observe(T0 + 1) == []  # the watcher finds nothing left to record


def test_listeners_hear_every_change_in_order() -> None:
    """A subscriber gets each change once, in the ring's order, with the records gained and lost."""
    table = RecordTable()
    changes = Changes(lambda: table.snapshot)
    heard: queue.Queue[Change] = queue.Queue()
    changes.subscribe(heard.put)
    table.replace("c1", [WEB])
    changes.observe(T0)
    table.replace("c1", [WEB_NEW])
    changes.event("c1", T0, T0 + 1)
    first, second = heard.get_nowait(), heard.get_nowait()
    assert (first.added, first.removed) == ((WEB,), ())
    assert (second.added, second.removed) == ((WEB_NEW,), (WEB,))
    assert heard.empty()


def test_iso_time_is_utc_with_milliseconds() -> None:
    """Times are ISO 8601 in UTC, to the millisecond, with a Z."""
    assert iso_utc(T0 + 0.1234) == "2023-11-14T22:13:20.123Z"


def test_watcher_looks_on_its_own() -> None:
    """ChangeWatcher looks at the table on its thread; writes show up without any event."""
    table = RecordTable()
    watcher = ChangeWatcher(Changes(lambda: table.snapshot), poll=0.01, clock=lambda: T0)
    heard: queue.Queue[Change] = queue.Queue()
    watcher.changes.subscribe(heard.put)
    watcher.start()
    try:
        table.replace("c1", [WEB])
        assert heard.get(timeout=5).container == "web"
    finally:
        watcher.stop()


@pytest.fixture
def app() -> Iterator[App]:
    running = App(Settings(listen=(Address("127.0.0.1", 0),), http=HttpSettings(Address("127.0.0.1", 0)),
                           forward=ForwardSettings(False, ())), docker=False)
    running.start()
    yield running
    running.stop()


def get_json(app: App, path: str) -> object:
    assert app.status is not None
    with urllib.request.urlopen(f"http://{app.status.address}{path}", timeout=5) as answer:
        assert answer.headers["Content-Type"] == "application/json"
        return json.load(answer)


def test_get_changes_json_shape(app: App) -> None:
    """GET /changes is a JSON list, oldest first, of {time, container, added, removed, delay_ms}."""
    app.table.replace("c1", [WEB])
    app._watcher.look()
    app.table.replace("c1", [])
    app._watcher.look()
    rows = get_json(app, "/changes")
    assert isinstance(rows, list) and len(rows) == 2
    for row in rows:
        assert set(row) == {"time", "container", "added", "removed", "delay_ms"}
        assert row["time"].endswith("Z") and row["container"] == "web" and row["delay_ms"] is None
    assert (rows[0]["added"], rows[0]["removed"]) == (["web.docker."], [])
    assert (rows[1]["added"], rows[1]["removed"]) == ([], ["web.docker."])
    assert rows[0]["time"] <= rows[1]["time"]
