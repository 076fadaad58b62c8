"""The answer index: ready wire-format answers for every name the table holds, built with the table.

Rule 1: work that depends only on the table is done when the table changes,
        by the writer, for the names the change touched (and the names whose
        CNAME chains pass through them). A query does the rest: read the
        question, find the ready answer, patch id, flags and question in,
        append the OPT, decide truncation from sizes known in advance.
Rule 2: the index is part of the snapshot it was built for (snapshot.py
        Rule 2): a query reads `table.snapshot` once, so no answer of an
        older table can be served after the swap.
Rule 3: an entry holds what `resolver.lookup` says for its name, packed by
        `wire.pack`: the sections after the question do not depend on the
        question's letter case or position (wire.py Rule 3), so one entry
        serves every letter case, and single labels ("db") too.
Rule 4: rotation: each address of a rotating RRset comes first in turn, on
        a counter of its own (so queries for other names or types never
        skip a turn). Up to `PREBUILT_ROTATIONS` orders are packed in
        advance; longer RRsets are rotated by joining their records.
Rule 5: source-aware answers (a client's own networks first) are built only
        for RRsets whose records span networks, once per set of the
        client's networks among them, on first use; every other client
        shares one answer.
Rule 7: a query seen before on the same snapshot skips the reading: it is
        remembered by its bytes after the id, its name in lower case, in the
        snapshot (`Snapshot.queries`, one memo per RA bit): the whole answer
        after the id when it does not rotate (a query asked in lower case
        takes it as it is; one in another case gets its own question put
        in), else what was read of it. Plain queries only: at most
        `MAX_FAST_QUERY` bytes, no EDNS option but a cookie, and an answer
        that does not depend on the client's networks, is not NXDOMAIN and
        not synthesised from a wildcard (random names would only push out
        the names that exist). At most
        `remembered_limit` queries, which grows with the table (so that
        every name of a large table can be remembered, and only the table
        decides how much); past it, no more are kept until the table
        changes. Rotation still turns per answer.
Rule 8: NXDOMAIN and answers synthesised from a wildcard one label up hold
        no name of the question's (the SOA's owner is the zone, the
        wildcard's records point at the question): one answer serves every
        name it covers. It is remembered per snapshot and RA bit by the
        query's shape: its header, the wildcard's parent (none for
        NXDOMAIN) and what follows the name, for plain queries and answers
        that neither rotate nor depend on the client's networks, at most
        `MAX_SHAPES` (past it the memo starts over: shapes a client varies
        at will, a cookie or a payload size, cannot keep the others out
        until the table changes); a name asked in a known shape gets it
        with its own question put in, when the whole answer fits the
        client's size.
Rule 6: what the index does not hold goes to the full resolver: other
        opcodes, several questions, anything malformed or over
        `MAX_FAST_QUERY` bytes, EDNS versions other than 0, names outside
        the zone, ANY, and answers that need the forwarder or the SOA after
        a CNAME chain.

Pure: no sockets, threads or clocks. Entries are immutable once published,
but for the per-entry rotation counters (`next()` on an itertools.count is
atomic under CPython's GIL) and the memo of source-aware variants (a dict
that only gains entries that are right for it); any number of threads may
call `answer` at once.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import struct
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import NamedTuple

from dnslib import QTYPE, RR, DNSHeader, DNSQuestion, DNSRecord

from .records import Record, in_zone
from .resolver import EDNS_PAYLOAD, Lookup, Resolution, lookup, rdata, soa_rr, source_aware
from .snapshot import SHARD_MASK, Snapshot
from .wire import pack

PREBUILT_ROTATIONS = 16  # orders packed in advance; longer RRsets are joined per query
MAX_FAST_QUERY = 512  # bytes: larger queries (and their EDNS options) take the full resolver
MAX_VARIANTS = 64  # source-aware variants remembered per RRset
MAX_SHAPES = 4096  # query shapes remembered per snapshot and RA bit (Rule 8)
MAX_REMEMBERED = 32768  # queries remembered per snapshot at least (Rule 7): about 200 bytes each
REMEMBERED_PER_NAME = 2  # ... and at least this many per name the index holds (A and AAAA)
COOKIE = b"\x00\x0a"  # EDNS option code 10, RFC 7873
CLASSIC_UDP_LIMIT = 512
HEADER_LEN = 12

QR, AA, TC = 0x8000, 0x0400, 0x0200
NOERROR, NXDOMAIN = 0, 3
TYPE_A, TYPE_AAAA, TYPE_ANY = b"\x00\x01", b"\x00\x1c", b"\x00\xff"
# ANY (RFC 8482 answers), AXFR and IXFR (REFUSED): the full resolver's, whatever the name.
FULL_PATH_TYPES = frozenset({TYPE_ANY, b"\x00\xfc", b"\x00\xfb"})
CLASS_IN = b"\x00\x01"
ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QDCOUNT 1, no other records
ONE_QUESTION_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # ... and one additional record (the OPT)
OPT_HEAD = b"\x00\x00\x29"  # root owner, type OPT
# Our OPT (RFC 6891): payload size, extended rcode 0, version 0, DO as asked (RFC 3225), no options.
OPT_PLAIN = OPT_HEAD + struct.pack("!HBBHH", EDNS_PAYLOAD, 0, 0, 0, 0)
OPT_DO = OPT_HEAD + struct.pack("!HBBHH", EDNS_PAYLOAD, 0, 0, 0x8000, 0)
TC_COUNTS = struct.pack("!HHHH", 1, 0, 0, 0)  # a truncated answer: the question alone ...
TC_COUNTS_OPT = struct.pack("!HHHH", 1, 0, 0, 1)  # ... and the OPT
_H = struct.Struct("!H").pack


class Rotation:
    """The orders of a rotating RRset (Rule 4): packed in advance, or its records joined per query."""

    __slots__ = ("bodies", "chunks", "head", "tail", "turns")

    def __init__(self, bodies: tuple[bytes, ...] = (), chunks: tuple[bytes, ...] = (), head: bytes = b"",
                 tail: bytes = b"") -> None:
        self.bodies = bodies  # one per order; empty when `chunks` are joined instead
        self.chunks = chunks  # the rotating records, for RRsets longer than PREBUILT_ROTATIONS
        self.head, self.tail = head, tail  # what comes before and after the chunks
        self.turns = itertools.count()

    def next(self) -> bytes:
        turn = next(self.turns)
        bodies = self.bodies
        if bodies:
            return bodies[turn % len(bodies)]
        chunks = self.chunks
        k = turn % len(chunks)
        return b"".join((self.head, *chunks[k:], *chunks[:k], self.tail))


class Aware:
    """What a source-aware answer needs to build a client's variant (Rule 5)."""

    __slots__ = ("networks", "found", "variants")

    def __init__(self, networks: frozenset[str], found: Resolution) -> None:
        self.networks = networks  # the networks of the answer's addresses
        self.found = found  # what the answer was built from
        self.variants: dict[frozenset[str], Ready] | None = None


