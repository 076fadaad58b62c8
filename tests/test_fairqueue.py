"""The order a UDP worker answers in (fairqueue.py): a source's first datagram first, nothing lost, bounded."""

from __future__ import annotations

import pytest

from dockerdns import fairqueue
from dockerdns.fairqueue import FairQueue


def datagrams(source: str, count: int, size: int = 40) -> list[tuple[bytes, str]]:
    return [(f"{source}{i}".encode().ljust(size, b"."), source) for i in range(count)]


def names(items: list[tuple[bytes, str]]) -> list[str]:
    return [data.rstrip(b".").decode() for data, _ in items]


def drain(queue: FairQueue, step: int = 32) -> list[tuple[bytes, str]]:
    out = []
    while queue.size:
        taken = queue.take(step)
        assert taken and len(taken) <= step
        out += taken
    return out


def test_a_source_with_nothing_waiting_goes_before_a_flood() -> None:
    queue = FairQueue()
    flood = datagrams("f", 300)
    for start in range(0, 288, 32):
        queue.add(flood[start:start + 32], 0)
    queue.add([("s0".encode(), "s"), *flood[288:]], 0)
    first = queue.take(32)
    assert names(first)[:2] == ["f0", "s0"]  # the flood's first came when nothing of it waited
    assert names(first)[2:] == [f"f{i}" for i in range(1, 31)]  # then the flood, in arrival order
    queue.add([(b"s1", "s")], 0)  # the stream's next query, behind 269 of the flood's
    assert names(queue.take(32))[0] == "s1"
    rest = names(drain(queue))
    assert rest == [f"f{i}" for i in range(31 + 31, 300)] or sorted(rest) == sorted(f"f{i}" for i in range(62, 300))
    assert not queue.size and not queue.bytes


def test_nothing_is_lost_or_answered_twice_whatever_the_mix() -> None:
    queue = FairQueue()
    sent = []
    answered = []
    for round_ in range(50):
        batch = datagrams(f"a{round_ % 3}-{round_}-", 20) + datagrams(f"b{round_}-", 1) + datagrams("c", 5)
        sent += batch
        queue.add(batch, 0)
        answered += queue.take(16)
    answered += drain(queue)
    assert sorted(answered) == sorted(sent)


def test_each_kind_keeps_its_arrival_order() -> None:
    queue = FairQueue()
    items = [(f"{i}".encode(), "abcd"[i % 4] if i % 5 else f"new{i}") for i in range(400)]
    for start in range(0, 400, 32):
        queue.add(items[start:start + 32], 0)
    order = drain(queue, 7)
    same = [item for item in order if len(item[1]) == 1]
    assert same == [item for item in items if len(item[1]) == 1 and item in same]


def test_the_flood_is_never_starved() -> None:
    """Sources that each send one datagram (new ports every time) still leave a quarter to the others."""
    queue = FairQueue()
    queue.add(datagrams("f", 1000), 0)  # one busy source: its first is urgent, 999 bulk
    for i in range(20):
        queue.add([(f"n{i}-{j}".encode(), f"n{i}-{j}") for j in range(64)], 0)  # 64 new sources each time
        taken = queue.take(32)
        assert sum(1 for _, source in taken if source == "f") >= 8 or i == 0


def test_a_source_is_urgent_again_once_it_has_nothing_waiting() -> None:
    queue = FairQueue()
    queue.add(datagrams("f", 64), 0)
    queue.add(datagrams("g", 3), 0)
    assert names(queue.take(2)) == ["f0", "g0"]
    queue.take(63 + 2)  # the rest of both
    queue.add(datagrams("x", 40), 0)
    queue.add([(b"g-again", "g")], 0)
    assert names(queue.take(2)) == ["x0", "g-again"]


def test_large_datagrams_are_bounded_in_bytes() -> None:
    queue = FairQueue(limit=1024, limit_bytes=150_000, small=512)
    big = datagrams("big", 3, size=65_000)
    queue.add(big, sum(len(data) for data, _ in big))
    assert queue.room() == 0  # 195,000 bytes of large datagrams: no more reading until some are answered
    queue.add(datagrams("small", 10), 0)
    queue.take(1)
    assert queue.bytes == 130_000 and queue.room() == 1024 - 12
    drain(queue)
    assert queue.bytes == 0 and queue.room() == 1024


def test_the_count_is_bounded() -> None:
    queue = FairQueue(limit=100)
    queue.add(datagrams("f", 90), 0)
    assert queue.room() == 10
    queue.take(32)
    assert queue.room() == 42


def test_sources_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fairqueue, "MAX_SOURCES", 100)
    queue = FairQueue()
    queue.add(datagrams("busy", 500), 0)
    sent = 500
    for i in range(40):  # a source per datagram, and the queue never empties
        queue.add([(f"p{i}-{j}".encode(), f"p{i}-{j}") for j in range(10)], 0)
        sent += 10
        queue.take(10)
        assert len(queue._last) <= 100 + 10
    assert queue.size == sent - 40 * 10
    queue.add([(b"more", "busy")], 0)
    order = [data for data, source in drain(queue, 10) if source == "busy"]
    assert order[-1] == b"more"  # forgetting kept "busy" busy: its next one waits behind its others
