"""Hardening: hostile TCP clients, fuzzed packets, open-resolver safety, forwarding loops, rate limits, quiet logs.

Clients outside `allow` need an address that is not loopback: the tests add
documentation addresses (198.51.100.0/24, 203.0.113.0/24, RFC 5737) to `lo`
for their duration and bind their sockets to them; nothing leaves the
machine. Synchronisation is by deadlines, never by sleeping.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import queue
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dockerdns import wire
from dockerdns.app import App, policy_of
from dockerdns.config import DEFAULT_ALLOW, DEFAULT_LISTEN, Address, ForwardSettings, RateLimitSettings, Settings
from dockerdns.forwarder import MAX_IN_FLIGHT, Forwarder
from dockerdns.records import Record
from dockerdns.resolver import client_allowed
from dockerdns.responder import Responder
from dockerdns.rrl import LOOPBACK
from dockerdns.servers import MAX_TCP_CONNECTIONS, TCP_RESERVED, TcpServer, UdpServer, bind
from dockerdns.status import MAX_HTTP_CONNECTIONS
from dockerdns.table import RecordTable
from tests.dnsstub import StubUpstream

UPSTREAM_ZONE = "www.example.org. 300 IN A 192.0.2.11\n"
STATIC = (
    Record("gateway.docker.", "A", "172.17.0.1", 5),
    Record("1.0.17.172.in-addr.arpa.", "PTR", "gateway.docker.", 5),
    Record("info.docker.", "TXT", '"hello"', 5),
)
FOREIGN = "198.51.100.7"  # outside the default allow
OTHER_FOREIGN = "203.0.113.7"  # another /24, for the rate limit
LOOP = "198.51.100.8"  # another address of this machine, used as an upstream
FUZZ_PACKETS = int(os.environ.get("FUZZ_PACKETS", "3000"))  # UDP packets per fuzz round; more for a longer run


def make_settings(**kw: object) -> Settings:
    base: dict[str, object] = dict(listen=(Address("127.0.0.1", 0),), records=STATIC)
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@contextlib.contextmanager
def running(settings: Settings, docker: bool = False) -> Iterator[tuple[App, tuple[str, int]]]:
    """A started App (without Docker unless asked); yields it and its (loopback) address."""
    app = App(settings, docker=docker)
    app.start()
    try:
        address = app.addresses()[0]
        host = "127.0.0.1" if address.host == "0.0.0.0" else address.host
        yield app, (host, address.port)
    finally:
        app.stop()


@contextlib.contextmanager
def local_address(ip: str) -> Iterator[str]:
    """`ip`/32 on lo while the block runs: another address of this machine, not loopback."""
    added = subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True, text=True)
    if added.returncode != 0 and "File exists" not in added.stderr:
        pytest.fail(f"cannot add {ip} to lo (needs root and iproute2): {added.stderr.strip()}", pytrace=False)
    try:
        yield ip
    finally:
        if added.returncode == 0:  # only what we added: another run may hold it
            subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True)


@pytest.fixture
def upstream() -> Iterator[StubUpstream]:
    stub = StubUpstream(UPSTREAM_ZONE)
    yield stub
    stub.close()


@pytest.fixture
def foreign() -> Iterator[str]:
    with local_address(FOREIGN) as ip:
        yield ip


def forward_to(stub: StubUpstream) -> ForwardSettings:
    return ForwardSettings(True, (Address("127.0.0.1", stub.port),))


def udp(addr: tuple[str, int], name: str, qtype: str = "A", source: str = "",
        timeout: float = 3) -> dns.message.Message:
    query = dns.message.make_query(name, qtype)
    return dns.query.udp(query, addr[0], port=addr[1], timeout=timeout, source=source or None,
                         raise_on_truncation=False)


def tcp(addr: tuple[str, int], name: str, qtype: str = "A", source: str = "",
        timeout: float = 3) -> dns.message.Message:
    return dns.query.tcp(dns.message.make_query(name, qtype), addr[0], port=addr[1], timeout=timeout,
                         source=source or None)


def values(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def timed(ask: Callable[[], dns.message.Message]) -> tuple[float, dns.message.Message]:
    started = time.monotonic()
    msg = ask()
    return time.monotonic() - started, msg


def connect(addr: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(addr, timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST: no TIME_WAIT
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> str | None:
    """"eof" or "reset" when the server closes `sock` within `timeout`; None when it stays open."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            if not sock.recv(4096):
                return "eof"
        except socket.timeout:
            return None
        except ConnectionResetError:
            return "reset"


# --- TCP abuse -------------------------------------------------------------------


def test_hostile_tcp_clients_delay_nobody(upstream: StubUpstream) -> None:
    """A zero length, a length past the data, a one-byte staller and 100 idle clients delay no UDP or TCP answer."""
    with running(make_settings(forward=forward_to(upstream))) as (app, addr):
        zero, overlong, stalled = connect(addr), connect(addr), connect(addr)
        zero.sendall(b"\x00\x00")
        overlong.sendall(struct.pack("!H", 512) + b"\x00" * 20)
        stalled.sendall(b"\x00")
        idle = [connect(addr) for _ in range(100)]
        try:
            assert closed_by_peer(zero, 2.0) == "eof"  # a zero length ends that connection, politely
            for ask in [lambda: udp(addr, "gateway.docker")] * 20 + [lambda: tcp(addr, "gateway.docker")] * 5:
                elapsed, msg = timed(ask)
                assert values(msg) == ["172.17.0.1"]
                assert elapsed < 0.5
            assert closed_by_peer(overlong, 0.01) is None and closed_by_peer(stalled, 0.01) is None
        finally:
            for sock in [zero, overlong, stalled, *idle]:
                sock.close()


