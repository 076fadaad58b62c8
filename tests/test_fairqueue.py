"""The order a UDP worker answers in (fairqueue.py): a few of each source first, nothing lost, bounded."""

from __future__ import annotations

import pytest

from dockerdns.fairqueue import QUANTUM, FairQueue


def datagrams(source: str, count: int, size: int = 40) -> list[tuple[bytes, str]]:
    return [(f"{source}{i}".encode().ljust(size, b"."), source) for i in range(count)]


def names(items: list[tuple[bytes, str]]) -> list[str]:
    return [data.rstrip(b".").decode() for data, _ in items]


def read(queue: FairQueue, items: list[tuple[bytes, str]], per_call: int = 32) -> None:
    """One round: what waited in the socket, added as the worker reads it (a call at a time)."""
    queue.begin()
    for start in range(0, len(items), per_call):
        queue.add(items[start:start + per_call], 0)


def drain(queue: FairQueue, step: int = 32) -> list[tuple[bytes, str]]:
    out = []
    while queue.size:
        taken = queue.take(step)
        assert taken and len(taken) <= step
        out += taken
    return out


def test_a_source_with_a_few_queries_goes_before_a_flood() -> None:
    queue = FairQueue()
    flood = datagrams("f", 300)
    read(queue, flood[:290] + [(b"s0", "s")] + flood[290:])
    first = queue.take(32)
    assert names(first)[:QUANTUM + 1] == ["f0", "f1", "s0"]  # the flood's first few came first
    assert names(first)[QUANTUM + 1:] == [f"f{i}" for i in range(QUANTUM, 31)]  # then the flood, in order
    for round_ in range(1, 6):  # the next rounds: the stream's next query each time, behind the flood's backlog
        read(queue, datagrams(f"f-{round_}-", 20) + [(b"s%d" % round_, "s")])
        taken = names(queue.take(32))
        assert f"s{round_}" in taken[:QUANTUM + 1]
    rest = drain(queue)
    assert not queue.size and not queue.bytes and len(rest) == 301 + 5 * 21 - 32 * 6


def test_a_source_is_never_held_back_by_its_own_earlier_datagram() -> None:
    """A sparse source whose datagram once went to bulk (more than QUANTUM in one round) is urgent again the
    next round: it does not stay behind the others' backlog."""
    queue = FairQueue()
    read(queue, datagrams("f", 200) + datagrams("s", QUANTUM + 1))
    queue.take(32)
    read(queue, datagrams("f-more", 40) + [(b"s-next", "s")])
    assert "s-next" in names(queue.take(32))


def test_nothing_is_lost_or_answered_twice_whatever_the_mix() -> None:
    queue = FairQueue()
    sent = []
    answered = []
    for round_ in range(50):
        batch = datagrams(f"a{round_ % 3}-{round_}-", 20) + datagrams(f"b{round_}-", 1) + datagrams("c", 5)
        sent += batch
        read(queue, batch, 7)
        answered += queue.take(16)
    answered += drain(queue)
    assert sorted(answered) == sorted(sent)


def test_each_kind_keeps_its_arrival_order() -> None:
    queue = FairQueue()
    items = [(f"{i}".encode(), "abcd"[i % 4] if i % 5 else f"new{i}") for i in range(400)]
    read(queue, items)
    order = drain(queue, 7)
    assert sorted(order) == sorted(items)
    seen: dict[str, int] = {}
    urgent = []
    for item in items:
        seen[item[1]] = seen.get(item[1], 0) + 1
        if seen[item[1]] <= QUANTUM:
            urgent.append(item)
    assert [item for item in order if item in urgent] == urgent  # each kind in arrival order
    assert [item for item in order if item not in urgent] == [item for item in items if item not in urgent]


def test_the_flood_is_never_starved() -> None:
    """Sources that each send one datagram (new ports every time) still leave a quarter to the others."""
    queue = FairQueue()
    read(queue, datagrams("f", 1000))  # one busy source: QUANTUM urgent, the rest bulk
    for i in range(20):
        read(queue, [(f"n{i}-{j}".encode(), f"n{i}-{j}") for j in range(64)])  # 64 new sources each round
        taken = queue.take(32)
        assert sum(1 for _, source in taken if source == "f") >= 8


@pytest.mark.parametrize("step", [2, 3, 4, 7])
def test_the_flood_is_never_starved_by_its_own_new_rounds(step: int) -> None:
    """A full queue answers a few, reads as many new ones (urgent: a new round), and so on: the bulk
    backlog still moves, whatever the step."""
    queue = FairQueue(limit=64)
    read(queue, datagrams("f", 64))
    first_bulk = names(queue._queues[0])[0]
    answered: list[str] = []
    for i in range(200):
        answered += names(queue.take(step))
        read(queue, [(f"f-{i}-{j}".encode(), "f") for j in range(queue.room())])  # the same source again
        if first_bulk in answered:
            break
    assert first_bulk in answered


def test_large_datagrams_are_bounded_in_bytes() -> None:
    queue = FairQueue(limit=1024, limit_bytes=150_000, small=512)
    big = datagrams("big", 3, size=65_000)
    queue.begin()
    queue.add(big, sum(len(data) for data, _ in big))
    assert queue.room() == 0  # 195,000 bytes of large datagrams: no more reading until some are answered
    queue.add(datagrams("small", 10), 0)
    queue.take(1)
    assert queue.bytes == 130_000 and queue.room() == 1024 - 12
    drain(queue)
    assert queue.bytes == 0 and queue.room() == 1024


def test_the_count_is_bounded() -> None:
    queue = FairQueue(limit=100)
    read(queue, datagrams("f", 90))
    assert queue.room() == 10
    queue.take(32)
    assert queue.room() == 42


def test_a_round_forgets_the_last_one() -> None:
    queue = FairQueue()
    for round_ in range(100):
        read(queue, [(b"x", f"source {round_}-{i}") for i in range(10)])
        assert len(queue._round) == 10  # what one round read, never more
        drain(queue)
