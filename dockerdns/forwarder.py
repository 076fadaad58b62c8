"""The forwarder: names that are not ours go to the upstream servers.

Rule 1: forwarding never runs on the thread that answers local names. A
        question is handed to a bounded pool; when `MAX_IN_FLIGHT` questions
        are already waiting on upstreams, the caller is told at once and
        answers SERVFAIL, so a dead upstream costs in-zone clients nothing.
Rule 2: one deadline, passed down. A forward ends within `TOTAL_TIMEOUT`
        whatever the upstreams do, and each upstream gets `UPSTREAM_TIMEOUT`
        of it, its TCP retry after a truncated answer included: the retry
        gets only what is left of both (DESIGN.md: SERVFAIL after 3 s at
        most).
Rule 3: the upstream never sees the client's bytes. We send a query of our
        own, built from the question (name, type, class, RD and CD) and our
        own OPT (payload `EDNS_PAYLOAD`, DO copied), with a fresh random id
        on a fresh socket (port randomisation by the kernel, RFC 5452). A
        reply counts only when it has our id, QR, and exactly our question
        (RFC 5452 section 9.1; a reply without a question is ignored). A
        truncated reply is fetched again over TCP.
Rule 4: the client gets only what answers its question: from the answer
        section, the chain from the name asked (CNAMEs, RFC 1034 section
        3.6.2) and the RRset it ends in; for NXDOMAIN and NODATA, the SOA
        in authority that encloses the name (RFC 2308 section 3); with DO,
        the signatures and denial proofs of those (RFC 4035 section 3.1).
        Records for other names, NS and glue, and trailing bytes are
        dropped. A TTL above `max_ttl` is cut to it, and one with the top
        bit set counts as 0 (RFC 2181 section 8). The header, the question
        (byte for byte) and the OPT are the client's own.
Rule 5: identical questions in flight (name without case, type, class, RD,
        CD, DO) share one upstream exchange: every waiting client gets the
        result with its own id and its own question. A spoofer's odds do not
        grow with the number of copies a client sends.
Rule 6: forwarding never loops back into dockerdns (DESIGN.md). Config drops
        upstreams that are our own listen addresses, but another address of
        this machine (eth0, the bridge gateway, an address that DNAT brings
        back) still reaches a socket bound to 0.0.0.0. So every query we
        send ends in an EDNS option (`LOOP_OPTION`, from the range RFC 6891
        section 9 leaves for local use) that holds a random nonce of that
        query alone, and the responder asks `is_own` before forwarding: our
        own query coming back (its nonce in flight, its id ours) is answered
        SERVFAIL at once, never forwarded again, and the upstream that led
        there is skipped for `LOOP_HOLD` seconds, with one warning. Clients
        never see our queries, so no client can make a query look like ours.

Thread-safety: `submit`, `forward` and `is_own` may be called from any
thread; `upstreams` and `max_ttl` are replaced whole by single assignments on
reload. Queries in flight and waiting clients are added and removed under a
lock; `is_own` reads them with one dict lookup.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dnslib import QTYPE, RCODE, RR, SOA, DNSHeader, DNSLabel, DNSQuestion, DNSRecord

from . import wire
from .pool import DaemonPool
from .settings import DEFAULT_FORWARD_MAX_TTL, Address

log = logging.getLogger("dockerdns.forward")

UPSTREAM_TIMEOUT = 1.0  # seconds one upstream gets before the next is asked, its TCP retry included
TOTAL_TIMEOUT = 3.0  # seconds for all upstreams together; glibc's stub gives up at 5
MAX_IN_FLIGHT = 128  # distinct questions waiting on upstreams at once
MAX_SHARING = 1024  # clients waiting on a question another client asked first; more get SERVFAIL at once
MAX_MESSAGE = 65535
LOOP_HOLD = 60.0  # seconds an upstream that led back to us is skipped
EDNS_PAYLOAD = 1232  # bytes: our UDP payload size, upstream and to clients (DNS flag day 2020)
LOOP_OPTION = 65131  # EDNS option code of our loop nonce: RFC 6891 section 9, local/experimental use
NONCE_LEN = 16  # bytes of randomness a client would have to guess
MAX_CHAIN = 16  # CNAMEs followed in an upstream answer
TTL_TOP_BIT = 0x80000000  # RFC 2181 section 8: such a TTL is treated as 0

HEADER_LEN = 12
OPT_TTL_DO = 0x8000  # the DO bit in an OPT record's TTL field (RFC 3225)
_LOOP_MARK = struct.pack("!HH", LOOP_OPTION, NONCE_LEN)
_NEGATIVE_PROOFS = frozenset((QTYPE.NSEC, QTYPE.NSEC3))

Done = Callable[[bytes | None], None]
Labels = tuple[bytes, ...]


@dataclass(frozen=True)
class Question:
    """What one upstream exchange asks; clients asking the same share it (Rule 5)."""

    labels: Labels  # lower-case; each client gets its own case back in its answer
    qtype: int
    qclass: int
    rd: bool
    cd: bool
    do: bool


@dataclass(frozen=True)
class Result:
    """What answers a question, ready to be given to each client that asked it (Rule 4)."""

    rcode: int
    ad: bool
    answers: int  # records in the answer section
    authorities: int  # records in the authority section
    body: bytes  # both sections packed, to follow a question of the asked name's length


@dataclass(frozen=True)
class _Sent:
    """A query of ours in flight: where it went, and the id it carries (Rule 6)."""

    upstream: Address
    ident: bytes


_Waiter = tuple[DNSRecord, Done]


class Forwarder:
    """Asks upstream servers, off the answering threads."""

    def __init__(
        self,
        upstreams: Sequence[Address],
        *,
        timeout: float = UPSTREAM_TIMEOUT,
        total: float = TOTAL_TIMEOUT,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_ttl: int = DEFAULT_FORWARD_MAX_TTL,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.upstreams: tuple[Address, ...] = tuple(upstreams)
        self.timeout = timeout
        self.total = total
        self.max_ttl = max_ttl
        self._rng = rng or random.SystemRandom()
        self._clock = clock
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._pool = DaemonPool(max_in_flight, "forward")
        self._lock = threading.Lock()
        self._in_flight: dict[bytes, _Sent] = {}  # nonce of a query sent upstream -> where (Rule 6)
        self._waiting: dict[Question, list[_Waiter]] = {}  # question being asked -> its clients (Rule 5)
        self._sharing = 0  # clients in `_waiting` after the first of their question
        self.looping: dict[Address, float] = {}  # upstream -> until when it is skipped (clock time)
        self.failures = 0  # client queries no upstream answered
        self.forwarded = 0  # client queries forwarded
        self.exchanges = 0  # questions asked upstream (forwarded minus those that shared one)
        self.loops = 0  # our own queries that came back

    def submit(self, query: DNSRecord, data: bytes, done: Done) -> bool:
        """Forward the question of `query` in the background, then call `done`.

        `done` gets the answer for this client (its id, its question as it
        asked it), or None when no upstream answered. Returns False, without
        calling `done`, when too many questions are in flight already.
        `data` is the client's raw query; only its parsed form is used (Rule 3).
        """
        question = question_of(query)
        if question is None:
            return False
        with self._lock:
            waiters = self._waiting.get(question)
            if waiters is not None:  # the same question is upstream already (Rule 5)
                if self._sharing >= MAX_SHARING:
                    return False
                waiters.append((query, done))
                self._sharing += 1
                self.forwarded += 1
                return True
            if not self._slots.acquire(blocking=False):
                return False
            self._waiting[question] = [(query, done)]
            self.forwarded += 1

        def run() -> None:
            result: Result | None = None
            try:
                result = self._exchange(question)
            except Exception:
                log.exception("forward: unexpected error")
            finally:
                with self._lock:
                    waiting = self._waiting.pop(question)
                    self._sharing -= len(waiting) - 1
                    if result is None:
                        self.failures += len(waiting)
                self._slots.release()
            self._answer(waiting, result)

        try:
            self._pool.submit(run)
        except RuntimeError:  # shutting down
            with self._lock:
                waiting = self._waiting.pop(question)
                self._sharing -= len(waiting) - 1
            self._slots.release()
            self._answer(waiting[1:], None)  # the first is ours: the caller answers it
            return False
        return True

    def forward(self, query: DNSRecord, data: bytes) -> bytes | None:
        """The answer to `query` for this client, on this thread; None if no upstream answered."""
        self.forwarded += 1
        question = question_of(query)
        result = self._exchange(question) if question is not None else None
        if result is None:
            self.failures += 1
            return None
        return answer_for(query, result)

    def is_own(self, data: bytes) -> bool:
        """True when the query `data` is one this forwarder sent upstream and is still waiting on.

        Then the upstream it went to leads back to this dockerdns: it is
        marked looping (skipped for LOOP_HOLD seconds, one warning), and the
        caller must not forward `data` again (Rule 6). Only our own queries
        end in the nonce option; a client's query never does.
        """
        if not self._in_flight or data[-NONCE_LEN - 4:-NONCE_LEN] != _LOOP_MARK:
            return False
        sent = self._in_flight.get(data[-NONCE_LEN:])
        if sent is None or sent.ident != data[:2]:
            return False
        self.loops += 1
        now = self._clock()
        if self.looping.get(sent.upstream, 0.0) <= now:
            log.warning("forward: upstream %s leads back to dockerdns itself; skipping it for %.0f s",
                        sent.upstream, LOOP_HOLD)
        # Replaced whole: `_exchange` in other threads reads it without the lock.
        self.looping = {**self.looping, sent.upstream: now + LOOP_HOLD}
        return True

    def close(self) -> None:
        self._pool.close()

    def _answer(self, waiting: list[_Waiter], result: Result | None) -> None:
        for query, done in waiting:
            try:
                done(None if result is None else answer_for(query, result))
            except Exception:  # a reply that cannot be sent must not keep the others waiting
                log.exception("forward: unexpected error")

    def _exchange(self, question: Question) -> Result | None:
        """The first good upstream result for `question` within the total deadline (Rule 2)."""
        self.exchanges += 1
        deadline = time.monotonic() + self.total
        fallback: Result | None = None
        for upstream in self.upstreams:
            if self.looping and self.looping.get(upstream, 0.0) > self._clock():
                continue  # it leads back to us (Rule 6)
            now = time.monotonic()
            if now >= deadline:
                break
            reply = self._ask(upstream, question, min(now + self.timeout, deadline))
            if reply is None:
                continue
            if reply.header.rcode not in (RCODE.NOERROR, RCODE.NXDOMAIN):
                fallback = fallback or _failed(reply.header.rcode)  # another upstream may do better
                continue
            return answering(reply, question, self.max_ttl)
        return fallback

    def _ask(self, upstream: Address, question: Question, deadline: float) -> DNSRecord | None:
        """One upstream's reply to `question` by `deadline`, over UDP and, when truncated, TCP."""
        nonce = os.urandom(NONCE_LEN)
        ident = self._rng.randrange(0x10000)
        packet = query_bytes(question, ident, nonce)
        with self._lock:
            self._in_flight[nonce] = _Sent(upstream, packet[:2])

        def accept(data: bytes, udp: bool = False) -> DNSRecord | None:
            reply = _parse_reply(data)
            if reply is None or _matches(reply, ident, question):
                return reply
            # Some servers drop the question from a truncated UDP reply. Nothing
            # of it is used: it only sends us to TCP, where the reply is checked.
            header = reply.header
            truncated = udp and header.tc and header.qr and header.id == ident and not reply.questions
            return reply if truncated else None

        try:
            reply = _udp_exchange(upstream, packet, deadline, lambda data: accept(data, udp=True))
            if reply is not None and reply.header.tc:  # RFC 7766: ask again over TCP, in the time left
                reply = _tcp_exchange(upstream, packet, deadline, accept)
        except OSError as err:
            log.debug("forward: %s: %s", upstream, err)
            return None
        finally:
            with self._lock:
                del self._in_flight[nonce]
        return reply


