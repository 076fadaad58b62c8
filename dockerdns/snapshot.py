"""Snapshots: one immutable view of the table, with everything derived from it.

Rule 1: a snapshot never changes after it is published; a query reads
        `table.snapshot` once and uses nothing else of the table, so it can
        never mix an old answer with a new table.
Rule 2: what is derived from the records (the name index, empty
        non-terminals, the ready answers, the addresses of running
        containers) is part of the snapshot it was derived from: created with
        it, dropped with it. The one exception is a memo of which Docker
        networks a client address sits on; it depends only on `subnets`, so
        it is shared by snapshots whose subnets are the same object, and an
        entry in it is right for each of them.
Rule 3: the maps are sharded (`ShardedMap`), so a new snapshot copies only
        the shards an update touched: an update costs O(records it changes).

Pure: no sockets, threads or clocks. Everything here may be read from any
number of threads at once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from .records import SERVER, Record

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RRsets = Mapping[str, tuple[Record, ...]]  # rtype -> records

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
SHARDS = 256
SHARD_MASK = SHARDS - 1  # a key's shard: hash(key) & SHARD_MASK
GONE: Any = object()  # in `ShardedMap.evolve`: remove the key
MAX_CLIENT_MEMO = 4096  # client addresses whose networks are remembered; past it the memo starts over


class OneType(Mapping[str, tuple[Record, ...]]):
    """The RRsets of a name that holds one type (most names): 64 bytes, where a dict takes 200."""

    __slots__ = ("rtype", "records")

    def __init__(self, rtype: str, records: tuple[Record, ...]):
        self.rtype = rtype
        self.records = records

    def __getitem__(self, rtype: str) -> tuple[Record, ...]:
        if rtype == self.rtype:
            return self.records
        raise KeyError(rtype)

    def get(self, rtype: str, default: Any = None) -> Any:
        return self.records if rtype == self.rtype else default

    def __contains__(self, rtype: object) -> bool:
        return rtype == self.rtype

    def __iter__(self) -> Iterator[str]:
        yield self.rtype

    def __len__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return dict(self) == other if isinstance(other, Mapping) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a dict's


class ShardedMap(Mapping[K, V], Generic[K, V]):
    """An immutable map whose `evolve` copies only the shards it changes."""

    __slots__ = ("shards", "_len")

    def __init__(self, shards: tuple[dict[K, V], ...] | None = None, length: int = 0):
        # Read-only; the hot path reads `shards[hash(key) & SHARD_MASK]` itself, saving a call.
        self.shards = shards if shards is not None else tuple({} for _ in range(SHARDS))
        self._len = length

    def __getitem__(self, key: K) -> V:
        return self.shards[hash(key) & SHARD_MASK][key]

    def get(self, key: K, default: V | None = None) -> V | None:  # type: ignore[override]
        return self.shards[hash(key) & SHARD_MASK].get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.shards[hash(key) & SHARD_MASK]

    def __iter__(self) -> Iterator[K]:
        for shard in self.shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    def evolve(self, changes: Mapping[K, object]) -> ShardedMap[K, V]:
        """A new map with `changes` applied; a value of `GONE` removes the key."""
        if not changes:
            return self
        shards = list(self.shards)
        copied: set[int] = set()
        length = self._len
        for key, new in changes.items():
            index = hash(key) & SHARD_MASK
            if index not in copied:
                shards[index] = dict(shards[index])
                copied.add(index)
            shard = shards[index]
            had = key in shard
            if new is GONE:
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
    soa_ttl: int = 1  # TTL of the apex SOA and NS
    names: ShardedMap[str, RRsets] = field(default_factory=ShardedMap)
    # Names with records below them (empty non-terminals when they have none
    # of their own): they exist, so they answer NODATA, RFC 8020.
    ents: ShardedMap[str, int] = field(default_factory=ShardedMap)
    # Subnets of the Docker networks the table knows, for source-aware answers.
    subnets: tuple[tuple[IPNetwork, str], ...] = ()
    by_owner: ShardedMap[str, tuple[Record, ...]] = field(default_factory=ShardedMap)
    # Addresses that running containers hold (A/AAAA values) -> how many records hold each.
    hosts: ShardedMap[str, int] = field(default_factory=ShardedMap)
    # The ready answers (answers.Index), keyed by the lower-case wire-format name.
    index: ShardedMap[bytes, Any] = field(default_factory=ShardedMap)
    # NODATA and NXDOMAIN (answers.Ready): the zone's SOA, with this generation as its serial.
    nodata: Any = None
    nxdomain: Any = None
    client_networks: dict[str, frozenset[str]] = field(default_factory=dict, compare=False)
    # Queries seen on this snapshot -> what answers.respond read of them (answers.py Rule 7): one
    # memo for answers without RA, one with it (forwarding off or on).
    queries: tuple[dict[bytes, Any], dict[bytes, Any]] = field(default_factory=lambda: ({}, {}), compare=False)
    # Answers that hold no name of the question's, by the query's shape (answers.py Rule 8), per RA bit.
    shapes: tuple[dict[bytes, Any], dict[bytes, Any]] = field(default_factory=lambda: ({}, {}), compare=False)
    remembered: int = 32768  # queries `queries` keeps at most (answers.remembered_limit)
    zone_wire: bytes = b"\x06docker"  # the zone in wire format, without the root's zero byte
    # The parents of the wildcard names (`*.<parent>`) the table holds, as index keys (answers.wire_key),
    # each with whether it lies in the zone.
    wildcards: Mapping[bytes, bool] = field(default_factory=lambda: MappingProxyType({}))
    left_out: int = 0  # holders of shared names left out for their health (table.py Rule 5)

    def exists(self, name: str) -> bool:
        return name in self.names or name in self.ents

    @property
    def record_count(self) -> int:
        """How many records `records()` lists."""
        return sum(len(recs) for owner, recs in self.by_owner.items() if owner != SERVER)

    def records(self) -> list[Record]:
        """Every record a container or the config published, sorted by name, type and value."""
        rows = [r for owner, recs in self.by_owner.items() if owner != SERVER for r in recs]
        rows.sort(key=lambda r: (r.name, r.rtype, r.value, r.owner_name))
        return rows

    def networks_of(self, address: str) -> frozenset[str]:
        """The names of the Docker networks whose subnet holds `address` (memoised, Rule 2)."""
        memo = self.client_networks
        found = memo.get(address)
        if found is not None:
            return found
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            found = frozenset()
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            found = frozenset(name for net, name in self.subnets if ip in net)
        if len(memo) >= MAX_CLIENT_MEMO:
            memo.clear()  # a stranger cycling source addresses costs a recomputation, never memory
        memo[address] = found
        return found
