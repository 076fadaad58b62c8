"""Resolver semantics, query in and message out, no sockets. Expected answers are zone text."""

from __future__ import annotations

import ipaddress

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from dockerdns.config import DEFAULT_ALLOW
from dockerdns.records import Record
from dockerdns.resolver import Answer, Forward, Policy, resolve
from dockerdns.table import RecordTable

STATIC_ZONE = """
gateway.docker.            5  IN A     172.17.0.1
api.example.test.          5  IN CNAME web.docker.
alias.docker.              5  IN CNAME gateway.docker.
loop1.docker.              5  IN CNAME loop2.docker.
loop2.docker.              5  IN CNAME loop1.docker.
dangling.docker.           5  IN CNAME missing.docker.
outside.docker.            5  IN CNAME www.example.org.
_http._tcp.web.docker.     60 IN SRV   0 0 80 web.docker.
txt.docker.                5  IN TXT   "hello world"
mail.docker.               5  IN MX    10 gateway.docker.
"""

# (owner, name, type, value, network, subnet)
CONTAINERS = [
    ("c1", "web.docker.", "A", "10.1.0.2", "front", "10.1.0.0/24"),
    ("c1", "web.docker.", "A", "10.2.0.2", "back", "10.2.0.0/24"),
    ("c1", "2.0.1.10.in-addr.arpa.", "PTR", "web.docker.", None, None),
    ("c2", "web.docker.", "A", "10.1.0.3", "front", "10.1.0.0/24"),
    ("c3", "db.docker.", "A", "10.2.0.5", "back", "10.2.0.0/24"),
    ("c3", "db.docker.", "AAAA", "fd00:2::5", "back", "fd00:2::/64"),
    ("c3", "db.myproj.docker.", "A", "10.2.0.5", "back", "10.2.0.0/24"),
]

POLICY = Policy(zone="docker.", allow=DEFAULT_ALLOW, forwarding=True, soa_ttl=5)
SOA_NEG = "docker. 1 IN SOA ns.docker. hostmaster.docker. {serial} 3600 600 86400 1"


def make_table() -> RecordTable:
    table = RecordTable("docker")
    static = [
        Record(line.split()[0], line.split()[3], " ".join(line.split()[4:]), int(line.split()[1]))
        for line in STATIC_ZONE.strip().splitlines()
    ]
    table.replace("static", static)
    owners: dict[str, list[Record]] = {}
    for owner, name, rtype, value, network, subnet in CONTAINERS:
        owners.setdefault(owner, []).append(Record(name, rtype, value, 5, owner, owner, network, subnet))
    for owner, recs in owners.items():
        table.replace(owner, recs)
    return table


TABLE = make_table()
SERIAL = TABLE.snapshot.generation


def ask(name: str, qtype: str = "A", client: str = "127.0.0.1", policy: Policy = POLICY, turn: int = 0,
        edns: bool = False) -> Answer | Forward:
    query = DNSRecord.question(name, qtype)
    if edns:
        query.add_ar(EDNS0(udp_len=4096))
    return resolve(query, TABLE.snapshot, client, policy, turn)


def zone_lines(rrs: list) -> list[str]:
    return [" ".join(rr.toZone().split()) for rr in rrs]


def answered(outcome: Answer | Forward) -> DNSRecord:
    assert isinstance(outcome, Answer), outcome
    return outcome.message


CASES = [
    # name, type, rcode, answer lines, authority lines
    ("gateway.docker", "A", "NOERROR", ["gateway.docker. 5 IN A 172.17.0.1"], []),
    ("gateway.docker", "AAAA", "NOERROR", [], [SOA_NEG]),
    ("gateway.docker", "TXT", "NOERROR", [], [SOA_NEG]),
    ("nope.docker", "A", "NXDOMAIN", [], [SOA_NEG]),
    ("nope.docker", "AAAA", "NXDOMAIN", [], [SOA_NEG]),
    ("gateway", "A", "NOERROR", ["gateway. 5 IN A 172.17.0.1"], []),
    ("gateway", "AAAA", "NOERROR", [], []),
    ("docker", "SOA", "NOERROR", ["docker. 5 IN SOA ns.docker. hostmaster.docker. {serial} 3600 600 86400 1"], []),
    ("docker", "NS", "NOERROR", ["docker. 5 IN NS ns.docker."], []),
    ("docker", "A", "NOERROR", [], [SOA_NEG]),
    ("myproj.docker", "A", "NOERROR", [], [SOA_NEG]),
    ("_tcp.web.docker", "SRV", "NOERROR", [], [SOA_NEG]),
    ("_http._tcp.web.docker", "SRV", "NOERROR", ["_http._tcp.web.docker. 60 IN SRV 0 0 80 web.docker."], []),
    ("txt.docker", "TXT", "NOERROR", ['txt.docker. 5 IN TXT "hello world"'], []),
    ("mail.docker", "MX", "NOERROR", ["mail.docker. 5 IN MX 10 gateway.docker."], []),
    ("alias.docker", "A", "NOERROR", ["alias.docker. 5 IN CNAME gateway.docker.", "gateway.docker. 5 IN A 172.17.0.1"],
     []),
    ("alias.docker", "AAAA", "NOERROR", ["alias.docker. 5 IN CNAME gateway.docker."], []),
    ("alias.docker", "CNAME", "NOERROR", ["alias.docker. 5 IN CNAME gateway.docker."], []),
    ("api.example.test", "A", "NOERROR",
     ["api.example.test. 5 IN CNAME web.docker.", "web.docker. 5 IN A 10.1.0.2", "web.docker. 5 IN A 10.2.0.2",
      "web.docker. 5 IN A 10.1.0.3"], []),
    ("api.example.test", "TXT", "NOERROR", ["api.example.test. 5 IN CNAME web.docker."], []),
    ("dangling.docker", "A", "NXDOMAIN", ["dangling.docker. 5 IN CNAME missing.docker."], []),
    ("outside.docker", "A", "NOERROR", ["outside.docker. 5 IN CNAME www.example.org."], []),
    ("loop1.docker", "A", "NOERROR",
     ["loop1.docker. 5 IN CNAME loop2.docker.", "loop2.docker. 5 IN CNAME loop1.docker."], []),
    ("2.0.1.10.in-addr.arpa", "PTR", "NOERROR", ["2.0.1.10.in-addr.arpa. 5 IN PTR web.docker."], []),
    ("db.docker", "AAAA", "NOERROR", ["db.docker. 5 IN AAAA fd00:2::5"], []),
    ("db.myproj.docker", "A", "NOERROR", ["db.myproj.docker. 5 IN A 10.2.0.5"], []),
]