# --- Questions and answers (pure) ----------------------------------------------


def question_of(query: DNSRecord) -> Question | None:
    """The question a client's query asks upstream; None without one."""
    if not query.questions:
        return None
    q = query.q
    labels = tuple(label.lower() for label in q.qname.label)
    return Question(labels, q.qtype, q.qclass, bool(query.header.rd), bool(query.header.cd), _do(query))


def query_bytes(question: Question, ident: int, nonce: bytes) -> bytes:
    """Our query for `question` (Rule 3): header, question, and an OPT ending in the loop nonce (Rule 6)."""
    flags = (0x0100 if question.rd else 0) | (0x0010 if question.cd else 0)
    option = _LOOP_MARK + nonce
    opt = struct.pack("!BHHIH", 0, QTYPE.OPT, EDNS_PAYLOAD, OPT_TTL_DO if question.do else 0, len(option))
    return (struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 1) + _wire_name(question.labels)
            + struct.pack("!HH", question.qtype, question.qclass) + opt + option)


def answering(reply: DNSRecord, question: Question, max_ttl: int) -> Result:
    """What of `reply` answers `question` (Rule 4), TTLs capped at `max_ttl`, packed once for every client."""
    qclass = question.qclass
    answers = [(_key(rr.rname), rr) for rr in reply.rr if rr.rclass == qclass]
    kept: list[RR] = []
    rrsets: set[tuple[Labels, int]] = set()  # (owner, type) of what is kept, for their signatures
    name, found = question.labels, False
    seen = {name}
    for _ in range(MAX_CHAIN + 1):
        final = [rr for owner, rr in answers if owner == name and rr.rtype != QTYPE.RRSIG
                 and (rr.rtype == question.qtype or question.qtype == QTYPE.ANY)]
        if final:
            kept += final
            rrsets.update((name, rr.rtype) for rr in final)
            found = True
            break
        cname = next((rr for owner, rr in answers if owner == name and rr.rtype == QTYPE.CNAME), None)
        if cname is None:
            break
        kept.append(cname)
        rrsets.add((name, QTYPE.CNAME))
        name = _key(cname.rdata.label)
        if name in seen:
            break  # a loop: the chain so far is the answer
        seen.add(name)
    authority: list[RR] = []
    proofs_under: Labels | None = None
    if not found and reply.header.rcode in (RCODE.NOERROR, RCODE.NXDOMAIN):
        # RFC 2308 section 3: the SOA of the zone the last name of the chain is in.
        soa = next((rr for rr in reply.auth if rr.rtype == QTYPE.SOA and rr.rclass == qclass
                    and _under(name, _key(rr.rname))), None)
        if soa is not None:
            authority.append(soa)
            proofs_under = _key(soa.rname)
            rrsets.add((proofs_under, QTYPE.SOA))
    if question.do:
        # RFC 4035 section 3.1: the signatures of what is kept, and the proofs of denial (or of a
        # wildcard's expansion) from the zone that signed it.
        signatures = [rr for owner, rr in answers if rr.rtype == QTYPE.RRSIG and (owner, rr.rdata.covered) in rrsets]
        kept += signatures
        if found and signatures:
            proofs_under = _key(signatures[-1].rdata.name)
        if proofs_under is not None:
            under = proofs_under
            proofs = [rr for rr in reply.auth if rr.rtype in _NEGATIVE_PROOFS and _under(_key(rr.rname), under)]
            owned = {(_key(rr.rname), rr.rtype) for rr in proofs + authority}
            authority += proofs + [rr for rr in reply.auth if rr.rtype == QTYPE.RRSIG
                                   and (_key(rr.rname), rr.rdata.covered) in owned]
    # Packed once, behind the question in lower case: every client's question has the same
    # length, so the compression pointers into it hold for each. Records owned by the name
    # asked are written with the question's name, so they point at it and show the client's case.
    qname = DNSLabel(question.labels)
    asked = {question.labels}
    packed = DNSRecord(DNSHeader(), q=DNSQuestion(qname, question.qtype, qclass),
                       rr=[_fitted(rr, max_ttl, qname, asked) for rr in kept],
                       auth=[_fitted(rr, max_ttl, qname, asked) for rr in authority])
    body = bytes(packed.pack())[HEADER_LEN + _question_length(question.labels):]
    return Result(reply.header.rcode, bool(reply.header.ad), len(kept), len(authority), body)


