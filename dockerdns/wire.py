"""Bytes <-> messages: parsing that never raises, FORMERR, EDNS0 sizes, truncation.

Rule 1: a packet whose 12-byte header can be read but whose body cannot gets
        FORMERR (RFC 1035 section 4.1.1); anything shorter, and anything that
        is itself a response, is dropped (answering responses invites loops
        and reflection).
Rule 2: a UDP answer larger than the client's limit is cut to the header,
        the question and the OPT, with TC set (RFC 2181 section 9); the
        client asks again over TCP and gets it whole.
Rule 3: answers are packed with one kind of name compression only: an owner
        name equal to the question's is a pointer to it (offset 12). Every
        other name is written out. So the sections after the question do
        not depend on where they sit, and a ready answer (answers.py) serves
        any question for its name, in any letter case, single label or not,
        byte for byte as `resolve` would.
Rule 4: the work a packet costs is bounded by its size, whatever it holds:
        names are read with `read_name`, which follows at most
        `MAX_POINTERS` compression pointers, each strictly backwards, and
        dnslib parses only what we know to be well formed.

Pure: no sockets, threads or clocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dnslib import EDNS0, QTYPE, RCODE, DNSBuffer, DNSHeader, DNSLabel, DNSRecord

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
    """A parsed query; Malformed with a FORMERR (or NOTIMP) to send; None to drop the packet.

    The work is bounded whatever `data` holds (Rule 4). A query is its
    question and at most one OPT, owned by the root, at its end (RFC 6891
    section 6.1.1); nothing else is read. dnslib parses the header, the
    question and that OPT without its options (no option of a query is used;
    cookies are ignored as RFC 7873 section 5.2 allows).
    """
    if len(data) < HEADER_LEN:
        return None
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", data)
    if flags & 0x8000:  # QR set: a response, not a query
        return None
    opt = _opt_at_end(data)
    if (flags >> 11) & 0xF != OPCODE_QUERY:
        return _refusal(ident, flags, opt, RCODE.NOTIMP)  # RFC 1035 section 4.1.1: nothing else is read
    if qd > 1 or an or ns or ar > 1:
        return _refusal(ident, flags, opt, RCODE.FORMERR)
    end = HEADER_LEN
    if qd:
        name = read_name(data, HEADER_LEN)
        if name is None or name[1] != data.find(0, HEADER_LEN) + 1 or name[1] + 4 > len(data):
            return _refusal(ident, flags, opt, RCODE.FORMERR)  # a question's name has nothing to point at
        end = name[1] + 4
    if ar:
        # The one OPT, owned by the root, right after the question and ending the packet.
        if data[end:end + 3] != b"\x00\x00\x29" or end + 11 > len(data) or \
                end + 11 + int.from_bytes(data[end + 9:end + 11], "big") != len(data):
            return _refusal(ident, flags, opt, RCODE.FORMERR)
        opt = data[end:end + 9] + b"\x00\x00"  # its options dropped: nobody reads them
    elif end != len(data):
        return _refusal(ident, flags, None, RCODE.FORMERR)  # trailing bytes
    trimmed = data[:HEADER_LEN] + data[HEADER_LEN:end] + (opt or b"")
    try:
        return DNSRecord.parse(trimmed)
    except Exception:  # dnslib raises DNSError, but also struct/Unicode/Index errors on garbage
        return _refusal(ident, flags, opt, RCODE.FORMERR)


def _opt_at_end(data: bytes) -> bytes | None:
    """An OPT record that ends the packet, found without parsing what comes before it (for FORMERR)."""
    if data[10:12] == b"\x00\x00":
        return None
    low, size = max(HEADER_LEN, len(data) - 523), len(data)
    start = data.rfind(b"\x00\x00\x29", low, size - 8)
    while start != -1:  # candidates only, from the end backwards (a C search, not a byte at a time)
        if start + 11 + int.from_bytes(data[start + 9:start + 11], "big") == size:
            return data[start:]
        start = data.rfind(b"\x00\x00\x29", low, start + 2)
    return None


def _refusal(ident: int, flags: int, opt: bytes | None, rcode: int) -> Malformed:
    """FORMERR (or NOTIMP) for a query not read further; with our OPT when it carried one (RFC 6891 section 7).

    NOTIMP echoes nothing of the query but its id and opcode: not RD, and no RA (RFC 1035 section 4.1.1).
    """
    opcode = (flags >> 11) & 0xF
    header = DNSHeader(id=ident, qr=1, opcode=opcode, rd=(flags >> 8) & 1 if rcode == RCODE.FORMERR else 0)
    header.rcode = rcode
    reply = DNSRecord(header)
    if opt is not None and len(opt) >= 11:
        reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, flags="do" if opt[7] & 0x80 else ""))
    return Malformed(pack(reply)[0])


OPCODE_QUERY = 0


def udp_limit(query: DNSRecord) -> int:
    """The largest UDP answer this client takes: its EDNS0 size capped at ours, else 512."""
    opt = query_opt(query)
    if opt is None:
        return CLASSIC_UDP_LIMIT
    return max(CLASSIC_UDP_LIMIT, min(int(opt.rclass), EDNS_PAYLOAD))


def encode(reply: DNSRecord, limit: int = TCP_LIMIT) -> bytes:
    """Pack `reply`; when it exceeds `limit`, a truncated copy with TC set."""
    data, _ = pack(reply)
    if len(data) <= limit:
        return data
    extra = [rr for rr in reply.ar if rr.rtype != QTYPE.OPT]
    if extra:
        # RFC 2181 section 9: additional records go first; the answer is whole without them, so no TC.
        reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        data, _ = pack(reply)
        reply.ar = extra + reply.ar
        if len(data) <= limit:
            return data
    cut = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=reply.q)
    for rr in reply.ar:
        if rr.rtype == QTYPE.OPT:
            cut.add_ar(rr)
    return pack(cut)[0]


NO_QUESTION: tuple = ("",)  # matches no name's labels (they are bytes)


class _Buffer(DNSBuffer):
    """A DNSBuffer that compresses as Rule 3 says: only owner names equal to the question's."""

    def __init__(self) -> None:
        super().__init__()
        self.qname: tuple[bytes, ...] | None = None
        self.owner = False  # the next name is an owner name

    def encode_name(self, name: object) -> None:
        label = name if isinstance(name, DNSLabel) else DNSLabel(name)
        key = tuple(part.lower() for part in label.label)
        if self.owner and key == self.qname:
            self.append(b"\xc0\x0c")
        else:
            if self.qname is None:
                self.qname = key  # the first name of a message is the question's
            self.encode_name_nocompress(label)
        self.owner = False


