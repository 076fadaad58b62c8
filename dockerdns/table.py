"""The record table: the current records, grouped by owner, read as snapshots.

Rule 1: state is keyed by owner (a container id, "static", or "server" for
        the name server's own address); the name index is derived. A name
        claimed by two owners keeps the other owner's records when one owner
        goes (moby's name -> {(owner, address)}).
Rule 2: build, then swap. Writers build a new Snapshot, ready answers
        included (answers.py), and publish it with one attribute assignment;
        readers take `table.snapshot` once per query and never see a
        half-made table, without taking a lock.
Rule 3: an update costs O(records of that owner), not O(table): the
        snapshot's maps are sharded, a new snapshot copies only the shards
        the update touched, and only the touched names (and the names whose
        CNAME chains lead to them) get new ready answers.
Rule 4: owners rank: a static record beats a container's claim of the same
        name (one warning), and a container named like the name server
        (`ns.<zone>`) beats the server's own records.
Rule 5: health (DESIGN.md, "Health"): a name more than one owner holds is
        shared; its holders that are `unhealthy` or `starting` are left out
        while at least one holder is healthy or has no check, and all are
        answered when none is (fail open). A name one owner holds always
        answers.
Rule 6: a writer breathes: once it has run BREATH since it last paused, it
        sleeps BREATHER before going on. On a host with one CPU for the
        server, the query thread waiting for the GIL is not let in by the
        kernel while a writer that just woke runs (the scheduler credits
        sleepers), so the whole of a change (1.2 ms for a reload of 200
        records) would otherwise stall every query; with the pauses, no
        query waits for more than about BREATH. Elsewhere the GIL's own
        switching (every 0.2 ms) does the same and the pauses cost little.
        Only once queries are served (`breathing`, set by App.start): a
        table built before that (50,000 static records) does not pause.

Thread-safety: any number of readers; writers serialise on an internal lock.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType

from . import answers
from .records import SERVER, SERVING, STATIC, Record, in_zone, zone_name
from .resolver import MAX_CNAME_HOPS
from .snapshot import GONE, IPNetwork, OneType, RRsets, ShardedMap, Snapshot

__all__ = ["RecordTable", "ShardedMap", "Snapshot", "SERVER", "STATIC"]

log = logging.getLogger("dockerdns.table")

Claims = tuple[str, tuple[Record, ...]] | dict[str, tuple[Record, ...]]
RANK = {STATIC: 0, SERVER: 2}  # Rule 4: lower wins; containers are 1


BREATH = 0.0002  # seconds a writer runs before it pauses (Rule 6): the GIL's switch interval too
BREATHER = 0.00005  # seconds it then sleeps: the least the kernel sleeps (its default timer slack)


class Breath:
    """A writer's pauses (Rule 6): call it between steps; it sleeps once BREATH has passed since the last."""

    __slots__ = ("_since",)

    def __init__(self) -> None:
        self._since = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self._since >= BREATH:
            time.sleep(BREATHER)
            self._since = time.perf_counter()


def _hold() -> None:
    """No pause (Rule 6): nothing is served yet."""


def _ancestors(name: str) -> Iterable[str]:
    """The proper ancestors of an absolute name, root excluded."""
    labels = name.split(".")[:-1]
    for i in range(1, len(labels)):
        yield ".".join(labels[i:]) + "."


