"""A bounded pool of daemon threads, started on demand.

Why not concurrent.futures: its threads are joined at interpreter exit, so a
forwarded query waiting on a dead upstream, or an idle TCP client, would hold
up a SIGTERM. These threads are daemons: stopping never waits on a peer.

Thread-safety: `submit` may be called from any thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("dockerdns")


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
        with self._lock:
            if self._closed:
                raise RuntimeError("pool closed")
            if self._idle == 0 and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name} #{self._threads}", daemon=True).start()
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
