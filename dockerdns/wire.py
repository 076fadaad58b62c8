"""Bytes <-> messages: parsing that never raises, FORMERR, EDNS0 sizes, truncation.

Rule 1: a packet whose 12-byte header can be read but whose body cannot gets
        FORMERR (RFC 1035 section 4.1.1); anything shorter, and anything that
        is itself a response, is dropped (answering responses invites loops
        and reflection).
Rule 2: a UDP answer larger than the client's limit is cut to the header,
        the question and the OPT, with TC set (RFC 2181 section 9); the
        client asks again over TCP and gets it whole.

Pure: no sockets, threads or clocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, DNSHeader, DNSRecord

from .resolver import EDNS_PAYLOAD, query_opt

HEADER_LEN = 12
CLASSIC_UDP_LIMIT = 512  # RFC 1035 section 2.3.4, without EDNS0
TCP_LIMIT = 65535
MAX_NAME_OCTETS = 255


@dataclass(frozen=True)
class Malformed:
    """The body did not parse; send `reply` (a FORMERR) if it is not empty."""

    reply: bytes


def decode(data: bytes) -> DNSRecord | Malformed | None:
    """A parsed query; Malformed with a FORMERR to send; None to drop the packet."""
    if len(data) < HEADER_LEN:
        return None
    ident, flags = struct.unpack_from("!HH", data)
    if flags & 0x8000:  # QR set: a response, not a query
        return None
    try:
        query = DNSRecord.parse(data)
    except Exception:  # dnslib raises DNSError, but also struct/Unicode/Index errors on garbage
        return _formerr(ident, flags)
    for question in query.questions:
        # RFC 1035 section 3.1: 255 octets at most. dnslib reads longer names,
        # then fails to write them back in the answer.
        if sum(len(label) + 1 for label in question.qname.label) + 1 > MAX_NAME_OCTETS:
            return _formerr(ident, flags)
    return query


def _formerr(ident: int, flags: int) -> Malformed:
    header = DNSHeader(id=ident, qr=1, opcode=(flags >> 11) & 0xF, rd=(flags >> 8) & 1)
    header.rcode = RCODE.FORMERR
    return Malformed(DNSRecord(header).pack())


def udp_limit(query: DNSRecord) -> int:
    """The largest UDP answer this client takes: its EDNS0 size capped at ours, else 512."""
    opt = query_opt(query)
    if opt is None:
        return CLASSIC_UDP_LIMIT
    return max(CLASSIC_UDP_LIMIT, min(int(opt.rclass), EDNS_PAYLOAD))


def encode(reply: DNSRecord, limit: int = TCP_LIMIT) -> bytes:
    """Pack `reply`; when it exceeds `limit`, a truncated copy with TC set."""
    data = reply.pack()
    if len(data) <= limit:
        return bytes(data)
    cut = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=reply.q)
    for rr in reply.ar:
        if rr.rtype == QTYPE.OPT:
            cut.add_ar(rr)
    return bytes(cut.pack())


OPT = 41
SOA = 6
MAX_CACHE_TTL = 3600  # seconds: an upstream answer is kept at most this long


@dataclass(frozen=True)
class Cacheable:
    """An upstream answer that may be served again: for how long, and where its TTLs sit."""

    ttl: int
    ttls: tuple[tuple[int, int], ...]  # (offset of a record's TTL field, its TTL as received)


def cacheable(data: bytes) -> Cacheable | None:
    """How long `data` (an upstream answer) may be kept, RFC 2181 section 5.2 and RFC 2308; None: not at all.

    Positive answers live as long as their shortest TTL; NXDOMAIN and NODATA
    as long as the SOA in authority says (the lesser of its TTL and its
    minimum). Truncated answers, failures and negatives without a SOA are
    not kept.
    """
    try:
        flags, qd, an, ns, ar = struct.unpack_from("!HHHHH", data, 2)
        rcode = flags & 0x0F
        if flags & 0x0200 or rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
            return None
        pos = HEADER_LEN
        for _ in range(qd):
            pos = _skip_name(data, pos) + 4
        ttls: list[tuple[int, int]] = []
        section_ttls: list[int] = []
        negative_ttl: int | None = None
        for index in range(an + ns + ar):
            pos = _skip_name(data, pos)
            rtype, _, ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            end = pos + 10 + rdlen
            if end > len(data):
                return None
            if rtype != OPT:
                ttls.append((pos + 4, ttl))
                if index < an + ns:
                    section_ttls.append(ttl)
                if rtype == SOA and an <= index < an + ns:
                    (minimum,) = struct.unpack_from("!I", data, end - 4)
                    negative_ttl = min(ttl, minimum)
            pos = end
    except (struct.error, IndexError):
        return None
    if rcode == RCODE.NOERROR and an:
        ttl = min(section_ttls)
    elif negative_ttl is not None:
        ttl = negative_ttl
    else:
        return None
    ttl = min(ttl, MAX_CACHE_TTL)
    return Cacheable(ttl, tuple(ttls)) if ttl > 0 else None


def aged(data: bytes, ttls: tuple[tuple[int, int], ...], elapsed: int) -> bytes:
    """`data` with every TTL lowered by `elapsed` seconds, as a cache must (RFC 1035 section 6.1.2)."""
    if elapsed <= 0:
        return data
    buf = bytearray(data)
    for offset, ttl in ttls:
        struct.pack_into("!I", buf, offset, max(ttl - elapsed, 0))
    return bytes(buf)


def _skip_name(data: bytes, pos: int) -> int:
    """The offset just past the name at `pos` (a compression pointer ends it)."""
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += length + 1