@pytest.mark.parametrize("name,qtype,rcode,answer,authority", CASES, ids=[f"{c[0]}/{c[1]}" for c in CASES])
def test_table_driven(name: str, qtype: str, rcode: str, answer: list[str], authority: list[str]) -> None:
    """Each query gets exactly the rcode, answer and authority written as zone text."""
    reply = answered(ask(name, qtype))
    assert RCODE.get(reply.header.rcode) == rcode
    assert reply.header.aa == 1
    assert zone_lines(reply.rr) == [line.format(serial=SERIAL) for line in answer]
    assert zone_lines(reply.auth) == [line.format(serial=SERIAL) for line in authority]


def test_question_echoed_as_asked() -> None:
    """Names match without case, and the question comes back byte for byte."""
    reply = answered(ask("GaTeWaY.DoCkEr", "A"))
    assert str(reply.q.qname) == "GaTeWaY.DoCkEr."
    assert zone_lines(reply.rr) == ["GaTeWaY.DoCkEr. 5 IN A 172.17.0.1"]


@pytest.mark.parametrize("name", ["example.org", "www.github.com", "nope"])
def test_not_ours_is_forwarded(name: str) -> None:
    """Names outside the zone and the table, and unknown single labels, go to the forwarder."""
    assert isinstance(ask(name), Forward)


def test_not_ours_refused_without_forwarding() -> None:
    """With forwarding off, a name that is not ours gets REFUSED."""
    policy = Policy(zone="docker.", allow=DEFAULT_ALLOW, forwarding=False)
    reply = answered(ask("example.org", policy=policy))
    assert reply.header.rcode == RCODE.REFUSED
    assert reply.header.ra == 0


def test_absolute_table_name_other_type_is_nodata_without_soa() -> None:
    """A table name outside the zone answers NOERROR, empty, for another type, with no SOA (not our zone)."""
    table = RecordTable("docker")
    table.replace("static", [Record("host.example.test.", "A", "192.0.2.5", 5)])
    reply = answered(resolve(DNSRecord.question("host.example.test", "MX"), table.snapshot, "127.0.0.1", POLICY, 0))
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
    assert zone_lines(reply.rr) == []
    assert zone_lines(reply.auth) == []  # the SOA of `docker.` says nothing about example.test.


def test_client_outside_allow_refused() -> None:
    """A client outside `allow` gets REFUSED, for zone and forwarded names alike."""
    for name in ("gateway.docker", "example.org"):
        reply = answered(ask(name, client="203.0.113.9"))
        assert reply.header.rcode == RCODE.REFUSED
        assert not reply.rr


def test_ipv4_mapped_client_checked_as_ipv4() -> None:
    """An IPv4-mapped IPv6 client address is judged by its IPv4 address."""
    assert answered(ask("gateway.docker", client="::ffff:127.0.0.1")).header.rcode == RCODE.NOERROR


def test_rotation_between_turns() -> None:
    """Several addresses rotate from one query to the next."""
    firsts = {zone_lines(answered(ask("web.docker", turn=t)).rr)[0] for t in range(3)}
    assert len(firsts) == 3


def test_source_aware_answers() -> None:
    """A client on a Docker network gets only the addresses on its own networks."""
    reply = answered(ask("web.docker", client="10.2.0.99"))
    assert zone_lines(reply.rr) == ["web.docker. 5 IN A 10.2.0.2"]
    reply = answered(ask("web.docker", client="10.1.0.50", turn=1))
    assert sorted(zone_lines(reply.rr)) == ["web.docker. 5 IN A 10.1.0.2", "web.docker. 5 IN A 10.1.0.3"]


