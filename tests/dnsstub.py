"""A stub upstream DNS server on loopback, for tests and benchmarks.

It answers from a small zone given as text, can stay silent, fail, truncate
or stall on TCP on purpose, truncates large UDP answers like a real server,
can hand every reply to a test to rewrite (`rewrite`, for hostile upstreams),
and records every query it saw, bytes included. Never a real resolver: tests
must not leave loopback.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import QTYPE, RCODE, RR, DNSHeader, DNSRecord


@dataclass
class Seen:
    transport: str
    qname: str
    qtype: str
    ident: int
    raw: bytes = b""  # the query as it arrived


# A test's hand in the reply: (the query parsed, the reply the stub would send, transport) -> the bytes to send
# instead, or None to send nothing.
Rewrite = Callable[[DNSRecord, bytes, str], bytes | None]


@dataclass
class StubUpstream:
    zone: str = ""
    mode: str = "answer"  # "answer", "silent", "servfail", "refused", "truncate" (UDP: TC and no records)
    delay: float = 0.0  # seconds before each reply
    host: str = "127.0.0.1"
    tcp_stall: bool = False  # TCP: read the query, then never answer (until close)
    rewrite: Rewrite | None = None
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.records = RR.fromZone(self.zone) if self.zone.strip() else []
        self.udp, self.tcp = self._bind_pair()
        self.port = self.udp.getsockname()[1]
        self._running = True
        self._closed = threading.Event()
        for target in (self._serve_udp, self._serve_tcp):
            threading.Thread(target=target, daemon=True).start()

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on one free port (the TCP twin of a free UDP port may be taken)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise OSError("no port free for both UDP and TCP")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def answer(self, data: bytes, transport: str) -> bytes | None:
        query = DNSRecord.parse(data)
        self.seen.append(Seen(transport, str(query.q.qname).lower(), QTYPE[query.q.qtype], query.header.id, data))
        if self.delay:
            time.sleep(self.delay)
        if self.mode == "silent":
            return None
        if transport == "udp" and self.mode == "truncate":
            return self._finish(query, _truncated(query.reply()), transport)
        reply = query.reply()
        reply.header.aa = 0
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif self.mode == "refused":
            reply.header.rcode = RCODE.REFUSED
        else:
            matches = [rr for rr in self.records if rr.rname == query.q.qname]
            for rr in matches:
                if rr.rtype == query.q.qtype:
                    reply.add_answer(rr)
            if not matches:
                reply.header.rcode = RCODE.NXDOMAIN
                qname = str(query.q.qname).lower()
                for rr in self.records:
                    if rr.rtype == QTYPE.SOA and qname.endswith("." + str(rr.rname).lower()):
                        reply.add_auth(rr)  # RFC 2308: the SOA tells how long the absence may be kept
        packed = bytes(reply.pack())
        if transport == "udp" and len(packed) > 512:
            packed = _truncated(reply)
        return self._finish(query, packed, transport)

    def _finish(self, query: DNSRecord, reply: bytes, transport: str) -> bytes | None:
        return reply if self.rewrite is None else self.rewrite(query, reply, transport)

    def _serve_udp(self) -> None:
        while self._running:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            if not data:
                continue
            threading.Thread(target=self._udp_one, args=(data, peer), daemon=True).start()

    def _udp_one(self, data: bytes, peer: tuple) -> None:
        answer = self.answer(data, "udp")
        if answer is not None and self._running:
            try:
                self.udp.sendto(answer, peer)
            except OSError:
                pass

    def _serve_tcp(self) -> None:
        while self._running:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_one, args=(conn,), daemon=True).start()

    def _tcp_one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                head = conn.recv(2)
                size = struct.unpack("!H", head)[0]
                data = b""
                while len(data) < size:
                    chunk = conn.recv(size - len(data))
                    if not chunk:
                        return
                    data += chunk
                if self.tcp_stall:
                    self.seen.append(Seen("tcp", "", "", struct.unpack_from("!H", data)[0], data))
                    self._closed.wait()
                    return
                answer = self.answer(data, "tcp")
                if answer is not None:
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
            except (OSError, struct.error):
                return

    def close(self) -> None:
        self._running = False
        self._closed.set()
        for sock in (self.udp, self.tcp):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _truncated(reply: DNSRecord) -> bytes:
    """`reply` cut to its header and question with TC set, as BIND and Unbound send it (dnslib drops the question)."""
    cut = DNSRecord(DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap, tc=1), q=reply.q)
    return bytes(cut.pack())