def test_stalled_and_idle_connections_closed_after_timeout() -> None:
    """Idle, one-byte, short-of-its-length and byte-a-time clients are closed after their timeout; a busy one is not."""
    app = App(make_settings(), docker=False)
    server = TcpServer(bind(Address("127.0.0.1", 0), socket.SOCK_STREAM), app.responder,
                       idle_timeout=0.5, read_timeout=0.5)
    server.start()
    addr = (server.address.host, server.address.port)
    try:
        started = time.monotonic()
        idle, one_byte, short, drip = (connect(addr) for _ in range(4))
        one_byte.sendall(b"\x00")
        short.sendall(struct.pack("!H", 300) + b"\x00" * 40)
        drip.sendall(struct.pack("!H", 64))
        for sock in (idle, one_byte, short):
            assert closed_by_peer(sock, 3.0) == "eof"
        # A byte every 0.1 s never completes the query: the read deadline holds anyway.
        for _ in range(30):
            try:
                drip.sendall(b"x")
            except OSError:
                break
            if closed_by_peer(drip, 0.1):
                break
        else:
            pytest.fail("a client sending a byte at a time was never closed")
        assert 0.4 <= time.monotonic() - started < 3.0
        # A client that keeps asking keeps its connection past the idle timeout.
        busy = connect(addr)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            query = dns.message.make_query("gateway.docker", "A")
            dns.query.send_tcp(busy, query, expiration=time.time() + 2)
            msg, _ = dns.query.receive_tcp(busy, expiration=time.time() + 2)
            assert values(msg) == ["172.17.0.1"]
            assert closed_by_peer(busy, 0.2) is None
        for sock in (idle, one_byte, short, drip, busy):
            sock.close()
    finally:
        server.stop()
        app.stop()


def test_idle_flood_cap_holds(wait_for: Callable[..., Any]) -> None:
    """300 idle strangers: 112 are held (16 slots kept for known clients), the rest closed with a FIN; UDP answers
    meanwhile; all go idle-closed."""
    app = App(make_settings(), docker=False)
    idle_timeout = 3.0
    server = TcpServer(bind(Address("127.0.0.1", 0), socket.SOCK_STREAM), app.responder,
                       idle_timeout=idle_timeout, read_timeout=idle_timeout)
    udp_server = UdpServer(bind(Address("127.0.0.1", 0), socket.SOCK_DGRAM), app.responder)
    server.start()
    udp_server.start()
    addr = (server.address.host, server.address.port)
    udp_addr = (udp_server.address.host, udp_server.address.port)
    selector = selectors.DefaultSelector()
    clients: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(300):
            sock = connect(addr)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            clients.append(sock)
        held = MAX_TCP_CONNECTIONS - TCP_RESERVED
        excess = 300 - held
        closed: dict[socket.socket, str] = {}

        def wait_closed(count: int, until: float) -> None:
            while len(closed) < count and time.monotonic() < until:
                for key, _ in selector.select(timeout=max(0.0, until - time.monotonic())):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(1)
                    except ConnectionResetError:
                        data, closed[sock] = b"", "reset"
                    if not data:
                        closed.setdefault(sock, "eof")
                        selector.unregister(sock)

        wait_closed(excess, started + idle_timeout * 0.8)
        # Each client past the cap made room by closing the one idle the longest (RFC 7766 section 6.2.3).
        assert len(closed) == excess and server.refused + server.evicted == excess
        assert set(closed.values()) == {"eof"}  # closed politely: a FIN, not a reset
        # The cap holds: never more than strangers may hold, and full again once the last eviction is done.
        assert server.connections <= held
        wait_for(lambda: server.connections == held, timeout=2.0, what="the cap to fill again")
        elapsed, msg = timed(lambda: udp(udp_addr, "gateway.docker"))
        assert values(msg) == ["172.17.0.1"] and elapsed < 0.5
        assert values(tcp(addr, "gateway.docker")) == ["172.17.0.1"]  # at the cap, a real query still gets in
        wait_closed(300, started + idle_timeout + 5.0)
        assert len(closed) == 300 and time.monotonic() - started >= idle_timeout * 0.9
        assert values(tcp(addr, "gateway.docker")) == ["172.17.0.1"]  # slots came back
    finally:
        for sock in clients:
            sock.close()
        selector.close()
        server.stop()
        udp_server.stop()
        app.stop()


def test_idle_flood_does_not_lock_out_tcp() -> None:
    """With the cap full of idle clients, a new client with a query is still answered at once."""
    app = App(make_settings(), docker=False)
    server = TcpServer(bind(Address("127.0.0.1", 0), socket.SOCK_STREAM), app.responder, max_connections=8,
                       idle_timeout=5.0, read_timeout=5.0)
    server.start()
    addr = (server.address.host, server.address.port)
    idle = [connect(addr) for _ in range(8)]
    try:
        assert values(tcp(addr, "gateway.docker", timeout=1.0)) == ["172.17.0.1"]
    finally:
        for sock in idle:
            sock.close()
        server.stop()
        app.stop()


