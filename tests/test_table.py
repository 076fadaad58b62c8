"""The record table: owners replaced whole, names derived, snapshots immutable."""

from __future__ import annotations

import pytest

from dockerdns import table as table_module
from dockerdns.records import Record
from dockerdns.table import BREATH, BREATHER, Breath, RecordTable, ShardedMap


def rec(name: str, value: str, owner: str, network: str | None = None, subnet: str | None = None) -> Record:
    return Record(name, "A", value, 5, owner, owner, network, subnet)


def test_old_snapshot_never_changes() -> None:
    """A reader holding a snapshot keeps seeing exactly it while writers go on."""
    table = RecordTable()
    table.replace("c1", [rec("web.docker.", "10.0.0.2", "c1")])
    before = table.snapshot
    table.replace("c1", [rec("web.docker.", "10.0.0.3", "c1")])
    table.replace("c2", [rec("db.docker.", "10.0.0.4", "c2")])
    assert [r.value for r in before.names["web.docker."]["A"]] == ["10.0.0.2"]
    assert "db.docker." not in before.names and "db.docker." in table.snapshot.names
    assert table.snapshot.generation == before.generation + 2


def test_shared_name_survives_one_owner() -> None:
    """Two owners of one name: removing one keeps the other's records."""
    table = RecordTable()
    table.replace("c1", [rec("db.docker.", "10.0.0.2", "c1")])
    table.replace("c2", [rec("db.docker.", "10.0.0.3", "c2")])
    table.remove("c1")
    assert [r.value for r in table.snapshot.names["db.docker."]["A"]] == ["10.0.0.3"]


