"""Response rate limiting, pure: token buckets per (client network, response key) on a fake clock."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from dnslib import QTYPE, RR, A, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from dockerdns.rrl import DEFAULT_RESPONSES_PER_SECOND, RateLimit, Verdict, truncated

CODES = {"S": Verdict.SEND, "D": Verdict.DROP, "L": Verdict.SLIP}

# An event: (client, key, now).
Event = tuple[str, bytes, float]


def burst(client: str, key: bytes, now: float, count: int) -> list[Event]:
    return [(client, key, now)] * count


# (case, RateLimit arguments, events, verdicts: S send, D drop, L slip)
CASES: list[tuple[str, dict[str, Any], list[Event], str]] = [
    ("off: 0 never limits", dict(responses_per_second=0),
     burst("192.0.2.1", b"k", 0, 50), "S" * 50),
    ("one second of credit, then every second one slips", dict(responses_per_second=5),
     burst("192.0.2.1", b"k", 0, 10), "SSSSS" "DLDLD"),
    ("credit comes back at the rate", dict(responses_per_second=5),
     burst("192.0.2.1", b"k", 0, 6) + burst("192.0.2.1", b"k", 0.25, 2) + burst("192.0.2.1", b"k", 0.75, 3),
     "SSSSS" "D" "S" "L" "SS" "D"),
    ("credit saved up to `window` seconds' worth", dict(responses_per_second=2, window=3),
     burst("192.0.2.1", b"k", 0, 2) + burst("192.0.2.1", b"k", 100, 8), "SS" + "SSSSSS" "DL"),
    ("a new account starts with one second's worth, not a window", dict(responses_per_second=3, window=15),
     burst("192.0.2.1", b"k", 0, 5), "SSS" "DL"),
    ("slip 0: every over-limit response is dropped", dict(responses_per_second=1, slip=0),
     burst("192.0.2.1", b"k", 0, 5), "S" "DDDD"),
    ("slip 1: every over-limit response slips", dict(responses_per_second=1, slip=1),
     burst("192.0.2.1", b"k", 0, 4), "S" "LLL"),
    ("slip 3", dict(responses_per_second=1, slip=3),
     burst("192.0.2.1", b"k", 0, 7), "S" "DDLDDL"),
    ("one /24 shares an account", dict(responses_per_second=2),
     [("192.0.2.1", b"k", 0), ("192.0.2.200", b"k", 0), ("192.0.2.77", b"k", 0)], "SSD"),
    ("another /24 has its own", dict(responses_per_second=1),
     [("192.0.2.1", b"k", 0), ("192.0.3.1", b"k", 0), ("192.0.2.1", b"k", 0)], "SSD"),
    ("ipv4_prefix 32: one account per address", dict(responses_per_second=1, ipv4_prefix=32),
     [("192.0.2.1", b"k", 0), ("192.0.2.2", b"k", 0), ("192.0.2.1", b"k", 0)], "SSD"),
    ("one /56 shares an account", dict(responses_per_second=1),
     [("2001:db8:0:ff::1", b"k", 0), ("2001:db8:0:1::2", b"k", 0), ("2001:db8:0:100::1", b"k", 0)], "SDS"),
    ("IPv4-mapped IPv6 is its IPv4 address", dict(responses_per_second=1),
     [("::ffff:192.0.2.1", b"k", 0), ("192.0.2.9", b"k", 0)], "SD"),
    ("another response has its own account", dict(responses_per_second=1),
     [("192.0.2.1", b"a", 0), ("192.0.2.1", b"b", 0), ("192.0.2.1", b"a", 0)], "SSD"),
    ("loopback is exempt", dict(responses_per_second=1),
     burst("127.0.0.1", b"k", 0, 5) + burst("::1", b"k", 0, 5), "S" * 10),
    ("exempt can be emptied", dict(responses_per_second=1, exempt=()),
     burst("127.0.0.1", b"k", 0, 3), "SDL"),
    ("a clock stepping back earns nothing", dict(responses_per_second=2),
     burst("192.0.2.1", b"k", 10, 2) + burst("192.0.2.1", b"k", 5, 1) + burst("192.0.2.1", b"k", 10.5, 2),
     "SS" "D" "SL"),
    ("a client that is not an address has an account of its own", dict(responses_per_second=1),
     [("unix", b"k", 0), ("unix", b"k", 0), ("other", b"k", 0)], "SDS"),
]


@pytest.mark.parametrize("kwargs, events, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_verdicts(kwargs: dict[str, Any], events: list[Event], expected: str) -> None:
    """Each sequence of responses gets exactly these verdicts."""
    limit = RateLimit(**kwargs)
    assert "".join(_code(limit.check(*event)) for event in events) == expected


def _code(verdict: Verdict) -> str:
    return {v: k for k, v in CODES.items()}[verdict]


def test_counts_drops_and_slips() -> None:
    """`dropped` and `slipped` count the limited responses."""
    limit = RateLimit(1)
    for _ in range(5):
        limit.check("192.0.2.1", b"k", 0)
    assert (limit.dropped, limit.slipped) == (2, 2)


def test_memory_bounded_least_recently_used_forgotten() -> None:
    """Past max_entries the least recently used account goes; it comes back with one second of credit."""
    limit = RateLimit(2, window=10, max_entries=3)
    assert limit.check("192.0.2.1", b"old", 0) is Verdict.SEND
    for key in (b"a", b"b"):
        assert limit.check("192.0.2.1", key, 0) is Verdict.SEND
    assert limit.check("192.0.2.1", b"old", 0) is Verdict.SEND  # used again: now the newest
    assert limit.check("192.0.2.1", b"c", 0) is Verdict.SEND  # evicts b"a", the least recently used
    assert len(limit) == 3
    assert limit.check("192.0.2.1", b"old", 0) is Verdict.DROP  # still known: its credit is spent
    assert limit.check("192.0.2.1", b"a", 0) is Verdict.SEND  # forgotten: a fresh account
    for i in range(10000):
        limit.check(f"10.{i % 256}.{i // 256}.1", b"k", i)
    assert len(limit) == 3 and len(limit._networks) <= 3


def test_default_never_limits_a_busy_bridge() -> None:
    """The default rate passes 500 identical answers a second to one /24 for a minute."""
    limit = RateLimit(DEFAULT_RESPONSES_PER_SECOND)
    verdicts = {limit.check(f"172.17.0.{i % 200 + 2}", b"db", i / 500) for i in range(500 * 60)}
    assert verdicts == {Verdict.SEND}


def test_default_limits_a_reflection_flood() -> None:
    """At the default rate a 20,000/s flood of one answer to one victim mostly goes unanswered."""
    limit = RateLimit(DEFAULT_RESPONSES_PER_SECOND)
    verdicts = [limit.check("172.17.0.9", b"big", i / 20000) for i in range(20000 * 10)]
    sent = verdicts.count(Verdict.SEND)
    assert sent <= DEFAULT_RESPONSES_PER_SECOND * 11  # one second of credit plus ten at the rate
    assert verdicts.count(Verdict.SLIP) == pytest.approx((len(verdicts) - sent) / 2, abs=1)


@pytest.mark.parametrize("kwargs", [
    dict(responses_per_second=-1), dict(responses_per_second=1, window=0), dict(responses_per_second=1, slip=-1),
    dict(responses_per_second=1, ipv4_prefix=33), dict(responses_per_second=1, ipv6_prefix=129),
    dict(responses_per_second=1, max_entries=0),
])
def test_bad_arguments(kwargs: dict[str, Any]) -> None:
    """Arguments out of range are a ValueError."""
    with pytest.raises(ValueError):
        RateLimit(**kwargs)


def test_threads_never_overspend() -> None:
    """Eight threads hammering one account at one instant send exactly its credit, no more."""
    limit = RateLimit(100)
    sent: list[int] = []

    def hammer() -> None:
        sent.append(sum(limit.check("192.0.2.1", b"k", 0) is Verdict.SEND for _ in range(2000)))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(sent) == 100
    assert limit.dropped + limit.slipped == 8 * 2000 - 100


def _answer() -> bytes:
    query = DNSRecord.question("Web.Docker", "A")
    reply = query.reply()
    for i in range(3):
        reply.add_answer(RR("Web.Docker", QTYPE.A, rdata=A(f"10.0.0.{i}"), ttl=5))
    return bytes(reply.pack())


def test_truncated_keeps_header_and_question() -> None:
    """The SLIP answer has the id, TC set, the question as asked, and no records."""
    answer = _answer()
    cut = DNSRecord.parse(truncated(answer))
    full = DNSRecord.parse(answer)
    assert cut.header.id == full.header.id and cut.header.tc == 1 and cut.header.qr == 1
    assert str(cut.q.qname) == "Web.Docker." and cut.q.qtype == QTYPE.A
    assert (cut.rr, cut.auth, cut.ar) == ([], [], [])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_truncated_never_raises(data: bytes) -> None:
    """Any bytes give a result no longer than a header plus the input, TC set when there was a header."""
    cut = truncated(data)
    assert len(cut) <= max(len(data), 12)
    if len(data) >= 12:
        assert cut[2] & 0x02 and cut[6:12] == b"\x00\x00\x00\x00\x00\x00"
