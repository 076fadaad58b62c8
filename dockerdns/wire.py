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
        return DNSRecord.parse(data)
    except Exception:  # dnslib raises DNSError, but also struct/Unicode/Index errors on garbage
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
