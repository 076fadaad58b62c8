"""Wildcards (RFC 4592) and SRV answers with their targets' addresses, in the resolver and the answer index."""

from __future__ import annotations

import random

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from dockerdns import answers, wire
from dockerdns.config import DEFAULT_ALLOW
from dockerdns.records import Record
from dockerdns.resolver import Answer, Forward, Policy, resolve
from dockerdns.table import RecordTable

POLICY = Policy(allow=DEFAULT_ALLOW, forwarding=True)

# RFC 4592 section 2.2.1, with the zone `docker.` for `example.` (a `*` inside a name is not allowed here).
ZONE = """
*.docker.                  60 IN TXT "this is a wildcard"
*.docker.                  60 IN MX  10 host1.docker.
host1.docker.              60 IN A   192.0.2.1
_ssh._tcp.host1.docker.    60 IN SRV 0 0 22 host1.docker.
_ssh._tcp.host2.docker.    60 IN SRV 0 0 22 host2.docker.
*.web.docker.              60 IN A   10.0.0.80
api.web.docker.            60 IN A   10.0.0.81
*.ext.example.test.        60 IN A   192.0.2.99
"""

CASES = [
    # name, type, rcode, answer lines (owner is the question), authority has the SOA
    ("host3.docker", "MX", "NOERROR", ["host3.docker. 60 IN MX 10 host1.docker."], False),
    ("host3.docker", "A", "NOERROR", [], True),  # the wildcard has no A: NODATA
    ("foo.bar.docker", "TXT", "NOERROR", ['foo.bar.docker. 60 IN TXT "this is a wildcard"'], False),
    ("host1.docker", "MX", "NOERROR", [], True),  # host1 exists: no synthesis
    ("_telnet._tcp.host1.docker", "SRV", "NXDOMAIN", [], True),  # _tcp.host1 is the closest encloser
    ("a.web.docker", "A", "NOERROR", ["a.web.docker. 60 IN A 10.0.0.80"], False),
    ("x.y.web.docker", "A", "NOERROR", ["x.y.web.docker. 60 IN A 10.0.0.80"], False),  # at any depth
    ("web.docker", "A", "NOERROR", [], True),  # the parent itself is not matched: it exists (a non-terminal)
    ("api.web.docker", "A", "NOERROR", ["api.web.docker. 60 IN A 10.0.0.81"], False),
    ("x.api.web.docker", "A", "NXDOMAIN", [], True),  # api.web blocks the wildcard below it
    ("a.web.docker", "TXT", "NOERROR", [], True),  # another type: NODATA with the SOA
    ("*.web.docker", "A", "NOERROR", ["*.web.docker. 60 IN A 10.0.0.80"], False),
    ("q.ext.example.test", "A", "NOERROR", ["q.ext.example.test. 60 IN A 192.0.2.99"], False),  # absolute
]


def make_table() -> RecordTable:
    table = RecordTable("docker")
    records = []
    for line in ZONE.strip().splitlines():
        name, ttl, _, rtype, *value = line.split()
        records.append(Record(name, rtype, " ".join(value), int(ttl)))
    table.replace("static", records)
    return table


def zone_lines(rrs: list) -> list[str]:
    return [" ".join(rr.toZone().split()) for rr in rrs]


@pytest.mark.parametrize("name,qtype,rcode,answer,soa", CASES, ids=[f"{c[0]}/{c[1]}" for c in CASES])
def test_rfc4592_examples(name: str, qtype: str, rcode: str, answer: list[str], soa: bool) -> None:
    """Synthesis, closest encloser and blocking as RFC 4592 section 2.2.1 works them out, from both paths."""
    table = make_table()
    query = DNSRecord.question(name, qtype)
    outcome = resolve(query, table.snapshot, "127.0.0.1", POLICY)
    assert isinstance(outcome, Answer)
    reply = outcome.message
    assert RCODE.get(reply.header.rcode) == rcode and reply.header.aa == 1
    assert zone_lines(reply.rr) == answer
    assert [rr.rtype for rr in reply.auth] == ([QTYPE.SOA] if soa else [])
    fast = answers.answer(bytes(query.pack()), table.snapshot, True, "127.0.0.1")
    if fast is not None:
        assert fast == wire.encode(reply, 512)


def test_wildcard_names_take_the_index() -> None:
    """Random names below a wildcard, which never repeat, are answered by the index."""
    table = make_table()
    rng = random.Random(4)
    for _ in range(200):
        name = f"h{rng.randrange(10**9)}.web.docker"
        out = answers.answer(bytes(DNSRecord.question(name, "A").pack()), table.snapshot, True, "127.0.0.1")
        assert out is not None and zone_lines(DNSRecord.parse(out).rr) == [f"{name}. 60 IN A 10.0.0.80"]


