"""Counters for the status API, cheap enough for the fast path.

Rule: a counter is an `itertools.count`, whose `next()` is one atomic C
call under CPython's GIL; its value is read only when somebody scrapes
/metrics. Histograms are a fixed list of such counters, one per bucket, plus
a running sum that takes no lock: `+=` on a float may, in the rare case of a
thread switch between its read and its write, lose one observation from the
sum (never from the counts). That is the price of adding no lock per query.

Thread-safety: every method may be called from any thread.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Sequence

# Seconds. Answers from memory take microseconds, forwarded ones milliseconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)
FAST_SAMPLE = 16  # one ready-made answer in this many is timed
PROPAGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def value(counter: itertools.count) -> int:
    """The next value `counter` (step 1) would give, without taking it.

    Read from its repr, `count(N)`: one C call like `next()`, so no lock, and
    no `__reduce__`, which Python 3.12 deprecates for itertools and 3.14
    removes.
    """
    text = repr(counter)
    return int(text[text.index("(") + 1:-1])


class Histogram:
    """Bucketed observations without locks; each observation may stand for `weight` (sampling)."""

    def __init__(self, buckets: Sequence[float], weight: int = 1):
        self.buckets = tuple(buckets)
        self.weight = weight
        self._counts = [itertools.count() for _ in range(len(self.buckets) + 1)]  # last: +Inf
        self._first, self._first_count = self.buckets[0], self._counts[0]
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        if seconds <= self._first:  # nearly every answer from memory: skip the search
            next(self._first_count)
        else:
            next(self._counts[bisect.bisect_left(self.buckets, seconds)])
        self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (le, count) pairs, +Inf last, and the sum."""
        running, out = 0, []
        for bound, counter in zip([*map(str, self.buckets), "+Inf"], self._counts):
            running += value(counter) * self.weight
            out.append((bound, running))
        return out, self._sum * self.weight


QTYPES = frozenset(("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "ANY", "HTTPS", "SVCB", "CAA",
                    "DS", "DNSKEY", "AXFR", "IXFR", "NAPTR"))


def qtype_label(name: str) -> str:
    """A bounded label: hostile clients must not mint a metric per type number."""
    return name if name in QTYPES else "other"


class Stats:
    """What the server counts about itself."""

    def __init__(self) -> None:
        self._queries: dict[tuple[str, str, str], itertools.count] = {}
        self._lock = threading.Lock()
        self.latency = Histogram(LATENCY_BUCKETS)
        # Ready-made answers take a few microseconds each; timing every one of
        # them would cost more than answering, so one in FAST_SAMPLE is timed
        # and stands for FAST_SAMPLE answers.
        self.fast_latency = Histogram(LATENCY_BUCKETS, weight=FAST_SAMPLE)
        self.propagation = Histogram(PROPAGATION_BUCKETS)
        self.dropped = itertools.count()  # packets dropped unanswered (too short, responses)

    def counter(self, qtype: str, transport: str, rcode: str) -> itertools.count:
        """The counter of queries with these labels (kept by the fast path's entries)."""
        key = (qtype, transport, rcode)
        found = self._queries.get(key)
        if found is None:
            with self._lock:
                found = self._queries.setdefault(key, itertools.count())
        return found

    def answer_latency(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative buckets and sum of all answers: timed ones plus the weighted sample of ready ones."""
        timed, timed_sum = self.latency.snapshot()
        sampled, sampled_sum = self.fast_latency.snapshot()
        return [(le, a + b) for (le, a), (_, b) in zip(timed, sampled)], timed_sum + sampled_sum

    def queries(self) -> list[tuple[tuple[str, str, str], int]]:
        return sorted((key, value(counter)) for key, counter in list(self._queries.items()))
