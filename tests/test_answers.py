"""The answer index: the same answers as the resolver, rotation that never stalls, and no stale answer after a swap."""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import json
import os
import random
import socket
import threading
import tracemalloc
from collections.abc import Iterator

import dns.message
import dns.query
import pytest
from dnslib import EDNS0, QTYPE, DNSRecord
from dnslib.dns import EDNSOption

from dockerdns import answers, naming, wire
from dockerdns.app import App
from dockerdns.config import DEFAULT_ALLOW, Address, RateLimitSettings, Settings
from dockerdns.records import Record
from dockerdns.resolver import Answer, Policy, resolve
from dockerdns.responder import Responder
from dockerdns.rrl import LOOPBACK
from dockerdns.table import RecordTable

from .test_resolver import make_table

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "inspect")
POLICY = Policy(allow=DEFAULT_ALLOW, forwarding=True)
TYPES = ["A", "AAAA", "TXT", "MX", "SRV", "PTR", "CNAME", "NS", "SOA", "HTTPS", "DS", "CAA"]
CLIENTS = ["127.0.0.1", "10.1.0.50", "10.2.0.99", "172.17.0.9", "172.18.0.9"]


def fixture_table() -> RecordTable:
    """The resolver's table plus every container of the naming fixtures (captured from a real engine)."""
    table = make_table()
    settings = Settings()
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.json"))):
        with open(path) as f:
            inspect = json.load(f)
        published = naming.records_for_container(inspect, settings)
        table.replace(inspect["Id"], published.records)
    return table


def mixed_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def query_bytes(name: str, qtype: str, rng: random.Random, shape: str = "") -> bytes:
    """A query as real clients send it: random id, case (0x20), EDNS with or without DO, a cookie, a small size."""
    query = DNSRecord.question(name, qtype)
    query.header.id = rng.randrange(0x10000)
    query.header.rd = rng.random() < 0.8
    shape = shape or rng.choice(["plain", "edns", "do", "cookie", "small"])
    if shape != "plain":
        options = [EDNSOption(10, rng.randbytes(8))] if shape == "cookie" else []
        size = 512 if shape == "small" else rng.choice([1232, 4096])
        query.add_ar(EDNS0(udp_len=size, flags="do" if shape == "do" else "", opts=options))
    return bytes(query.pack())


def recased(data: bytes, rng: random.Random) -> bytes:
    """`data` with its question's name in another letter case: all lower, or mixed anew."""
    end = data.index(0, 12)
    name = data[12:end].lower()
    if rng.random() < 0.5:
        name = bytes(c - 32 if 97 <= c <= 122 and rng.random() < 0.5 else c for c in name)
    return data[:12] + name + data[end:]


def names_of(table: RecordTable) -> list[str]:
    snap = table.snapshot
    held = list(snap.names) + list(snap.ents) + ["docker."]
    below = [f"x.{name}" for name in held[:20]]
    singles = [name.split(".")[0] for name in held if name.endswith(".docker.")]
    return held + below + singles + ["nope.docker.", "a.b.nope.docker.", "example.org.", "example.test."]


def test_index_answers_as_the_resolver_does() -> None:
    """For every name, type, letter case, EDNS shape and client, the index gives resolve()'s bytes (rotation aside)."""
    table = fixture_table()
    snap = table.snapshot
    rng = random.Random(20261202)
    names = names_of(table)
    compared = answerable = 0
    for _ in range(4000):
        name = rng.choice(names)
        qtype = rng.choice(TYPES)
        data = query_bytes(mixed_case(name, rng), qtype, rng)
        client = rng.choice(CLIENTS)
        if rng.random() < 0.5:
            # The same query asked before in another letter case (or in lower case): this one is
            # then answered from what was remembered of that one (answers.py Rule 7).
            answers.answer(recased(data, rng), snap, True, client)
        fast = answers.answer(data, snap, True, client)
        query = wire.decode(data)
        assert isinstance(query, DNSRecord)
        limit = wire.udp_limit(query)
        expected = []
        for turn in range(48):  # rotation aside: the index's turn is its own
            outcome = resolve(query, snap, client, POLICY, turn)
            if not isinstance(outcome, Answer):
                break
            expected.append(wire.encode(outcome.message, limit))
            if fast is None or fast == expected[-1]:
                break
        if not expected:
            assert fast is None  # forwarded: never answered from the index
            continue
        answerable += 1
        if fast is None:
            continue
        compared += 1
        assert fast in expected, (name, qtype, client, DNSRecord.parse(fast))
    assert compared > 0.9 * answerable, (compared, answerable)


