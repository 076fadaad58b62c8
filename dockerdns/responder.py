"""The responder: one query's bytes in, its answer's bytes out (now, or later when forwarded).

It joins the pure parts (wire, resolver) to the forwarder and is what the
servers call. Local answers are computed on the calling thread and never
wait on anything; forwarded ones go to the forwarder's pool.

Thread-safety: `handle` may be called from any number of threads at once.
`policy` and `forwarder.upstreams` are replaced whole on reload; a query
reads each once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

from dnslib import RCODE, DNSRecord

from . import wire
from .forwarder import Forwarder
from .resolver import Answer, Policy, failure, resolve
from .servers import Reply
from .table import RecordTable

log = logging.getLogger("dockerdns.query")

LOG_INTERVAL = 10.0  # seconds between two summary lines about the same trouble


class Sparse:
    """Logs a recurring event at most once per interval, with a count of the rest."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self._message = message
        self._interval = interval
        self._clock = clock
        self._next = 0.0
        self._count = 0

    def __call__(self) -> None:
        self._count += 1
        now = self._clock()
        if now >= self._next:
            log.warning("%s (%d in the last %.0f s)", self._message, self._count, self._interval)
            self._count = 0
            self._next = now + self._interval


class Responder:
    """Answers queries from the table; forwards what is not ours."""

    def __init__(self, table: RecordTable, policy: Policy, forwarder: Forwarder | None):
        self.table = table
        self.policy = policy
        self.forwarder = forwarder
        self._turns = itertools.count()  # next() is atomic in CPython: rotation without a lock
        self._overflow = Sparse("forward: too many queries in flight, answering SERVFAIL")
        self._upstream_failed = Sparse("forward: no upstream answered, answering SERVFAIL")

    def handle(self, data: bytes, client: str, transport: str, reply: Reply) -> None:
        query = wire.decode(data)
        if query is None:
            return
        if isinstance(query, wire.Malformed):
            reply(query.reply)
            return
        limit = wire.udp_limit(query) if transport == "udp" else wire.TCP_LIMIT
        outcome = resolve(query, self.table.snapshot, client, self.policy, next(self._turns))
        if isinstance(outcome, Answer):
            reply(wire.encode(outcome.message, limit))
            return
        forwarder = self.forwarder
        if forwarder is None or not forwarder.upstreams:
            reply(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            return

        def done(answer: bytes | None) -> None:
            if answer is None:
                self._upstream_failed()
                reply(wire.encode(failure(query, RCODE.SERVFAIL), limit))
            elif len(answer) > limit:
                reply(_truncated(answer, query, limit))
            else:
                reply(answer)

        if not forwarder.submit(query, data, done):
            self._overflow()
            reply(wire.encode(failure(query, RCODE.SERVFAIL), limit))


def _truncated(answer: bytes, query: DNSRecord, limit: int) -> bytes:
    try:
        return wire.encode(DNSRecord.parse(answer), limit)
    except Exception:
        return wire.encode(failure(query, RCODE.SERVFAIL), limit)
