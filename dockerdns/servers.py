"""Threaded UDP and TCP front ends: sockets, framing, limits and timeouts; nothing else.

Rule 1: UDP is served by a fixed set of worker threads per socket (one:
        a second only takes turns with it for the GIL, which costs tail
        latency), each blocking for a batch of datagrams (datagrams.py, or
        recvfrom where the C library lacks recvmmsg): no thread per packet.
Rule 2: TCP is an accept loop and at most `MAX_TCP_CONNECTIONS` connection
        threads (connections.py). At the cap, the connection that has gone
        the longest without delivering a whole query is closed to make room,
        idle or trickling alike (RFC 7766 section 6.2.3), so that a new
        client gets in within a second or so however slowly the others send;
        `TCP_RESERVED` slots are kept for clients that `known` recognises.
        Each connection carries many queries (RFC 7766 section 6.2.1),
        answers may come back out of order, and it is closed after
        `TCP_IDLE_TIMEOUT` without a query or `TCP_READ_TIMEOUT` to deliver
        a started one. The accept loop outlives a lack of file descriptors
        or threads: it backs off and keeps serving.
Rule 3: UDP answers pass response rate limiting (`rate_limit`, see rrl.py)
        on their way out: dropped, sent, or sent truncated. TCP answers do
        not: a TCP client's address cannot be forged.
Rule 4: what a query means is the handler's business. A handler gets the
        bytes, the client's address, the transport and a `reply` callable,
        which it may call later from another thread (forwarded answers).
Rule 5: a batched UDP worker reads all that waits in its socket (up to
        fairqueue.QUEUE_LIMIT) before answering, and answers in the fair
        queue's order: a client with one query waiting is not answered
        behind another client's hundreds (fairqueue.py).

Thread-safety: `reply` callables are safe to call from any thread; `stop`
may be called from any thread and returns once the sockets are closed.
"""

from __future__ import annotations

import errno
import functools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol

from . import datagrams
from .connections import LISTEN_BACKLOG, Slots, accept_forever
from .fairqueue import FairQueue
from .settings import Address
from .pool import DaemonPool
from .rrl import RateLimit, Verdict, response_key, truncated
from .sparse import Sparse

log = logging.getLogger("dockerdns.server")

UDP_WORKERS = 1  # threads per UDP socket (Rule 1)
UDP_RCVBUF = 4 * 1024 * 1024  # bytes: absorbs bursts while workers are busy
MAX_UDP_MESSAGE = 65535
MAX_TCP_CONNECTIONS = 128
TCP_RESERVED = 16  # of MAX_TCP_CONNECTIONS, kept for clients the table knows (containers)
TCP_IDLE_TIMEOUT = 10.0  # seconds between queries on one connection
TCP_READ_TIMEOUT = 5.0  # seconds to deliver one query once its length arrived
MIN_MESSAGE = 12  # a DNS header
STOP_TIMEOUT = 2.0  # seconds to wait for a UDP worker to leave its socket

Reply = Callable[[bytes], None]


class Handler(Protocol):
    def handle(self, data: bytes, client: str, transport: str, reply: Reply) -> None: ...

    def fast(self, data: bytes, client: str) -> bytes | None:
        """A ready answer for a UDP query, or None to go through `handle`."""


class BindError(Exception):
    """A listen address could not be bound; str() says which and why."""


