"""The real server on loopback, asked by dnspython over UDP and TCP, with a stub upstream."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dockerdns.app import App
from dockerdns.config import Address, ForwardSettings, Settings
from dockerdns.records import Record
from dockerdns.servers import TcpServer, bind
from tests.dnsstub import StubUpstream

UPSTREAM_ZONE = """
example.org.      300 IN A   192.0.2.10
www.example.org.  300 IN A   192.0.2.11
""" + "\n".join(f'big.example.org. 300 IN TXT "{"x" * 200} {i}"' for i in range(10))

STATIC = (
    Record("gateway.docker.", "A", "172.17.0.1", 5),
    *(Record("many.docker.", "A", f"10.9.0.{i}", 5) for i in range(1, 4)),
    *(Record("big.docker.", "TXT", f'"{"y" * 200} {i}"', 5) for i in range(8)),
)


def settings(**kw: object) -> Settings:
    base: dict[str, object] = dict(listen=(Address("127.0.0.1", 0),), records=STATIC)
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture
def upstream() -> Iterator[StubUpstream]:
    stub = StubUpstream(UPSTREAM_ZONE)
    yield stub
    stub.close()


@pytest.fixture
def server(upstream: StubUpstream) -> Iterator[tuple[str, int]]:
    app = App(settings(forward=ForwardSettings(True, (Address("127.0.0.1", upstream.port),))), docker=False)
    app.start()
    address = app.addresses()[0]
    yield address.host, address.port
    app.stop()


def udp(addr: tuple[str, int], name: str, qtype: str = "A", **kw: object) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, **kw)  # type: ignore[arg-type]
    return dns.query.udp(query, addr[0], port=addr[1], timeout=5, raise_on_truncation=False)


def tcp(addr: tuple[str, int], name: str, qtype: str = "A") -> dns.message.Message:
    return dns.query.tcp(dns.message.make_query(name, qtype), addr[0], port=addr[1], timeout=5)


def values(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def test_udp_and_tcp_answer_authoritatively(server: tuple[str, int]) -> None:
    """A static name answers over UDP and TCP, with AA set."""
    for msg in (udp(server, "gateway.docker"), tcp(server, "gateway.docker")):
        assert msg.rcode() == dns.rcode.NOERROR
        assert msg.flags & dns.flags.AA
        assert values(msg) == ["172.17.0.1"]


def test_nxdomain_with_soa(server: tuple[str, int]) -> None:
    """An absent name in the zone gets NXDOMAIN and the SOA with a 1 s negative TTL."""
    msg = udp(server, "absent.docker")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.authority[0].rdtype == dns.rdatatype.SOA and msg.authority[0].ttl == 1


def test_many_queries_on_one_tcp_connection(server: tuple[str, int]) -> None:
    """One TCP connection carries several queries, pipelined."""
    with socket.create_connection(server, timeout=5) as sock:
        for i in range(5):
            wire = dns.message.make_query("gateway.docker", "A", id=i).to_wire()
            sock.sendall(struct.pack("!H", len(wire)) + wire)
        ids = set()
        for _ in range(5):
            msg, _ = dns.query.receive_tcp(sock, expiration=time.time() + 5)
            ids.add(msg.id)
            assert values(msg) == ["172.17.0.1"]
        assert ids == set(range(5))


def test_udp_truncated_then_full_over_tcp(server: tuple[str, int]) -> None:
    """An answer over the client's UDP limit comes with TC and no records; TCP gives it whole."""
    plain = udp(server, "big.docker", "TXT")
    assert plain.flags & dns.flags.TC and not plain.answer
    edns = udp(server, "big.docker", "TXT", use_edns=0, payload=4096)
    assert edns.flags & dns.flags.TC and not edns.answer and edns.payload == 1232
    full = tcp(server, "big.docker", "TXT")
    assert not full.flags & dns.flags.TC
    assert len(values(full)) == 8


def test_small_answer_fits_with_edns(server: tuple[str, int]) -> None:
    """Under the limit nothing is truncated, and EDNS is answered with payload 1232."""
    msg = udp(server, "many.docker", use_edns=0, payload=4096)
    assert not msg.flags & dns.flags.TC and msg.payload == 1232 and len(values(msg)) == 3


