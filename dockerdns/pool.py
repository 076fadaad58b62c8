"""A bounded pool of daemon threads, started on demand.

Why not concurrent.futures: its threads are joined at interpreter exit, so a
forwarded query waiting on a dead upstream, or an idle TCP client, would hold
up a SIGTERM. These threads are daemons: stopping never waits on a peer.

Rule: a thread is counted only once it has started. When the system refuses
a new thread (RuntimeError from `Thread.start`, under a thread or memory
limit), the count is undone and `submit` raises Unavailable: the caller
sheds that job (SERVFAIL, a closed connection) and the pool stays usable.

Thread-safety: `submit` may be called from any thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("dockerdns")


class Unavailable(RuntimeError):
    """No thread can take the job: the pool is closed, or the system refused a new thread. str() says which."""


class DaemonPool:
    """Runs callables on at most `size` daemon threads; callers bound the queue themselves."""

    def __init__(self, size: int, name: str):
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on a pool thread; raises Unavailable when none can take it."""
        with self._lock:
            if self._closed:
                raise Unavailable(f"{self._name}: pool closed")
            if self._idle == 0 and self._threads < self._size:
                thread = threading.Thread(target=self._work, name=f"{self._name} #{self._threads + 1}", daemon=True)
                try:
                    thread.start()
                except RuntimeError as err:  # "can't start new thread": a thread or memory limit
                    raise Unavailable(f"{self._name}: cannot start a thread ({err})") from None
                self._threads += 1
            else:
                self._idle -= 1
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("%s: job failed", self._name)
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)