def test_claims_of_one_name_come_and_go_in_any_order() -> None:
    """A name claimed by one, then three, then one owner again, then none: its records follow each step."""
    table = RecordTable()
    for owner, value in (("c1", "10.0.0.1"), ("c2", "10.0.0.2"), ("c3", "10.0.0.3")):
        table.replace(owner, [rec("db.docker.", value, owner)])
    assert sorted(r.value for r in table.snapshot.names["db.docker."]["A"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    table.remove("c2")
    table.remove("c1")
    assert dict(table.snapshot.names["db.docker."]) == {"A": (rec("db.docker.", "10.0.0.3", "c3"),)}
    table.replace("c3", [rec("db.docker.", "10.0.0.4", "c3"), Record("db.docker.", "TXT", '"x"', 5, "c3")])
    rrsets = table.snapshot.names["db.docker."]
    assert set(rrsets) == {"A", "TXT"} and [r.value for r in rrsets["A"]] == ["10.0.0.4"]
    table.replace("c3", [rec("db.docker.", "10.0.0.5", "c3")])
    rrsets = table.snapshot.names["db.docker."]
    assert list(rrsets) == ["A"] and "TXT" not in rrsets and rrsets.get("TXT") is None and len(rrsets) == 1
    assert rrsets == {"A": (rec("db.docker.", "10.0.0.5", "c3"),)}
    table.remove("c3")
    assert "db.docker." not in table.snapshot.names


def test_empty_non_terminals_counted() -> None:
    """Ancestors of a name exist while any name below them does, and no longer."""
    table = RecordTable()
    table.replace("c1", [rec("web.shop.docker.", "10.0.0.2", "c1")])
    table.replace("c2", [rec("db.shop.docker.", "10.0.0.3", "c2")])
    assert table.snapshot.exists("shop.docker.")
    table.remove("c1")
    assert table.snapshot.exists("shop.docker.")
    table.remove("c2")
    assert not table.snapshot.exists("shop.docker.") and len(table.snapshot.names) == 0


def test_replace_all_drops_vanished_owners_keeps_static() -> None:
    """A re-sync removes owners that are gone, adds new ones, and keeps the static records."""
    table = RecordTable()
    table.replace("static", [rec("gw.docker.", "172.17.0.1", "static")])
    table.replace("old", [rec("old.docker.", "10.0.0.2", "old")])
    table.replace_all({"new": [rec("new.docker.", "10.0.0.3", "new")]})
    assert sorted(table.snapshot.by_owner) == ["new", "static"]
    assert "old.docker." not in table.snapshot.names


def test_subnets_follow_records() -> None:
    """The networks of a client address are known while records on them exist."""
    table = RecordTable()
    table.replace("c1", [rec("web.docker.", "10.1.0.2", "c1", "front", "10.1.0.0/24")])
    assert table.snapshot.networks_of("10.1.0.77") == frozenset({"front"})
    table.remove("c1")
    assert table.snapshot.subnets == ()
    assert table.snapshot.networks_of("10.1.0.77") == frozenset()


def test_unchanged_replace_keeps_the_snapshot() -> None:
    """Replacing an owner with the same records publishes no new snapshot (the fast path stays warm)."""
    table = RecordTable()
    table.replace("c1", [rec("web.docker.", "10.0.0.2", "c1")])
    before = table.snapshot
    table.replace("c1", [rec("web.docker.", "10.0.0.2", "c1")])
    assert table.snapshot is before


def test_sharded_map_evolve() -> None:
    """evolve adds, replaces and removes keys and leaves the original untouched."""
    base: ShardedMap[int] = ShardedMap().evolve({f"k{i}": i for i in range(1000)})
    changed = base.evolve({"k1": 100, "new": 7})
    assert len(base) == 1000 and base["k1"] == 1 and "new" not in base
    assert len(changed) == 1001 and changed["k1"] == 100 and changed.get("new") == 7
    assert sorted(changed)[:2] == ["k0", "k1"]


HEALTH_CASES = [
    # holders' health -> the addresses a shared name answers (DESIGN.md, "Health")
    (["healthy", "unhealthy"], ["10.0.0.1"]),
    (["healthy", "starting"], ["10.0.0.1"]),
    (["none", "starting"], ["10.0.0.1"]),
    (["unhealthy", "unhealthy"], ["10.0.0.1", "10.0.0.2"]),  # none serves: all answered (fail open)
    (["starting", "unhealthy"], ["10.0.0.1", "10.0.0.2"]),
    (["healthy", "none"], ["10.0.0.1", "10.0.0.2"]),
    (["unhealthy"], ["10.0.0.1"]),  # one holder: always answered while it runs
]


@pytest.mark.parametrize("states,expected", HEALTH_CASES)
def test_shared_names_follow_health(states: list[str], expected: list[str]) -> None:
    """Unhealthy and starting holders leave a shared name while a serving holder remains; their own names stay."""
    table = RecordTable()
    for i, state in enumerate(states, start=1):
        owner = f"c{i}"
        table.replace(owner, [Record("web.p.docker.", "A", f"10.0.0.{i}", 1, owner, owner, health=state),
                              Record(f"{owner}.docker.", "A", f"10.0.0.{i}", 1, owner, owner, health=state)])
    assert sorted(r.value for r in table.snapshot.names["web.p.docker."]["A"]) == expected
    for i in range(1, len(states) + 1):
        assert [r.value for r in table.snapshot.names[f"c{i}.docker."]["A"]] == [f"10.0.0.{i}"]
    assert table.left_out == len(states) - len(expected)


def test_health_change_moves_a_holder_in_and_out() -> None:
    """A holder that turns unhealthy leaves the shared name, and comes back when healthy again."""
    table = RecordTable()
    for i in (1, 2):
        table.replace(f"c{i}", [Record("web.p.docker.", "A", f"10.0.0.{i}", 1, f"c{i}", health="healthy")])
    table.replace("c2", [Record("web.p.docker.", "A", "10.0.0.2", 1, "c2", health="unhealthy")])
    assert [r.value for r in table.snapshot.names["web.p.docker."]["A"]] == ["10.0.0.1"]
    table.replace("c2", [Record("web.p.docker.", "A", "10.0.0.2", 1, "c2", health="healthy")])
    assert sorted(r.value for r in table.snapshot.names["web.p.docker."]["A"]) == ["10.0.0.1", "10.0.0.2"]
    assert table.left_out == 0


def test_a_reload_rebuilds_only_the_names_it_changed() -> None:
    """Replacing an owner's many records (a config reload, a container's new networks) rebuilds the names whose
    records changed, and only them; what the table says of the others and of every address stays right."""
    from dockerdns import answers

    def rec(name: str, value: str) -> Record:
        return Record(name, "A", value, 5, "c1", "c1")

    table = RecordTable("docker")
    records = [rec(f"h{i}.docker.", f"10.0.0.{i}") for i in range(1, 50)]
    records += [rec("two.docker.", "10.0.1.1"), rec("two.docker.", "10.0.1.2")]
    table.replace("c1", records)
    before = table.snapshot
    changed = [r for r in records if r.name != "h11.docker." and r.value != "10.0.1.2"]
    changed += [rec("h11.docker.", "10.9.9.9"), rec("new.docker.", "10.0.2.1")]
    table.replace("c1", changed)
    after = table.snapshot
    key = answers.wire_key
    assert after.index.get(key("h12.docker.")) is before.index.get(key("h12.docker."))  # not rebuilt
    assert after.index.get(key("h11.docker.")) is not before.index.get(key("h11.docker."))
    assert [r.value for r in after.names["h11.docker."]["A"]] == ["10.9.9.9"]
    assert [r.value for r in after.names["two.docker."]["A"]] == ["10.0.1.1"]
    assert [r.value for r in after.names["new.docker."]["A"]] == ["10.0.2.1"]
    assert "10.0.0.11" not in after.hosts and "10.0.1.2" not in after.hosts
    assert {"10.9.9.9", "10.0.1.1", "10.0.2.1", "10.0.0.12"} <= set(after.hosts)
    table.replace("c1", [])
    assert not table.snapshot.names and not set(table.snapshot.hosts)


def test_a_long_change_pauses_and_publishes_only_when_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rule 6: a change of 2,000 names sleeps BREATHER between steps (on one CPU the queries run then), and
    readers meanwhile see the table from before it, never a part of it."""
    table = RecordTable()
    table.breathing = True  # as App.start sets it
    table.replace("c0", [rec("first.docker.", "10.0.0.1", "c0")])
    before = table.snapshot
    seen: list[object] = []

    def pause(seconds: float) -> None:
        seen.append(table.snapshot)
    monkeypatch.setattr(table_module.time, "sleep", pause)
    table.replace("static", [rec(f"n{i}.docker.", f"10.1.{i // 250}.{i % 250 + 1}", "static") for i in range(2000)])
    assert seen and all(s is before for s in seen)
    assert len(table.snapshot.names) == 2001


def test_breath_waits_for_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Breath sleeps only once BREATH has passed since it last did: a short change never sleeps."""
    slept: list[float] = []
    monkeypatch.setattr(table_module.time, "sleep", slept.append)
    clock = [100.0]
    monkeypatch.setattr(table_module.time, "perf_counter", lambda: clock[0])
    breath = Breath()
    breath()
    clock[0] += BREATH / 2
    breath()
    assert slept == []
    clock[0] += BREATH
    breath()
    breath()
    assert slept == [BREATHER]


def test_a_table_not_yet_serving_does_not_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before queries are served (App.start) there is nobody to pause for: a large table is built straight."""
    table = RecordTable()
    slept: list[float] = []
    monkeypatch.setattr(table_module.time, "sleep", slept.append)
    table.replace("static", [rec(f"n{i}.docker.", f"10.1.{i // 250}.{i % 250 + 1}", "static") for i in range(2000)])
    assert slept == [] and len(table.snapshot.names) == 2000