def pack(reply: DNSRecord) -> tuple[bytes, list[tuple[int, int]]]:
    """`reply` on the wire (Rule 3), and where each answer-section record starts and ends."""
    reply.set_header_qa()
    buffer = _Buffer()
    reply.header.pack(buffer)
    for question in reply.questions:
        question.pack(buffer)
    if buffer.qname is None:
        buffer.qname = NO_QUESTION  # no question: no owner name is compressed
    spans = []
    for rr in reply.rr:
        start = buffer.offset
        buffer.owner = True
        rr.pack(buffer)
        spans.append((start, buffer.offset))
    for rr in [*reply.auth, *reply.ar]:
        buffer.owner = True
        rr.pack(buffer)
    return bytes(buffer.data), spans


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
    if rcode == RCODE.NOERROR and an and section_ttls:
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


MAX_POINTERS = 16  # compression pointers one name may follow; real names need one or two
DECODED_PER_OCTET = 4  # octets of names a message may decode to, per octet of the message
TOO_MANY = 1 << 30


def read_name(data: bytes, pos: int, memo: dict[int, tuple[bytes, int]] | None = None) -> tuple[bytes, int] | None:
    """The name at `pos` in wire format, lower-case, pointers followed; and the offset after it.

    Bounded work whatever `data` holds: a pointer must point strictly before
    the name it is part of, at most MAX_POINTERS are followed, and the name
    may not exceed 255 octets (RFC 1035 sections 3.1 and 4.1.4). None when
    any of that fails. `memo` (one per message) remembers the names read
    from each start, so that many pointers to one long name cost one read.
    """
    start = pos
    out = bytearray()
    after = -1
    floor = pos  # a pointer must go strictly backwards, before every part read so far
    hops = 0
    size = len(data)
    while True:
        if pos >= size:
            return None
        length = data[pos]
        if length == 0:
            out.append(0)
            if len(out) > MAX_NAME_OCTETS:
                return None
            name = bytes(out).lower()
            if memo is not None:
                memo[start] = (name, hops)
            return name, after if after >= 0 else pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 1 >= size or hops >= MAX_POINTERS:
                return None
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= floor:
                return None
            if after < 0:
                after = pos + 2
            hops += 1
            known = memo.get(target) if memo is not None else None
            if known is not None:  # read before, from its start: the rest of this name is that
                out += known[0]
                hops += known[1]  # its pointers count as if followed again: chains stay bounded
                if len(out) > MAX_NAME_OCTETS or hops > MAX_POINTERS:
                    return None
                name = bytes(out).lower()
                memo[start] = (name, hops)  # type: ignore[index]  # memo is not None when known is set
                return name, after
            pos = floor = target
            continue
        if length & 0xC0:
            return None  # 0x40 and 0x80: label types nobody defined for use (RFC 6891 section 5)
        out += data[pos:pos + length + 1]
        pos += length + 1
        if len(out) > MAX_NAME_OCTETS:
            return None


