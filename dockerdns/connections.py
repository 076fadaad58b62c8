"""Connection slots and the accept loop, shared by the DNS TCP server and the HTTP listener.

Rule 1: at most `size` connections are open at once. At the cap, the
        connection that has gone the longest without delivering a whole
        message (a DNS query, an HTTP request) makes room for the new one:
        an idle connection and one that trickles its message byte by byte
        are alike in this (RFC 7766 section 6.2.3 lets a server close idle
        connections first; one that needs seconds for a few hundred bytes
        is as good as idle). A connection that keeps delivering stays, so
        slow clients cannot hold every slot, and a new client gets in
        within EVICT_WAIT.
Rule 2: `reserved` slots are kept for clients the caller knows (for DNS: the
        containers the table holds). Unknown clients hold at most
        `size - reserved` slots; once they do, a new unknown client can only
        take the place of another unknown one, so a flood from strangers
        never closes a known client's connection.
Rule 3: the accept loop survives running out of resources. EMFILE, ENFILE,
        ENOBUFS or ENOMEM from accept(), or a thread that cannot be started
        (pool.Unavailable), back the loop off (ACCEPT_BACKOFF doubling to
        ACCEPT_BACKOFF_MAX, so that it does not spin on a listener that
        stays readable) and are logged sparsely; it keeps serving, and ends
        only when told to stop.

Thread-safety: Slots may be used from any thread; `admit` is meant for the
one accept thread, the rest for the connection threads.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .sparse import Sparse

log = logging.getLogger("dockerdns.server")

#: Pending connections the kernel queues before accept() takes them (capped by net.core.somaxconn).
LISTEN_BACKLOG = 1024
#: Seconds a new client waits for the connection that makes room to close (Rule 1).
EVICT_WAIT = 1.0
#: Seconds the accept loop pauses after its first resource error; doubled up to ACCEPT_BACKOFF_MAX.
ACCEPT_BACKOFF = 0.05
ACCEPT_BACKOFF_MAX = 1.0
#: accept() errors that mean "out of resources", not "this one client failed".
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass
class _Slot:
    known: bool
    since: float  # monotonic time of the last whole message delivered (or of the connect)
    evicted: bool = False


class Slots:
    """The open connections of one listener, with room made at the cap (Rules 1 and 2)."""

    def __init__(self, size: int, reserved: int = 0, wait: float = EVICT_WAIT,
                 clock: Callable[[], float] = time.monotonic):
        self.size = size
        self.reserved = min(reserved, size - 1) if size > 1 else 0
        self._wait = wait
        self._clock = clock
        self._cond = threading.Condition()
        self._open: dict[socket.socket, _Slot] = {}
        self.refused = 0  # new clients closed at once: no slot, and none to free
        self.evicted = 0  # open connections closed to make room

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: socket.socket, known: bool = False) -> bool:
        """Give `conn` a slot, closing the stalest connection if need be; False (refused) when none frees up."""
        with self._cond:
            deadline: float | None = None
            while not self._fits(known):
                if deadline is None:
                    victim = self._victim(known)
                    if victim is None:
                        self.refused += 1
                        return False
                    self._open[victim].evicted = True
                    self.evicted += 1
                    try:
                        victim.shutdown(socket.SHUT_RDWR)  # its thread sees EOF, closes it and releases the slot
                    except OSError:
                        pass
                    deadline = self._clock() + self._wait
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self.refused += 1
                    return False
                self._cond.wait(remaining)
            self._open[conn] = _Slot(known, self._clock())
            return True

    def delivered(self, conn: socket.socket) -> None:
        """`conn` delivered a whole message: it is fresh again (Rule 1)."""
        with self._cond:
            slot = self._open.get(conn)
            if slot is not None:
                slot.since = self._clock()

    def release(self, conn: socket.socket) -> None:
        """`conn` is closed: its slot is free."""
        with self._cond:
            if self._open.pop(conn, None) is not None:
                self._cond.notify_all()

    def close_all(self) -> None:
        """Shut every open connection down (their threads close them and release the slots)."""
        with self._cond:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _fits(self, known: bool) -> bool:
        if len(self._open) >= self.size:
            return False
        return known or self._unknown() < self.size - self.reserved

    def _unknown(self) -> int:
        return sum(1 for slot in self._open.values() if not slot.known)

    def _victim(self, known: bool) -> socket.socket | None:
        """The connection longest without a whole message; for an unknown client, an unknown one (Rule 2)."""
        candidates = [(slot.since, slot.known, conn) for conn, slot in self._open.items() if not slot.evicted]
        if not known:
            candidates = [c for c in candidates if not c[1]]
        if not candidates:
            return None
        # Unknown connections go first, then the longest without a message.
        return min(candidates, key=lambda c: (c[1], c[0]))[2]


def accept_forever(listener: socket.socket, take: Callable[[socket.socket, str], None],
                   stopping: threading.Event, what: str) -> None:
    """Accept on `listener` and hand each connection to `take(conn, client)` until `stopping` is set (Rule 3).

    `take` owns the connection it is given; when it raises pool.Unavailable
    (any RuntimeError), it has closed the connection already.
    """
    short = Sparse(log, f"{what}: out of resources, accepting more slowly", level=logging.ERROR)
    failed = Sparse(log, f"{what}: accepting a connection failed", level=logging.ERROR)
    backoff = ACCEPT_BACKOFF
    while not stopping.is_set():
        try:
            conn, peer = listener.accept()
        except OSError as err:
            if stopping.is_set():
                return
            if err.errno in RESOURCE_ERRORS:
                short()
                stopping.wait(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
            elif err.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                return  # the listener is closed
            continue  # ECONNABORTED and the like: that one client is gone
        try:
            take(conn, peer[0])
        except RuntimeError:  # pool.Unavailable: no thread could be started
            short()
            stopping.wait(backoff)
            backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
            continue
        except Exception:
            failed(exc_info=True)
            continue
        backoff = ACCEPT_BACKOFF