def test_rotation_over_the_wire(server: tuple[str, int]) -> None:
    """Several addresses come back in a different order from one query to the next."""
    firsts = {udp(server, "many.docker").answer[0][0].to_text() for _ in range(6)}
    assert len(firsts) == 3


def test_forwarded_to_upstream(server: tuple[str, int], upstream: StubUpstream) -> None:
    """A name outside the zone is answered by the upstream, with RA set and the client's id."""
    query = dns.message.make_query("www.example.org", "A")
    msg = dns.query.udp(query, server[0], port=server[1], timeout=5)
    assert msg.id == query.id and msg.flags & dns.flags.RA
    assert values(msg) == ["192.0.2.11"]
    assert [s.qname for s in upstream.seen] == ["www.example.org."]
    assert upstream.seen[0].ident != query.id  # a fresh id towards the upstream


def test_single_label_not_in_zone_is_forwarded(server: tuple[str, int], upstream: StubUpstream) -> None:
    """A single label the zone does not hold goes upstream; one it holds does not."""
    assert udp(server, "nohost").rcode() == dns.rcode.NXDOMAIN
    assert values(udp(server, "gateway")) == ["172.17.0.1"]
    assert [s.qname for s in upstream.seen] == ["nohost."]


def test_upstream_truncation_retried_over_tcp(server: tuple[str, int], upstream: StubUpstream) -> None:
    """An upstream answer with TC is fetched again over TCP; the client gets it over TCP."""
    assert udp(server, "big.example.org", "TXT").flags & dns.flags.TC
    msg = tcp(server, "big.example.org", "TXT")
    assert len(values(msg)) == 10
    assert "tcp" in {s.transport for s in upstream.seen}


def test_dead_upstream_servfail_in_bounded_time(upstream: StubUpstream) -> None:
    """When no upstream answers, SERVFAIL arrives within the total forwarding time."""
    upstream.mode = "silent"
    app = App(settings(forward=ForwardSettings(True, (Address("127.0.0.1", upstream.port),))), docker=False)
    app.forwarder.timeout, app.forwarder.total = 0.2, 0.5
    app.start()
    try:
        addr = app.addresses()[0]
        started = time.monotonic()
        msg = udp((addr.host, addr.port), "example.org")
        assert msg.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < 3.0
    finally:
        app.stop()


def test_next_upstream_after_a_dead_one(upstream: StubUpstream) -> None:
    """A silent first upstream is skipped after its timeout; the second one answers."""
    dead = StubUpstream("", mode="silent")
    ups = (Address("127.0.0.1", dead.port), Address("127.0.0.1", upstream.port))
    app = App(settings(forward=ForwardSettings(True, ups)), docker=False)
    app.forwarder.timeout = 0.2
    app.start()
    try:
        addr = app.addresses()[0]
        assert values(udp((addr.host, addr.port), "example.org")) == ["192.0.2.10"]
        assert len(dead.seen) == 1
    finally:
        app.stop()
        dead.close()


def test_servfail_upstream_then_next(upstream: StubUpstream) -> None:
    """An upstream answering SERVFAIL is passed over for the next one."""
    failing = StubUpstream("", mode="servfail")
    ups = (Address("127.0.0.1", failing.port), Address("127.0.0.1", upstream.port))
    app = App(settings(forward=ForwardSettings(True, ups)), docker=False)
    app.start()
    try:
        addr = app.addresses()[0]
        assert values(udp((addr.host, addr.port), "example.org")) == ["192.0.2.10"]
    finally:
        app.stop()
        failing.close()


def test_forwarding_bounded_and_zone_unaffected(upstream: StubUpstream) -> None:
    """Past the in-flight bound forwarded queries get SERVFAIL at once; zone names still answer."""
    upstream.mode = "silent"
    app = App(settings(forward=ForwardSettings(True, (Address("127.0.0.1", upstream.port),))), docker=False)
    from dockerdns.forwarder import Forwarder

    app.forwarder = Forwarder(app.forwarder.upstreams, timeout=2.0, total=2.0, max_in_flight=2)
    app.responder.forwarder = app.forwarder
    app.start()
    try:
        addr = (app.addresses()[0].host, app.addresses()[0].port)
        with ThreadPoolExecutor(6) as pool:
            slow = [pool.submit(udp, addr, f"n{i}.example.org") for i in range(6)]
            started = time.monotonic()
            assert values(udp(addr, "gateway.docker")) == ["172.17.0.1"]
            local = time.monotonic() - started
            rcodes = [f.result().rcode() for f in slow]
        assert rcodes.count(dns.rcode.SERVFAIL) == 6
        assert len(upstream.seen) == 2  # only two ever reached the upstream
        assert local < 1.0  # the zone answer did not wait for the dead upstream
    finally:
        app.stop()


