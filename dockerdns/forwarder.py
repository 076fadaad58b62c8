"""The forwarder: names that are not ours go to the upstream servers.

Rule 1: forwarding never runs on the thread that answers local names. A
        query is handed to a bounded pool; when `MAX_IN_FLIGHT` queries are
        already waiting on upstreams, the caller is told at once and answers
        SERVFAIL, so a dead upstream costs in-zone clients nothing.
Rule 2: each upstream gets `UPSTREAM_TIMEOUT`, then the next one is asked;
        all of it ends within `TOTAL_TIMEOUT`, so a client always hears
        back (SERVFAIL when nobody answered) before its own timeout.
Rule 3: the upstream sees a fresh random id on a fresh socket (port
        randomisation by the kernel, RFC 5452); an answer must match the id
        and the question, else it is ignored. A truncated answer is fetched
        again over TCP.
Rule 4: forwarding never loops back into dockerdns (DESIGN.md). Config drops
        upstreams that are our own listen addresses, but another address of
        this machine (eth0, the bridge gateway, an address that DNAT brings
        back) still reaches a socket bound to 0.0.0.0. So every packet in
        flight upstream is remembered, byte for byte, and the responder asks
        `is_own` before forwarding: our own query coming back is answered
        SERVFAIL at once, never forwarded again, and the upstream that led
        there is skipped for `LOOP_HOLD` seconds, with one warning.

Thread-safety: `submit`, `forward` and `is_own` may be called from any
thread; `upstreams` is replaced whole by a single assignment on reload. The
packets in flight are added and removed under a lock; `is_own` reads them
with one dict lookup.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

from dnslib import RCODE, DNSRecord

from .settings import Address
from .pool import DaemonPool

log = logging.getLogger("dockerdns.forward")

UPSTREAM_TIMEOUT = 1.0  # seconds one upstream gets before the next is asked
TOTAL_TIMEOUT = 3.0  # seconds for all upstreams together; glibc's stub gives up at 5
MAX_IN_FLIGHT = 128  # queries waiting on upstreams at once
MAX_MESSAGE = 65535
LOOP_HOLD = 60.0  # seconds an upstream that led back to us is skipped

Done = Callable[[bytes | None], None]


class Forwarder:
    """Asks upstream servers, off the answering threads."""

    def __init__(
        self,
        upstreams: Sequence[Address],
        *,
        timeout: float = UPSTREAM_TIMEOUT,
        total: float = TOTAL_TIMEOUT,
        max_in_flight: int = MAX_IN_FLIGHT,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.upstreams: tuple[Address, ...] = tuple(upstreams)
        self.timeout = timeout
        self.total = total
        self._rng = rng or random.SystemRandom()
        self._clock = clock
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool = DaemonPool(max_in_flight, "forward")
        self._lock = threading.Lock()
        self._in_flight: dict[bytes, Address] = {}  # packet sent upstream -> the upstream (Rule 4)
        self.looping: dict[Address, float] = {}  # upstream -> until when it is skipped (clock time)
        self.failures = 0
        self.forwarded = 0
        self.loops = 0  # our own queries that came back

    def submit(self, query: DNSRecord, data: bytes, done: Done) -> bool:
        """Forward `data` (the raw query) in the background, then call `done`.

        `done` gets the upstream's answer with the client's id, or None when
        no upstream answered. Returns False, without calling `done`, when too
        many queries are in flight already.
        """
        if not self._slots.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                done(self.forward(query, data))
            except Exception:  # a reply that cannot be sent must not kill the pool
                log.exception("forward: unexpected error")
            finally:
                self._slots.release()

        try:
            self._pool.submit(run)
        except RuntimeError:  # shutting down
            self._slots.release()
            return False
        return True

    def forward(self, query: DNSRecord, data: bytes) -> bytes | None:
        """The first good upstream answer to `data`, with the client's id; None if none came."""
        self.forwarded += 1
        deadline = time.monotonic() + self.total
        fallback: bytes | None = None
        for upstream in self.upstreams:
            if self.looping and self.looping.get(upstream, 0.0) > self._clock():
                continue  # it leads back to us (Rule 4)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            answer = self._ask(upstream, query, data, min(self.timeout, remaining))
            if answer is None:
                continue
            rcode = answer[3] & 0x0F
            if rcode in (RCODE.SERVFAIL, RCODE.REFUSED):
                fallback = fallback or answer  # another upstream may do better
                continue
            return answer
        if fallback is None:
            self.failures += 1
        return fallback

    def is_own(self, data: bytes) -> bool:
        """True when the query `data` is one this forwarder sent upstream and is still waiting on.

        Then the upstream it went to leads back to this dockerdns: it is
        marked looping (skipped for LOOP_HOLD seconds, one warning), and the
        caller must not forward `data` again (Rule 4).
        """
        upstream = self._in_flight.get(data)
        if upstream is None:
            return False
        self.loops += 1
        now = self._clock()
        if self.looping.get(upstream, 0.0) <= now:
            log.warning("forward: upstream %s leads back to dockerdns itself; skipping it for %.0f s",
                        upstream, LOOP_HOLD)
        # Replaced whole: `forward` in other threads reads it without the lock.
        self.looping = {**self.looping, upstream: now + LOOP_HOLD}
        return True

    def close(self) -> None:
        self._pool.close()

    def _ask(self, upstream: Address, query: DNSRecord, data: bytes, timeout: float) -> bytes | None:
        ident, packet = self._remember(upstream, data)
        try:
            answer = _udp_exchange(upstream, packet, ident, timeout)
            if answer is not None and answer[2] & 0x02:  # TC: ask again over TCP
                answer = _tcp_exchange(upstream, packet, timeout)
        except OSError as err:
            log.debug("forward: %s: %s", upstream, err)
            return None
        finally:
            with self._lock:
                del self._in_flight[packet]
        if answer is None or not _matches(answer, ident, query):
            return None
        return data[:2] + answer[2:]

    def _remember(self, upstream: Address, data: bytes) -> tuple[int, bytes]:
        """A fresh id for `data` and the packet to send, remembered as in flight until `_ask` ends.

        The id differs from the client's, so a client repeating its own query
        is never taken for ours; and from every packet in flight, so each
        packet names one upstream.
        """
        with self._lock:
            while True:
                ident = self._rng.randrange(0x10000)
                packet = struct.pack("!H", ident) + data[2:]
                if data[:2] != packet[:2] and packet not in self._in_flight:
                    self._in_flight[packet] = upstream
                    return ident, packet


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp_exchange(upstream: Address, packet: bytes, ident: int, timeout: float) -> bytes | None:
    deadline = time.monotonic() + timeout
    with socket.socket(_family(upstream.host), socket.SOCK_DGRAM) as sock:
        sock.connect((upstream.host, upstream.port))  # only the upstream's datagrams arrive
        sock.send(packet)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            try:
                answer = sock.recv(MAX_MESSAGE)
            except socket.timeout:
                return None
            if len(answer) >= 12 and struct.unpack_from("!H", answer)[0] == ident:
                return answer


def _tcp_exchange(upstream: Address, packet: bytes, timeout: float) -> bytes | None:
    deadline = time.monotonic() + timeout
    with socket.create_connection((upstream.host, upstream.port), timeout=timeout) as sock:
        sock.sendall(struct.pack("!H", len(packet)) + packet)
        head = _recv_exact(sock, 2, deadline)
        if head is None:
            return None
        return _recv_exact(sock, struct.unpack("!H", head)[0], deadline)


def _recv_exact(sock: socket.socket, size: int, deadline: float) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(size - len(chunks))
        except socket.timeout:
            return None
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _matches(answer: bytes, ident: int, query: DNSRecord) -> bool:
    """Same id, a response, and the question we asked (RFC 5452 section 9.1)."""
    try:
        parsed = DNSRecord.parse(answer)
    except Exception:
        return False
    if parsed.header.id != ident or not parsed.header.qr:
        return False
    if not parsed.questions:
        return parsed.header.rcode != RCODE.NOERROR  # some servers drop the question on errors
    q, asked = parsed.q, query.q
    return q.qtype == asked.qtype and q.qclass == asked.qclass and str(q.qname).lower() == str(asked.qname).lower()
