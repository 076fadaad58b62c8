"""Claim only what we own: zone boundaries, single labels, CNAMEs that leave the table, EDNS details (issue 10).

Each test runs a real server on loopback with a stub upstream, and asks with dnspython or raw bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest

from dockerdns.app import App
from dockerdns.config import Address, ForwardSettings, Settings, host_networks
from dockerdns.records import Record

from .dnsstub import StubUpstream

UPSTREAM = """
example.test.      300 IN A     192.0.2.1
example.test.      300 IN MX    10 mail.example.test.
x.api.example.test. 300 IN A    192.0.2.2
db.example.test.   300 IN A     192.0.2.30
info.              300 IN DS    12345 8 2 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF
app.               300 IN TXT   "the app TLD"
"""

STATIC = (
    Record("api.example.test.", "CNAME", "web.docker.", 5),
    Record("web.docker.", "A", "172.17.0.5", 5),
    Record("ext.docker.", "CNAME", "db.example.test.", 5),
    Record("dangle.docker.", "CNAME", "missing.docker.", 5),
    Record("info.docker.", "A", "172.17.0.6", 5),
    Record("app.docker.", "A", "172.17.0.7", 5),
)


@pytest.fixture
def upstream() -> Iterator[StubUpstream]:
    stub = StubUpstream(UPSTREAM)
    yield stub
    stub.close()


@pytest.fixture
def server(upstream: StubUpstream) -> Iterator[tuple[str, int]]:
    settings = Settings(listen=(Address("127.0.0.1", 0),), records=STATIC,
                        forward=ForwardSettings(True, (Address("127.0.0.1", upstream.port),)))
    app = App(settings, docker=False)
    app.start()
    address = app.addresses()[0]
    yield address.host, address.port
    app.stop()


def ask(addr: tuple[str, int], name: str, qtype: str = "A", **kw: object) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, **kw)  # type: ignore[arg-type]
    return dns.query.udp(query, addr[0], port=addr[1], timeout=5, raise_on_truncation=False)


def texts(section: list) -> list[str]:
    return sorted(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}" for rrset in section
                  for rd in rrset)


@pytest.mark.parametrize("name,qtype", [("example.test", "A"), ("example.test", "MX"), ("x.api.example.test", "A")])
def test_names_above_and_below_an_absolute_name_are_forwarded(server: tuple[str, int], upstream: StubUpstream,
                                                              name: str, qtype: str) -> None:
    """Only the exact absolute names the table holds are ours; their ancestors and descendants are forwarded."""
    msg = ask(server, name, qtype)
    assert msg.rcode() == dns.rcode.NOERROR and msg.answer and not msg.flags & dns.flags.AA
    assert name + "." in [s.qname for s in upstream.seen]


def test_single_label_is_no_authority(server: tuple[str, int], upstream: StubUpstream) -> None:
    """A container named like a TLD answers its A without AA; every other type at that label is forwarded."""
    msg = ask(server, "info", "A")
    assert texts(msg.answer) == ["info. A 172.17.0.6"] and not msg.flags & dns.flags.AA
    msg = ask(server, "info", "DS")
    assert msg.answer and msg.answer[0].rdtype == dns.rdatatype.DS
    msg = ask(server, "app", "TXT")
    assert texts(msg.answer) == ['app. TXT "the app TLD"']
    assert {"info.", "app."} <= {s.qname for s in upstream.seen}


def test_cname_leaving_the_zone_is_followed_upstream(server: tuple[str, int]) -> None:
    """With RD, a CNAME to an outside name comes back with the upstream's answer for its target."""
    msg = ask(server, "ext.docker", "A")
    assert texts(msg.answer) == ["db.example.test. A 192.0.2.30", "ext.docker. CNAME db.example.test."]
    assert msg.rcode() == dns.rcode.NOERROR
    msg = ask(server, "ext.docker", "A", flags=0)  # without RD: the CNAME alone
    assert texts(msg.answer) == ["ext.docker. CNAME db.example.test."]


def test_python_resolves_through_an_outside_cname(server: tuple[str, int]) -> None:
    """What getaddrinfo needs: the whole chain in one answer, ending in an address."""
    msg = dns.query.tcp(dns.message.make_query("ext.docker", "A"), server[0], port=server[1], timeout=5)
    assert [rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset] == ["192.0.2.30"]