class Ready:
    """The answer to one (name, type): header flags, counts and the sections after the question.

    Kept small (one per name the table holds): what only rotating or
    source-aware answers need lives in `rotation` and `aware`.
    """

    __slots__ = ("flags", "counts", "counts_opt", "fixed", "rotation", "size", "aware", "short", "soa")

    def __init__(self, flags: int, an: int, ns: int, ar: int, fixed: bytes | None = b"",
                 rotation: Rotation | None = None) -> None:
        self.flags = _shared(flags)  # QR, AA and the rcode; RD and RA are added per query
        self.counts = _counts(an, ns, ar)
        self.counts_opt = _counts(an, ns, ar + 1)
        self.fixed = fixed  # the sections after the question; None when they rotate
        self.rotation = rotation
        if rotation is None:
            self.size = len(fixed or b"")
        elif rotation.bodies:
            self.size = len(rotation.bodies[0])
        else:
            self.size = len(rotation.head) + sum(map(len, rotation.chunks)) + len(rotation.tail)
        self.aware: Aware | None = None  # set: source-aware (Rule 5)
        self.short: Ready | None = None  # the same without its additional records (RFC 2181 section 9)
        self.soa = False  # the snapshot's SOA follows in authority (a chain that ends negative in the zone)

    def body(self) -> bytes:
        fixed = self.fixed
        return fixed if fixed is not None else self.rotation.next()  # type: ignore[union-attr]


_SHARED: dict[int, int] = {}


