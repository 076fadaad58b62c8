"""The responder: one query's bytes in, its answer's bytes out (now, or later when forwarded).

It joins the pure parts (wire, resolver) to the forwarder and is what the
servers call. Local answers are computed on the calling thread and never
wait on anything; forwarded ones go to the forwarder's pool.

Rule 1 (the fast path): a UDP answer depends only on the query's bytes
        after the id, on the client's class (allowed or not, and which
        Docker networks it sits on), on the table snapshot and on the
        policy. So answers are kept, keyed by exactly that, and a repeated
        query costs a dict lookup and an id patch. Rotation is a few
        pre-built orders taken in turn. A new snapshot or policy empties
        the cache; it never serves an answer the slow path would not give.
Rule 2: upstream answers to UDP queries are kept the same way, for as long
        as their TTLs allow (negative ones by their SOA minimum, RFC 2308),
        and served with their TTLs aged. They go with the rest when the
        table changes: a name forwarded yesterday may be a container today.
Rule 3: everything else (first sight of a query, TCP, FORMERR) takes the
        slow path through wire and resolver.

Thread-safety: `handle` and `fast` may be called from any number of threads
at once. `policy` and `forwarder.upstreams` are replaced whole on reload; a
query reads each once. Cache dicts are replaced whole, never cleared in place.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from dnslib import QTYPE, RCODE, DNSRecord

from . import wire
from .forwarder import Forwarder
from .resolver import Answer, Policy, client_allowed, failure, resolve
from .servers import Reply
from .sparse import Sparse
from .stats import FAST_SAMPLE, Stats, qtype_label
from .table import RecordTable, Snapshot

log = logging.getLogger("dockerdns.query")

MAX_CACHED = 20000  # ready-made answers; past it the cache starts over
MAX_ROTATIONS = 8  # pre-built orders of a multi-address answer

ClientClass = tuple[bool, frozenset[str]]
# A local answer: (ready answer or pre-built orders, the counter of its labels).
# An upstream answer: (answer, counter, kept at, expires at, its TTL fields).
Local = tuple[bytes | tuple[bytes, ...], itertools.count]
Upstream = tuple[bytes, itertools.count, float, float, tuple[tuple[int, int], ...]]
Entry = Local | Upstream


class Responder:
    """Answers queries from the table; forwards what is not ours."""

    def __init__(self, table: RecordTable, policy: Policy, forwarder: Forwarder | None, stats: Stats | None = None):
        self.table = table
        self.policy = policy
        self.forwarder = forwarder
        self.stats = stats or Stats()
        self._turns = itertools.count()  # next() is atomic in CPython: rotation without a lock
        self._ticks = itertools.count()  # ready-made answers given, for sampling their latency
        self._state: tuple[object, object] = (None, None)  # (snapshot, policy) the cache was made for
        self._answers: dict[tuple[ClientClass, bytes], Entry] = {}
        self._classes: dict[str, ClientClass] = {}
        self._overflow = Sparse(log, "forward: too many queries in flight, answering SERVFAIL")
        self._upstream_failed = Sparse(log, "forward: no upstream answered, answering SERVFAIL")
        self._looped = Sparse(log, "forward: a query of ours came back to us, answering SERVFAIL")
        self._failed = Sparse(log, "query: could not build an answer, answering SERVFAIL", level=logging.ERROR)

    def fast(self, data: bytes, client: str) -> bytes | None:
        """The ready-made UDP answer to `data` from `client`, or None (then call `handle`)."""
        timed = not next(self._ticks) % FAST_SAMPLE
        if timed:
            started = time.perf_counter()
        state = self._state
        if self.table.snapshot is not state[0] or self.policy is not state[1]:
            return None
        cls = self._classes.get(client)
        if cls is None:
            return None
        entry = self._answers.get((cls, data[2:]))
        if entry is None:
            return None
        if len(entry) == 2:
            answer, counter = entry
            if isinstance(answer, bytes):
                out = data[:2] + answer
            else:
                out = data[:2] + answer[next(self._turns) % len(answer)]
        else:
            kept, counter, at, expires, ttls = entry
            now = time.monotonic()
            if now >= expires:
                return None
            out = data[:2] + wire.aged(kept, ttls, int(now - at))[2:]
        next(counter)
        if timed:
            self.stats.fast_latency.observe(time.perf_counter() - started)
        return out

    def handle(self, data: bytes, client: str, transport: str, reply: Reply) -> None:
        started = time.perf_counter()
        query = wire.decode(data)
        if query is None:
            next(self.stats.dropped)
            return
        if isinstance(query, wire.Malformed):
            next(self.stats.counter("other", transport, "FORMERR"))
            reply(query.reply)
            return
        qtype = qtype_label(QTYPE.get(query.q.qtype)) if query.questions else "other"
        limit = wire.udp_limit(query) if transport == "udp" else wire.TCP_LIMIT

        def send(answer: bytes, keep: Callable[[itertools.count], None] | None = None) -> itertools.count:
            counter = self.stats.counter(qtype, transport, RCODE.get(answer[3] & 0x0F, "other"))
            next(counter)
            if keep is not None:
                keep(counter)
            reply(answer)
            self.stats.latency.observe(time.perf_counter() - started)
            return counter

        snapshot, policy = self.table.snapshot, self.policy
        try:
            outcome = resolve(query, snapshot, client, policy, next(self._turns))
            answer = wire.encode(outcome.message, limit) if isinstance(outcome, Answer) else b""
        except Exception:  # a bug, or input dnslib accepts but cannot pack: answer, log sparsely
            self._failed(exc_info=True)
            send(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            return
        if isinstance(outcome, Answer):
            counter = send(answer)
            if transport == "udp":
                self._keep(data, client, query, answer, counter, len(outcome.message.rr), snapshot, policy)
            return
        forwarder = self.forwarder
        if forwarder is None or not forwarder.upstreams:
            send(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            return
        if forwarder.is_own(data):
            # Our own forwarded query, back through another address of ours:
            # SERVFAIL at once, so the waiting forwarder moves on (no loop).
            self._looped()
            send(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            return

        def done(answer: bytes | None) -> None:
            if answer is None:
                self._upstream_failed()
                send(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            elif len(answer) > limit:
                send(_truncated(answer, query, limit))
            elif transport == "udp":
                # Kept before it is sent: the client's next query must find it (Rule 2).
                send(answer, lambda counter: self._keep_upstream(data, client, answer, counter, snapshot, policy))
            else:
                send(answer)

        if not forwarder.submit(query, data, done):
            self._overflow()
            send(wire.encode(failure(query, RCODE.SERVFAIL), limit))

    def _client_class(self, client: str, snapshot: Snapshot, policy: Policy) -> ClientClass:
        """The client's class for the cache key, the cache made current first."""
        if snapshot is not self._state[0] or policy is not self._state[1]:
            self._answers, self._classes = {}, {}
            self._state = (snapshot, policy)
        elif len(self._answers) >= MAX_CACHED:
            self._answers = {}
        cls = self._classes.get(client)
        if cls is None:
            cls = (client_allowed(client, policy.allow), snapshot.networks_of(client))
            if len(self._classes) >= MAX_CACHED:
                self._classes = {}
            self._classes[client] = cls
        return cls

    def _keep_upstream(self, data: bytes, client: str, answer: bytes, counter: itertools.count,
                       snapshot: Snapshot, policy: Policy) -> None:
        """Remember an upstream answer for as long as its TTLs allow (Rule 2)."""
        if snapshot is not self.table.snapshot or policy is not self.policy:
            return  # the table moved on while the upstream was asked
        keep = wire.cacheable(answer)
        if keep is None:
            return
        cls = self._client_class(client, snapshot, policy)
        now = time.monotonic()
        self._answers[(cls, data[2:])] = (answer, counter, now, now + keep.ttl, keep.ttls)

    def _keep(self, data: bytes, client: str, query: DNSRecord, answer: bytes, counter: itertools.count,
              count: int, snapshot: Snapshot, policy: Policy) -> None:
        """Remember the answer to `data` for the fast path (Rule 1)."""
        cls = self._client_class(client, snapshot, policy)
        limit = wire.udp_limit(query)
        orders = {answer[2:]}
        for turn in range(1, min(count, MAX_ROTATIONS)):
            outcome = resolve(query, snapshot, client, policy, turn)
            if isinstance(outcome, Answer):
                orders.add(wire.encode(outcome.message, limit)[2:])
        ready = orders.pop() if len(orders) == 1 else tuple(sorted(orders))
        self._answers[(cls, data[2:])] = (ready, counter)


def _truncated(answer: bytes, query: DNSRecord, limit: int) -> bytes:
    try:
        return wire.encode(DNSRecord.parse(answer), limit)
    except Exception:
        return wire.encode(failure(query, RCODE.SERVFAIL), limit)