def test_negative_after_a_chain_carries_the_soa(server: tuple[str, int]) -> None:
    """A chain that ends in NXDOMAIN (or NODATA) inside the zone has the zone's SOA in authority (RFC 2308)."""
    msg = ask(server, "dangle.docker", "A")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert texts(msg.answer) == ["dangle.docker. CNAME missing.docker."]
    assert [rrset.rdtype for rrset in msg.authority] == [dns.rdatatype.SOA]
    msg = ask(server, "api.example.test", "AAAA")
    assert msg.rcode() == dns.rcode.NOERROR and [r.rdtype for r in msg.authority] == [dns.rdatatype.SOA]


def raw(addr: tuple[str, int], data: bytes, transport: str = "udp") -> bytes:
    if transport == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(data, addr)
            return sock.recv(65535)
    with socket.create_connection(addr, timeout=3) as sock:
        sock.sendall(struct.pack("!H", len(data)) + data)
        size = struct.unpack("!H", sock.recv(2))[0]
        out = b""
        while len(out) < size:
            out += sock.recv(size - len(out))
        return out


OPT = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"


def test_formerr_to_cookie_priming_carries_an_opt(server: tuple[str, int]) -> None:
    """QDCOUNT 0 with an OPT (cookie priming) gets FORMERR with an OPT (RFC 6891)."""
    cookie = b"\x00\x0a\x00\x08" + b"12345678"
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00" + struct.pack("!H", len(cookie)) + cookie
    msg = dns.message.from_wire(raw(server, b"\x12\x34\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01" + opt))
    assert msg.rcode() == dns.rcode.FORMERR and msg.edns == 0


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("length_byte", [0x40, 0x7F, 0x80, 0xBF])
def test_reserved_label_types_get_formerr_never_a_forward(server: tuple[str, int], upstream: StubUpstream,
                                                          transport: str, length_byte: int) -> None:
    """A label-length byte 0x40-0xBF is FORMERR over UDP and TCP, and nothing goes upstream."""
    name = b"\x03www" + bytes((length_byte,)) + b"abc\x00"
    data = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + name + b"\x00\x01\x00\x01" + OPT
    reply = raw(server, data, transport)
    assert reply[:2] == b"\xab\xcd" and reply[3] & 0x0F == dns.rcode.FORMERR
    assert reply.endswith(b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")  # our OPT
    assert not upstream.seen


def test_do_bit_copied(server: tuple[str, int]) -> None:
    """The DO bit of the query's OPT comes back in the answer's OPT (RFC 3225), from the index and the resolver."""
    for name, qtype in (("web.docker", "A"), ("web.docker", "ANY"), ("nope.docker", "A")):
        msg = ask(server, name, qtype, use_edns=0, want_dnssec=True)
        assert msg.ednsflags & dns.flags.DO, (name, qtype)
        msg = ask(server, name, qtype, use_edns=0)
        assert not msg.ednsflags & dns.flags.DO, (name, qtype)


def test_notimp_sets_neither_ra_nor_rd(server: tuple[str, int]) -> None:
    """An unknown opcode gets NOTIMP with no RA and no RD, and no records (genreport's opcode test)."""
    query = dns.message.make_query("web.docker", "A")
    query.set_opcode(15)
    reply = raw(server, query.to_wire())
    flags = struct.unpack("!H", reply[2:4])[0]
    assert flags & 0x0F == dns.rcode.NOTIMP and not flags & 0x0180 and reply[4:10] == b"\x00" * 6


def test_name_server_behind_a_wildcard_listen_has_the_machines_addresses() -> None:
    """Listening on 0.0.0.0 (as the image does), ns.docker answers with the machine's IPv4 addresses."""
    app = App(Settings(listen=(Address("0.0.0.0", 0),), forward=ForwardSettings(False, ())), docker=False)
    app.start()
    try:
        port = app.addresses()[0].port
        msg = ask(("127.0.0.1", port), "ns.docker", "A")
        found = {rd.to_text() for rrset in msg.answer for rd in rrset}
        assert msg.rcode() == dns.rcode.NOERROR and "127.0.0.1" in found
        assert found == {str(net.network_address) for net in host_networks() if net.version == 4}
    finally:
        app.stop()