def _shared(value: int) -> int:
    """One int object per flags value: ints above 256 cost 32 bytes each, and there are a few values."""
    return _SHARED.setdefault(value, value)


@functools.lru_cache(maxsize=1024)
def _counts(an: int, ns: int, ar: int) -> bytes:
    """QDCOUNT 1 and the other counts on the wire; shared, as most answers have the same few."""
    return struct.pack("!HHHH", 1, an, ns, ar)


@functools.lru_cache(maxsize=256)
def qtype_key(qtype: int) -> bytes:
    """A type as the query carries it (2 bytes); one object per type."""
    return struct.pack("!H", qtype)


class Entry:
    """The ready answers of one name: A and AAAA, other types held, and every other type.

    Each is a Ready, None (the full resolver answers it), or NODATA (the
    snapshot's own). A and AAAA have slots of their own (most queries ask
    for them, and a dict per name costs 200 bytes).
    """

    __slots__ = ("a", "aaaa", "types", "other")

    def __init__(self, types: dict[bytes, Ready | None], other: Ready | None | str):
        self.a = types.pop(TYPE_A, other)
        self.aaaa = types.pop(TYPE_AAAA, other)
        self.types = types or None  # other 2-byte QTYPEs -> answer
        self.other = other  # NODATA (the snapshot's), EMPTY_AA (outside the zone), or None: full resolver

    def find(self, qtype: bytes) -> Ready | None | str:
        if qtype == TYPE_A:
            return self.a
        if qtype == TYPE_AAAA:
            return self.aaaa
        types = self.types
        return self.other if types is None else types.get(qtype, self.other)


NODATA = "nodata"  # an answer: the snapshot's own NODATA (its SOA serial changes with the table)
EMPTY_AA = Ready(QR | AA, 0, 0, 0)  # a name we hold outside the zone, another type: NOERROR, no SOA
EMPTY = Ready(QR, 0, 0, 0)  # a single label without the type: NODATA without an out-of-bailiwick SOA
ENT = Entry({}, NODATA)  # an empty non-terminal of the zone: NODATA for every type, RFC 8020


def remembered_limit(names: int) -> int:
    """How many queries a snapshot whose index holds `names` names remembers (Rule 7)."""
    return max(MAX_REMEMBERED, REMEMBERED_PER_NAME * names)


def wire_name(name: str) -> bytes:
    """The lower-case wire format of an absolute name ("db.docker." -> b"\\x02db\\x06docker\\x00")."""
    return wire_key(name) + b"\x00"


def wire_key(name: str) -> bytes:
    """The key of an absolute name in the index: its wire format without the root's zero byte."""
    labels = [label.encode("ascii") for label in name.rstrip(".").split(".") if label] if name != "." else []
    return b"".join(bytes((len(label),)) + label for label in labels)


# --- Built by the writer ---------------------------------------------------------


def negatives(snapshot: Snapshot) -> tuple[Ready, Ready]:
    """The snapshot's NODATA and NXDOMAIN: its SOA in authority (RFC 2308 section 3)."""
    body = _pack_records([], [soa_rr(snapshot)], DNSQuestion("."))[0]
    return Ready(QR | AA | NOERROR, 0, 1, 0, body), Ready(QR | AA | NXDOMAIN, 0, 1, 0, body)


def _back_into(name: str, found: Resolution, snapshot: Snapshot) -> bool:
    """True for a wildcard's CNAME chain that comes back to a name the wildcard covers (`*.loop CNAME
    a.loop`): asked for that very name, the chain is shorter (the resolver stops at the loop), so one answer
    cannot serve every name below it; the full resolver answers them (Rule 6)."""
    if not name.startswith("*."):
        return False
    below = name[1:]  # ".loop.docker."
    return any(step.owner.endswith(below) and step.owner not in snapshot.names for step in found.answer[1:])


