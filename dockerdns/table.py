"""The record table: the current records, grouped by owner, read as snapshots.

Rule 1: state is keyed by owner (a container id, or "static"); the name index
        is derived. A name claimed by two owners keeps the other owner's
        records when one owner goes (moby's name -> {(owner, address)}).
Rule 2: build, then swap. Writers build a new Snapshot and publish it with
        one attribute assignment; readers take `table.snapshot` once per query
        and never see a half-made table, without taking a lock.
Rule 3: an update costs O(records of that owner), not O(table): the
        snapshot's maps are sharded, and a new snapshot copies only the
        shards the update touched and shares the rest with the old one.

Thread-safety: any number of readers; writers serialise on an internal lock.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, TypeVar

from .records import STATIC, Record, zone_name

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RRsets = Mapping[str, tuple[Record, ...]]  # rtype -> records

V = TypeVar("V")
SHARDS = 256
_GONE = object()


class ShardedMap(Mapping[str, V], Generic[V]):
    """An immutable str-keyed map whose `evolve` copies only the shards it changes."""

    __slots__ = ("_shards", "_len")

    def __init__(self, shards: tuple[dict[str, V], ...] | None = None, length: int = 0):
        self._shards = shards if shards is not None else tuple({} for _ in range(SHARDS))
        self._len = length

    def __getitem__(self, key: str) -> V:
        return self._shards[hash(key) % SHARDS][key]

    def get(self, key: str, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._shards[hash(key) % SHARDS].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._shards[hash(key) % SHARDS]

    def __iter__(self) -> Iterator[str]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    def evolve(self, changes: Mapping[str, object]) -> ShardedMap[V]:
        """A new map with `changes` applied; a value of `_GONE` removes the key."""
        shards = list(self._shards)
        copied: set[int] = set()
        length = self._len
        for key, new in changes.items():
            index = hash(key) % SHARDS
            if index not in copied:
                shards[index] = dict(shards[index])
                copied.add(index)
            shard = shards[index]
            had = key in shard
            if new is _GONE:
                if had:
                    del shard[key]
                    length -= 1
            else:
                shard[key] = new  # type: ignore[assignment]
                length += 0 if had else 1
        return ShardedMap(tuple(shards), length)


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the table at one generation."""

    generation: int
    zone: str  # absolute, e.g. "docker."
    names: ShardedMap[RRsets] = field(default_factory=ShardedMap)
    # Names with records below them (empty non-terminals when they have none
    # of their own): they exist, so they answer NODATA, RFC 8020.
    ents: ShardedMap[int] = field(default_factory=ShardedMap)
    # Subnets of the Docker networks the table knows, for source-aware answers.
    subnets: tuple[tuple[IPNetwork, str], ...] = ()
    by_owner: ShardedMap[tuple[Record, ...]] = field(default_factory=ShardedMap)

    def exists(self, name: str) -> bool:
        return name in self.names or name in self.ents

    def records(self) -> list[Record]:
        """Every record, sorted by name, type and value."""
        rows = [r for recs in self.by_owner.values() for r in recs]
        rows.sort(key=lambda r: (r.name, r.rtype, r.value, r.owner_name))
        return rows

    def networks_of(self, address: str) -> frozenset[str]:
        """The names of the Docker networks whose subnet holds `address`."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return frozenset()
        return frozenset(name for net, name in self.subnets if ip in net)


def _ancestors(name: str) -> Iterable[str]:
    """The proper ancestors of an absolute name, root excluded."""
    labels = name.split(".")[:-1]
    for i in range(1, len(labels)):
        yield ".".join(labels[i:]) + "."


class RecordTable:
    """Records by owner; `snapshot` is the current immutable view."""

    def __init__(self, zone: str = "docker"):
        self._lock = threading.Lock()
        self._by_owner: dict[str, tuple[Record, ...]] = {}
        # name -> owner -> that owner's records of the name
        self._claims: dict[str, dict[str, tuple[Record, ...]]] = {}
        self._ents: dict[str, int] = {}  # name -> how many names with records lie below it
        self._subnets: dict[tuple[IPNetwork, str], int] = {}
        self.snapshot = Snapshot(generation=0, zone=zone_name(zone))

    def replace(self, owner: str, records: Iterable[Record]) -> None:
        """Make `records` the whole of `owner`'s records (none: remove it)."""
        with self._lock:
            self._apply({owner: tuple(records)})

    def remove(self, owner: str) -> None:
        """Drop every record of `owner`."""
        self.replace(owner, ())

    def replace_all(self, by_owner: Mapping[str, Iterable[Record]], keep: Iterable[str] = (STATIC,)) -> None:
        """Make the table hold exactly `by_owner`, plus the owners in `keep`.

        Used after a full re-sync: owners absent from `by_owner` vanished.
        """
        with self._lock:
            changes: dict[str, tuple[Record, ...]] = {o: tuple(r) for o, r in by_owner.items()}
            kept = set(keep)
            for owner in self._by_owner:
                if owner not in changes and owner not in kept:
                    changes[owner] = ()
            self._apply(changes)

    def _apply(self, changes: Mapping[str, tuple[Record, ...]]) -> None:
        touched: set[str] = set()
        owners: dict[str, object] = {}
        for owner, records in changes.items():
            old = self._by_owner.get(owner, ())
            if old == records:
                continue
            for rec in old:
                touched.add(rec.name)
                self._claims.get(rec.name, {}).pop(owner, None)
                if rec.subnet is not None and rec.network is not None:
                    self._count(self._subnets, (ipaddress.ip_network(rec.subnet), rec.network), -1)
            grouped: dict[str, list[Record]] = {}
            for rec in records:
                grouped.setdefault(rec.name, []).append(rec)
                if rec.subnet is not None and rec.network is not None:
                    self._count(self._subnets, (ipaddress.ip_network(rec.subnet), rec.network), +1)
            for name, recs in grouped.items():
                touched.add(name)
                self._claims.setdefault(name, {})[owner] = tuple(recs)
            if records:
                self._by_owner[owner] = records
                owners[owner] = records
            else:
                self._by_owner.pop(owner, None)
                owners[owner] = _GONE
        if not owners:
            return

        old_snap = self.snapshot
        names: dict[str, object] = {}
        ents: set[str] = set()
        for name in touched:
            had = name in old_snap.names
            claims = self._claims.get(name)
            if claims:
                rrsets: dict[str, list[Record]] = {}
                for claimed in claims.values():
                    for rec in claimed:
                        rrsets.setdefault(rec.rtype, []).append(rec)
                names[name] = MappingProxyType({t: tuple(rs) for t, rs in rrsets.items()})
                if not had:
                    for anc in _ancestors(name):
                        self._count(self._ents, anc, +1)
                        ents.add(anc)
            else:
                self._claims.pop(name, None)
                if had:
                    names[name] = _GONE
                    for anc in _ancestors(name):
                        self._count(self._ents, anc, -1)
                        ents.add(anc)
        self.snapshot = Snapshot(
            generation=old_snap.generation + 1,
            zone=old_snap.zone,
            names=old_snap.names.evolve(names),
            ents=old_snap.ents.evolve({name: self._ents.get(name, _GONE) for name in ents}),
            subnets=tuple(self._subnets),
            by_owner=old_snap.by_owner.evolve(owners),
        )

    @staticmethod
    def _count(counter: dict, key: object, delta: int) -> None:
        value = counter.get(key, 0) + delta
        if value > 0:
            counter[key] = value
        else:
            counter.pop(key, None)