class RecordTable:
    """Records by owner; `snapshot` is the current immutable view."""

    def __init__(self, zone: str = "docker", soa_ttl: int = 1):
        self._lock = threading.Lock()
        self._by_owner: dict[str, tuple[Record, ...]] = {}
        # name -> owner -> that owner's records of the name; one (owner, records) pair while a
        # single owner claims it (most names: a dict per name would cost 200 bytes)
        self._claims: dict[str, Claims] = {}
        self._ents: dict[str, int] = {}  # name -> how many names with records lie below it
        self._subnets: dict[tuple[IPNetwork, str], int] = {}
        self._hosts: dict[str, int] = {}  # container address -> how many records hold it
        self._aliases: dict[str, set[str]] = {}  # CNAME or SRV target -> the names that point at it
        self._shadowed: set[str] = set()  # names where a static record hides a container's (warned once)
        self._left_out: dict[str, int] = {}  # shared name -> holders left out for their health (Rule 5)
        self.breathing = False  # writers pause (Rule 6); set once queries are served
        empty = Snapshot(generation=0, zone=zone_name(zone), soa_ttl=soa_ttl,
                         zone_wire=answers.wire_key(zone_name(zone)))
        self.snapshot = self._finish(empty, {empty.zone}, rebuild=True)

    def replace(self, owner: str, records: Iterable[Record]) -> None:
        """Make `records` the whole of `owner`'s records (none: remove it)."""
        with self._lock:
            self._apply({owner: tuple(records)})

    def remove(self, owner: str) -> None:
        """Drop every record of `owner`."""
        self.replace(owner, ())

    def replace_all(self, by_owner: Mapping[str, Iterable[Record]],
                    keep: Callable[[str], bool] = lambda owner: owner in (STATIC, SERVER)) -> None:
        """Make the table hold exactly `by_owner`, plus the owners for which `keep` is true.

        Used after a full re-sync: owners absent from `by_owner` vanished. `keep`
        is asked under the writers' lock, so an owner another source adds
        meanwhile is never taken away.
        """
        with self._lock:
            changes: dict[str, tuple[Record, ...]] = {o: tuple(r) for o, r in by_owner.items()}
            for owner in self._by_owner:
                if owner not in changes and not keep(owner):
                    changes[owner] = ()
            self._apply(changes)

    def configure(self, soa_ttl: int) -> None:
        """A new TTL for the apex SOA and NS (a reload): every ready answer is built again."""
        with self._lock:
            if soa_ttl != self.snapshot.soa_ttl:
                old = self.snapshot
                self.snapshot = self._finish(replace(old, generation=old.generation + 1, soa_ttl=soa_ttl),
                                             set(old.names) | set(old.ents), rebuild=True)

    def _apply(self, changes: Mapping[str, tuple[Record, ...]]) -> None:
        touched: set[str] = set()
        owners: dict[str, object] = {}
        hosts: set[str] = set()
        breath = Breath() if self.breathing else _hold
        for owner, records in changes.items():
            breath()
            old = self._by_owner.get(owner, ())
            if old == records:
                continue
            before: dict[str, list[Record]] = {}
            for rec in old:
                before.setdefault(rec.name, []).append(rec)
            grouped: dict[str, list[Record]] = {}
            for rec in records:
                grouped.setdefault(rec.name, []).append(rec)
            # Only the names whose records changed are touched: a reload of a large config that
            # changes one record rebuilds one name's answers, not every name's.
            for name, recs in before.items():
                breath()
                if grouped.get(name) != recs:
                    touched.add(name)
                    self._unclaim(name, owner)
                    for rec in recs:
                        self._index_record(rec, owner, -1, hosts)
            for name, recs in grouped.items():
                breath()
                if before.get(name) != recs:
                    touched.add(name)
                    for rec in recs:
                        self._index_record(rec, owner, +1, hosts)
                    self._claim(name, owner, tuple(recs))
            if records:
                self._by_owner[owner] = records
                owners[owner] = records
            else:
                self._by_owner.pop(owner, None)
                owners[owner] = GONE
        if not owners:
            return

        old_snap = self.snapshot
        names: dict[str, object] = {}
        ents: set[str] = set()
        for name in touched:
            breath()
            had = name in old_snap.names
            rrsets = self._rrsets(name)
            if rrsets is not None:
                names[name] = rrsets
                if not had:
                    for anc in _ancestors(name):
                        self._count(self._ents, anc, +1)
                        ents.add(anc)
            else:
                self._claims.pop(name, None)
                if had:
                    names[name] = GONE
                    for anc in _ancestors(name):
                        self._count(self._ents, anc, -1)
                        ents.add(anc)
        subnets = tuple(self._subnets)
        if subnets == old_snap.subnets:
            subnets = old_snap.subnets  # the same object: the client-networks memo stays (snapshot.py Rule 2)
        wildcards = old_snap.wildcards
        changed_wildcards = {key[2:]: value for key, value in names.items() if key.startswith("*.")}
        if changed_wildcards:
            wildcards = dict(wildcards)
            for parent, value in changed_wildcards.items():
                if value is GONE:
                    wildcards.pop(answers.wire_key(parent), None)
                else:
                    wildcards[answers.wire_key(parent)] = in_zone(parent, old_snap.zone)
            wildcards = MappingProxyType(wildcards)
        snapshot = replace(
            old_snap,
            generation=old_snap.generation + 1,
            wildcards=wildcards,
            names=old_snap.names.evolve(names),
            ents=old_snap.ents.evolve({name: self._ents.get(name, GONE) for name in ents}),
            subnets=subnets,
            client_networks=old_snap.client_networks if subnets is old_snap.subnets else {},
            by_owner=old_snap.by_owner.evolve(owners),
            hosts=old_snap.hosts.evolve({h: self._hosts.get(h, GONE) for h in hosts}),
        )
        self.snapshot = self._finish(replace(snapshot, left_out=self.left_out), touched | ents, breath=breath)

    def _claim(self, name: str, owner: str, records: tuple[Record, ...]) -> None:
        claims = self._claims.get(name)
        if claims is None or (isinstance(claims, tuple) and claims[0] == owner):
            self._claims[name] = (owner, records)
        elif isinstance(claims, tuple):
            self._claims[name] = {claims[0]: claims[1], owner: records}
        else:
            claims[owner] = records

    def _unclaim(self, name: str, owner: str) -> None:
        claims = self._claims.get(name)
        if isinstance(claims, tuple):
            if claims[0] == owner:
                del self._claims[name]
        elif claims is not None:
            claims.pop(owner, None)
            if len(claims) == 1:
                self._claims[name] = next(iter(claims.items()))
            elif not claims:
                del self._claims[name]

    def _rrsets(self, name: str) -> RRsets | None:
        """The records of `name` by type, from the owners that rank first (Rule 4); None when none."""
        found = self._claims.get(name)
        if not found:
            self._left_out.pop(name, None)
            return None
        claims = [found] if isinstance(found, tuple) else list(found.items())
        best = min(RANK.get(owner, 1) for owner, _ in claims)
        if best == 0 and len(claims) > 1 and name not in self._shadowed:
            self._shadowed.add(name)
            hidden = sorted({rec.owner_name for owner, recs in claims if owner != STATIC for rec in recs})
            log.warning("static: %s is also claimed by %s; the static records win", name, ", ".join(hidden))
        holders = [(owner, claimed) for owner, claimed in claims if RANK.get(owner, 1) == best]
        serving = [(owner, claimed) for owner, claimed in holders if claimed[0].health in SERVING]
        left_out = len(holders) - len(serving) if serving and len(holders) > 1 else 0
        if left_out:
            holders = serving  # Rule 5
            self._left_out[name] = left_out
        else:
            self._left_out.pop(name, None)
        rrsets: dict[str, list[Record]] = {}
        for _, claimed in holders:
            for rec in claimed:
                rrsets.setdefault(rec.rtype, []).append(rec)
        if len(rrsets) > 1:
            return MappingProxyType({t: tuple(rs) for t, rs in rrsets.items()})
        (rtype, records), = rrsets.items()
        # One type (most names): with one holder, the claim's own tuple, nothing copied.
        return OneType(rtype, holders[0][1] if len(holders) == 1 else tuple(records))

    @property
    def left_out(self) -> int:
        """Holders of shared names now left out of them for their health (Rule 5), for /metrics."""
        return sum(list(self._left_out.values()))  # list(): one step under the GIL, safe beside the writer

    def _index_record(self, rec: Record, owner: str, delta: int, hosts: set[str]) -> None:
        """Keep the derived counts (networks, container addresses, CNAME targets) of one record."""
        if rec.subnet is not None and rec.network is not None:
            self._count(self._subnets, (ipaddress.ip_network(rec.subnet), rec.network), delta)
        if rec.rtype in ("A", "AAAA") and owner not in RANK:
            self._count(self._hosts, rec.value, delta)
            hosts.add(rec.value)
        if rec.rtype in ("CNAME", "SRV"):
            # Its answer holds the target's records (the chain, or the SRV's additional section).
            target = rec.value.split()[-1].lower()
            pointing = self._aliases.setdefault(target, set())
            if delta > 0:
                pointing.add(rec.name)
            else:
                pointing.discard(rec.name)
                if not pointing:
                    del self._aliases[target]

    def _finish(self, snapshot: Snapshot, changed: set[str], rebuild: bool = False,
                breath: Callable[[], None] | None = None) -> Snapshot:
        """`snapshot` with its ready answers: new ones for `changed` names and whatever leads to them."""
        breath = breath or (Breath() if self.breathing else _hold)
        affected = set(changed)
        # A wildcard answers for names below its parent (RFC 4592): CNAME and SRV records whose
        # target lies there lead to it too, though the target itself is no name of the table.
        below = tuple(name[1:] for name in changed if name.startswith("*."))
        if below:
            affected |= {alias for target, aliases in self._aliases.items() if target.endswith(below)
                         for alias in aliases}
        frontier = set(affected)
        for _ in range(MAX_CNAME_HOPS):
            frontier = {alias for target in frontier for alias in self._aliases.get(target, ())} - affected
            if not frontier:
                break
            affected |= frontier
        affected.add(snapshot.zone)  # the apex's SOA serial is the generation
        breath()
        nodata, nxdomain = answers.negatives(snapshot)
        snapshot = replace(snapshot, nodata=nodata, nxdomain=nxdomain, queries=({}, {}), shapes=({}, {}))
        index: dict[bytes, object] = {}
        for name in affected:
            breath()
            if not (in_zone(name, snapshot.zone) or name in snapshot.names):
                index[answers.wire_key(name)] = GONE  # an empty non-terminal outside the zone is not ours
                continue
            entry = answers.entry_for(name, snapshot)
            index[answers.wire_key(name)] = GONE if entry is None else entry
        base = ShardedMap[bytes, object]() if rebuild else snapshot.index
        evolved = base.evolve(index)
        return replace(snapshot, index=evolved, remembered=answers.remembered_limit(len(evolved)))

    @staticmethod
    def _count(counter: dict, key: object, delta: int) -> None:
        value = counter.get(key, 0) + delta
        if value > 0:
            counter[key] = value
        else:
            counter.pop(key, None)
