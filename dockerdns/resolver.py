"""The resolver: (query, snapshot, client) -> Answer | Forward. All DNS semantics live here.

Rule 1: the table is the only truth. A name the table holds is answered from
        it, authoritatively, whether it is in the zone or not (absolute static
        names, external names).
Rule 2: "in our zone but absent" and "not ours" are different outcomes. The
        first is answered here (NXDOMAIN or NODATA with the SOA, RFC 2308);
        the second is handed to the forwarder, or REFUSED when forwarding is
        off.
Rule 3: a single-label name ("db") is looked up as "db.<zone>"; when the zone
        has no such name it is not ours, like Docker's embedded DNS.
Rule 4: the question is echoed exactly as asked; names match without case.

Pure: no sockets, threads or clocks. Rotation comes in as `turn`, the
client's address as a string; `resolve` only reads its arguments, so any
number of threads may call it at once.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from dnslib import AAAA, CNAME, EDNS0, PTR, QTYPE, RCODE, RR, A, DNSHeader, DNSLabel, DNSRecord

from .records import Record, in_zone
from .table import Snapshot

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

EDNS_PAYLOAD = 1232  # DNS flag day 2020: no fragmentation on any common path
NEGATIVE_TTL = 1  # SOA minimum: nobody caches the absence of a container for long
MAX_CNAME_HOPS = 8
OPCODE_QUERY = 0
CLASS_IN = 1
CLASS_ANY = 255
BADVERS = 16  # RFC 6891 section 6.1.3


class Lookup(Enum):
    """The outcome of looking a name up in the table."""

    FOUND = "found"
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"


@dataclass(frozen=True)
class Policy:
    """What the resolver needs to know of the settings."""

    zone: str  # absolute, "docker."
    allow: tuple[IPNetwork, ...]
    forwarding: bool = True
    soa_ttl: int = 5
    # The addresses dockerdns answers on, for the name server `ns.<zone>` that
    # the apex NS and SOA name (a delegation's glue, RFC 1034 section 4.2.1).
    ns_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """Send this response."""

    message: DNSRecord


@dataclass(frozen=True)
class Forward:
    """Not ours: send the query upstream."""

    query: DNSRecord


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


def resolve(query: DNSRecord, snapshot: Snapshot, client: str, policy: Policy, turn: int = 0) -> Outcome:
    """Answer `query` from `snapshot`, or say it must be forwarded."""
    ra = policy.forwarding
    if query.header.opcode != OPCODE_QUERY:
        return Answer(_with_opt(query, response_to(query, RCODE.NOTIMP, ra=ra)))
    opts = [rr for rr in query.ar if rr.rtype == QTYPE.OPT]
    if len(query.questions) != 1 or len(opts) > 1:
        # RFC 1035 allows QDCOUNT > 1 on paper; nobody implements it (RFC 9619).
        return Answer(response_to(query, RCODE.FORMERR, ra=ra))
    if opts and (opts[0].ttl >> 16) & 0xFF != 0:
        return Answer(_badvers(query, ra))
    if not client_allowed(client, policy.allow):
        return Answer(_with_opt(query, response_to(query, RCODE.REFUSED, ra=ra)))

    question = query.q
    if question.qclass not in (CLASS_IN, CLASS_ANY) or question.qtype in (QTYPE.AXFR, QTYPE.IXFR):
        return Answer(_with_opt(query, response_to(query, RCODE.REFUSED, ra=ra)))

    qname = str(question.qname).lower()
    lookup_name = qname
    if qname.count(".") == 1 and qname != policy.zone:
        # A single label: first a name in the zone, else someone else's.
        lookup_name = qname + policy.zone
        if not snapshot.exists(lookup_name):
            return _forward_or_refuse(query, policy)
    elif not snapshot.exists(qname) and not in_zone(qname, policy.zone):
        return _forward_or_refuse(query, policy)

    reply = response_to(query, ra=ra)
    reply.header.aa = 1
    outcome = _answer_chain(reply, question.qname, lookup_name, question.qtype, snapshot, client, policy, turn)
    if outcome is Lookup.NXDOMAIN:
        reply.header.rcode = RCODE.NXDOMAIN
    if outcome in (Lookup.NXDOMAIN, Lookup.NODATA) and not reply.rr:
        # Only where the SOA is an ancestor of the question: a single label
        # ("db.") answered from the zone gets no out-of-bailiwick SOA.
        if in_zone(qname, policy.zone):
            # RFC 2308 section 3: the SOA goes in authority, its TTL the negative TTL.
            reply.add_auth(_soa(policy, snapshot, NEGATIVE_TTL))
    return Answer(_with_opt(query, reply))


def _answer_chain(
    reply: DNSRecord,
    owner: DNSLabel,
    name: str,
    qtype: int,
    snapshot: Snapshot,
    client: str,
    policy: Policy,
    turn: int,
) -> Lookup:
    """Add the answers for `name` to `reply`, following CNAMEs (RFC 1034 section 3.6.2)."""
    seen: set[str] = set()
    for _ in range(MAX_CNAME_HOPS + 1):
        seen.add(name)
        if name == policy.zone and qtype in (QTYPE.SOA, QTYPE.NS, QTYPE.ANY):
            if qtype in (QTYPE.SOA, QTYPE.ANY):
                reply.add_answer(_soa(policy, snapshot, policy.soa_ttl, owner))
            if qtype in (QTYPE.NS, QTYPE.ANY):
                reply.add_answer(RR(owner, QTYPE.NS, ttl=policy.soa_ttl, rdata=_rdata("NS", "ns." + policy.zone)))
            return Lookup.FOUND
        rrsets = snapshot.names.get(name)
        if rrsets is None and name == "ns." + policy.zone and policy.ns_addresses:
            rrsets = _name_server(name, policy)
        if rrsets is None:
            # An empty non-terminal exists: NODATA, not NXDOMAIN (RFC 8020).
            return Lookup.NODATA if name in snapshot.ents or name == policy.zone else Lookup.NXDOMAIN
        type_name = QTYPE.get(qtype)
        if qtype == QTYPE.ANY:
            for rtype, rrset in rrsets.items():
                _add(reply, owner, _ordered(rtype, rrset, snapshot, client, turn))
            return Lookup.FOUND
        recs = rrsets.get(type_name)
        if recs:
            _add(reply, owner, _ordered(type_name, recs, snapshot, client, turn))
            return Lookup.FOUND
        cname = rrsets.get("CNAME")
        if not cname:
            return Lookup.NODATA
        _add(reply, owner, cname[:1])
        target = cname[0].value.lower()
        if target in seen:
            return Lookup.FOUND  # a loop: stop with what we have
        name = target
        owner = DNSLabel(target)
        if not snapshot.exists(target):
            # RFC 6604: the rcode speaks of the last name in the chain.
            return Lookup.NXDOMAIN if in_zone(target, policy.zone) else Lookup.FOUND
    return Lookup.FOUND


def _name_server(name: str, policy: Policy) -> dict[str, tuple[Record, ...]]:
    """`ns.<zone>`'s records when no container or static record holds that name."""
    rrsets: dict[str, list[Record]] = {}
    for address in policy.ns_addresses:
        rtype = "AAAA" if ":" in address else "A"
        rrsets.setdefault(rtype, []).append(Record(name, rtype, address, policy.soa_ttl))
    return {rtype: tuple(recs) for rtype, recs in rrsets.items()}


