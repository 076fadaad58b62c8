"""The resolver: (query, snapshot, client) -> Answer | Forward. All DNS semantics live here.

Rule 1: the table is the only truth, and we claim only what it holds. Names
        in the zone are ours (FOUND, NODATA or NXDOMAIN with the SOA, RFC
        2308). Outside the zone, only the exact names the table holds are
        ours (absolute static names, external names); the names above and
        below them belong to someone else and are forwarded.
Rule 2: "in our zone but absent" and "not ours" are different outcomes. The
        first is answered here; the second is handed to the forwarder, or
        REFUSED when forwarding is off.
Rule 3: a single label ("db") is a convenience, not an authority: for A and
        AAAA it is answered as "db.<zone>" is, without AA; every other type,
        and every single label the zone does not hold, is not ours.
Rule 4: the question is echoed exactly as asked; names match without case.
Rule 5: `lookup` decides what an answer holds from the name, the type and the
        snapshot alone; `resolve` adds what depends on the client (its
        networks, the rotation turn, EDNS). The answer index (answers.py)
        is built from `lookup` too, so both always agree.

Pure: no sockets, threads or clocks. Rotation comes in as `turn`, the
client's address as a string; `resolve` only reads its arguments, so any
number of threads may call it at once.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from dnslib import EDNS0, QTYPE, RCODE, RR, SOA, DNSHeader, DNSLabel, DNSRecord

from .records import Record, in_zone
from .snapshot import RRsets, Snapshot

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

EDNS_PAYLOAD = 1232  # DNS flag day 2020: no fragmentation on any common path
NEGATIVE_TTL = 1  # SOA minimum: nobody caches the absence of a container for long
MAX_CNAME_HOPS = 8
OPCODE_QUERY = 0
CLASS_IN = 1
CLASS_ANY = 255
BADVERS = 16  # RFC 6891 section 6.1.3
DO = 0x8000  # the DNSSEC OK bit in the OPT record's flags, RFC 3225
ADDRESS_TYPES = ("A", "AAAA")


class Lookup(Enum):
    """The outcome of looking a name up in the table."""

    FOUND = "found"
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"
    NOT_OURS = "not ours"


@dataclass(frozen=True)
class RRset:
    """One RRset of an answer: its owner (absolute, lower-case), type and records, deduplicated."""

    owner: str
    rtype: str
    records: tuple[Record, ...]

    @property
    def rotates(self) -> bool:
        """Addresses held by several records are rotated and ordered by the client's networks."""
        return self.rtype in ADDRESS_TYPES and len(self.records) > 1


@dataclass(frozen=True)
class Resolution:
    """What the answer to one (name, type) holds, before anything the client changes."""

    outcome: Lookup
    answer: tuple[RRset, ...] = ()
    authoritative: bool = True
    soa: bool = False  # the zone's SOA goes in authority (RFC 2308 sections 2 and 3)
    rest: str | None = None  # a CNAME target outside the table: the chain goes on upstream
    additional: tuple[RRset, ...] = ()  # the addresses of SRV targets (RFC 2782)

    @property
    def rcode(self) -> int:
        return RCODE.NXDOMAIN if self.outcome is Lookup.NXDOMAIN else RCODE.NOERROR


NOT_OURS = Resolution(Lookup.NOT_OURS, authoritative=False)


@dataclass(frozen=True)
class Policy:
    """What the resolver needs to know of the settings."""

    allow: tuple[IPNetwork, ...]
    forwarding: bool = True


@dataclass(frozen=True)
class Answer:
    """Send this response."""

    message: DNSRecord


@dataclass(frozen=True)
class Forward:
    """Not ours: send `query` upstream.

    With `prefix`, the table answered the start of a CNAME chain whose target
    `query` asks for; the upstream's answer is appended to `prefix` (RFC 1034
    section 3.6.2: a recursive server follows the chain).
    """

    query: DNSRecord
    prefix: DNSRecord | None = None


Outcome = Answer | Forward


def client_allowed(client: str, allow: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in allow)