def entry_for(name: str, snapshot: Snapshot) -> Entry | None:
    """The ready answers of `name` (absolute, lower-case) in `snapshot`; None when it has none."""
    rrsets = snapshot.names.get(name)
    zone = snapshot.zone
    if name == zone:
        rtypes = {"SOA", "NS", *(rrsets or ())}
    elif rrsets is None:
        return ENT if name in snapshot.ents and in_zone(name, zone) else None
    else:
        rtypes = set(rrsets)
    if "CNAME" in rtypes:
        rtypes |= {"A", "AAAA"}  # the chain's answers for the types nearly everyone asks
    apex = snapshot if name == zone else None  # rebuilt with every table (Rule 1): its SOA may be packed
    types: dict[bytes, Ready | None] = {}
    for rtype in rtypes:
        qtype = getattr(QTYPE, rtype)
        found = lookup(name, qtype, snapshot)
        built = None if _back_into(name, found, snapshot) else ready(name, qtype, found, snapshot=apex)
        types[qtype_key(qtype)] = built
    other: Ready | None | str
    if rrsets is not None and "CNAME" in rrsets:
        other = None  # a chain for a rarer type: the full resolver
    elif apex is not None:
        other = ready(name, QTYPE.NULL, lookup(name, QTYPE.NULL, snapshot), snapshot=apex)
    else:
        other = NODATA if in_zone(name, zone) else EMPTY_AA
    return Entry(types, other)


def ready(name: str, qtype: int, found: Resolution, near: frozenset[str] | None = None,
          snapshot: Snapshot | None = None) -> Ready | None:
    """`found` packed; None when only the full resolver can answer it (Rule 6).

    `near` is None for the answer every client shares, else the networks of
    a client among those of the answer's addresses (Rule 5). A negative
    answer after a CNAME carries the SOA, whose serial changes with every
    table: it is packed only when `snapshot` is given (the apex, rebuilt
    each time); other names take the snapshot's own at query time.
    """
    if found.outcome is Lookup.NOT_OURS or found.rest is not None:
        return None
    authority = [soa_rr(snapshot)] if found.soa and snapshot is not None else []
    later_soa = found.soa and snapshot is None
    flags = QR | (AA if found.authoritative else 0) | found.rcode
    glue = [rec for step in found.additional
            for rec in (_near(step.records, near) if near is not None and step.rotates else step.records)]
    additional = [RR(rec.name, getattr(QTYPE, rec.rtype), ttl=rec.ttl, rdata=rdata(rec.rtype, rec.value))
                  for rec in glue]
    rotating = next((i for i, step in enumerate(found.answer) if step.rotates), -1)
    counts = (len(authority) + later_soa, len(additional))
    if len(found.answer) == 1 and not authority and not additional and found.answer[0].rtype in ADDRESSES:
        # The commonest answer, packed without dnslib (which takes ~50 µs a message): each record is
        # the pointer to the question, type, class, TTL and address (wire.py Rule 3), as dnslib packs it.
        step = found.answer[0]
        rows = list(step.records) if near is None or rotating < 0 else _near(step.records, near)
        chunks = tuple(_address_rr(rec) for rec in rows)
        if len(chunks) <= 1:
            built = Ready(flags, len(rows), *counts, chunks[0] if chunks else b"")
        elif len(chunks) <= PREBUILT_ROTATIONS:
            orders = tuple(b"".join(chunks[k:] + chunks[:k]) for k in range(len(chunks)))
            built = Ready(flags, len(rows), *counts, None, Rotation(orders))
        else:
            built = Ready(flags, len(rows), *counts, None, Rotation((), chunks))
    elif rotating < 0:
        question = DNSQuestion(name, qtype)
        body, _ = _pack_steps(question, found, -1, [], authority, additional)
        built = Ready(flags, len(_records(found)), *counts, body)
    else:
        question = DNSQuestion(name, qtype)
        records = found.answer[rotating].records
        rows = list(records) if near is None else _near(records, near)
        count = len(_records(found)) - len(records) + len(rows)
        if len(rows) <= PREBUILT_ROTATIONS:
            bodies = tuple(_pack_steps(question, found, rotating, rows[k:] + rows[:k], authority, additional)[0]
                           for k in range(len(rows)))
            built = Ready(flags, count, *counts, bodies[0]) if len(bodies) == 1 else \
                Ready(flags, count, *counts, None, Rotation(bodies))
        else:
            body, spans = _pack_steps(question, found, rotating, rows, authority, additional)
            chunks = tuple(body[start:end] for start, end in spans)
            built = Ready(flags, count, *counts, None,
                          Rotation((), chunks, body[:spans[0][0]], body[spans[-1][1]:]))
    built.soa = later_soa
    if additional:
        # RFC 2181 section 9: when the whole does not fit, the additional records go first.
        built.short = ready(name, qtype, replace(found, additional=()), near, snapshot)
    addresses = [*(found.answer[rotating].records if rotating >= 0 else ()),
                 *(rec for step in found.additional for rec in step.records)]
    spanned = {rec.network for rec in addresses}
    if near is None and len(spanned) > 1:  # Rule 5: a client's networks can change this answer
        built.aware = Aware(frozenset(net for net in spanned if net is not None), found)
    return built