def bind(address: Address, kind: int) -> socket.socket:
    """A bound socket (UDP: SOCK_DGRAM, TCP: SOCK_STREAM, listening)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            # [::]:53 and 0.0.0.0:53 may both be listed: keep the families apart.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        sock.bind((address.host, address.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
    except OSError as err:
        sock.close()
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        message = f"cannot listen on {address} ({proto}): {err.strerror}; {_hint(err, address)}"
        raise BindError(message) from err
    return sock


def _hint(err: OSError, address: Address) -> str:
    if err.errno == errno.EACCES:
        return (
            f"port {address.port} needs root or CAP_NET_BIND_SERVICE; run as root, "
            f"or try --listen {address.host}:5353"
        )
    if err.errno == errno.EADDRINUSE:
        return "another server holds it (systemd-resolved, dnsmasq?); stop it or choose another --listen"
    if err.errno == errno.EADDRNOTAVAIL:
        return "no interface of this machine has that address; check --listen"
    return "check --listen"


def bound_address(sock: socket.socket) -> Address:
    host, port = sock.getsockname()[:2]
    return Address(host, port)


class UdpServer:
    """Worker threads blocking on one UDP socket."""

    def __init__(self, sock: socket.socket, handler: Handler, workers: int = UDP_WORKERS,
                 rate_limit: RateLimit | None = None, batch: int = datagrams.BATCH):
        self.sock = sock
        self.address = bound_address(sock)
        self._handler = handler
        self.rate_limit = rate_limit  # replaced whole on reload
        self._limited = Sparse(log, f"udp {self.address}: rate limit: dropping or truncating responses")
        self._failed = Sparse(log, f"udp {self.address}: handler failed", level=logging.ERROR)
        self._running = True
        self._close_when_done = False  # `stop` left the socket to the last worker (see there)
        self._closing = threading.Lock()  # `_close_when_done` and `_live` together
        self._live = workers  # batched workers not yet out of their loop
        self._batch = batch if datagrams.available() else 0
        self._threads = [
            threading.Thread(target=self._serve_batched if self._batch else self._serve,
                             name=f"udp {self.address} #{i}", daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        handle, fast, send = self._handler.handle, self._handler.fast, self._send
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        while self._running:
            try:
                data, peer = recvfrom(MAX_UDP_MESSAGE)
            except OSError:
                if not self._running:
                    return
                continue  # e.g. ECONNREFUSED from an earlier sendto: not fatal
            if not data:
                continue  # shutdown() wakes us with nothing: the loop condition ends it
            client = peer[0]
            try:
                answer = fast(data, client)
                if answer is not None:  # the hot path: the answer index, no full parse
                    limit = self.rate_limit
                    if limit is None or limit.exempt_client(client):
                        try:
                            sendto(answer, peer)
                        except OSError:
                            pass  # the client went away; UDP has nobody to tell
                    else:
                        send(answer, peer, data)
                    continue
                handle(data, client, "udp", functools.partial(send, peer=peer, query=data))
            except Exception:  # a bug must cost one answer, never a worker
                self._failed(exc_info=True)

    def _serve_batched(self) -> None:
        """`_serve` with many datagrams per system call (Rule 1, datagrams.py), in a fair order (Rule 5)."""
        handle, fast, send = self._handler.handle, self._handler.fast, self._send
        batch = datagrams.Batch(self.sock, self._batch)
        receive, source, answer, flush, peers = batch.receive, batch.peer, batch.answer, batch.flush, batch.peers
        queue, step = FairQueue(), self._batch
        while self._running:
            todo = None
            room = queue.room()
            queue.begin()
            while room > 0:  # read all that waits (Rule 5)
                try:
                    received = receive(not queue.size, room)  # block only when nothing waits here either
                except OSError:
                    break  # e.g. ECONNREFUSED from an earlier send, or the socket shut down: the loop decides
                if not queue.size and len(received) < step:
                    todo = received  # all that waited, and nothing else: no order to keep
                    break
                queue.add(received, batch.large_bytes)
                if len(received) < step:
                    break
                room = queue.room()
            if todo is None:
                todo = queue.take(step)
            for data, name in todo:
                try:
                    peer = peers.get(name) or source(name)
                    client = peer[0]
                    found = fast(data, client)
                    if found is not None:
                        limit = self.rate_limit
                        if limit is None or limit.exempt_client(client):
                            answer(name, found)  # sent with the others of this batch
                        else:
                            send(found, peer, data)
                        continue
                    handle(data, client, "udp", functools.partial(send, peer=peer, query=data))
                except Exception:  # a bug must cost one answer, never a worker
                    self._failed(exc_info=True)
            flush()
        with self._closing:
            self._live -= 1
            if self._close_when_done and not self._live:
                self.sock.close()  # the last one out, after `stop` gave up waiting

    def _send(self, answer: bytes, peer: tuple, query: bytes) -> None:
        """Send `answer` as rate limiting lets it go (Rule 3): whole, truncated, or not at all."""
        limit = self.rate_limit
        if limit is not None and not limit.exempt_client(peer[0]):
            verdict = limit.check(peer[0], response_key(answer), time.monotonic())
            if verdict is not Verdict.SEND:
                self._limited()
                if verdict is Verdict.DROP:
                    return
                answer = truncated(answer)
        try:
            self.sock.sendto(answer, peer)
        except OSError:
            pass  # the client went away; UDP has nobody to tell

    def stop(self) -> None:
        self._running = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the workers blocked in recvfrom
        except OSError:
            pass
        for thread in self._threads:  # batched workers call the C library with the descriptor's number:
            if thread.is_alive() and thread is not threading.current_thread():  # it must not be reused under them
                thread.join(STOP_TIMEOUT)
        # A worker still in a handler: closing now would free the number for the next socket (a new bridge
        # address) while the worker may still call recvmmsg or sendmmsg on it. The last one out closes it;
        # until then it stays shut down.
        with self._closing:
            if self._batch and self._live and any(thread.is_alive() for thread in self._threads):
                self._close_when_done = True
                log.warning("udp %s: a worker is still busy; its socket is closed when it is done", self.address)
                return
        self.sock.close()


class TcpServer:
    """An accept loop and a bounded pool of connection handlers (Rule 2)."""

    def __init__(
        self,
        sock: socket.socket,
        handler: Handler,
        *,
        max_connections: int = MAX_TCP_CONNECTIONS,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
        read_timeout: float = TCP_READ_TIMEOUT,
        reserved: int = TCP_RESERVED,
        known: Callable[[str], bool] = lambda client: False,
    ):
        self.sock = sock
        self.address = bound_address(sock)
        self._handler = handler
        self._idle = idle_timeout
        self._read = read_timeout
        self._known = known
        self._slots = Slots(max_connections, reserved)
        self._pool = DaemonPool(max_connections, f"tcp {self.address}")
        self._stopping = threading.Event()
        self._failed = Sparse(log, f"tcp {self.address}: handler failed", level=logging.ERROR)
        accept = (sock, self._take, self._stopping, f"tcp {self.address}")
        self._thread = threading.Thread(target=accept_forever, args=accept, name=f"tcp accept {self.address}",
                                        daemon=True)

    @property
    def refused(self) -> int:
        """New clients closed at once: no slot free and none to free."""
        return self._slots.refused

    @property
    def evicted(self) -> int:
        """Open connections closed to make room for a new client."""
        return self._slots.evicted

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._slots)

    def start(self) -> None:
        self._thread.start()

    def _take(self, conn: socket.socket, client: str) -> None:
        """A new connection from the accept loop: a slot, then a thread (or a clean close)."""
        try:
            known = bool(self._known(client))
        except Exception:  # the table's business; a stranger it is
            known = False
        if not self._slots.admit(conn, known):
            conn.close()  # over the cap and nobody to make room: a clean close, the client may retry
            return
        try:
            self._pool.submit(functools.partial(self._serve, conn, client))
        except RuntimeError:  # pool.Unavailable: no thread for it; the accept loop backs off
            self._slots.release(conn)
            conn.close()
            raise

    def _serve(self, conn: socket.socket, client: str) -> None:
        send_lock = threading.Lock()

        def reply(answer: bytes) -> None:
            with send_lock:
                try:
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
                except OSError:
                    pass

        try:
            while not self._stopping.is_set():
                head = self._recv(conn, 2, self._idle)
                if head is None:
                    return
                (size,) = struct.unpack("!H", head)
                if size < MIN_MESSAGE:
                    return  # a zero or impossible length: nothing sane follows
                data = self._recv(conn, size, self._read)
                if data is None:
                    return
                self._slots.delivered(conn)
                try:
                    self._handler.handle(data, client, "tcp", reply)
                except Exception:
                    self._failed(exc_info=True)
        finally:
            self._slots.release(conn)
            with send_lock:
                conn.close()

    @staticmethod
    def _recv(conn: socket.socket, size: int, timeout: float) -> bytes | None:
        """Exactly `size` bytes within `timeout` seconds, or None (timeout, EOF, error)."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        try:
            while len(buf) < size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                conn.settimeout(remaining)  # a deadline, so a byte at a time cannot stretch it
                chunk = conn.recv(size - len(buf))
                if not chunk:
                    return None
                buf += chunk
        except OSError:
            return None
        return bytes(buf)

    def stop(self) -> None:
        self._stopping.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.sock.close()
        self._slots.close_all()
        self._pool.close()