def response_to(query: DNSRecord, rcode: int = RCODE.NOERROR, *, ra: bool = False) -> DNSRecord:
    """An empty response echoing the query's id, opcode, RD and question."""
    header = DNSHeader(id=query.header.id, qr=1, opcode=query.header.opcode, rd=query.header.rd, ra=int(ra))
    header.rcode = rcode
    return DNSRecord(header, q=query.q if query.questions else None)


def query_opt(query: DNSRecord) -> RR | None:
    for rr in query.ar:
        if rr.rtype == QTYPE.OPT:
            return rr
    return None


# --- What an answer holds ------------------------------------------------------


def lookup(qname: str, qtype: int, snapshot: Snapshot) -> Resolution:
    """The answer to `qname` (absolute, lower-case) and `qtype`, from the table alone (Rules 1 and 3)."""
    zone = snapshot.zone
    if qname.count(".") == 1 and qname not in (zone, "."):
        name = qname + zone
        if qtype not in (QTYPE.A, QTYPE.AAAA) or not snapshot.exists(name):
            return NOT_OURS
        # Answered as the zone's name is, but not authoritatively, and with no
        # SOA: the zone's SOA is no ancestor of the question.
        return replace(_chain(name, qtype, snapshot), authoritative=False, soa=False)
    if in_zone(qname, zone) or qname in snapshot.names or wildcard(qname, snapshot) is not None:
        return _chain(qname, qtype, snapshot)
    return NOT_OURS


def wildcard(name: str, snapshot: Snapshot) -> RRsets | None:
    """The records a wildcard synthesises for `name`, a name the table does not hold (RFC 4592 section 3.3.1).

    The closest encloser is the nearest ancestor that exists (a name with
    records, an empty non-terminal, or the apex); only `*.<closest encloser>`
    can answer, so an existing name blocks the wildcards above it for itself
    and its whole subtree.
    """
    if not snapshot.wildcards or name in snapshot.names or name in snapshot.ents:
        return None
    labels = name.split(".")
    for i in range(1, len(labels) - 1):
        ancestor = ".".join(labels[i:])
        if ancestor in snapshot.names or ancestor in snapshot.ents or ancestor == snapshot.zone:
            return snapshot.names.get("*." + ancestor)
    return None


def _chain(name: str, qtype: int, snapshot: Snapshot) -> Resolution:
    """The RRsets for `name`, following CNAMEs as far as the table goes (RFC 1034 section 3.6.2)."""
    zone = snapshot.zone
    steps: list[RRset] = []
    seen: set[str] = set()
    type_name = QTYPE.get(qtype)
    for _ in range(MAX_CNAME_HOPS + 1):
        seen.add(name)
        if name == zone and qtype in (QTYPE.SOA, QTYPE.NS, QTYPE.ANY):
            if qtype in (QTYPE.SOA, QTYPE.ANY):
                steps.append(RRset(zone, "SOA", (soa_record(snapshot, snapshot.soa_ttl),)))
            if qtype in (QTYPE.NS, QTYPE.ANY):
                steps.append(RRset(zone, "NS", (Record(zone, "NS", "ns." + zone, snapshot.soa_ttl),)))
            return Resolution(Lookup.FOUND, tuple(steps))
        rrsets = snapshot.names.get(name)
        if rrsets is None:
            rrsets = wildcard(name, snapshot)  # the owner stays `name` (RFC 4592 section 3.3.1)
        if rrsets is None:
            # An empty non-terminal exists: NODATA, not NXDOMAIN (RFC 8020).
            # After a CNAME the rcode speaks of the last name (RFC 6604), and
            # a negative answer in the zone carries its SOA (RFC 2308 section 3).
            exists = name in snapshot.ents or name == zone
            return Resolution(Lookup.NODATA if exists else Lookup.NXDOMAIN, tuple(steps), soa=in_zone(name, zone))
        if qtype == QTYPE.ANY:
            steps.extend(RRset(name, rtype, _unique(recs)) for rtype, recs in rrsets.items())
            return Resolution(Lookup.FOUND, tuple(steps))
        recs = rrsets.get(type_name)
        if recs:
            steps.append(RRset(name, type_name, _unique(recs)))
            glue = _targets(recs, snapshot) if type_name == "SRV" else ()
            return Resolution(Lookup.FOUND, tuple(steps), additional=glue)
        cname = rrsets.get("CNAME")
        if not cname:
            # NODATA; outside the zone there is no SOA of ours to give.
            return Resolution(Lookup.NODATA, tuple(steps), soa=in_zone(name, zone))
        steps.append(RRset(name, "CNAME", cname[:1]))
        target = cname[0].value.lower()
        if target in seen:
            return Resolution(Lookup.FOUND, tuple(steps))  # a loop: stop with what we have
        if target not in snapshot.names and not (in_zone(target, zone) and target in snapshot.ents) \
                and wildcard(target, snapshot) is None:
            if in_zone(target, zone):
                return Resolution(Lookup.NXDOMAIN, tuple(steps), soa=True)
            return Resolution(Lookup.FOUND, tuple(steps), rest=target)  # the rest is someone else's
        name = target
    return Resolution(Lookup.FOUND, tuple(steps))


