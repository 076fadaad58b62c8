"""Datagrams in batches (datagrams.py) and the UDP server on them, on loopback with real sockets."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.query
import pytest

from dockerdns import datagrams
from dockerdns.app import App
from dockerdns.records import Record
from dockerdns.servers import UdpServer, bind
from dockerdns.settings import Address, Settings

pytestmark = pytest.mark.skipif(not datagrams.available(), reason="recvmmsg/sendmmsg are Linux-only")


def pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    server, client = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    client.bind((host, 0))
    client.settimeout(5)  # the server's socket stays blocking, as Batch needs
    return server, client


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_batch_receives_and_answers_each_source(family: int, host: str) -> None:
    server, client = pair(family, host)
    other = socket.socket(family, socket.SOCK_DGRAM)
    other.bind((host, 0))
    other.settimeout(5)
    batch = datagrams.Batch(server, 8)
    try:
        sent = {(b"q%d" % i): (client if i % 2 else other) for i in range(6)}
        for data, sock in sent.items():
            sock.sendto(data, server.getsockname())
        received: list[tuple[bytes, int | bytes]] = []
        while len(received) < len(sent):  # a batch holds what waited; the rest come with the next one
            got = batch.receive()
            assert got
            received += got
            for data, source in got:
                # The source, as recvfrom gives it, and the answer goes back to it.
                assert batch.peer(source) == sent[data].getsockname()
                batch.answer(source, b"a-" + data)
            batch.flush()
        assert sorted(data for data, _ in received) == sorted(sent)
        answers = sorted(client.recv(100) for _ in range(3)) + sorted(other.recv(100) for _ in range(3))
        assert answers == [b"a-q1", b"a-q3", b"a-q5", b"a-q0", b"a-q2", b"a-q4"]
    finally:
        for sock in (server, client, other):
            sock.close()


def test_a_large_datagram_is_whole_and_slots_are_reused() -> None:
    server, client = pair(socket.AF_INET, "127.0.0.1")
    batch = datagrams.Batch(server, 2)
    try:
        big = bytes(range(256)) * 255  # 65,280 bytes: the largest query a client can send over IPv4
        for payload in (big, b"small", big[:1000]):
            client.sendto(payload, server.getsockname())
            got = batch.receive()
            assert [data for data, _ in got] == [payload]
            batch.answer(got[0][1], payload[:50000])
            batch.flush()
            assert client.recv(65535) == payload[:50000]
    finally:
        server.close()
        client.close()


def test_an_answer_nobody_takes_does_not_stop_the_others() -> None:
    server, client = pair(socket.AF_INET, "127.0.0.1")
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    batch = datagrams.Batch(server, 4)
    try:
        gone.sendto(b"first", server.getsockname())
        gone.close()
        client.sendto(b"second", server.getsockname())
        received: list[tuple[bytes, int | bytes]] = []
        while len(received) < 2:
            received += batch.receive()
        for data, source in received:
            batch.answer(source, data.upper())
        batch.flush()
        assert client.recv(100) == b"SECOND"
    finally:
        server.close()
        client.close()


def test_more_answers_than_slots_are_all_sent() -> None:
    """A worker may answer more datagrams than a batch has slots (its fair queue holds more): `answer` sends
    the full slots before it takes another."""
    server, client = pair(socket.AF_INET, "127.0.0.1")
    batch = datagrams.Batch(server, 4)
    try:
        for i in range(10):
            client.sendto(b"q%d" % i, server.getsockname())
        received: list[tuple[bytes, int | bytes]] = []
        while len(received) < 10:
            received += batch.receive(True, 4)
        for data, source in received:
            batch.answer(source, b"a-" + data)
        batch.flush()
        assert sorted(client.recv(100) for _ in range(10)) == sorted(b"a-q%d" % i for i in range(10))
    finally:
        server.close()
        client.close()


def test_receive_returns_nothing_once_shut_down() -> None:
    server, _client = pair(socket.AF_INET, "127.0.0.1")
    batch = datagrams.Batch(server, 4)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(batch.receive()))
    worker.start()
    try:
        server.shutdown(socket.SHUT_RDWR)  # shuts it down, then says ENOTCONN: the socket has no peer
    except OSError:
        pass
    worker.join(5)
    assert not worker.is_alive() and result == [[]]
    server.close()
    _client.close()


@pytest.fixture(params=[datagrams.BATCH, 0], ids=["batched", "recvfrom"])
def udp_server(request: pytest.FixtureRequest) -> Iterator[UdpServer]:
    settings = Settings(listen=(Address("127.0.0.1", 0),), records=(Record("db.docker.", "A", "10.1.2.3", 5),))
    app = App(settings, docker=False)
    server = UdpServer(bind(Address("127.0.0.1", 0), socket.SOCK_DGRAM), app.responder, batch=request.param)
    server.start()
    yield server
    server.stop()
    app.stop()


def test_the_server_answers_index_and_full_path_queries_alike(udp_server: UdpServer) -> None:
    """Both ways of reading the socket: an index answer (batched send) and a FORMERR from the full path."""
    where = udp_server.address.host, udp_server.address.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        queries = [dns.message.make_query("db.docker", "A") for _ in range(50)]
        for query in queries:  # back to back: the batched server gets several per call
            sock.sendto(query.to_wire(), where)
        replies = [dns.message.from_wire(sock.recv(65535)) for _ in queries]
        assert sorted(r.id for r in replies) == sorted(q.id for q in queries)
        assert all(r.answer[0][0].address == "10.1.2.3" for r in replies)
        sock.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ab", where)  # cut in the question
        reply = sock.recv(65535)
        assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == 1  # FORMERR


def test_stop_leaves_no_worker_behind(udp_server: UdpServer) -> None:
    where = udp_server.address.host, udp_server.address.port
    reply = dns.query.udp(dns.message.make_query("db.docker", "A"), where[0], port=where[1], timeout=5)
    assert reply.answer
    threads = list(udp_server._threads)
    udp_server.stop()
    assert not any(thread.is_alive() for thread in threads)


class Recorder:
    """A handler that answers every query with itself and notes the order it was asked in."""

    def __init__(self) -> None:
        self.order: list[bytes] = []

    def fast(self, data: bytes, client: str) -> bytes:
        self.order.append(data)
        return data

    def handle(self, data: bytes, client: str, transport: str, reply: object) -> None:
        raise AssertionError("every query has a fast answer")


def test_a_query_is_not_answered_behind_another_clients_flood() -> None:
    """300 queries from one socket wait in the server's socket, then one from another: that one is among the
    first answered (fairqueue.py), and every one of the flood is answered too."""
    sock = bind(Address("127.0.0.1", 0), socket.SOCK_DGRAM)
    recorder = Recorder()
    server = UdpServer(sock, recorder)  # type: ignore[arg-type]
    where = server.address.host, server.address.port
    flood, single = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.settimeout(5)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # 300 answers wait in it while we read the other
    single.settimeout(5)
    try:
        for i in range(300):
            flood.sendto(b"flood %d" % i, where)
        single.sendto(b"single", where)  # all of it waits in the socket: the server reads nothing yet
        server.start()
        assert single.recv(100) == b"single"
        assert sorted(flood.recv(100) for _ in range(300)) == sorted(b"flood %d" % i for i in range(300))
        assert recorder.order.index(b"single") < datagrams.BATCH  # FIFO would have put it 301st
        flood_order = [data for data in recorder.order if data != b"single"]
        assert flood_order == [b"flood %d" % i for i in range(300)]  # the flood in its own order
    finally:
        server.stop()
        flood.close()
        single.close()


class Stuck:
    """A handler whose first answer waits until the test lets it go."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def fast(self, data: bytes, client: str) -> bytes:
        self.entered.set()
        self.release.wait(10)
        return data

    def handle(self, data: bytes, client: str, transport: str, reply: object) -> None:
        raise AssertionError("every query has a fast answer")


def test_stop_leaves_the_socket_to_a_worker_still_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker still in a handler when `stop` gives up waiting keeps its descriptor (closing it would let
    the next socket take the number under the worker's C calls); the worker closes it on its way out."""
    monkeypatch.setattr("dockerdns.servers.STOP_TIMEOUT", 0.05)
    sock = bind(Address("127.0.0.1", 0), socket.SOCK_DGRAM)
    handler = Stuck()
    server = UdpServer(sock, handler)  # type: ignore[arg-type]
    server.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"q", (server.address.host, server.address.port))
        assert handler.entered.wait(5)
        server.stop()
        assert sock.fileno() != -1  # still the worker's
        handler.release.set()
        for thread in server._threads:
            thread.join(5)
        assert not any(thread.is_alive() for thread in server._threads)
        assert sock.fileno() == -1  # closed by the worker
