"""Table changes: what each container gained and lost, and how long after its Docker event.

The one source of change records: `dockerdns records --watch` prints them,
GET /changes and the status page show them.

Rule 1: changes are derived from the table, never told by a writer. Each
        look at a snapshot compares every owner's records with the ones seen
        at the last look (the table shares an unchanged owner's tuple between
        snapshots, so `is` settles almost all of them); an owner whose
        records differ is one Change: the records it gained and lost. Looks
        happen every `CHANGE_POLL` seconds and right after the docker source
        handled an event, so a write is never missed, only sometimes folded
        with the next one into one change.
Rule 2: the delay belongs to the latest Docker event of that container that
        came before the change. When the source has handled an event of time
        T for container c, every change of c seen at or after T is given the
        delay (seen - T). Events arrive in order, so a later event that still
        precedes a change replaces the delay with a smaller one: a `start`
        event is the cause, not the `connect` that came 250 ms before it and
        whose inspect waited for the start to end. Changes no event led to
        (a full sync, a reload, static records) have no delay.
Rule 3: bounded: the last MAX_CHANGES changes are kept, oldest first.
Rule 4: time is passed in (seconds since the epoch, as Docker's timeNano);
        only ChangeWatcher reads a clock.

Thread-safety: every method of Changes takes one internal lock, so looks
from the watcher thread and the docker source's thread never interleave,
and each look reads the table's snapshot under that lock: a look never
sees an older snapshot than the look before it (else a slow look would
record a change backwards). Listeners are called under the lock, in order,
and must only hand the change on (a queue's put). ChangeWatcher runs one
daemon thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Protocol

from .records import SERVER, Record

#: Changes kept (DESIGN.md: GET /changes lists the last 100).
MAX_CHANGES = 100
#: Seconds between two looks at the table besides the ones after an event.
CHANGE_POLL = 0.05


class HasOwners(Protocol):
    """What a look needs of a table snapshot: its records by owner."""

    @property
    def by_owner(self) -> Mapping[str, tuple[Record, ...]]: ...


@dataclass(frozen=True)
class Change:
    """One owner's records changed: what it gained and lost, and when."""

    seq: int  # 1, 2, ...: order of the changes
    time: float  # seconds since the epoch when the change was seen
    owner: str  # container id, or "static"
    container: str  # container name (the records' owner_name)
    added: tuple[Record, ...]
    removed: tuple[Record, ...]
    delay: float | None = None  # seconds from the container's Docker event (Rule 2)

    def as_json(self) -> dict[str, object]:
        """The object GET /changes lists (DESIGN.md)."""
        return {
            "time": iso_utc(self.time),
            "container": self.container,
            "added": _names(self.added),
            "removed": _names(self.removed),
            "delay_ms": None if self.delay is None else round(self.delay * 1000, 1),
        }


def iso_utc(seconds: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2024-05-01T12:00:00.123Z."""
    text = datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _names(records: Iterable[Record]) -> list[str]:
    return sorted({r.name for r in records})


def diff(old: tuple[Record, ...], new: tuple[Record, ...]) -> tuple[tuple[Record, ...], tuple[Record, ...]]:
    """(added, removed): the records of `new` not in `old`, and of `old` not in `new`, in their order."""
    before, after = set(old), set(new)
    return tuple(r for r in new if r not in before), tuple(r for r in old if r not in after)


class Changes:
    """The bounded ring of the changes of the table that `read` returns snapshots of; see the module docstring."""

    def __init__(self, read: Callable[[], HasOwners], limit: int = MAX_CHANGES):
        self._read = read
        self._lock = threading.Lock()
        self._ring: deque[Change] = deque(maxlen=limit)
        self._seen: dict[str, tuple[Record, ...]] = {}  # owner -> its records at the last look
        self._last: object = None  # the by_owner map of the last full look
        self._seq = 0
        self._listeners: list[Callable[[Change], None]] = []

    def subscribe(self, listener: Callable[[Change], None]) -> None:
        """Call `listener` with every change from now on, in order (under the lock: hand it on, no I/O)."""
        with self._lock:
            self._listeners.append(listener)

    def observe(self, now: float) -> list[Change]:
        """Record how every owner in the table now differs from the last look; the new changes."""
        with self._lock:
            by_owner = self._read().by_owner
            if by_owner is self._last:
                return []
            found = []
            for owner, records in by_owner.items():
                if owner == SERVER:
                    continue  # dockerdns's own listen addresses: not a container's change
                if self._seen.get(owner) is not records:
                    found += self._record(owner, records, now)
            for owner in [o for o in self._seen if o not in by_owner]:
                found += self._record(owner, (), now)
            self._last = by_owner
            return found

    def event(self, owner: str, at: float, now: float) -> list[Change]:
        """The source handled an event of time `at` for `owner`: look at that owner, then date its changes (Rule 2)."""
        with self._lock:
            found = self._record(owner, self._read().by_owner.get(owner, ()), now)
            for i in range(len(self._ring) - 1, -1, -1):
                change = self._ring[i]
                if change.time < at:
                    break
                if change.owner == owner:
                    self._ring[i] = replace(change, delay=change.time - at)
            return found

    def recent(self) -> list[Change]:
        """The changes kept, oldest first."""
        with self._lock:
            return list(self._ring)

    def _record(self, owner: str, records: tuple[Record, ...], now: float) -> list[Change]:
        old = self._seen.get(owner, ())
        if records is old or records == old:
            if records:
                self._seen[owner] = records
            return []
        added, removed = diff(old, records)
        if records:
            self._seen[owner] = records
        else:
            self._seen.pop(owner, None)
        self._seq += 1
        name = (records or old)[0].owner_name
        change = Change(self._seq, now, owner, name, added, removed)
        self._ring.append(change)
        for listener in self._listeners:
            listener(change)
        return [change]


class ChangeWatcher:
    """Looks at the table every `poll` seconds on its own thread, and at once after each Docker event."""

    def __init__(self, changes: Changes, *, poll: float = CHANGE_POLL, clock: Callable[[], float] = time.time):
        self.changes = changes
        self._poll = poll
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.look()
            self._thread = threading.Thread(target=self._run, name="dockerdns-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()

    def look(self) -> list[Change]:
        """One look at the whole table now."""
        return self.changes.observe(self._clock())

    def on_event(self, owner: str, at: float) -> None:
        """For DockerSource.on_event: the source handled an event of time `at` (epoch seconds) for `owner`."""
        self.changes.event(owner, at, self._clock())

    def _run(self) -> None:
        while not self._stopping.wait(self._poll):
            self.look()