def _targets(srv: Iterable[Record], snapshot: Snapshot) -> tuple[RRset, ...]:
    """The A and AAAA records of the targets of SRV records that the table holds, for the additional section."""
    out: list[RRset] = []
    seen: set[str] = set()
    for rec in srv:
        target = rec.value.split()[-1].lower()
        if target in seen:
            continue
        seen.add(target)
        rrsets = snapshot.names.get(target) or {}
        out.extend(RRset(target, rtype, _unique(rrsets[rtype])) for rtype in ADDRESS_TYPES if rrsets.get(rtype))
    return tuple(out)


def _unique(recs: Iterable[Record]) -> tuple[Record, ...]:
    """One record per value: two containers publishing one static address answer it once."""
    unique: dict[str, Record] = {}
    for rec in recs:
        unique.setdefault(rec.value, rec)
    return tuple(unique.values())


def soa_record(snapshot: Snapshot, ttl: int) -> Record:
    zone = snapshot.zone
    serial = snapshot.generation % 2**32
    return Record(zone, "SOA", f"ns.{zone} hostmaster.{zone} {serial} 3600 600 86400 {NEGATIVE_TTL}", ttl)


# --- The answer for one client -------------------------------------------------


def resolve(query: DNSRecord, snapshot: Snapshot, client: str, policy: Policy, turn: int = 0) -> Outcome:
    """Answer `query` from `snapshot`, or say it must be forwarded."""
    ra = policy.forwarding
    opts = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
    if query.header.opcode != OPCODE_QUERY:
        # RFC 1035 section 4.1.1: NOTIMP, and nothing of a message we do not understand.
        header = DNSHeader(id=query.header.id, qr=1, opcode=query.header.opcode, rd=0)
        header.rcode = RCODE.NOTIMP
        return Answer(_with_opt(query, DNSRecord(header)))
    if len(query.questions) != 1 or len(opts) > 1:
        # RFC 1035 allows QDCOUNT > 1 on paper; nobody implements it (RFC 9619).
        return Answer(_with_opt(query, response_to(query, RCODE.FORMERR, ra=ra)))
    if opts and (opts[0].ttl >> 16) & 0xFF != 0:
        return Answer(_badvers(query, ra))
    if not client_allowed(client, policy.allow):
        return Answer(_with_opt(query, response_to(query, RCODE.REFUSED, ra=ra)))

    question = query.q
    if question.qclass not in (CLASS_IN, CLASS_ANY) or question.qtype in (QTYPE.AXFR, QTYPE.IXFR):
        return Answer(_with_opt(query, response_to(query, RCODE.REFUSED, ra=ra)))

    found = lookup(str(question.qname).lower(), question.qtype, snapshot)
    if found.outcome is Lookup.NOT_OURS:
        return _forward_or_refuse(query, policy)
    reply = render(query, found, snapshot, client, turn, ra)
    if found.rest is not None and query.header.rd and policy.forwarding:
        rest = DNSRecord(DNSHeader(id=query.header.id, rd=1), q=None)
        rest.add_question(type(question)(DNSLabel(found.rest), question.qtype, CLASS_IN))
        for opt in opts:
            rest.add_ar(opt)
        return Forward(rest, prefix=reply)
    return Answer(reply)