def test_source_aware_keeps_all_when_none_reachable() -> None:
    """When no address is on the client's networks, all are given."""
    reply = answered(ask("db.docker", client="10.1.0.50"))
    assert zone_lines(reply.rr) == ["db.docker. 5 IN A 10.2.0.5"]


def test_notimp_for_other_opcodes() -> None:
    """An opcode other than QUERY gets NOTIMP."""
    query = DNSRecord.question("gateway.docker")
    query.header.opcode = 2  # STATUS
    assert answered(resolve(query, TABLE.snapshot, "127.0.0.1", POLICY)).header.rcode == RCODE.NOTIMP


def test_formerr_for_two_questions() -> None:
    """More than one question gets FORMERR."""
    query = DNSRecord.question("gateway.docker")
    query.add_question(*DNSRecord.question("web.docker").questions)
    assert answered(resolve(query, TABLE.snapshot, "127.0.0.1", POLICY)).header.rcode == RCODE.FORMERR


def test_edns_answered_with_our_payload() -> None:
    """An OPT in the query gets an OPT with payload 1232 in the answer."""
    reply = answered(ask("gateway.docker", edns=True))
    opts = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert len(opts) == 1 and opts[0].rclass == 1232
    assert not [rr for rr in answered(ask("gateway.docker")).ar if rr.rtype == QTYPE.OPT]


def test_edns_version_one_gets_badvers() -> None:
    """An EDNS version other than 0 gets BADVERS (RFC 6891 section 6.1.3)."""
    query = DNSRecord.question("gateway.docker")
    query.add_ar(EDNS0(udp_len=4096, version=1))
    reply = answered(resolve(query, TABLE.snapshot, "127.0.0.1", POLICY))
    opt = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT][0]
    assert (opt.ttl >> 24) == 1 and reply.header.rcode == 0


def test_zone_transfer_refused() -> None:
    """AXFR is refused: the zone is not for transfer."""
    assert answered(ask("docker", "AXFR")).header.rcode == RCODE.REFUSED


def test_any_returns_every_type() -> None:
    """ANY on a container name returns its A and AAAA records."""
    reply = answered(ask("db.docker", "ANY"))
    assert sorted(zone_lines(reply.rr)) == ["db.docker. 5 IN A 10.2.0.5", "db.docker. 5 IN AAAA fd00:2::5"]


def test_name_kept_when_one_owner_goes() -> None:
    """Removing one container keeps the addresses another container holds under the same name."""
    table = make_table()
    table.remove("c1")
    reply = resolve(DNSRecord.question("web.docker"), table.snapshot, "127.0.0.1", POLICY)
    assert zone_lines(answered(reply).rr) == ["web.docker. 5 IN A 10.1.0.3"]
    table.remove("c2")
    reply = answered(resolve(DNSRecord.question("web.docker"), table.snapshot, "127.0.0.1", POLICY))
    # Still NOERROR: _http._tcp.web.docker. lies below it (an empty non-terminal, RFC 8020).
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr
    table.remove("c3")
    reply = answered(resolve(DNSRecord.question("db.docker"), table.snapshot, "127.0.0.1", POLICY))
    assert reply.header.rcode == RCODE.NXDOMAIN
    assert ipaddress.ip_network("10.1.0.0/24") not in {n for n, _ in table.snapshot.subnets}


def test_name_server_has_an_address() -> None:
    """ns.<zone>, which the apex NS and SOA name, answers with the addresses dockerdns listens on."""
    policy = Policy(zone="docker.", allow=DEFAULT_ALLOW, ns_addresses=("127.0.0.1", "172.17.0.1", "::1"))
    assert sorted(zone_lines(answered(ask("ns.docker", "A", policy=policy)).rr)) == [
        "ns.docker. 5 IN A 127.0.0.1", "ns.docker. 5 IN A 172.17.0.1"]
    assert zone_lines(answered(ask("ns.docker", "AAAA", policy=policy)).rr) == ["ns.docker. 5 IN AAAA ::1"]
    reply = answered(ask("ns.docker", "TXT", policy=policy))
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr  # NODATA: the name exists
    assert answered(ask("ns.docker", "A")).header.rcode == RCODE.NXDOMAIN  # nothing bound, nothing to say


def test_a_container_named_ns_wins() -> None:
    """A container or static record called ns takes the name; the listen addresses step aside."""
    table = make_table()
    table.replace("c9", [Record("ns.docker.", "A", "10.9.9.9", 5, "c9", "ns")])
    policy = Policy(zone="docker.", allow=DEFAULT_ALLOW, ns_addresses=("127.0.0.1",))
    reply = answered(resolve(DNSRecord.question("ns.docker"), table.snapshot, "127.0.0.1", policy))
    assert zone_lines(reply.rr) == ["ns.docker. 5 IN A 10.9.9.9"]