@pytest.mark.parametrize("qtype", ["NS", "A", "SOA"])
def test_the_root_is_asked_about_beside_wildcards(qtype: str) -> None:
    """A resolver's priming query (`. NS`) with wildcards in the table goes upstream as any outside name does:
    the index has no answer and no exception for the empty name."""
    table = make_table()
    query = DNSRecord.question(".", qtype)
    assert isinstance(resolve(query, table.snapshot, "127.0.0.1", POLICY), Forward)
    assert answers.answer(bytes(query.pack()), table.snapshot, True, "127.0.0.1") is None


@pytest.mark.parametrize("name", ["host1.docker", "nothere.host1.docker", "a.web.docker", "docker"])
@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_zone_transfers_are_refused_on_both_paths(name: str, qtype: str) -> None:
    """The index leaves AXFR and IXFR to the full resolver, which refuses them, held name or not."""
    table = make_table()
    query = DNSRecord.question(name, qtype)
    assert answers.answer(bytes(query.pack()), table.snapshot, True, "127.0.0.1") is None
    outcome = resolve(query, table.snapshot, "127.0.0.1", POLICY)
    assert isinstance(outcome, Answer) and outcome.message.header.rcode == RCODE.REFUSED


def test_shapes_a_client_varies_cannot_keep_the_others_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_SHAPES the memo starts over: a client sending a new EDNS size each time (a new shape each
    time) leaves room for the shape that comes next, and the memo stays bounded."""
    monkeypatch.setattr(answers, "MAX_SHAPES", 8)
    table = make_table()
    snap = table.snapshot
    for size in range(1232, 1232 + 50):
        query = DNSRecord.question(f"n{size}.web.docker", "A")
        query.add_ar(EDNS0(udp_len=size))
        assert answers.answer(bytes(query.pack()), snap, True, "127.0.0.1") is not None
        assert 1 <= len(snap.shapes[1]) <= 8
    plain = bytes(DNSRecord.question("first.web.docker", "A").pack())
    answers.answer(plain, snap, True, "127.0.0.1")
    assert any(len(shape) == 10 + len(b"\x03web\x06docker\x00") + 4 for shape in snap.shapes[1])


def test_a_wildcard_cname_back_into_itself_answers_as_the_resolver() -> None:
    """`*.loop CNAME a.loop`: asked for a.loop itself the chain stops after one CNAME (a loop), for b.loop
    after two; the index leaves such a wildcard to the full resolver, and takes it back once a.loop exists."""
    table = RecordTable("docker")
    records = [Record("*.loop.docker.", "CNAME", "a.loop.docker.", 60), Record("host1.docker.", "A", "192.0.2.1", 60)]
    table.replace("static", records)
    for present in (False, True):
        for name in ("a.loop.docker", "b.loop.docker", "x.y.loop.docker"):
            for qtype in ("A", "AAAA", "CNAME", "TXT"):
                query = DNSRecord.question(name, qtype)
                for shape in range(2):  # twice: the second may come from the shape memo (Rule 8)
                    outcome = resolve(query, table.snapshot, "127.0.0.1", POLICY)
                    assert isinstance(outcome, Answer)
                    fast = answers.answer(bytes(query.pack()), table.snapshot, True, "127.0.0.1")
                    if fast is not None:
                        assert fast == wire.encode(outcome.message, 512), (name, qtype, present)
        outcome = resolve(DNSRecord.question("a.loop.docker"), table.snapshot, "127.0.0.1", POLICY)
        assert isinstance(outcome, Answer)
        assert [rr.rtype for rr in outcome.message.rr] == [QTYPE.A if present else QTYPE.CNAME]
        table.replace("static", [*records, Record("a.loop.docker.", "A", "192.0.2.7", 60)])
    fast = answers.answer(bytes(DNSRecord.question("b.loop.docker").pack()), table.snapshot, True, "127.0.0.1")
    assert fast is not None  # a chain that ends at a held name: the index's again


def test_wildcard_outside_the_zone_only_matches_below_it() -> None:
    """An absolute wildcard answers names below its parent; the parent's other relatives are forwarded."""
    table = make_table()
    assert isinstance(resolve(DNSRecord.question("example.test"), table.snapshot, "127.0.0.1", POLICY), Forward)
    assert isinstance(resolve(DNSRecord.question("other.example.test"), table.snapshot, "127.0.0.1", POLICY),
                      Forward)


def test_removing_the_wildcard_brings_nxdomain_back() -> None:
    """When the last wildcard goes, names below its parent are NXDOMAIN again."""
    table = make_table()
    table.replace("static", [Record("host1.docker.", "A", "192.0.2.1", 60)])
    out = answers.answer(bytes(DNSRecord.question("a.web.docker").pack()), table.snapshot, True, "127.0.0.1")
    assert out is not None and DNSRecord.parse(out).header.rcode == RCODE.NXDOMAIN