def render(query: DNSRecord, found: Resolution, snapshot: Snapshot, client: str, turn: int, ra: bool) -> DNSRecord:
    """The reply to `query` holding `found`, ordered for `client` and rotated by `turn`."""
    reply = response_to(query, found.rcode, ra=ra)
    reply.header.aa = int(found.authoritative)
    networks = snapshot.networks_of(client) if any(step.rotates for step in (*found.answer, *found.additional)) \
        else frozenset()
    for index, step in enumerate(found.answer):
        # The first owner is the question as asked (Rule 4); later ones are CNAME targets.
        owner = query.q.qname if index == 0 else DNSLabel(step.owner)
        rows = ordered(step.records, networks, turn) if step.rotates else step.records
        for rec in rows:
            reply.add_answer(RR(owner, getattr(QTYPE, rec.rtype), ttl=rec.ttl, rdata=rdata(rec.rtype, rec.value)))
    if found.soa:
        reply.add_auth(soa_rr(snapshot))
    for step in found.additional:
        for rec in source_aware(step.records, networks) if step.rotates else step.records:
            reply.add_ar(RR(DNSLabel(step.owner), getattr(QTYPE, rec.rtype), ttl=rec.ttl,
                            rdata=rdata(rec.rtype, rec.value)))
    return _with_opt(query, reply)


def ordered(records: Sequence[Record], client_networks: frozenset[str], turn: int) -> list[Record]:
    """Addresses for a client on `client_networks`, the `turn`-th rotation (each address first in turn)."""
    rows = source_aware(records, client_networks)
    if len(rows) > 1:
        k = turn % len(rows)
        rows = rows[k:] + rows[:k]
    return rows


def source_aware(records: Sequence[Record], client_networks: frozenset[str]) -> list[Record]:
    """Addresses on the client's networks first; unreachable ones out when any remain."""
    rows = list(records)
    if not client_networks:
        return rows
    near = [r for r in rows if r.network in client_networks]
    unknown = [r for r in rows if r.network is None]
    if near or unknown:
        return near + unknown
    return rows


@functools.lru_cache(maxsize=65536)
def rdata(rtype: str, value: str) -> object:
    """The dnslib rdata of a zone-file value (parsed once per distinct value)."""
    if rtype == "SOA":
        return _soa_rdata(value)
    return RR.fromZone(f". 0 IN {rtype} {value}")[0].rdata


def soa_rr(snapshot: Snapshot, ttl: int = NEGATIVE_TTL) -> RR:
    """The zone's SOA for the authority section of a negative answer, its TTL the negative TTL."""
    rec = soa_record(snapshot, ttl)
    return RR(rec.name, QTYPE.SOA, ttl=rec.ttl, rdata=rdata("SOA", rec.value))


def _soa_rdata(value: str) -> SOA:
    """An SOA's rdata from its zone-file text, without the zone-file parser (a new serial every table)."""
    mname, rname, *times = value.split()
    return SOA(mname, rname, tuple(int(t) for t in times))


def _forward_or_refuse(query: DNSRecord, policy: Policy) -> Outcome:
    if policy.forwarding:
        return Forward(query)
    return Answer(_with_opt(query, response_to(query, RCODE.REFUSED)))


def _with_opt(query: DNSRecord, reply: DNSRecord) -> DNSRecord:
    """Answer EDNS0 with EDNS0 (RFC 6891 section 7): our payload size, version 0, DO copied (RFC 3225)."""
    opt = query_opt(query)
    if opt is not None:
        reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, flags="do" if opt.ttl & DO else ""))
    return reply


def _badvers(query: DNSRecord, ra: bool) -> DNSRecord:
    reply = response_to(query, ra=ra)
    opt = query_opt(query)
    flags = "do" if opt is not None and opt.ttl & DO else ""
    reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, ext_rcode=BADVERS >> 4, flags=flags))
    return reply


def failure(query: DNSRecord, rcode: int, ra: bool = True) -> DNSRecord:
    """SERVFAIL and friends for a parsed query (used when forwarding fails)."""
    return _with_opt(query, response_to(query, rcode, ra=ra))