RECONNECT = 0.5  # seconds before a trickling client the server closed connects again


def trickle(addr: tuple[str, int], count: int, period: float, stop: threading.Event, counts: dict[str, int]) -> None:
    """`count` clients that each send a length prefix, then its query over `period` seconds, one byte at a time,
    again and again; the next length prefix goes out with the last byte of a query, so none is ever idle.

    Keeps `counts` current: "sent", queries completed; "connected", connections made; "closed", connections the
    server closed. A closed client
    connects again RECONNECT seconds later, as an attacker would, to win its slot back.
    """
    query = dns.message.make_query("gateway.docker", "A").to_wire()
    prefix = struct.pack("!H", len(query))
    step = period / len(query)
    selector = selectors.DefaultSelector()
    state: dict[socket.socket, list[float]] = {}  # sock -> [bytes of the query sent, when the query began]
    counts.update(sent=0, connected=0, closed=0)
    again: list[float] = [0.0] * count  # when to connect a client (again)
    while not stop.is_set():
        now = time.monotonic()
        for when in [w for w in again if w <= now]:
            again.remove(when)
            try:
                sock = connect(addr)
                sock.setblocking(False)
                sock.send(prefix)
            except OSError:
                again.append(now + RECONNECT)
                continue
            selector.register(sock, selectors.EVENT_READ)
            state[sock] = [0, time.monotonic()]
            counts["connected"] += 1
        for sock, progress in list(state.items()):
            due = min(int((now - progress[1]) / step) + 1, len(query))  # bytes that should be out by now
            while progress[0] < due:
                sent = int(progress[0])
                last = sent == len(query) - 1
                try:
                    sock.send(query[sent:sent + 1] + (prefix if last else b""))
                except OSError:
                    break
                progress[0] += 1
                if last:
                    counts["sent"] += 1
                    progress[0], progress[1] = 0, time.monotonic()
                    break
        for key, _ in selector.select(timeout=step / 4):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                counts["closed"] += 1
                selector.unregister(sock)
                del state[sock]
                sock.close()
                again.append(time.monotonic() + RECONNECT)
    for sock in state:
        sock.close()
    selector.close()


def test_trickling_clients_cannot_hold_every_tcp_slot(wait_for: Callable[..., Any]) -> None:
    """Clients in every slot strangers may hold (all 128 before the reserve) that each deliver a query just within
    the read timeout, over and over, and come back when closed: five new clients in turn each get an answer over TCP
    within 2 s."""
    with running(make_settings()) as (app, addr):
        server = next(s for s in app.servers if isinstance(s, TcpServer))
        stop = threading.Event()
        counts: dict[str, int] = {"sent": 0, "connected": 0, "closed": 0}
        held = MAX_TCP_CONNECTIONS - TCP_RESERVED  # the slots strangers may hold: more would only fight each other
        attacker = threading.Thread(target=trickle, args=(addr, held, 4.5, stop, counts), daemon=True)
        attacker.start()
        try:
            # One whole round of slow queries: from now on every slot holds a client in mid-query.
            wait_for(lambda: counts["sent"] >= held, timeout=15, what="a round of trickled queries")
            assert server.connections == held
            for _ in range(5):  # each new client in turn, not one lucky one
                elapsed, msg = timed(lambda: tcp(addr, "gateway.docker", timeout=2.0))
                assert values(msg) == ["172.17.0.1"] and elapsed < 2.0
                # The attacker wins back the slot that the last client freed, or the next client would walk in.
                wait_for(lambda: counts["closed"] == server.evicted and counts["connected"] - counts["closed"] == held
                         and server.connections == held, timeout=5, what="the attack to fill every slot again")
        finally:
            stop.set()
            attacker.join(10)


def test_known_clients_keep_their_reserved_slots(wait_for: Callable[..., Any]) -> None:
    """A flood of strangers never closes a connection of a client the table knows; the known client gets in at the
    cap without anyone being closed for it."""
    app = App(make_settings(), docker=False)
    server = TcpServer(bind(Address("127.0.0.1", 0), socket.SOCK_STREAM), app.responder, max_connections=8,
                       reserved=2, known=lambda client: client == "127.0.0.2")
    server.start()
    addr = (server.address.host, server.address.port)
    strangers = [connect(addr) for _ in range(8)]
    known = socket.create_connection(addr, timeout=5, source_address=("127.0.0.2", 0))
    try:
        wait_for(lambda: server.evicted == 2, timeout=3, what="two strangers closed")  # 6 of 8 slots for strangers
        evicted = server.evicted
        query = dns.message.make_query("gateway.docker", "A")
        dns.query.send_tcp(known, query, expiration=time.time() + 2)
        assert values(dns.query.receive_tcp(known, expiration=time.time() + 2)[0]) == ["172.17.0.1"]
        assert server.evicted == evicted, "the known client took a reserved slot"
        strangers += [connect(addr) for _ in range(20)]
        assert closed_by_peer(known, 0.2) is None
        dns.query.send_tcp(known, query, expiration=time.time() + 2)
        assert values(dns.query.receive_tcp(known, expiration=time.time() + 2)[0]) == ["172.17.0.1"]
    finally:
        for sock in [*strangers, known]:
            sock.close()
        server.stop()
        app.stop()