def test_a_cname_into_a_wildcard_follows_it_as_it_comes_and_goes() -> None:
    """A CNAME whose target only a wildcard answers: its ready answer changes with the wildcard."""
    table = RecordTable("docker")
    table.replace("static", [Record("app.docker.", "CNAME", "x.shop.docker.", 60)])
    table.replace("c1", [Record("other.shop.docker.", "A", "10.0.0.9", 1, "c1")])

    def asked() -> tuple[bytes | None, bytes]:
        query = DNSRecord.question("app.docker", "A")
        outcome = resolve(query, table.snapshot, "127.0.0.1", POLICY)
        assert isinstance(outcome, Answer)
        return answers.answer(bytes(query.pack()), table.snapshot, True, "127.0.0.1"), wire.encode(outcome.message)

    fast, full = asked()
    assert fast == full and not [rr for rr in DNSRecord.parse(full).rr if rr.rtype == QTYPE.A]
    table.replace("c2", [Record("*.shop.docker.", "A", "10.0.0.80", 1, "c2")])
    fast, full = asked()
    assert fast == full and [str(rr.rdata) for rr in DNSRecord.parse(full).rr if rr.rtype == QTYPE.A] == ["10.0.0.80"]
    table.remove("c2")
    fast, full = asked()
    assert fast == full and not [rr for rr in DNSRecord.parse(full).rr if rr.rtype == QTYPE.A]


def srv_table() -> RecordTable:
    table = RecordTable("docker")
    for i, (net, subnet) in enumerate((("front", "10.1.0.0/24"), ("back", "10.2.0.0/24")), start=1):
        owner = f"c{i}"
        table.replace(owner, [
            Record(f"web-{i}.docker.", "A", f"{subnet[:-4]}{10 + i}", 1, owner, owner, net, subnet),
            Record("_80._tcp.web.p.docker.", "SRV", f"0 0 80 web-{i}.docker.", 1, owner, owner),
        ])
    return table


def test_srv_carries_its_targets_addresses() -> None:
    """An SRV answer holds one record per replica and their targets' addresses in the additional section."""
    table = srv_table()
    query = DNSRecord.question("_80._tcp.web.p.docker", "SRV")
    reply = resolve(query, table.snapshot, "127.0.0.1", POLICY)
    assert isinstance(reply, Answer)
    assert sorted(zone_lines(reply.message.rr)) == ["_80._tcp.web.p.docker. 1 IN SRV 0 0 80 web-1.docker.",
                                                    "_80._tcp.web.p.docker. 1 IN SRV 0 0 80 web-2.docker."]
    assert sorted(zone_lines(reply.message.ar)) == ["web-1.docker. 1 IN A 10.1.0.11", "web-2.docker. 1 IN A 10.2.0.12"]
    fast = answers.answer(bytes(query.pack()), table.snapshot, True, "127.0.0.1")
    assert fast is not None and fast == wire.encode(reply.message, 512)


def test_srv_truncation_drops_additional_records_first() -> None:
    """Too big for the client: the SRV records stay whole without the additional section, TC not set."""
    table = RecordTable("docker")
    for i in range(6):
        owner = f"c{i}"
        table.replace(owner, [
            Record(f"replica-number-{i:02}.longproject.docker.", "A", f"10.3.0.{i + 1}", 1, owner),
            Record(f"replica-number-{i:02}.longproject.docker.", "AAAA", f"fd00::{i + 1}", 1, owner),
            Record("_80._tcp.web.longproject.docker.", "SRV", f"0 0 80 replica-number-{i:02}.longproject.docker.",
                   1, owner)])
    data = bytes(DNSRecord.question("_80._tcp.web.longproject.docker", "SRV").pack())
    full = resolve(wire.decode(data), table.snapshot, "127.0.0.1", POLICY).message  # type: ignore[arg-type,union-attr]
    assert len(wire.encode(full)) > 512
    for out in (answers.answer(data, table.snapshot, True, "127.0.0.1"), wire.encode(full, 512)):
        assert out is not None and len(out) <= 512
        reply = DNSRecord.parse(out)
        assert len(reply.rr) == 6 and not reply.ar and not reply.header.tc


def test_srv_additional_is_source_aware() -> None:
    """A client on one network gets a target's addresses on its own network only, where there are some."""
    table = srv_table()
    table.replace("c1", [*table.snapshot.by_owner["c1"],
                         Record("web-1.docker.", "A", "10.2.0.11", 1, "c1", "c1", "back", "10.2.0.0/24")])
    data = bytes(DNSRecord.question("_80._tcp.web.p.docker", "SRV").pack())
    out = answers.answer(data, table.snapshot, True, "10.2.0.99")
    assert out is not None
    assert sorted(zone_lines(DNSRecord.parse(out).ar)) == ["web-1.docker. 1 IN A 10.2.0.11",
                                                           "web-2.docker. 1 IN A 10.2.0.12"]
    out = answers.answer(data, table.snapshot, True, "127.0.0.1")
    assert out is not None and len(DNSRecord.parse(out).ar) == 3
