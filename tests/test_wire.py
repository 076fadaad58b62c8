"""Wire format: parsing never raises, FORMERR where the header reads, truncation to the client's limit."""

from __future__ import annotations

import struct

from dnslib import EDNS0, QTYPE, RCODE, RR, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dockerdns import wire
from dockerdns.config import DEFAULT_ALLOW
from dockerdns.records import Record
from dockerdns.resolver import Answer, Forward, Policy, resolve
from dockerdns.table import RecordTable

TABLE = RecordTable("docker")
TABLE.replace("static", [Record("web.docker.", "A", f"10.0.0.{i}", 5) for i in range(1, 60)])
POLICY = Policy(allow=DEFAULT_ALLOW)


def test_short_packet_dropped() -> None:
    """Fewer than 12 bytes cannot carry a header: dropped."""
    assert wire.decode(b"\x00" * 11) is None


def test_response_dropped() -> None:
    """A packet with QR set is a response, never answered."""
    reply = DNSRecord.question("web.docker").reply().pack()
    assert wire.decode(bytes(reply)) is None


def test_broken_body_formerr_keeps_id_and_opcode() -> None:
    """A readable header with a broken body gets FORMERR with the same id."""
    out = wire.decode(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05abc")
    assert isinstance(out, wire.Malformed)
    reply = DNSRecord.parse(out.reply)
    assert reply.header.id == 0xABCD and reply.header.rcode == RCODE.FORMERR and reply.header.qr == 1


def test_compression_loop_is_formerr() -> None:
    """A name whose compression pointer points at itself is FORMERR, not a hang."""
    packet = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    assert isinstance(wire.decode(packet), wire.Malformed)


def test_udp_limits() -> None:
    """512 without EDNS; the client's size capped at 1232 with it; never below 512."""
    query = DNSRecord.question("web.docker")
    assert wire.udp_limit(query) == 512
    query.add_ar(EDNS0(udp_len=4096))
    assert wire.udp_limit(query) == 1232
    small = DNSRecord.question("web.docker")
    small.add_ar(EDNS0(udp_len=100))
    assert wire.udp_limit(small) == 512


def test_truncation_keeps_question_and_opt() -> None:
    """A cut answer keeps the question and the OPT, sets TC and drops the records."""
    query = DNSRecord.question("web.docker")
    query.add_ar(EDNS0(udp_len=1232))
    outcome = resolve(query, TABLE.snapshot, "127.0.0.1", POLICY)
    assert isinstance(outcome, Answer)
    full = wire.encode(outcome.message)
    assert len(full) > 512
    cut = DNSRecord.parse(wire.encode(outcome.message, 512))
    assert cut.header.tc == 1 and not cut.rr and str(cut.q.qname) == "web.docker."
    assert [rr.rtype for rr in cut.ar] == [QTYPE.OPT]


def _valid_query() -> bytes:
    q = DNSRecord.question("web.docker", "A")
    q.add_ar(EDNS0(udp_len=1232))
    return bytes(q.pack())


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    """Random bytes: decode and resolve never raise."""
    _decode_and_resolve(data)


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, len(_valid_query()) * 8 - 1), st.integers(1, len(_valid_query())))
def test_bit_flips_and_cuts_never_raise(bit: int, cut: int) -> None:
    """A valid query with one bit flipped, or cut short, never makes decode or resolve raise."""
    data = bytearray(_valid_query())
    data[bit // 8] ^= 1 << (bit % 8)
    _decode_and_resolve(bytes(data))
    _decode_and_resolve(_valid_query()[:cut])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=70), min_size=1, max_size=8), st.integers(0, 0xFFFF))
def test_odd_labels_never_raise(labels: list[bytes], qtype: int) -> None:
    """Labels of any bytes and length, with any type, are answered or refused, never a crash."""
    name = b"".join(bytes([min(len(label), 255)]) + label[:63] for label in labels) + b"\x00"
    data = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)
    _decode_and_resolve(data)


def _decode_and_resolve(data: bytes) -> None:
    out = wire.decode(data)
    if isinstance(out, DNSRecord):
        outcome = resolve(out, TABLE.snapshot, "127.0.0.1", POLICY)
        if isinstance(outcome, Answer):
            wire.encode(outcome.message, wire.udp_limit(out))
        else:
            assert isinstance(outcome, Forward)


def test_rr_roundtrip_sanity() -> None:
    """dnslib's zone parser reads the record forms the table holds."""
    assert RR.fromZone("x.docker. 5 IN A 10.0.0.1")[0].rtype == QTYPE.A


def test_cacheable_positive_takes_shortest_ttl_and_ages() -> None:
    """A positive upstream answer is kept for its shortest TTL, and its TTLs age when served."""
    reply = DNSRecord.question("example.org").reply()
    reply.add_answer(*RR.fromZone("example.org. 300 IN A 192.0.2.1\nexample.org. 60 IN A 192.0.2.2"))
    reply.add_ar(EDNS0(udp_len=1232))
    data = bytes(reply.pack())
    keep = wire.cacheable(data)
    assert keep is not None and keep.ttl == 60
    assert [rr.ttl for rr in DNSRecord.parse(wire.aged(data, keep.ttls, 100)).rr] == [200, 0]
    assert [rr.rtype for rr in DNSRecord.parse(wire.aged(data, keep.ttls, 100)).ar] == [QTYPE.OPT]


def test_cacheable_refuses_failures_truncation_and_bare_negatives() -> None:
    """SERVFAIL, TC and an NXDOMAIN without a SOA are never kept; with a SOA, by min(TTL, minimum)."""
    reply = DNSRecord.question("x.example.org").reply()
    reply.header.rcode = RCODE.SERVFAIL
    assert wire.cacheable(bytes(reply.pack())) is None
    reply.header.rcode = RCODE.NXDOMAIN
    assert wire.cacheable(bytes(reply.pack())) is None
    reply.add_auth(*RR.fromZone("example.org. 30 IN SOA ns. h. 1 2 3 4 900"))
    keep = wire.cacheable(bytes(reply.pack()))
    assert keep is not None and keep.ttl == 30
    reply.header.rcode = RCODE.NOERROR
    reply.header.tc = 1
    assert wire.cacheable(bytes(reply.pack())) is None