def test_forwarding_off_refused() -> None:
    """With forwarding off, a name outside the zone gets REFUSED."""
    app = App(settings(forward=ForwardSettings(False, ())), docker=False)
    app.start()
    try:
        addr = app.addresses()[0]
        msg = udp((addr.host, addr.port), "example.org")
        assert msg.rcode() == dns.rcode.REFUSED
    finally:
        app.stop()


def test_client_outside_allow_refused(upstream: StubUpstream) -> None:
    """A client outside `allow` is REFUSED for zone and forwarded names, over UDP and TCP."""
    app = App(
        settings(
            allow=(ipaddress.ip_network("10.0.0.0/8"),),
            forward=ForwardSettings(True, (Address("127.0.0.1", upstream.port),)),
        ),
        docker=False,
    )
    app.start()
    try:
        addr = (app.addresses()[0].host, app.addresses()[0].port)
        for name in ("gateway.docker", "example.org"):
            assert udp(addr, name).rcode() == dns.rcode.REFUSED
            assert tcp(addr, name).rcode() == dns.rcode.REFUSED
        assert upstream.seen == []
    finally:
        app.stop()


def test_malformed_gets_formerr_or_nothing(server: tuple[str, int]) -> None:
    """A readable header with a broken body gets FORMERR; fewer than 12 bytes get nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff", server)
        data = sock.recv(512)
        assert data[:2] == b"\x12\x34" and data[3] & 0x0F == dns.rcode.FORMERR
        sock.sendto(b"\x00\x01\x02", server)
        with pytest.raises(socket.timeout):
            sock.recv(512)
        assert values(udp(server, "gateway.docker")) == ["172.17.0.1"]  # still serving


def test_ipv6_loopback() -> None:
    """The server listens on IPv6 too, UDP and TCP."""
    app = App(settings(listen=(Address("::1", 0),)), docker=False)
    app.start()
    try:
        addr = app.addresses()[0]
        assert values(udp((addr.host, addr.port), "gateway.docker")) == ["172.17.0.1"]
        assert values(tcp((addr.host, addr.port), "gateway.docker")) == ["172.17.0.1"]
    finally:
        app.stop()


class _Echo:
    def handle(self, data: bytes, client: str, transport: str, reply) -> None:  # type: ignore[no-untyped-def]
        reply(data)


def test_tcp_idle_zero_length_and_cap() -> None:
    """TCP: idle connections are closed, a zero length closes, at the cap the stalest connection makes room."""
    server = TcpServer(bind(Address("127.0.0.1", 0), socket.SOCK_STREAM), _Echo(), max_connections=2,
                       idle_timeout=0.3, read_timeout=0.3, reserved=0)
    server.start()
    addr = (server.address.host, server.address.port)
    try:
        with socket.create_connection(addr) as idle:
            idle.settimeout(3)
            assert idle.recv(10) == b""  # closed by the server after the idle timeout
        with socket.create_connection(addr) as zero:
            zero.settimeout(3)
            zero.sendall(b"\x00\x00")
            assert zero.recv(10) == b""
        with socket.create_connection(addr) as stall:
            stall.settimeout(3)
            stall.sendall(b"\x00\x20\x01")  # 32 bytes promised, one sent
            assert stall.recv(10) == b""
        held = [socket.create_connection(addr) for _ in range(2)]
        try:
            held[0].settimeout(3)
            held[0].sendall(struct.pack("!H", 12) + b"\x00" * 12)
            assert held[0].recv(14) == struct.pack("!H", 12) + b"\x00" * 12  # held[0] is the fresher one now
            with socket.create_connection(addr) as extra:
                extra.settimeout(3)
                extra.sendall(struct.pack("!H", 12) + b"\x01" * 12)
                assert extra.recv(14) == struct.pack("!H", 12) + b"\x01" * 12  # over the cap, still served
                held[1].settimeout(3)
                assert held[1].recv(10) == b""  # it made room: no query since it connected
        finally:
            for sock in held:
                sock.close()
    finally:
        server.stop()


def test_ready_made_answers_follow_the_table(upstream: StubUpstream) -> None:
    """A repeated query gets its own id and case back, and a table change shows at once."""
    app = App(settings(), docker=False)
    app.start()
    try:
        addr = (app.addresses()[0].host, app.addresses()[0].port)
        for ident in (1, 2, 3):
            query = dns.message.make_query("GateWay.docker", "A", id=ident)
            msg = dns.query.udp(query, addr[0], port=addr[1], timeout=3)
            assert msg.id == ident and msg.question[0].name.to_text() == "GateWay.docker."
            assert values(msg) == ["172.17.0.1"]
        app.table.replace("static", [Record("gateway.docker.", "A", "172.17.0.254", 5)])
        assert values(udp(addr, "GateWay.docker")) == ["172.17.0.254"]
        app.table.remove("static")
        assert udp(addr, "GateWay.docker").rcode() == dns.rcode.NXDOMAIN
    finally:
        app.stop()


def test_upstream_answers_kept_for_their_ttl(server: tuple[str, int], upstream: StubUpstream) -> None:
    """A repeated outside name is answered from the cache with the client's id; the upstream is asked once."""
    for ident in (10, 11, 12):
        query = dns.message.make_query("www.example.org", "A", id=ident)
        msg = dns.query.udp(query, server[0], port=server[1], timeout=5)
        assert msg.id == ident and values(msg) == ["192.0.2.11"]
        assert 0 < msg.answer[0].ttl <= 300
    assert [s.qname for s in upstream.seen] == ["www.example.org."]