def test_tcp_accept_survives_thread_start_failures(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """When threads cannot be started (`prlimit --nproc`), new TCP clients are closed and the accept loop backs off,
    logs once, and serves again as soon as threads can be started."""
    app = App(make_settings(), docker=False)
    server = TcpServer(bind(Address("127.0.0.1", 0), socket.SOCK_STREAM), app.responder)
    server.start()
    addr = (server.address.host, server.address.port)
    real = threading.Thread.start
    refusals = [3]

    def start(thread: threading.Thread) -> None:
        if refusals[0] > 0:
            refusals[0] -= 1
            raise RuntimeError("can't start new thread")
        real(thread)

    try:
        monkeypatch.setattr(threading.Thread, "start", start)
        for _ in range(3):
            with connect(addr) as refused:
                assert closed_by_peer(refused, 3.0) is not None
        monkeypatch.undo()
        assert refusals == [0]
        assert values(tcp(addr, "gateway.docker")) == ["172.17.0.1"]
        assert server._thread.is_alive()
        trouble = [r for r in caplog.records if "out of resources" in r.getMessage()]
        assert len(trouble) == 1
    finally:
        server.stop()
        app.stop()


def test_out_of_file_descriptors_backs_off_and_recovers(wait_for: Callable[..., Any]) -> None:
    """Under a low fd limit a flood of HTTP connections makes accept() fail with EMFILE: the server backs off instead
    of spinning, says so once, and answers /healthz and DNS over TCP again once the flood is gone."""
    server = ServerProcess("--http", "127.0.0.1:0", "--no-forward", wrap=("prlimit", "--nofile=30:30", "--"))
    clients: list[socket.socket] = []
    try:
        http_line = wait_for(lambda: next((line for line in server.lines if "HTTP status on" in line), None))
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", http_line)
        assert found is not None
        http_addr = ("127.0.0.1", int(found.group(1)))
        for _ in range(80):
            clients.append(socket.create_connection(http_addr, timeout=5))
        wait_for(lambda: any("out of resources" in line for line in server.lines), timeout=15, what="EMFILE")
        before = server.cpu()
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started >= 2.0, interval=0.1, what="a two-second window")
        assert server.cpu() - before < 0.5, "the accept loop spins on EMFILE"
        for sock in clients:
            sock.close()

        def healthy() -> bool:
            """/healthz answers (503 here: Docker is unreachable, which is what it should say)."""
            try:
                with urllib.request.urlopen(f"http://{http_addr[0]}:{http_addr[1]}/healthz", timeout=1) as resp:
                    return bool(resp.status)
            except urllib.error.HTTPError as err:
                return err.code == 503
            except OSError:
                return False

        wait_for(healthy, timeout=10, interval=0.1, what="/healthz after the flood")
        assert values(tcp(server.addr, "nohost.docker", timeout=3)) == []
        assert len([line for line in server.lines if "out of resources" in line]) <= 2  # sparse: once per 10 s
        assert not [line for line in server.lines if "Traceback" in line]
    finally:
        for sock in clients:
            sock.close()
        server.stop()


def test_sighup_on_a_fifo_config_never_blocks_sigterm(tmp_path: Path, wait_for: Callable[..., Any]) -> None:
    """SIGHUP while the config path is a FIFO: queries are answered, a writer's config is applied when it comes, and
    SIGTERM ends the server with exit 0 within 2 s while a read is still blocked."""
    config = tmp_path / "dockerdns.yaml"
    config.write_text("records:\n  - {name: first, type: A, value: 10.0.0.1}\n")
    server = ServerProcess("-c", str(config), "--no-forward")
    try:
        assert values(udp(server.addr, "first.docker")) == ["10.0.0.1"]
        config.unlink()
        os.mkfifo(config)
        server.proc.send_signal(signal.SIGHUP)  # the read blocks until someone writes
        assert values(udp(server.addr, "first.docker")) == ["10.0.0.1"]
        with open(config, "w") as fifo:  # the reload thread is the reader at the other end
            fifo.write("records:\n  - {name: second, type: A, value: 10.0.0.2}\n")
        wait_for(lambda: values(udp(server.addr, "second.docker")) == ["10.0.0.2"], timeout=5, what="the reload")
        server.proc.send_signal(signal.SIGHUP)  # blocks again, for good this time
        server.proc.send_signal(signal.SIGHUP)  # folds into the one under way
        assert values(udp(server.addr, "second.docker")) == ["10.0.0.2"]
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_systemd_unit_limits_cover_the_caps() -> None:
    """conf/dockerdns.service sets LimitNOFILE and TasksMax above what dockerdns holds at its own caps."""
    unit = dict(line.split("=", 1) for line in (Path(__file__).parent.parent / "conf" / "dockerdns.service")
                .read_text().splitlines() if "=" in line and not line.startswith("#"))
    # Two TCP listeners (loopback and the bridge) at their cap, HTTP at its cap, forwarding at its cap.
    peak = 2 * MAX_TCP_CONNECTIONS + MAX_HTTP_CONNECTIONS + MAX_IN_FLIGHT
    assert int(unit["LimitNOFILE"]) >= 4 * peak
    assert 2 * peak <= int(unit["TasksMax"]) <= 4096


