"""The responder: one query's bytes in, its answer's bytes out (now, or later when forwarded).

It joins the pure parts (answers, wire, resolver) to the forwarder and the
upstream cache, and is what the servers call. Local answers are computed on
the calling thread and never wait on anything; forwarded ones go to the
forwarder's pool.

Rule 1: a query reads `table.snapshot` and `policy` once each.
Rule 2: the client's address decides first: a client outside `allow` gets
        REFUSED, and nothing it sends is parsed further or kept.
Rule 3: the answer index (answers.py) answers every plain query for a name
        the table holds or the zone covers, over UDP and TCP alike; then the
        upstream cache (cache.py); everything else takes the full path:
        wire.decode, resolver.resolve, and the forwarder.
Rule 4: upstream answers are kept by their normalised question, for as long
        as their TTLs allow (negative ones by their SOA minimum, RFC 2308).

Thread-safety: `handle` and `fast` may be called from any number of threads
at once. `policy` and `forwarder` are replaced whole on reload.
"""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Callable

from dnslib import QTYPE, RCODE, DNSRecord

from . import answers, wire
from .cache import Cached, UpstreamCache
from .forwarder import Forwarder
from .resolver import DO, Answer, Forward, Policy, client_allowed, failure, query_opt, resolve
from .servers import Reply
from .sparse import Sparse
from .stats import FAST_SAMPLE, QTYPES, Stats
from .table import RecordTable

log = logging.getLogger("dockerdns.query")

MAX_CLIENT_MEMO = 4096  # client addresses whose `allow` verdict is remembered; past it the memo starts over
RCODES = {code: RCODE.get(code) for code in range(16)}
QTYPE_LABELS = {struct.pack("!H", getattr(QTYPE, name)): name for name in QTYPES}