ADDRESSES = {"A": (1, 4), "AAAA": (28, 16)}  # type code, address length


def _address_rr(rec: Record) -> bytes:
    """An A or AAAA record owned by the question's name, on the wire."""
    code, size = ADDRESSES[rec.rtype]
    packed = bytes(map(int, rec.value.split("."))) if code == 1 else ipaddress.ip_address(rec.value).packed
    return b"\xc0\x0c" + struct.pack("!HHIH", code, 1, rec.ttl, size) + packed


def _near(records: Iterable[Record], near: frozenset[str]) -> list[Record]:
    """What `resolver.source_aware` keeps for a client whose networks among these records' are `near`."""
    return source_aware(list(records), near or frozenset({""}))


def _records(found: Resolution) -> list[Record]:
    return [rec for step in found.answer for rec in step.records]


def _pack_steps(question: DNSQuestion, found: Resolution, rotating: int, rows: list[Record],
                authority: list[RR], additional: list[RR]) -> tuple[bytes, list[tuple[int, int]]]:
    """The sections after the question of `found`, the rotating RRset as `rows`; and where those rows lie."""
    rrs: list[RR] = []
    first = 0
    for index, step in enumerate(found.answer):
        if index == rotating:
            first = len(rrs)
        records = rows if index == rotating else step.records
        rrs.extend(RR(step.owner, getattr(QTYPE, r.rtype), ttl=r.ttl, rdata=rdata(r.rtype, r.value)) for r in records)
    body, spans = _pack_records(rrs, authority, question, additional)
    return body, (spans[first:first + len(rows)] if rotating >= 0 else [])