@pytest.mark.docker
def test_huge_ttl_label_does_not_stop_other_containers(make_container: Callable[..., Any], docker_client: Any,
                                                       wait_for: Callable[..., Any]) -> None:
    """A container labelled dockerdns.ttl=<4301 digits> on the real engine: a container started after it is answered
    over DNS, and so is it, with the default ttl."""
    bad = make_container("bigttl", labels={"dockerdns.ttl": "9" * 4301})
    with running(make_settings(forward=ForwardSettings(False, ())), docker=True) as (app, addr):
        wait_for(lambda: app.source.in_sync, what="the first sync")
        good = make_container("after")
        wait_for(lambda: values(udp(addr, f"{good.name}.docker")), what="the container started after")
        answer = udp(addr, f"{bad.name}.docker")
        assert answer.rcode() == dns.rcode.NOERROR and [rrset.ttl for rrset in answer.answer] == [Settings().ttl]
        assert app.source.in_sync


# --- Fuzzing ---------------------------------------------------------------------

NAMES = ["gateway.docker", "absent.docker", "docker", "info.docker", "gateway", "www.example.org", "nohost",
         "1.0.17.172.in-addr.arpa"]


def _header(ident: int, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def _name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".") if label) + b"\x00"


def _opt(payload: int = 1232, options: bytes = b"", version: int = 0, rdlength: int | None = None) -> bytes:
    length = len(options) if rdlength is None else rdlength
    return b"\x00" + struct.pack("!HHIH", 41, payload, version << 16, length) + options


def _valid(rng: random.Random, edns: bool = True) -> bytes:
    qtype = rng.choice([1, 28, 12, 16, 255, 6, 2, 33, 5])
    return (_header(rng.randrange(0x10000), ar=int(edns)) + _name(rng.choice(NAMES)) + struct.pack("!HH", qtype, 1)
            + (_opt(rng.choice([512, 1232, 4096, 65535])) if edns else b""))


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 600))


def _bit_flips(rng: random.Random) -> bytes:
    data = bytearray(_valid(rng))
    for _ in range(rng.randrange(1, 9)):
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def _truncated(rng: random.Random) -> bytes:
    data = _valid(rng)
    return data[:rng.randrange(len(data))]


def _pointer_loop(rng: random.Random) -> bytes:
    loops = [
        b"\xc0\x0c",  # points at itself
        b"\x01a\xc0\x0c",  # a label, then back to the start
        b"\x01a\xc0\x0e\x00",  # two pointers at each other
        b"\xc0\xff",  # past the end
        b"".join(struct.pack("!H", 0xC000 | (12 + 2 * (i - 1))) if i else b"\x01a" for i in range(200)),  # a chain
    ]
    return _header(rng.randrange(0x10000)) + rng.choice(loops) + b"\x00\x01\x00\x01"


def _long_names(rng: random.Random) -> bytes:
    names = [
        bytes([rng.randrange(64, 256)]) + rng.randbytes(rng.randrange(0, 256)) + b"\x00",  # label over 63, bad types
        (b"\x3f" + b"a" * 63) * 5 + b"\x00",  # 320 bytes: a name over 255
        b"\x01a" * 200 + b"\x00",  # 200 labels
        b"\x3f" + bytes(rng.randrange(256) for _ in range(63)) + b"\x06docker\x00",  # any bytes in a label
    ]
    return _header(rng.randrange(0x10000)) + rng.choice(names) + struct.pack("!HH", rng.randrange(0x10000), 1)


def _bogus_counts(rng: random.Random) -> bytes:
    counts = [rng.choice([0, 1, 2, 255, 0xFFFF]) for _ in range(4)]
    tail = rng.randbytes(rng.randrange(0, 64))
    return (_header(rng.randrange(0x10000), 0x0100, *counts) + _name(rng.choice(NAMES)) + b"\x00\x01\x00\x01"
            + tail)


