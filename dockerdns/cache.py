"""The upstream cache: answers to names that are not ours, kept for as long as their TTLs allow.

Rule 1: the key is the normalised question: the lower-case wire name, the
        type, the class and the DO bit. Everything else a client sends (its
        id, letter case, EDNS size, cookies) is not part of it, so every
        client shape shares one entry; the answer is served with the
        client's id and question bytes, its TTLs aged (RFC 1035 section
        6.1.2), and OPT as the client asked.
Rule 2: memory is bounded in bytes (`max_bytes`): past it, the entries kept
        the longest ago go first.
Rule 3: the cache never needs to be emptied when the table changes: a name
        the table holds is answered from the table before the cache is
        asked, so a name that became a container shadows its cached answer
        at once; the entry ages out on its own.

Thread-safety: `get` may run in any number of threads without a lock (one
dict lookup); `put` takes a lock for the bookkeeping of bytes and order.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

DEFAULT_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Cached:
    """One upstream answer, without its id and its OPT, taken apart once when it is kept."""

    answer: bytes  # the sections after the question
    kept_at: float
    expires: float
    ttls: tuple[tuple[int, int], ...]  # (offset of a TTL field in `answer`, its value when kept)
    flags: int = 0  # the header's flags word, TC and RD cleared (the client's RD goes in)
    # The header's counts on the wire (QDCOUNT 1, the answer's, authority's and additional
    # records'): as kept, and with one more additional record for the client's OPT.
    counts: tuple[bytes, bytes] = (b"", b"")
    # The answer aged to a whole second of its life: (seconds, bytes), replaced whole when it ages.
    aged: list[tuple[int, bytes]] = field(default_factory=list, compare=False)


Key = bytes  # the lower-case wire name, the type, and DO (b"\x01" or b"\x00"): bytes keep their hash


class UpstreamCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, Cached] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Key, now: float) -> Cached | None:
        found = self._entries.get(key)
        if found is None or now >= found.expires:
            return None
        return found

    def put(self, key: Key, entry: Cached) -> None:
        size = _cost(key, entry)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= _cost(key, old)
            self._entries[key] = entry
            self._bytes += size
            while self._bytes > self.max_bytes:
                gone_key, gone = self._entries.popitem(last=False)
                self._bytes -= _cost(gone_key, gone)

    @property
    def size(self) -> int:
        """Bytes held (answers and keys, not Python's own overhead)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


ENTRY_OVERHEAD = 200  # bytes a kept entry costs beyond its answer and key: objects, dict slots


def _cost(key: Key, entry: Cached) -> int:
    return len(entry.answer) + len(key) + ENTRY_OVERHEAD + 16 * len(entry.ttls)