def _pack_records(answer: list[RR], authority: list[RR], question: DNSQuestion | None = None,
                  additional: list[RR] | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    """The sections after the question, packed as wire.pack does, and the answer records' spans in them."""
    message = DNSRecord(DNSHeader(qr=1), q=question)
    for rr in answer:
        message.add_answer(rr)
    for rr in authority:
        message.add_auth(rr)
    for rr in additional or ():
        message.add_ar(rr)
    data, spans = pack(message)
    # The question was written out (wire.py Rule 3): its name ends at its first zero byte.
    start = data.index(0, HEADER_LEN) + 5 if question is not None else HEADER_LEN
    return data[start:], [(a - start, b - start) for a, b in spans]


def variant(base: Ready, near: frozenset[str]) -> Ready:
    """`base` for a client whose networks among the RRset's are `near`, built on first use (Rule 5)."""
    aware = base.aware
    assert aware is not None
    found = aware.variants.get(near) if aware.variants is not None else None
    if found is None:
        built = ready(aware.found.answer[0].owner, QTYPE.A, aware.found, near)
        assert built is not None
        variants = aware.variants
        if variants is None or len(variants) >= MAX_VARIANTS:
            variants = aware.variants = {}  # replaced whole: readers in other threads keep theirs
        variants[near] = found = built
    return found


# --- Read by the query path -------------------------------------------------------


class Question(NamedTuple):
    """What the query path reads of a query: nothing else of it is looked at (Rule 1)."""

    key: bytes  # the name in wire format, lower-case
    qtype: bytes  # 2 bytes
    end: int  # the offset after the question
    opt: bytes  # the OPT to answer with (ours, DO as asked), or b"" without EDNS
    udp_limit: int  # the largest UDP answer this client takes
    cache_key: bytes = b""  # the upstream cache's key (cache.py Rule 1)


def _read(data: bytes, end: int) -> tuple[int, bytes, int, bool] | None:
    """What follows the question's name, which ends at `end` (Rule 6): None when not a plain query.

    Else the offset after the question, the OPT to answer with, the
    client's UDP limit, and whether the query may be remembered (Rule 7).
    """
    size = len(data)
    qend = end + 5
    if size > MAX_FAST_QUERY or data[2] & 0xF8 or data[end + 3:qend] != CLASS_IN:
        return None  # QR set, an opcode other than QUERY, or not a whole question of class IN
    counts = data[4:HEADER_LEN]
    if counts == ONE_QUESTION:
        return (qend, b"", CLASSIC_UDP_LIMIT, True) if qend == size else None
    if counts != ONE_QUESTION_OPT:
        return None  # not exactly one question, and at most one additional record
    # The OPT right after the question: root owner, type, payload, ext-rcode, version, flags, rdlen.
    if size < qend + 11 or data[qend:qend + 3] != OPT_HEAD or data[qend + 6] or \
            qend + 11 + int.from_bytes(data[qend + 9:qend + 11], "big") != size:
        return None  # not an OPT, or an EDNS version other than 0 (BADVERS: the full resolver)
    # Options (cookies included) are ignored, as RFC 7873 section 5.2 allows a server without cookies.
    udp_limit = min(max(int.from_bytes(data[qend + 3:qend + 5], "big"), CLASSIC_UDP_LIMIT), EDNS_PAYLOAD)
    plain = size == qend + 11 or (data[qend + 11:qend + 13] == COOKIE and size <= qend + 55)
    return qend, OPT_DO if data[qend + 7] & 0x80 else OPT_PLAIN, udp_limit, plain


def question(data: bytes) -> Question | None:
    """The question of a plain query (Rule 6), or None: then the full resolver reads it."""
    end = data.find(0, HEADER_LEN)  # the end of the name, if it has no pointer (checked by the index lookup)
    read = _read(data, end) if end > 0 else None
    if read is None:
        return None
    qend, opt, udp_limit, _ = read
    return _question(data[HEADER_LEN:end + 1].lower(), data[end + 1:end + 3], qend, opt, udp_limit)


def answer(data: bytes, snapshot: Snapshot, ra: bool, client: str, limit: int | None = None) -> bytes | None:
    """The answer to the query `data` from the index, or None: then the full resolver answers (Rule 6)."""
    out = respond(data, snapshot, ra, client, limit)
    return out if isinstance(out, bytes) else None


def respond(data: bytes, snapshot: Snapshot, ra: bool, client: str,
            limit: int | None = None) -> bytes | Question | None:
    """The answer to the query `data` from the index; its Question when the name is not ours (the
    upstream cache may hold it, and need not read the query again); None: the full resolver answers.

    `limit` is the transport's: None for UDP (the client's EDNS size, capped
    at ours, or 512), the TCP maximum otherwise. This is the hot path.
    """
    # Rule 7: first the query's bytes after the id as they are (a lower-case name), then with the
    # name folded to lower case (0x20 clients, a random letter case on every query).
    ready_: Ready
    memo = snapshot.queries[ra]
    seen = data[2:]
    remembered = memo.get(seen)
    end = -1
    if remembered is None:
        end = data.find(0, HEADER_LEN)  # the end of the question's name, if it has no pointer (checked below)
        if end < 0:
            return None
        asked = data[HEADER_LEN:end]
        name = asked.lower()
        if name != asked:
            seen = data[2:HEADER_LEN] + name + data[end:]
            remembered = memo.get(seen)
    if remembered is not None:
        kind = remembered.__class__
        if kind is bytes:
            # The whole answer after the id, its question in lower case: the client's own goes in.
            if end < 0:
                return data[:2] + remembered
            return b"".join((data[:2], remembered[:10], data[HEADER_LEN:end + 5], remembered[end + 3:]))
        if kind is Question:
            return remembered  # not ours, read before
        ready_, head, size, qend, opt, udp_limit, soa = remembered  # rotating, or too large for UDP
        if size <= (udp_limit if limit is None else limit):
            return b"".join((data[:2], head, data[HEADER_LEN:qend], ready_.body(), soa, opt))
        return _assemble(data, ready_, int.from_bytes(head[:2], "big"), qend, soa, opt,
                         udp_limit if limit is None else limit)
    found: Ready | None | str
    entry = snapshot.index.shards[hash(name) & SHARD_MASK].get(name)
    labels, source, shape = 0, None, b""
    if entry is None:
        first = name[0] + 1 if name else 0
        parent = name[first:] if 1 < first <= 64 and len(name) < 255 else None
        if parent is not None and snapshot.wildcards.get(parent):
            # One label below a wildcard's parent in the zone, a name the table holds (it has a child): that
            # parent is the closest encloser, its wildcard the source (RFC 4592); the name is well formed.
            shape = data[2:HEADER_LEN] + parent + data[end:]
        elif parent == snapshot.zone_wire:
            shape = data[2:HEADER_LEN] + data[end:]  # one label below the apex, no wildcard there: NXDOMAIN
            labels = -1
        else:
            zone = snapshot.zone_wire
            counted = _labels(name, len(name) - len(zone) if name.endswith(zone) else -1)
            if counted is None:
                return None  # malformed: the full resolver answers FORMERR
            labels = counted
            if labels < 0:  # in the zone (a label boundary where the zone starts), and not held
                source = _wildcard(name, snapshot) if snapshot.wildcards else None
                if source is None:
                    shape = data[2:HEADER_LEN] + data[end:]  # NXDOMAIN
        if shape:  # Rule 8
            shared = snapshot.shapes[ra].get(shape)
            if shared is not None and end <= shared[2]:
                return b"".join((data[:2], shared[0], data[HEADER_LEN:end + 5], shared[1]))
    read = _read(data, end)
    if read is None:
        return None
    qend, opt, udp_limit, plain = read
    qtype = data[end + 1:end + 3]
    if qtype in FULL_PATH_TYPES:
        return None
    aa = AA
    keep = plain and len(memo) < snapshot.remembered  # Rule 7
    if entry is not None:
        found = entry.a if qtype == TYPE_A else entry.aaaa if qtype == TYPE_AAAA else entry.find(qtype)
    elif labels < 0 or shape:
        if labels == 0:  # the wildcard one label up
            source = snapshot.index.get(b"\x01*" + name[name[0] + 1:])
        # RFC 4592: the wildcard's answers, their owner the question (wire.py Rule 3); else NXDOMAIN.
        found = source.find(qtype) if source is not None else None if labels == 0 else snapshot.nxdomain
        keep = False  # any name below it: a flood of them is not kept (Rule 7), their shapes are (Rule 8)
    elif labels == 1:
        # Resolver Rule 3: a single label, for A and AAAA, as the zone's name, without AA.
        if qtype != TYPE_A and qtype != TYPE_AAAA:
            return None
        entry = snapshot.index.get(name + snapshot.zone_wire)
        if entry is None:
            return _not_ours(memo if keep else None, seen, name, qtype, read)
        found = entry.find(qtype)
        if found is NODATA:
            found = EMPTY
        elif isinstance(found, Ready) and found.soa:
            return None  # a chain that ends negative: without the SOA here (the full resolver)
        aa = 0
    elif snapshot.wildcards and _below_wildcard(name, snapshot.wildcards):
        return None  # an absolute wildcard may hold it: the full resolver decides
    else:
        return _not_ours(memo if keep else None, seen, name, qtype, read)
    if found is None:
        return None
    ready_ = snapshot.nodata if found is NODATA else found  # type: ignore[assignment]
    flags = (ready_.flags if aa else ready_.flags & ~AA) | (data[2] & 0x01) << 8 | (0x80 if ra else 0)
    soa = snapshot.nodata.fixed if ready_.soa else b""
    # Rule 7; NXDOMAIN is not kept (a flood of new names), nor anything past the bound: the
    # queries kept first stay until the table changes, and the rest are read each time.
    if keep and ready_.aware is None and ready_ is not snapshot.nxdomain:
        head = _H(flags) + (ready_.counts_opt if opt else ready_.counts)
        size = qend + ready_.size + len(soa) + len(opt)
        fixed = ready_.fixed
        if fixed is not None and size <= udp_limit:
            memo[seen] = b"".join((head, seen[10:end + 3], fixed, soa, opt))
        else:
            memo[seen] = (ready_, head, size, qend, opt, udp_limit, soa)
    elif shape and plain and ready_.aware is None and ready_.fixed is not None:
        shapes = snapshot.shapes[ra]
        if len(shapes) >= MAX_SHAPES:
            shapes.clear()  # Rule 8: starts over
        tail = ready_.fixed + soa + opt
        # Rule 8: the largest offset of a question's end for which the whole answer fits.
        shapes[shape] = (_H(flags) + (ready_.counts_opt if opt else ready_.counts), tail, udp_limit - len(tail) - 5)
    if ready_.aware is not None:
        networks = snapshot.networks_of(client)
        if networks:
            ready_ = variant(ready_, networks & ready_.aware.networks)
    return _assemble(data, ready_, flags, qend, soa, opt, udp_limit if limit is None else limit)


def _assemble(data: bytes, ready_: Ready, flags: int, qend: int, soa: bytes, opt: bytes, limit: int) -> bytes:
    """`ready_` on the wire for the query `data`, the SOA after it; its short form, or TC, when too large."""
    if qend + ready_.size + len(soa) + len(opt) > limit and ready_.short is not None:
        ready_ = ready_.short  # additional records go first (RFC 2181 section 9)
    return assemble(data, qend, opt, flags, ready_.counts_opt if opt else ready_.counts, ready_.size + len(soa),
                    (ready_.body(), soa), limit)


def assemble(data: bytes, qend: int, opt: bytes, flags: int, counts: bytes, size: int, body: tuple[bytes, ...],
             limit: int) -> bytes:
    """The answer on the wire: the query's id and question, then `body` (`size` bytes) and the OPT.

    When it exceeds `limit`: the header, question and OPT alone, with TC (RFC 2181 section 9).
    """
    if qend + size + len(opt) > limit:
        return b"".join((data[:2], _H(flags | TC), TC_COUNTS_OPT if opt else TC_COUNTS, data[HEADER_LEN:qend], opt))
    return b"".join((data[:2], _H(flags), counts, data[HEADER_LEN:qend], *body, opt))


def _not_ours(memo: dict[bytes, object] | None, seen: bytes, name: bytes, qtype: bytes,
              read: tuple[int, bytes, int, bool]) -> Question:
    """A name that is not ours: its Question, remembered in `memo` (Rule 7) so the next time costs one lookup."""
    qend, opt, udp_limit, _ = read
    q = _question(name + b"\x00", qtype, qend, opt, udp_limit)
    if memo is not None:
        memo[seen] = q
    return q


def _question(key: bytes, qtype: bytes, qend: int, opt: bytes, udp_limit: int) -> Question:
    """A Question, with its key in the upstream cache (cache.py Rule 1)."""
    return Question(key, qtype, qend, opt, udp_limit, key + qtype + (b"\x01" if opt is OPT_DO else b"\x00"))


def _labels(key: bytes, zone_at: int) -> int | None:
    """How many labels the wire name `key` (without its root zero byte) has; None when malformed.

    -1 when a label starts at `zone_at`, where `key` ends with the zone's
    name: the name lies in the zone, and the zone's own labels (ours) need
    no reading. This runs for every name the index does not hold.
    """
    last = len(key)
    if last > 254:
        return None
    pos = count = 0
    while pos < last:
        if pos == zone_at:
            return -1
        length = key[pos]
        if length > 63:
            return None  # a pointer, or a reserved label type: the full resolver decides
        pos += length + 1
        count += 1
    return count if pos == last else None


def _below_wildcard(key: bytes, parents: Mapping[bytes, bool]) -> bool:
    """True when a proper ancestor of `key` is the parent of a wildcard name."""
    if not key:
        return False  # the root has no ancestor
    pos = key[0] + 1
    while pos < len(key):
        if key[pos:] in parents:
            return True
        pos += key[pos] + 1
    return False


def _wildcard(key: bytes, snapshot: Snapshot) -> Entry | None:
    """The entry of `*.<closest encloser>` for a name the index does not hold (RFC 4592 section 3.3.1)."""
    parents, index = snapshot.wildcards, snapshot.index
    if not _below_wildcard(key, parents):
        return None  # no wildcard above it: no lookup of its ancestors
    pos = key[0] + 1
    while pos < len(key):
        ancestor = key[pos:]
        if index.get(ancestor) is not None:  # names, empty non-terminals and the apex are all in the index
            return index.get(b"\x01*" + ancestor)
        pos += key[pos] + 1
    return None
