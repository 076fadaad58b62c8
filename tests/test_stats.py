"""Counters and histograms of the status API: lock-free counting, read without `__reduce__`."""

from __future__ import annotations

import itertools
import sys
import threading

import pytest

from dockerdns.stats import Histogram, Stats, value


class NoReduce(itertools.count):
    """A counter whose `__reduce__` is gone, as on Python 3.14."""

    def __reduce__(self) -> object:
        raise AssertionError("__reduce__ was called")


@pytest.mark.parametrize("start, taken", [(0, 0), (0, 1), (0, 1000), (sys.maxsize - 2, 5), (2**70, 3)])
def test_value_reads_without_taking(start: int, taken: int) -> None:
    """value() is the next number a counter gives, beyond a machine word too, and reading it takes none."""
    counter = NoReduce(start)
    for _ in range(taken):
        next(counter)
    assert value(counter) == start + taken
    assert value(counter) == start + taken  # reading again takes nothing
    assert next(counter) == start + taken


def test_value_does_not_call_reduce() -> None:
    """Python 3.12 deprecates and 3.14 removes itertools' `__reduce__`: value() must not need it."""
    assert value(NoReduce()) == 0


def test_counting_stays_exact_across_threads() -> None:
    """Query counters and histogram buckets lose no count when eight threads count at once."""
    stats = Stats()
    histogram = Histogram((0.001, 0.01))

    def work() -> None:
        counter = stats.counter("A", "udp", "NOERROR")
        for i in range(10_000):
            next(counter)
            histogram.observe(0.0005 if i % 2 else 0.005)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stats.queries() == [(("A", "udp", "NOERROR"), 80_000)]
    buckets, _ = histogram.snapshot()
    assert buckets == [("0.001", 40_000), ("0.01", 80_000), ("+Inf", 80_000)]