def test_negative_upstream_answers_kept_by_soa_minimum() -> None:
    """NXDOMAIN from upstream with a SOA is kept (by the SOA minimum); without a SOA it is asked again."""
    stub = StubUpstream("example.net. 300 IN SOA ns.example.net. h.example.net. 1 2 3 4 60\n"
                        "example.net. 300 IN A 192.0.2.1")
    app = App(settings(forward=ForwardSettings(True, (Address("127.0.0.1", stub.port),))), docker=False)
    app.start()
    try:
        addr = (app.addresses()[0].host, app.addresses()[0].port)
        for _ in range(3):
            msg = udp(addr, "nope.example.net")
            assert msg.rcode() == dns.rcode.NXDOMAIN and msg.authority[0].ttl <= 300
        for _ in range(2):
            assert udp(addr, "nope.example.org").rcode() == dns.rcode.NXDOMAIN
        assert len([s for s in stub.seen if s.qname == "nope.example.net."]) == 1  # kept
        assert len([s for s in stub.seen if s.qname == "nope.example.org."]) == 2  # no SOA: not kept
    finally:
        app.stop()
        stub.close()


def test_cached_upstream_answer_gives_way_to_a_new_container(upstream: StubUpstream) -> None:
    """A single label forwarded once is answered from the zone as soon as the table holds it."""
    app = App(settings(forward=ForwardSettings(True, (Address("127.0.0.1", upstream.port),))), docker=False)
    app.start()
    try:
        addr = (app.addresses()[0].host, app.addresses()[0].port)
        assert values(udp(addr, "example.org")) == ["192.0.2.10"]
        assert values(udp(addr, "example.org")) == ["192.0.2.10"]
        assert len(upstream.seen) == 1
        app.table.replace("c1", [Record("example.org.", "A", "10.0.0.7", 5, "c1", "ext")])
        assert values(udp(addr, "example.org")) == ["10.0.0.7"]
    finally:
        app.stop()


def test_name_server_answers_with_the_listen_address(server: tuple[str, int]) -> None:
    """The apex NS names ns.docker, and ns.docker answers with the address the server is bound to."""
    assert [rd.to_text() for rrset in udp(server, "docker", "NS").answer for rd in rrset] == ["ns.docker."]
    assert values(udp(server, "ns.docker")) == ["127.0.0.1"]