def _hostile_edns(rng: random.Random, big: int = 8000) -> bytes:
    head = _header(rng.randrange(0x10000), ar=1) + _name(rng.choice(NAMES)) + b"\x00\x01\x00\x01"
    size = rng.randrange(0, big)
    options = [
        struct.pack("!HH", rng.randrange(0x10000), size) + rng.randbytes(size),  # one huge option
        struct.pack("!HH", 10, 0xFFFF) + b"\x00" * 8,  # an option longer than the record
        b"".join(struct.pack("!HH", 65001, 0) for _ in range(size // 4)),  # thousands of empty options
    ]
    choice = rng.randrange(5)
    if choice < 3:
        return head + _opt(rng.randrange(0x10000), options[choice])
    if choice == 3:
        return head[:10] + struct.pack("!H", 50) + head[12:] + _opt() * 50  # fifty OPT records
    return head + _opt(version=rng.randrange(1, 256), rdlength=rng.choice([0, 4, 0xFFFF]))  # BADVERS, lying length


def _odd_header(rng: random.Random) -> bytes:
    data = bytearray(_valid(rng))
    data[2:4] = struct.pack("!H", rng.randrange(0x10000))  # any opcode, QR, flags, rcode
    return bytes(data)


GENERATORS: list[Callable[[random.Random], bytes]] = [
    _random_bytes, _bit_flips, _truncated, _pointer_loop, _long_names, _bogus_counts, _hostile_edns, _odd_header,
    _valid,
]


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from(GENERATORS), st.randoms(use_true_random=False), st.sampled_from(["udp", "tcp"]))
def test_hostile_packets_get_a_bounded_answer_or_none(generate: Callable[[random.Random], bytes],
                                                      rng: random.Random, transport: str) -> None:
    """Through the whole slow path a hostile packet gets at most one reply: a response with its id, within limits."""
    data = generate(rng)
    replies: list[bytes] = []
    _RESPONDER.handle(data, "127.0.0.1", transport, replies.append)
    assert len(replies) <= 1
    for reply in replies:
        assert len(reply) >= wire.HEADER_LEN and reply[:2] == data[:2] and reply[2] & 0x80  # QR set
        assert len(reply) <= (1232 if transport == "udp" else 65535)


_TABLE = RecordTable("docker")
_TABLE.replace("static", STATIC)
_RESPONDER = Responder(_TABLE, policy_of(make_settings()), None)


class ServerProcess:
    """`python -m dockerdns` on a free loopback port, for measurements of its own memory."""

    def __init__(self, *args: str, wrap: tuple[str, ...] = ()):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DOCKERDNS_")}
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "dockerdns", "--listen", "127.0.0.1:0", "--docker-url",
             "unix:///nonexistent/docker.sock", *args],
            stderr=subprocess.PIPE, text=True, env={**environ, "DOCKERDNS_CONFIG": ""},
        )
        self.lines: list[str] = []  # everything it logged
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()  # also keeps the pipe drained
        deadline = time.monotonic() + 20
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise AssertionError("the server did not start") from None
            found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.addr = ("127.0.0.1", int(found.group(1)))
                return

    def _read(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            lines.put(line)

    def rss(self) -> int:
        """Resident memory in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def cpu(self) -> float:
        """CPU seconds used so far (user and system)."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _probe(addr: tuple[str, int], timeout: float = 10) -> dns.message.Message:
    """A valid query, asked until answered: the server has worked through what came before it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return udp(addr, "gateway.docker", timeout=0.5)
        except dns.exception.Timeout:
            if time.monotonic() > deadline:
                raise


def fuzz_round(addr: tuple[str, int], seed: int, packets: int) -> int:
    """Send `packets` hostile UDP packets and a tenth as many TCP frames; returns how many were sent."""
    rng = random.Random(seed)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # replies beyond it are dropped: fine
        for i in range(packets):
            data = rng.choice(GENERATORS)(rng)[:65507]
            sock.sendto(data, addr)
            sent += 1
            if i % 200 == 199:
                _probe(addr)  # pace on the server, so the kernel drops nothing
    for _ in range(packets // 50):
        with connect(addr) as conn:
            frames = []
            for _ in range(5):
                data = rng.choice(GENERATORS + [lambda r: _hostile_edns(r, big=65000)])(rng)[:65535]
                frames.append(struct.pack("!H", len(data)) + data)
                sent += 1
            if rng.random() < 0.2:
                frames.append(struct.pack("!H", 0xFFFF) + rng.randbytes(rng.randrange(100)))  # a cut-short frame
            with contextlib.suppress(OSError):
                conn.sendall(b"".join(frames))
    return sent


def test_fuzz_the_running_server(upstream: StubUpstream, tmp_path: Path) -> None:
    """Rounds of hostile UDP and TCP packets: the server answers correctly after, logs little, and stays small."""
    config = tmp_path / "dockerdns.yaml"
    config.write_text("records:\n  - {name: gateway, type: A, value: 172.17.0.1}\n")
    server = ServerProcess("-c", str(config), "--upstream", f"127.0.0.1:{upstream.port}")
    try:
        logged = len(server.lines)
        sent = fuzz_round(server.addr, 1, FUZZ_PACKETS)  # also warms the caches and the thread pools up
        assert values(_probe(server.addr)) == ["172.17.0.1"]
        before = server.rss()
        for seed in (2, 3):
            sent += fuzz_round(server.addr, seed, FUZZ_PACKETS)
        msg = _probe(server.addr)
        assert values(msg) == ["172.17.0.1"] and msg.flags & dns.flags.AA
        assert values(tcp(server.addr, "gateway.docker")) == ["172.17.0.1"]
        assert server.proc.poll() is None
        grown = server.rss() - before
        noise = server.lines[logged:]
        print(f"fuzz: {sent} packets; RSS {before >> 20} MiB, then +{grown >> 10} KiB; {len(noise)} log lines")
        # Live objects are checked exactly below (tracemalloc); here only a gross leak shows: the allocator's
        # fragmentation across ~200 threads accounts for a few MiB.
        assert grown < 32 << 20
        assert len(noise) <= 5, "".join(noise[:20])  # summaries, not a line (or a traceback) per packet
    finally:
        server.stop()


def test_fuzz_leaves_no_live_objects_behind(upstream: StubUpstream) -> None:
    """Repeating a round of hostile packets leaves no more live Python memory in dockerdns or dnslib than before."""
    exclude = [tracemalloc.Filter(False, "*/tests/*"), tracemalloc.Filter(False, tracemalloc.__file__),
               tracemalloc.Filter(False, "*/_pytest/*"), tracemalloc.Filter(False, "*/hypothesis/*")]

    def live() -> int:
        gc.collect()
        return sum(stat.size for stat in tracemalloc.take_snapshot().filter_traces(exclude).statistics("filename"))

    packets = max(FUZZ_PACKETS // 3, 500)
    with running(make_settings(forward=forward_to(upstream))) as (app, addr):
        tracemalloc.start()
        try:
            fuzz_round(addr, 1, packets)  # the first round fills the answer cache and starts the threads
            _probe(addr)
            before = live()
            for _ in range(2):
                fuzz_round(addr, 1, packets)  # the same packets: nothing new to remember
                _probe(addr)
            grown = live() - before
        finally:
            tracemalloc.stop()
    print(f"fuzz: {packets} packets a round; live memory +{grown} bytes over two repeated rounds")
    assert grown < 4 << 20  # retaining even one TCP frame in ten would pass this


# --- Open-resolver safety --------------------------------------------------------

REFUSED_QUERIES = [
    ("gateway.docker", "A"), ("info.docker", "TXT"), ("absent.docker", "A"), ("docker", "SOA"), ("docker", "ANY"),
    ("gateway", "A"), ("www.example.org", "A"), ("nohost", "A"), ("example.org", "ANY"),
    ("1.0.17.172.in-addr.arpa", "PTR"), ("7.100.51.198.in-addr.arpa", "PTR"),
]


def test_client_outside_allow_refused_for_everything(upstream: StubUpstream, foreign: str) -> None:
    """A client outside the default allow gets REFUSED for every kind of query, and the upstream sees nothing."""
    with running(make_settings(forward=forward_to(upstream))) as (app, addr):
        for name, qtype in REFUSED_QUERIES:
            for ask in (udp, tcp):
                msg = ask(addr, name, qtype, source=foreign)
                assert msg.rcode() == dns.rcode.REFUSED, (name, qtype, ask.__name__)
                assert not msg.answer and not msg.authority
        axfr = tcp(addr, "docker", "AXFR", source=foreign)
        assert axfr.rcode() == dns.rcode.REFUSED and not axfr.answer
        assert upstream.seen == []
        # The same server does answer loopback: the refusals above were about the client.
        assert values(udp(addr, "gateway.docker")) == ["172.17.0.1"]
        assert values(udp(addr, "www.example.org")) == ["192.0.2.11"]
        assert [s.qname for s in upstream.seen] == ["www.example.org."]


def test_defaults_bind_loopback_and_bridge_and_allow_private_only() -> None:
    """By default dockerdns listens on 127.0.0.1:53 and the bridge only, and answers loopback and private clients."""
    assert Settings().listen == DEFAULT_LISTEN == (Address("127.0.0.1", 53), Address("bridge", 53))
    assert Settings().allow == DEFAULT_ALLOW
    assert all(not net.is_global for net in DEFAULT_ALLOW)
    for client in ("127.0.0.1", "::1", "10.1.2.3", "172.17.0.2", "192.168.1.5", "fd00::5", "::ffff:172.17.0.2"):
        assert client_allowed(client, DEFAULT_ALLOW), client
    for client in (FOREIGN, "8.8.8.8", "192.0.2.2", "2001:db8::1", "::ffff:8.8.8.8", "not-an-ip"):
        assert not client_allowed(client, DEFAULT_ALLOW), client
    assert ipaddress.ip_network("0.0.0.0/0") not in DEFAULT_ALLOW


# --- Forwarding loops ------------------------------------------------------------


def test_is_own_recognises_our_query_in_flight(caplog: pytest.LogCaptureFixture) -> None:
    """While a query is upstream, is_own knows its bytes (and no other id); the upstream is marked looping once."""
    caplog.set_level(logging.WARNING, logger="dockerdns.forward")
    upstream_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream_sock.bind(("127.0.0.1", 0))
    address = Address("127.0.0.1", upstream_sock.getsockname()[1])
    forwarder = Forwarder((address,), timeout=2.0, total=2.0)
    seen: dict[str, bool] = {}

    def upstream() -> None:
        data, peer = upstream_sock.recvfrom(65535)
        other = struct.pack("!H", (struct.unpack_from("!H", data)[0] + 1) & 0xFFFF) + data[2:]
        seen.update(other_id=forwarder.is_own(other), client_bytes=forwarder.is_own(client_data),
                    own=forwarder.is_own(data))
        reply = DNSRecord.parse(data).reply()
        upstream_sock.sendto(bytes(reply.pack()), peer)

    query = dns.message.make_query("loop.example.org", "A")
    client_data = query.to_wire()
    thread = threading.Thread(target=upstream, daemon=True)
    thread.start()
    try:
        answer = forwarder.forward(DNSRecord.parse(client_data), client_data)
        thread.join(5)
        assert seen == {"other_id": False, "client_bytes": False, "own": True}
        assert answer is not None and answer[:2] == client_data[:2]
        assert not forwarder._in_flight  # forgotten once answered
        assert address in forwarder.looping and forwarder.loops == 1
        # Marked: the next forward skips it at once instead of asking it again.
        started = time.monotonic()
        assert forwarder.forward(DNSRecord.parse(client_data), client_data) is None
        assert time.monotonic() - started < 0.5
        lines = [r for r in caplog.records if "leads back" in r.getMessage()]
        assert len(lines) == 1 and str(address) in lines[0].getMessage()
    finally:
        upstream_sock.close()
        forwarder.close()


def test_forwarding_loop_through_another_local_address(caplog: pytest.LogCaptureFixture) -> None:
    """Upstream = another address of this machine while listening on 0.0.0.0: SERVFAIL fast, forwarded once.

    """
    caplog.set_level(logging.WARNING)
    loopback_and_loop = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network(f"{LOOP}/32"))
    with local_address(LOOP), running(make_settings(listen=(Address("0.0.0.0", 0),), allow=loopback_and_loop,
                                                    forward=ForwardSettings(True, ()))) as (app, addr):
        app.forwarder.upstreams = (Address(LOOP, addr[1]),)  # explicitly: config checks only exact matches
        elapsed, msg = timed(lambda: udp(addr, "loop.example.org", timeout=5))
        assert msg.rcode() == dns.rcode.SERVFAIL
        assert elapsed < 2.0
        assert app.forwarder.forwarded <= 2  # not once per trip round the loop
        assert Address(LOOP, addr[1]) in app.forwarder.looping
        elapsed, msg = timed(lambda: udp(addr, "again.example.org", timeout=5))
        assert msg.rcode() == dns.rcode.SERVFAIL and elapsed < 0.5
        assert len([r for r in caplog.records if "leads back" in r.getMessage()]) == 1


# --- Response rate limiting --------------------------------------------------------


def test_rate_limit_end_to_end(caplog: pytest.LogCaptureFixture) -> None:
    """A flood of one answer to one client network is dropped or slipped past the limit; another network is not.
    """
    caplog.set_level(logging.WARNING)
    allow = DEFAULT_ALLOW + (ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_network("203.0.113.0/24"))
    limits = RateLimitSettings(responses_per_second=5, slip=2, window=1)
    with local_address(FOREIGN), local_address(OTHER_FOREIGN), \
            running(make_settings(allow=allow, rate_limit=limits)) as (app, addr):
        assert app.rate_limit is not None
        app.rate_limit.exempt = LOOPBACK  # FOREIGN sits on lo here, which makes it a host address: exempt
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((FOREIGN, 0))
            for ident in range(100):
                sock.sendto(dns.message.make_query("gateway.docker", "A", id=ident).to_wire(), addr)
            full, slipped = 0, 0
            sock.settimeout(1.0)  # the flood is over once a second passes without a reply
            with contextlib.suppress(socket.timeout):
                while True:
                    msg = dns.message.from_wire(sock.recv(65535))
                    if msg.flags & dns.flags.TC:
                        assert not msg.answer
                        slipped += 1
                    else:
                        assert values(msg) == ["172.17.0.1"]
                        full += 1
        assert 5 <= full <= 8  # one second of credit, and what the flood's own duration earned
        assert 35 <= slipped <= 55  # every second one of the ~95 over the limit
        for _ in range(3):  # another /24 has its own account
            msg = udp(addr, "gateway.docker", source=OTHER_FOREIGN)
            assert values(msg) == ["172.17.0.1"] and not msg.flags & dns.flags.TC
        assert values(tcp(addr, "gateway.docker", source=FOREIGN)) == ["172.17.0.1"]  # TCP is never limited
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 2


# --- Logging under a flood ---------------------------------------------------------


def test_flood_logs_a_summary_not_a_line_per_packet(caplog: pytest.LogCaptureFixture) -> None:
    """Malformed packets and over-the-limit forwarded queries by the hundred give at most a couple of log lines."""
    caplog.set_level(logging.INFO)
    dead = StubUpstream("", mode="silent")
    try:
        with running(make_settings(forward=forward_to(dead))) as (app, addr):
            app.forwarder = Forwarder(app.forwarder.upstreams, timeout=0.3, total=0.3, max_in_flight=2)
            app.responder.forwarder = app.forwarder
            caplog.clear()
            rng = random.Random(5)
            servfail: set[int] = set()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                done = threading.Event()

                def collect() -> None:
                    """Reads replies as they come, so that the socket's buffer never drops one."""
                    sock.settimeout(5.0)
                    with contextlib.suppress(OSError):
                        while len(servfail) < 300:
                            reply = DNSRecord.parse(sock.recv(65535))
                            if reply.questions and str(reply.q.qname) == f"n{reply.header.id}.example.org.":
                                assert reply.header.rcode == dns.rcode.SERVFAIL
                                servfail.add(reply.header.id)
                    done.set()

                threading.Thread(target=collect, daemon=True).start()
                for i in range(300):
                    sock.sendto(_header(i) + b"\xc0\x0c\x00\x01\x00\x01", addr)  # FORMERR each
                    sock.sendto(_bogus_counts(rng), addr)
                    sock.sendto(dns.message.make_query(f"n{i}.example.org", "A", id=i).to_wire(), addr)
                    if i % 50 == 49:
                        _probe(addr)
                done.wait(10)
            assert len(servfail) == 300
        # The loggers a flood of queries reaches (not, say, a Docker source of an earlier test winding down).
        flood_loggers = ("dockerdns.query", "dockerdns.server", "dockerdns.forward")
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name in flood_loggers]
        assert any("too many queries in flight" in line for line in lines)
        assert len(lines) <= 3, lines
    finally:
        dead.close()
