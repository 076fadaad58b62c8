"""DaemonPool: jobs run on daemon threads; a refused thread start leaves the pool usable."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from dockerdns.pool import DaemonPool, Unavailable


def refuse_thread_starts(monkeypatch: pytest.MonkeyPatch, times: int) -> None:
    """Make the next `times` thread starts fail as they do under `prlimit --nproc`."""
    real = threading.Thread.start
    left = [times]

    def start(self: threading.Thread) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise RuntimeError("can't start new thread")
        real(self)

    monkeypatch.setattr(threading.Thread, "start", start)


def test_jobs_run(wait_for: Callable[..., Any]) -> None:
    """Submitted jobs run, more jobs than threads included."""
    pool = DaemonPool(2, "test")
    done: list[int] = []
    for i in range(10):
        pool.submit(lambda i=i: done.append(i))  # type: ignore[misc]
    wait_for(lambda: len(done) == 10, timeout=5, what="ten jobs")
    assert sorted(done) == list(range(10))
    pool.close()


def test_refused_thread_start_is_undone(monkeypatch: pytest.MonkeyPatch, wait_for: Callable[..., Any]) -> None:
    """A thread the system refuses raises Unavailable and is not counted: the next job still gets a thread."""
    pool = DaemonPool(1, "test")
    refuse_thread_starts(monkeypatch, 3)
    for _ in range(3):
        with pytest.raises(Unavailable, match="test: cannot start a thread"):
            pool.submit(lambda: None)
    ran = threading.Event()
    pool.submit(ran.set)
    assert ran.wait(5), "the job was queued for a thread that was never started"
    pool.close()


def test_closed_pool_refuses() -> None:
    """A closed pool raises Unavailable, a RuntimeError (which the forwarder already sheds)."""
    pool = DaemonPool(1, "test")
    pool.close()
    with pytest.raises(Unavailable, match="pool closed"):
        pool.submit(lambda: None)
    assert issubclass(Unavailable, RuntimeError)