def answer_for(query: DNSRecord, result: Result) -> bytes:
    """`result` as the answer to this client's `query`: its id, flags, question (as asked) and OPT (Rule 4)."""
    do = _do(query)
    header = query.header
    flags = 0x8000 | (header.opcode << 11) | (header.rd << 8) | 0x0080 | (header.cd << 4) | result.rcode
    if result.ad and (do or header.ad):  # RFC 6840 section 5.8: AD only to a client that asked (DO or AD)
        flags |= 0x0020
    q = query.q
    question = _wire_name(q.qname.label) + struct.pack("!HH", q.qtype, q.qclass)
    opt = b""
    if _opt(query) is not None:
        opt = struct.pack("!BHHIH", 0, QTYPE.OPT, EDNS_PAYLOAD, OPT_TTL_DO if do else 0, 0)
    return (struct.pack("!HHHHHH", header.id, flags, 1, result.answers, result.authorities, 1 if opt else 0)
            + question + result.body + opt)


def _key(name: DNSLabel) -> Labels:
    """A name as lower-case labels, for comparing without dnslib's slower DNSLabel equality."""
    return tuple(label.lower() for label in name.label)


def _wire_name(labels: Sequence[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def _question_length(labels: Labels) -> int:
    return sum(len(label) + 1 for label in labels) + 1 + 4


def _failed(rcode: int) -> Result:
    """An upstream's refusal or failure, passed on as SERVFAIL or REFUSED; anything else is SERVFAIL."""
    return Result(rcode if rcode == RCODE.REFUSED else RCODE.SERVFAIL, False, 0, 0, b"")


def _fitted(rr: RR, max_ttl: int, qname: DNSLabel, asked: set[Labels]) -> RR:
    """`rr` with its TTLs capped, owned by `qname` when it is owned by the name asked."""
    ttl = _ttl(rr.ttl, max_ttl)
    rdata = rr.rdata
    if rr.rtype == QTYPE.SOA:  # the minimum bounds negative caching (RFC 2308 section 5): a TTL too
        serial, refresh, retry, expire, minimum = rdata.times
        rdata = SOA(rdata.mname, rdata.rname, (serial, refresh, retry, expire, _ttl(minimum, max_ttl)))
    owner = qname if _key(rr.rname) in asked else rr.rname
    if ttl == rr.ttl and rdata is rr.rdata and owner is rr.rname:
        return rr
    return RR(owner, rr.rtype, rr.rclass, ttl, rdata)


def _ttl(ttl: int, max_ttl: int) -> int:
    return 0 if ttl & TTL_TOP_BIT else min(ttl, max_ttl)


def _opt(query: DNSRecord) -> RR | None:
    return next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)


def _do(query: DNSRecord) -> bool:
    opt = _opt(query)
    return opt is not None and bool(opt.ttl & OPT_TTL_DO)


def _under(name: Labels, zone: Labels) -> bool:
    """`name` is `zone` or below it (both lower-case); everything is under the root."""
    return len(zone) <= len(name) and name[len(name) - len(zone):] == zone


def _parse_reply(data: bytes) -> DNSRecord | None:
    """An upstream's reply parsed, or None. The one place upstream bytes are decoded.

    Its names are read with bounded work first (wire.py Rule 4), so that a
    hostile upstream's pointer chains cost no more than a client's.
    """
    if len(data) < wire.HEADER_LEN or wire.sections(data) is None:
        return None
    try:
        return DNSRecord.parse(data)
    except Exception:  # dnslib raises DNSError, but also struct/Unicode/Index errors on garbage
        return None


def _matches(reply: DNSRecord, ident: int, question: Question) -> bool:
    """Our id, a response to a QUERY, and exactly our question (RFC 5452 section 9.1)."""
    header = reply.header
    if header.id != ident or not header.qr or header.opcode != 0 or len(reply.questions) != 1:
        return False
    q = reply.q
    return q.qtype == question.qtype and q.qclass == question.qclass and _key(q.qname) == question.labels


# --- Sockets ---------------------------------------------------------------------

_Accept = Callable[[bytes], DNSRecord | None]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _udp_exchange(upstream: Address, packet: bytes, deadline: float, accept: _Accept) -> DNSRecord | None:
    """The first datagram `accept` takes before `deadline`; others (spoofed, stray) are ignored."""
    with socket.socket(_family(upstream.host), socket.SOCK_DGRAM) as sock:
        sock.connect((upstream.host, upstream.port))  # only the upstream's datagrams arrive
        sock.send(packet)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            try:
                data = sock.recv(MAX_MESSAGE)
            except socket.timeout:
                return None
            if len(data) >= HEADER_LEN and data[:2] == packet[:2]:
                reply = accept(data)
                if reply is not None:
                    return reply


def _tcp_exchange(upstream: Address, packet: bytes, deadline: float, accept: _Accept) -> DNSRecord | None:
    """The reply over TCP, in what is left until `deadline` (Rule 2)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    with socket.create_connection((upstream.host, upstream.port), timeout=remaining) as sock:
        sock.sendall(struct.pack("!H", len(packet)) + packet)
        head = _recv_exact(sock, 2, deadline)
        if head is None:
            return None
        data = _recv_exact(sock, struct.unpack("!H", head)[0], deadline)
    return None if data is None else accept(data)


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