@dataclass(frozen=True)
class Sections:
    """Where the records of a message lie: (start, end, type) for each, in order, and the counts."""

    question_end: int
    records: tuple[tuple[int, int, int], ...]
    counts: tuple[int, int, int]  # answer, authority, additional


def sections(data: bytes) -> Sections | None:
    """The layout of `data` (one question at most), with bounded work; None when it does not parse."""
    try:
        qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
        if qd > 1:
            return None
        pos = HEADER_LEN
        memo: dict[int, tuple[bytes, int]] = {}
        if qd:
            name = read_name(data, pos, memo)
            if name is None:
                return None
            pos = name[1] + 4
        records = []
        # What dnslib would decode, in octets: pointers to long names make it far more than the
        # message's size; past DECODED_PER_OCTET times that, the message is refused (Rule 4).
        budget = DECODED_PER_OCTET * len(data) + 1024
        for _ in range(an + ns + ar):
            name = read_name(data, pos, memo)
            if name is None:
                return None
            budget -= len(name[0])
            start, pos = pos, name[1]
            rtype, _, _, rdlen = struct.unpack_from("!HHIH", data, pos)
            pos += 10 + rdlen
            if pos > len(data):
                return None
            budget -= _rdata_names(data, rtype, pos - rdlen, pos, memo)
            if budget < 0:
                return None
            records.append((start, pos, rtype))
    except struct.error:
        return None
    if qd and HEADER_LEN + 4 > len(data):
        return None
    return Sections(HEADER_LEN if not qd else _question_end(data), tuple(records), (an, ns, ar))


# Where names sit in the rdata of every type whose names dnslib decodes (its RDMAP: NS, CNAME, PTR,
# MX, SOA, SRV, NAPTR, RRSIG, NSEC, RP): (offset of the first name, how many names follow one another).
_RDATA_NAMES = {2: (0, 1), 5: (0, 1), 12: (0, 1), 39: (0, 1), 15: (2, 1), 33: (6, 1), 6: (0, 2),
                17: (0, 2), 46: (18, 1), 47: (0, 1)}
NAPTR = 35  # order, preference, three character-strings, then the replacement name


def _rdata_names(data: bytes, rtype: int, start: int, end: int, memo: dict[int, tuple[bytes, int]]) -> int:
    """The octets of the names inside a record's rdata, read within the bounds of `read_name` (Rule 4).

    A name that does not read, or runs past the rdata, counts as too many.
    """
    if rtype == NAPTR:
        pos = start + 4
        for _ in range(3):
            if pos >= end:
                return TOO_MANY
            pos += data[pos] + 1
        layout = (pos - start, 1)
    else:
        found = _RDATA_NAMES.get(rtype)
        if found is None:
            return 0
        layout = found
    pos = start + layout[0]
    octets = 0
    for _ in range(layout[1]):
        name = read_name(data, pos, memo)
        if name is None or name[1] > end:
            return TOO_MANY
        octets += len(name[0])
        pos = name[1]
    return octets


def _question_end(data: bytes) -> int:
    name = read_name(data, HEADER_LEN)
    return name[1] + 4 if name is not None else HEADER_LEN


def without_opt(data: bytes) -> bytes | None:
    """`data` (a response) without its OPT record, ARCOUNT lowered; None when it does not parse."""
    layout = sections(data)
    if layout is None:
        return None
    out = bytearray(data[:layout.records[0][0]] if layout.records else data)
    kept_ar = layout.counts[2]
    an_ns = layout.counts[0] + layout.counts[1]
    for index, (start, end, rtype) in enumerate(layout.records):
        if index >= an_ns and rtype == OPT:
            kept_ar -= 1
        else:
            out += data[start:end]
    struct.pack_into("!H", out, 10, kept_ar)
    return bytes(out)
