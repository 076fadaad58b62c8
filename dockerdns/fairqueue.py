"""The order in which a UDP worker answers the datagrams it has read: a few of each source first.

A socket's queue is first come, first served: while one client keeps
hundreds of queries in flight, every other client's query waits behind
them. So a worker reads all that waits in its socket before answering
(servers.py, a "round") and answers in this order, as flow queueing does
for packets (FQ-CoDel, RFC 8290: sparse flows first): a container asking
a name or two is answered within a step, however busy the server is with
someone else's flood, and the flood loses nothing, it only waits.

Rule 1: in each round, the first QUANTUM datagrams of each source
        (address and port) are urgent, the others bulk; each kind is
        answered in arrival order. A source with a few queries at a
        time (glibc asks A and AAAA together) is never behind a backlog;
        a flooding source has QUANTUM of its datagrams urgent per round
        and the rest wait in bulk.
Rule 2: urgent datagrams go first, but bulk ones never starve: while
        bulk ones wait, a quarter of every `take` (at least one, when it
        takes two or more) is theirs.
Rule 3: bounded: at most `limit` datagrams wait, and `limit_bytes` bytes
        of those over `small` bytes (a query is rarely larger: counting
        only those keeps `take` free of work per datagram); `room()` says
        how many more may be read. A round remembers at most `limit`
        sources.

Thread-safety: none; a queue belongs to one worker.
"""

from __future__ import annotations

from operator import itemgetter

QUEUE_LIMIT = 1024  # datagrams waiting per worker: more than dnsperf's 500 in flight
QUEUE_BYTES = 1 << 20  # bytes of large datagrams waiting per worker: 16 of 64 KB fill it
SMALL = 512  # bytes: datagrams up to this size are bounded by QUEUE_LIMIT alone (512 KB at most)
QUANTUM = 2  # urgent datagrams per source and round (Rule 1)
COMPACT = 4096  # answered entries kept at the head of a list before it is cut
BULK, URGENT = 0, 1

Item = tuple  # (datagram: bytes, source: int | bytes), as datagrams.Batch.receive gives them
_datagram = itemgetter(0)


class FairQueue:
    """Datagrams read and not yet answered, taken in the order of the module rules."""

    def __init__(self, limit: int = QUEUE_LIMIT, limit_bytes: int = QUEUE_BYTES, small: int = SMALL,
                 quantum: int = QUANTUM):
        self.limit = limit
        self.limit_bytes = limit_bytes
        self.small = small
        self.quantum = quantum
        self._queues: tuple[list[Item], list[Item]] = ([], [])  # BULK, URGENT: in arrival order
        self._taken = [0, 0]  # answered entries at the head of each list
        self._round: dict[int | bytes, int] = {}  # source -> its datagrams read in this round
        self.size = 0  # datagrams waiting
        self.bytes = 0  # bytes of those over `small`

    def room(self) -> int:
        """How many datagrams may still be read (Rule 3)."""
        return 0 if self.bytes >= self.limit_bytes else self.limit - self.size

    def begin(self) -> None:
        """A new round: the worker is about to read all that waits in its socket (Rule 1)."""
        if self._round:
            self._round = {}

    def add(self, items: list[Item], large: int) -> None:
        """Datagrams just read, in arrival order; `large`: the bytes of those over `small`."""
        bulk, urgent = self._queues
        seen, quantum = self._round, self.quantum
        for item in items:
            name = item[1]
            count = seen.get(name, 0)
            seen[name] = count + 1
            if count < quantum:
                urgent.append(item)
            else:
                bulk.append(item)
        self.size += len(items)
        self.bytes += large

    def take(self, most: int) -> list[Item]:
        """Up to `most` datagrams to answer now (Rule 2), urgent ones first."""
        bulk, urgent = self._queues
        taken = self._taken
        waiting_bulk = len(bulk) - taken[BULK]
        reserved = min(waiting_bulk, max(1, most // 4)) if most > 1 else 0  # Rule 2: bulk's share
        first = min(len(urgent) - taken[URGENT], most - reserved)
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
                    taken[kind] = 0
        return out