def test_every_plain_in_zone_query_takes_the_index() -> None:
    """A and AAAA for every name the zone holds (and for names it does not) are answered by the index."""
    table = fixture_table()
    snap = table.snapshot
    rng = random.Random(7)
    for name in names_of(table):
        if not name.endswith("docker.") or name.startswith("loop") or name.startswith("outside"):
            continue
        for qtype in ("A", "AAAA"):
            data = query_bytes(mixed_case(name, rng), qtype, rng)
            assert answers.answer(data, snap, True, "127.0.0.1") is not None, (name, qtype)


@pytest.mark.parametrize("holders", [2, 3, 10, 40])
@pytest.mark.parametrize("primed", [0, 1, 2, 3])
def test_each_address_comes_first_in_turn(holders: int, primed: int) -> None:
    """Whatever was asked before, n queries for a name held n times put each address first once."""
    table = RecordTable()
    for i in range(holders):
        table.replace(f"c{i}", [Record("web.p.docker.", "A", f"10.9.{i // 200}.{i % 200 + 1}", 1, f"c{i}")])
    table.replace("other", [Record("other.docker.", "A", "10.8.0.1", 1, "other")])
    responder = Responder(table, POLICY, None)
    rng = random.Random(primed)
    for _ in range(primed):
        assert responder.fast(query_bytes("other.docker", "A", rng), "127.0.0.1") is not None
    for round_ in range(2):
        firsts = []
        for _ in range(holders):
            # An AAAA for the same name between the A queries must not skip a turn (glibc asks both).
            responder.fast(query_bytes("web.p.docker", "AAAA", rng), "127.0.0.1")
            shape = "cookie" if holders > 20 else ""  # 40 addresses need EDNS to fit in one datagram
            out = responder.fast(query_bytes("Web.P.docker", "A", rng, shape), "127.0.0.1")
            assert out is not None
            firsts.append(str(DNSRecord.parse(out).rr[0].rdata))
        assert len(set(firsts)) == holders, (round_, firsts)