class Responder:
    """Answers queries from the table; forwards what is not ours."""

    def __init__(self, table: RecordTable, policy: Policy, forwarder: Forwarder | None, stats: Stats | None = None,
                 cache: UpstreamCache | None = None):
        self.table = table
        self.forwarder = forwarder
        self.stats = stats or Stats()
        self.cache = cache or UpstreamCache()
        self._turns = itertools.count()  # rotation turns of the full path
        self._timed = False  # time the next answer from the index (one in FAST_SAMPLE is timed)
        self._allowed: tuple[Policy, dict[str, bool]] = (policy, {})
        self._ra = policy.forwarding
        self._by_qtype: dict[bytes, list[itertools.count]] = {}  # 2-byte QTYPE -> UDP counters by rcode
        self._overflow = Sparse(log, "forward: too many queries in flight, answering SERVFAIL")
        self._upstream_failed = Sparse(log, "forward: no upstream answered, answering SERVFAIL")
        self._looped = Sparse(log, "forward: a query of ours came back to us, answering SERVFAIL")
        self._failed = Sparse(log, "query: could not build an answer, answering SERVFAIL", level=logging.ERROR)

    @property
    def policy(self) -> Policy:
        return self._allowed[0]

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._allowed = (policy, {})  # replaced whole: the memo belongs to the policy it was made for
        self._ra = policy.forwarding

    def allowed(self, client: str) -> bool:
        """True when `client` is inside `allow` (Rule 2); remembered per policy."""
        policy, memo = self._allowed
        verdict = memo.get(client)
        if verdict is None:
            verdict = client_allowed(client, policy.allow)
            if len(memo) >= MAX_CLIENT_MEMO:
                memo.clear()
            memo[client] = verdict
        return verdict

    def fast(self, data: bytes, client: str) -> bytes | None:
        """The answer to a UDP query from the index or the cache, or None (then call `handle`)."""
        timed = self._timed
        if timed:
            self._timed = False
            started = time.perf_counter()
        if not self._allowed[1].get(client) and not self.allowed(client):
            return None
        found = answers.respond(data, self.table.snapshot, self._ra, client)
        if isinstance(found, bytes):
            out = found
        elif found is None:
            return None
        else:
            cached = self._cached(data, found, None)  # a Question: not ours, perhaps kept from upstream
            if cached is None:
                return None
            out = cached
        end = out.find(0, answers.HEADER_LEN)
        counters = self._by_qtype.get(out[end + 1:end + 3]) or self._udp_counters(out)
        if not next(counters[out[3] & 0x0F]) % FAST_SAMPLE:
            self._timed = True  # time the next one (one in about FAST_SAMPLE, whatever its kind)
        if timed:
            self.stats.fast_latency.observe(time.perf_counter() - started)
        return out

    def _udp_counters(self, out: bytes) -> list[itertools.count]:
        """The UDP query counters by rcode for the type of the answer `out` (its question ends at a zero)."""
        end = out.find(0, answers.HEADER_LEN)
        qtype = out[end + 1:end + 3]
        counters = self._by_qtype.get(qtype)
        if counters is None:
            label = QTYPE_LABELS.get(qtype, "other")
            counters = [self.stats.counter(label, "udp", RCODES[code]) for code in range(16)]
            if label != "other" or len(self._by_qtype) < len(QTYPE_LABELS) + 1:
                self._by_qtype[qtype] = counters
        return counters

    def _local(self, data: bytes, client: str, limit: int | None) -> bytes | None:
        """From the index (Rule 3), else from the upstream cache; None when neither has it."""
        found = answers.respond(data, self.table.snapshot, self._ra, client, limit)
        if found is None or isinstance(found, bytes):
            return found
        return self._cached(data, found, limit)  # a Question: not ours, perhaps kept from upstream

    def _cached(self, data: bytes, q: answers.Question, limit: int | None) -> bytes | None:
        """The answer from the upstream cache (Rule 4), or None."""
        now = time.monotonic()
        found = self.cache.get(q.cache_key, now)
        if found is None:
            return None
        elapsed = int(now - found.kept_at)
        last = found.aged[-1] if found.aged else None
        if last is not None and last[0] == elapsed:
            rest = last[1]
        else:
            rest = wire.aged(found.answer, found.ttls, elapsed)
            found.aged[:] = [(elapsed, rest)]  # one slot: the age of this second, for every client
        return answers.assemble(data, q.end, q.opt, found.flags | (data[2] & 0x01) << 8,
                                found.counts[1] if q.opt else found.counts[0], len(rest), (rest,),
                                q.udp_limit if limit is None else limit)

    def handle(self, data: bytes, client: str, transport: str, reply: Reply) -> None:
        started = time.perf_counter()
        limit = wire.TCP_LIMIT if transport == "tcp" else None
        if transport == "tcp" and self.allowed(client):
            out = self._local(data, client, limit)
            if out is not None:
                end = out.find(0, answers.HEADER_LEN)
                label = QTYPE_LABELS.get(out[end + 1:end + 3], "other")
                next(self.stats.counter(label, transport, RCODES[out[3] & 0x0F]))
                reply(out)
                self.stats.latency.observe(time.perf_counter() - started)
                return
        query = wire.decode(data)
        if query is None:
            next(self.stats.dropped)
            return
        if isinstance(query, wire.Malformed):
            next(self.stats.counter("other", transport, "FORMERR"))
            reply(query.reply)
            return
        qtype = (QTYPE.get(query.q.qtype) if query.questions else "other")
        qtype = qtype if qtype in QTYPES else "other"
        if limit is None:
            limit = wire.udp_limit(query)

        def send(answer: bytes) -> None:
            next(self.stats.counter(qtype, transport, RCODES[answer[3] & 0x0F]))
            reply(answer)
            self.stats.latency.observe(time.perf_counter() - started)

        snapshot, policy = self.table.snapshot, self.policy
        try:
            outcome = resolve(query, snapshot, client, policy, next(self._turns))
            answer = wire.encode(outcome.message, limit) if isinstance(outcome, Answer) else b""
        except Exception:  # a bug, or input dnslib accepts but cannot pack: answer, log sparsely
            self._failed(exc_info=True)
            send(wire.encode(failure(query, RCODE.SERVFAIL, policy.forwarding), limit))
            return
        if isinstance(outcome, Answer):
            send(answer)
            return
        self._forward(outcome, data, query, limit, send)

    def _forward(self, outcome: Forward, data: bytes, query: DNSRecord, limit: int,
                 send: Callable[[bytes], None]) -> None:
        forwarder = self.forwarder
        if forwarder is None or not forwarder.upstreams:
            send(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            return
        if outcome.prefix is None and forwarder.is_own(data):
            # Our own forwarded query, back through another address of ours:
            # SERVFAIL at once, so the waiting forwarder moves on (no loop).
            self._looped()
            send(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            return
        asked = outcome.query
        asked_data = data if outcome.prefix is None else asked.pack()

        def done(answer: bytes | None) -> None:
            if answer is None:
                self._upstream_failed()
                send(wire.encode(failure(query, RCODE.SERVFAIL), limit))
                return
            if outcome.prefix is not None:
                send(_joined(outcome.prefix, answer, query, limit))
                return
            self._keep(data, answer)
            send(_fitted(answer, query, limit))

        if not forwarder.submit(asked, asked_data, done):
            self._overflow()
            send(wire.encode(failure(query, RCODE.SERVFAIL), limit))

    def _keep(self, data: bytes, answer: bytes) -> None:
        """Remember an upstream answer for the fast path (Rule 4)."""
        q = answers.question(data)
        if q is None:
            return
        plain = wire.without_opt(answer)
        if plain is None:
            return
        keep = wire.cacheable(plain)
        layout = wire.sections(plain)
        if keep is None or layout is None:
            return
        now = time.monotonic()
        start = layout.question_end
        flags = int.from_bytes(plain[2:4], "big") & ~(answers.TC | 0x0100)
        an, ns, ar = layout.counts
        counts = (struct.pack("!HHHH", 1, an, ns, ar), struct.pack("!HHHH", 1, an, ns, ar + 1))
        cached = Cached(plain[start:], now, now + keep.ttl, tuple((at - start, ttl) for at, ttl in keep.ttls),
                        flags, counts)
        self.cache.put(q.cache_key, cached)


def _fitted(answer: bytes, query: DNSRecord, limit: int) -> bytes:
    """The upstream's answer as this client takes it: an OPT only if it sent one (ours), TC over its limit."""
    plain = wire.without_opt(answer)
    if plain is None:
        return wire.encode(failure(query, RCODE.SERVFAIL), limit)
    opt = query_opt(query)
    tail = b"" if opt is None else answers.OPT_DO if opt.ttl & DO else answers.OPT_PLAIN
    if tail:
        plain = plain[:10] + struct.pack("!H", int.from_bytes(plain[10:12], "big") + 1) + plain[12:]
    if len(plain) + len(tail) <= limit:
        return plain + tail
    # RFC 2181 section 9: the header, the question and the OPT, with TC.
    end = wire.sections(plain).question_end  # type: ignore[union-attr]  # it parsed above
    counts = struct.pack("!HHHH", 1 if end > wire.HEADER_LEN else 0, 0, 0, 1 if tail else 0)
    return plain[:2] + struct.pack("!H", int.from_bytes(plain[2:4], "big") | answers.TC) + counts + \
        plain[wire.HEADER_LEN:end] + tail


def _joined(prefix: DNSRecord, answer: bytes, query: DNSRecord, limit: int) -> bytes:
    """Our CNAME chain, then the upstream's answer for its target (RFC 1034 section 3.6.2)."""
    try:
        upstream = DNSRecord.parse(answer)
    except Exception:
        return wire.encode(failure(query, RCODE.SERVFAIL), limit)
    for rr in upstream.rr:
        prefix.add_answer(rr)
    if not upstream.rr:
        for rr in upstream.auth:
            prefix.add_auth(rr)
    prefix.header.rcode = upstream.header.rcode
    prefix.header.aa = 0  # part of the answer is someone else's
    return wire.encode(prefix, limit)
