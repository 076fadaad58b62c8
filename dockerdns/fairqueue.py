"""The order in which a UDP worker answers the datagrams it has read: a source's first one first.

A socket's queue is first come, first served: while one client keeps
hundreds of queries in flight, every other client's query waits behind
them. So a worker reads all that waits in its socket before answering
(servers.py) and answers in this order, as flow queueing does for
packets (FQ-CoDel, RFC 8290: new flows first): a container asking one
name is answered within a batch, however busy the server is with
someone else's flood, and the flood loses nothing, it only waits.

Rule 1: a datagram whose source (address and port) has nothing else
        waiting here is urgent; the others are bulk. Each kind is
        answered in arrival order.
Rule 2: urgent datagrams go first, but bulk ones never starve: while
        bulk ones wait, at least a quarter of every `take` is theirs.
Rule 3: bounded: at most `limit` datagrams wait, and `limit_bytes` bytes
        of those over `small` bytes (a query is rarely larger: counting
        only those keeps `take` free of work per datagram); `room()` says
        how many more may be read. What it remembers of sources is
        bounded too.

Thread-safety: none; a queue belongs to one worker.
"""

from __future__ import annotations

from operator import itemgetter

QUEUE_LIMIT = 1024  # datagrams waiting per worker: more than dnsperf's 500 in flight
QUEUE_BYTES = 1 << 20  # bytes of large datagrams waiting per worker: 16 of 64 KB fill it
SMALL = 512  # bytes: datagrams up to this size are bounded by QUEUE_LIMIT alone (512 KB at most)
MAX_SOURCES = 8192  # sources remembered (Rule 3); past it, those with nothing waiting are forgotten
COMPACT = 4096  # answered entries kept at the head of a list before it is cut
BULK, URGENT = 0, 1

Item = tuple  # (datagram: bytes, source: int | bytes), as datagrams.Batch.receive gives them
_datagram = itemgetter(0)


class FairQueue:
    """Datagrams read and not yet answered, taken in the order of the module rules."""

    def __init__(self, limit: int = QUEUE_LIMIT, limit_bytes: int = QUEUE_BYTES, small: int = SMALL):
        self.limit = limit
        self.limit_bytes = limit_bytes
        self.small = small
        self._queues: tuple[list[Item], list[Item]] = ([], [])  # BULK, URGENT: in arrival order
        self._taken = [0, 0]  # answered entries at the head of each list
        self._cut = [0, 0]  # entries cut from the head of each list: positions below count them
        # source -> where its last datagram went: position * 2 + kind. It waits while that position is
        # not taken yet, so that `take` has nothing to do per datagram.
        self._last: dict[bytes, int] = {}
        self.size = 0  # datagrams waiting
        self.bytes = 0  # bytes of those over `small`

    def __len__(self) -> int:
        return self.size

    def room(self) -> int:
        """How many datagrams may still be read (Rule 3)."""
        return 0 if self.bytes >= self.limit_bytes else self.limit - self.size

    def add(self, items: list[Item], large: int) -> None:
        """Datagrams just read, in arrival order; `large`: the bytes of those over `small`."""
        bulk, urgent = self._queues
        last = self._last
        if not self.size:
            if last:
                last.clear()  # nothing waits: nobody is busy
        elif len(last) >= MAX_SOURCES:
            self._forget()
            last = self._last
        done_bulk, done_urgent = self._taken[BULK] + self._cut[BULK], self._taken[URGENT] + self._cut[URGENT]
        at_bulk, at_urgent = len(bulk) + self._cut[BULK], len(urgent) + self._cut[URGENT]
        for item in items:
            name = item[1]
            where = last.get(name, -1)
            if where < 0 or where >> 1 < (done_urgent if where & 1 else done_bulk):
                last[name] = at_urgent * 2 + URGENT  # nothing of this source waits (Rule 1)
                at_urgent += 1
                urgent.append(item)
            else:
                last[name] = at_bulk * 2
                at_bulk += 1
                bulk.append(item)
        self.size += len(items)
        self.bytes += large

    def take(self, most: int) -> list[Item]:
        """Up to `most` datagrams to answer now (Rule 2), urgent ones first."""
        bulk, urgent = self._queues
        taken = self._taken
        waiting_bulk = len(bulk) - taken[BULK]
        first = min(len(urgent) - taken[URGENT], most - min(waiting_bulk, most // 4))
        out: list[Item] = []
        if first > 0:
            out = urgent[taken[URGENT]:taken[URGENT] + first]
            taken[URGENT] += first
        if len(out) < most and waiting_bulk:
            count = min(most - len(out), waiting_bulk)
            out += bulk[taken[BULK]:taken[BULK] + count]
            taken[BULK] += count
        if out:
            self.size -= len(out)
            if self.bytes:
                small = self.small
                self.bytes -= sum(n for n in map(len, map(_datagram, out)) if n > small)
            for kind in (BULK, URGENT):
                if taken[kind] >= COMPACT or (taken[kind] and not self.size):
                    del self._queues[kind][:taken[kind]]
                    self._cut[kind] += taken[kind]
                    taken[kind] = 0
        return out

    def _forget(self) -> None:
        """Keep only the sources with something waiting (Rule 3)."""
        waiting: dict[bytes, int] = {}
        for kind in (BULK, URGENT):
            queue, start = self._queues[kind], self._taken[kind]
            for position in range(start, len(queue)):
                waiting[queue[position][1]] = (position + self._cut[kind]) * 2 + kind
        self._last = waiting