def _ordered(rtype: str, recs: Sequence[Record], snapshot: Snapshot, client: str, turn: int) -> list[Record]:
    """Deduplicated, source-aware and rotated records of one RRset."""
    unique: dict[str, Record] = {}
    for rec in recs:
        unique.setdefault(rec.value, rec)
    rows = list(unique.values())
    if rtype in ("A", "AAAA") and len(rows) > 1:
        rows = _source_aware(rows, snapshot.networks_of(client))
        if len(rows) > 1:
            k = turn % len(rows)
            rows = rows[k:] + rows[:k]
    return rows


def _source_aware(rows: list[Record], client_networks: frozenset[str]) -> list[Record]:
    """Addresses on the client's networks first; unreachable ones out when any remain."""
    if not client_networks:
        return rows
    near = [r for r in rows if r.network in client_networks]
    unknown = [r for r in rows if r.network is None]
    if near or unknown:
        return near + unknown
    return rows


def _add(reply: DNSRecord, owner: DNSLabel, recs: Iterable[Record]) -> None:
    for rec in recs:
        reply.add_answer(RR(owner, getattr(QTYPE, rec.rtype), ttl=rec.ttl, rdata=_rdata(rec.rtype, rec.value)))


@functools.lru_cache(maxsize=65536)
def _rdata(rtype: str, value: str) -> object:
    if rtype == "A":
        return A(value)
    if rtype == "AAAA":
        return AAAA(value)
    if rtype == "CNAME":
        return CNAME(value)
    if rtype in ("PTR", "NS"):
        return PTR(value) if rtype == "PTR" else RR.fromZone(f". 0 IN NS {value}")[0].rdata
    return RR.fromZone(f". 0 IN {rtype} {value}")[0].rdata


def _soa(policy: Policy, snapshot: Snapshot, ttl: int, owner: DNSLabel | str | None = None) -> RR:
    serial = snapshot.generation % 2**32
    text = f"ns.{policy.zone} hostmaster.{policy.zone} {serial} 3600 600 86400 {NEGATIVE_TTL}"
    return RR(owner or policy.zone, QTYPE.SOA, ttl=ttl, rdata=_rdata("SOA", text))


def _forward_or_refuse(query: DNSRecord, policy: Policy) -> Outcome:
    if policy.forwarding:
        return Forward(query)
    return Answer(_with_opt(query, response_to(query, RCODE.REFUSED)))


def _with_opt(query: DNSRecord, reply: DNSRecord) -> DNSRecord:
    """Answer EDNS0 with EDNS0 (RFC 6891 section 7): our payload size, version 0."""
    if query_opt(query) is not None:
        reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD))
    return reply


def _badvers(query: DNSRecord, ra: bool) -> DNSRecord:
    reply = response_to(query, ra=ra)
    reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, ext_rcode=BADVERS >> 4))
    return reply


def failure(query: DNSRecord, rcode: int, ra: bool = True) -> DNSRecord:
    """SERVFAIL and friends for a parsed query (used when forwarding fails)."""
    return _with_opt(query, response_to(query, rcode, ra=ra))