def test_no_thread_gets_a_removed_address_after_the_update() -> None:
    """Threads querying while the table drops a container never see its address once the update has returned."""
    table = RecordTable()
    table.replace("old", [Record("db.docker.", "A", "10.5.0.1", 1, "old")])
    table.replace("new", [Record("db.docker.", "A", "10.5.0.2", 1, "new")])
    responder = Responder(table, POLICY, None)
    rng = random.Random(3)
    queries = [query_bytes(mixed_case("db.docker", rng), "A", rng) for _ in range(64)]
    removed = threading.Event()
    stop = threading.Event()
    start = threading.Barrier(5)
    stale: list[bytes] = []
    seen_old = []

    def hammer() -> None:
        start.wait()
        i = 0
        while not stop.is_set():
            after = removed.is_set()  # read before the query: the update had returned by then
            out = responder.fast(queries[i % len(queries)], "127.0.0.1")
            i += 1
            assert out is not None
            if b"\x0a\x05\x00\x01" in out:
                seen_old.append(1)
                if after:
                    stale.append(out)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    for _ in range(200):  # let every thread answer from the old table for a while
        if len(seen_old) > 50:
            break
        threading.Event().wait(0.001)
    table.remove("old")
    removed.set()
    threading.Event().wait(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    assert seen_old and not stale


def test_table_change_keeps_other_answers_and_upstream_cache() -> None:
    """A table change builds answers only for what it touched: other names' ready answers are the same objects."""
    table = fixture_table()
    before = table.snapshot
    table.replace("cx", [Record("fresh.docker.", "A", "10.6.0.1", 1, "cx")])
    after = table.snapshot
    key = answers.wire_key("gateway.docker.")
    assert after.index[key] is before.index[key]
    assert after.index.get(answers.wire_key("fresh.docker.")) is not None


def test_cname_answers_follow_their_target() -> None:
    """A name whose CNAME leads to a changed name gets a new ready answer with the new address."""
    table = RecordTable()
    table.replace("static", [Record("alias.docker.", "CNAME", "db.docker.", 1)])
    table.replace("c1", [Record("db.docker.", "A", "10.5.0.1", 1, "c1")])
    rng = random.Random(1)
    out = answers.answer(query_bytes("alias.docker", "A", rng), table.snapshot, True, "127.0.0.1")
    assert out is not None and str(DNSRecord.parse(out).rr[-1].rdata) == "10.5.0.1"
    table.replace("c1", [Record("db.docker.", "A", "10.5.0.9", 1, "c1")])
    out = answers.answer(query_bytes("alias.docker", "A", rng), table.snapshot, True, "127.0.0.1")
    assert out is not None and str(DNSRecord.parse(out).rr[-1].rdata) == "10.5.0.9"


def test_memory_bounded_under_a_flood_of_big_options() -> None:
    """2,000 queries with a 60 KB EDNS option, from an allowed and from a foreign client, leave nothing behind."""
    table = fixture_table()
    responder = Responder(table, POLICY, None)
    sent: list[bytes] = []
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(2000):
        query = DNSRecord.question(f"n{i}.docker", "A")
        query.add_ar(EDNS0(udp_len=4096, opts=[EDNSOption(65001, os.urandom(60000))]))
        data = bytes(query.pack())
        for client in ("127.0.0.1", "198.51.100.7"):
            if responder.fast(data, client) is None:
                responder.handle(data, client, "tcp", sent.append)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(sent) == 4000
    assert sum(map(len, table.snapshot.queries)) == 0 and len(responder.cache) == 0
    assert grown < 5 * 1024 * 1024, grown


def test_plain_queries_remembered_within_bounds() -> None:
    """Distinct plain queries are remembered per snapshot up to the bound, and a new snapshot starts afresh."""
    table = fixture_table()
    responder = Responder(table, POLICY, None)
    rng = random.Random(5)
    assert table.snapshot.remembered == answers.MAX_REMEMBERED  # a small table
    for i in range(answers.MAX_REMEMBERED + 100):
        responder.fast(query_bytes(mixed_case("gateway.docker", rng), "A", rng), "127.0.0.1")
    assert 0 < sum(map(len, table.snapshot.queries)) <= answers.MAX_REMEMBERED
    table.replace("cz", [Record("z.docker.", "A", "10.0.0.1", 1, "cz")])
    assert sum(map(len, table.snapshot.queries)) == 0


def test_a_large_table_remembers_every_name() -> None:
    """The bound grows with the table: each of 20,000 names is remembered, for A and for AAAA."""
    table = RecordTable()
    table.replace("static", [Record(f"h{i}.docker.", "A", f"10.9.{i // 250}.{i % 250 + 1}", 1) for i in range(20000)])
    assert table.snapshot.remembered >= 2 * 20000
    rng = random.Random(3)
    for i in range(20000):
        for qtype in ("A", "AAAA"):
            answers.answer(query_bytes(f"h{i}.docker", qtype, rng, "plain"), table.snapshot, True, "127.0.0.1")
    assert len(table.snapshot.queries[True]) == 40000


# --- Rate limiting keyed on the response, over the wire ------------------------------------------

FOREIGN = "198.51.100.7"  # outside the default allow: added to `allow` below


@contextlib.contextmanager
def local_address(ip: str) -> Iterator[str]:
    from .test_hardening import local_address as add

    with add(ip):
        yield ip


def test_varying_the_query_buys_no_credit() -> None:
    """A foreign client varying EDNS size, case and names is limited by the answers it draws, not its queries."""
    limits = RateLimitSettings(responses_per_second=5, slip=0, window=1)
    settings = Settings(listen=(Address("127.0.0.1", 0),), rate_limit=limits,
                        allow=DEFAULT_ALLOW + (ipaddress.ip_network("198.51.100.0/24"),),
                        records=(Record("gateway.docker.", "A", "172.17.0.1", 1),))
    rng = random.Random(11)
    with local_address(FOREIGN):
        app = App(settings, docker=False)
        assert app.rate_limit is not None
        app.rate_limit.exempt = LOOPBACK  # FOREIGN sits on lo here, which makes it a host address: exempt
        app.start()
        try:
            addr = app.addresses()[0]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind((FOREIGN, 0))
                for i in range(300):
                    kind = i % 3
                    name = mixed_case("gateway.docker", rng) if kind < 2 else f"r{rng.randrange(10**9)}.docker"
                    query = dns.message.make_query(name, "A", use_edns=0 if kind == 1 else None,
                                                   payload=rng.randrange(512, 4096))
                    sock.sendto(query.to_wire(), (addr.host, addr.port))
                answered = 0
                sock.settimeout(1.0)
                with contextlib.suppress(socket.timeout):
                    while True:
                        sock.recv(65535)
                        answered += 1
            # Two accounts (the name's answer, the zone's NXDOMAIN), each about a second's credit.
            assert answered <= 30, answered
        finally:
            app.stop()


def test_a_busy_container_is_never_limited() -> None:
    """5,000 back-to-back lookups from an address the table holds for a container are all answered."""
    limits = RateLimitSettings(responses_per_second=5, slip=0, window=1)
    container = "127.0.0.77"
    settings = Settings(listen=(Address("127.0.0.1", 0),), rate_limit=limits,
                        records=(Record("gateway.docker.", "A", "172.17.0.1", 1),))
    app = App(settings, docker=False)
    assert app.rate_limit is not None
    app.rate_limit.exempt = ()  # loopback is limited here too: only the container's address is exempt
    app.start()
    try:
        app.table.replace("c1", [Record("busy.docker.", "A", container, 1, "c1")])
        addr = app.addresses()[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((container, 0))
            sock.settimeout(2)
            query = dns.message.make_query("gateway.docker", "A").to_wire()
            for _ in range(5000):
                sock.sendto(query, (addr.host, addr.port))
                assert sock.recv(65535)[:2] == query[:2]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a stranger on loopback is limited
            sock.bind(("127.0.0.78", 0))
            sock.settimeout(0.5)
            got = 0
            for _ in range(50):
                sock.sendto(query, (addr.host, addr.port))
            with contextlib.suppress(socket.timeout):
                while True:
                    sock.recv(65535)
                    got += 1
            assert got < 50
    finally:
        app.stop()


def test_qtypes_in_index_are_two_bytes() -> None:
    """Index keys of types are the wire bytes the query carries."""
    table = fixture_table()
    entry = table.snapshot.index[answers.wire_key("gateway.docker.")]
    assert entry.find(QTYPE.A.to_bytes(2, "big")) is entry.a and entry.a is not entry.other


def test_answers_shared_by_their_shape_as_the_resolver_does() -> None:
    """NXDOMAIN and wildcard answers come from the query's shape (answers.py Rule 8) with resolve()'s bytes:
    names of every length, one label and more below a wildcard, blocked ones, and answers near the size limit."""
    from .test_wildcards import make_table as wildcard_table

    table = wildcard_table()
    table.replace("big", [Record("*.big.docker.", "TXT", f'"{"z" * 240}" "{"y" * 199}"', 60),
                          Record("*.two.docker.", "A", "10.0.0.1", 60), Record("*.two.docker.", "A", "10.0.0.2", 60)])
    snap = table.snapshot
    rng = random.Random(8)

    def name() -> str:
        """Labels below one of the bases, up to a random length (long ones cross the 512-byte limit)."""
        base = rng.choice(["web.docker", "docker", "big.docker", "big.docker", "two.docker", "api.web.docker",
                           "_tcp.host1.docker", "nope.docker", "ext.example.test"])
        length = rng.randrange(len(base) + 2, 253)
        labels = [base]
        while length - len(".".join(labels)) > 1:
            size = min(63, length - len(".".join(labels)) - 1, rng.choice([1, 5, 30, 63, 63]))
            labels.insert(0, "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(size)))
        return ".".join(labels) if len(labels) > 1 else f"x.{base}"

    shapes = ["plain", "edns", "do", "cookie", "small"]
    served = 0
    for _ in range(3000):
        shape, qtype = rng.choice(shapes), rng.choice(["A", "TXT", "MX", "AAAA"])
        data = query_bytes(mixed_case(name(), rng), qtype, rng, shape)
        fast = answers.answer(data, snap, rng.random() < 0.5, "127.0.0.1")
        ra = bool(fast and fast[3] & 0x80)
        query = wire.decode(data)
        assert isinstance(query, DNSRecord)
        outcome = resolve(query, snap, "127.0.0.1", Policy(allow=DEFAULT_ALLOW, forwarding=ra))
        if fast is None:
            continue
        assert isinstance(outcome, Answer)
        rotated = resolve(query, snap, "127.0.0.1", Policy(allow=DEFAULT_ALLOW, forwarding=ra), 1)
        assert isinstance(rotated, Answer)
        expected = [wire.encode(found.message, wire.udp_limit(query)) for found in (outcome, rotated)]
        assert fast in expected, (DNSRecord.parse(data).q, DNSRecord.parse(fast))  # rotation aside
        served += 1
    assert served > 2000
    for shape in ("plain", "small"):  # every length around the 512-byte limit, the shape known
        for size in range(1, 64):  # one label of 1 to 63 bytes: the answer crosses 512 bytes at 30
            data = query_bytes(f"{'z' * size}.big.docker", "TXT", rng, shape)
            query = wire.decode(data)
            assert isinstance(query, DNSRecord)
            outcome = resolve(query, snap, "127.0.0.1", POLICY)
            assert isinstance(outcome, Answer)
            assert answers.answer(data, snap, True, "127.0.0.1") == wire.encode(outcome.message, wire.udp_limit(query))
    assert snap.shapes[0] and snap.shapes[1]  # the shapes were remembered, and answered from
    assert len(snap.shapes[0]) + len(snap.shapes[1]) <= 2 * answers.MAX_SHAPES
