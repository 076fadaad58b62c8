"""The forwarder: one deadline, our own queries, only what answers the question, coalescing, loop nonces.

Upstreams are stub servers on loopback (tests/dnsstub.py); hostile ones are
stubs whose replies a test rewrites. Expected answers are zone text.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from dnslib import EDNS0, QTYPE, RCODE, RR, DNSHeader, DNSRecord, EDNSOption

from dockerdns.app import App
from dockerdns.forwarder import (EDNS_PAYLOAD, LOOP_OPTION, NONCE_LEN, Forwarder, answer_for, answering,
                                 question_of)
from dockerdns.settings import Address, ForwardSettings, Settings
from tests.dnsstub import StubUpstream

ZONE = """
www.example.org.   300 IN A     192.0.2.11
slow.example.org.  300 IN A     192.0.2.12
example.org.       300 IN SOA   ns.example.org. host.example.org. 1 3600 600 86400 300
"""


def address(stub: StubUpstream) -> Address:
    return Address("127.0.0.1", stub.port)


def client_query(name: str, qtype: str = "A", *, ident: int = 4242, edns: bool = True, do: bool = False,
                 cd: bool = False, options: list[EDNSOption] | None = None) -> DNSRecord:
    query = DNSRecord.question(name, qtype)
    query.header.id = ident
    query.header.cd = int(cd)
    if edns:
        query.add_ar(EDNS0(udp_len=4096, flags="do" if do else "", opts=options or []))
    return query


def zone_lines(rrs: list[RR]) -> list[str]:
    return [" ".join(rr.toZone().split()) for rr in rrs]


def reply_of(query: DNSRecord, answer: str = "", authority: str = "", additional: str = "",
             rcode: int = RCODE.NOERROR) -> DNSRecord:
    """An upstream's reply to `query`, its sections given as zone text."""
    reply = query.reply()
    reply.header.rcode = rcode
    for text, add in ((answer, reply.add_answer), (authority, reply.add_auth), (additional, reply.add_ar)):
        if text.strip():
            add(*RR.fromZone(text))
    return reply


@contextlib.contextmanager
def stubs(count: int, zone: str = ZONE, **kw: object) -> Iterator[list[StubUpstream]]:
    made = [StubUpstream(zone, **kw) for _ in range(count)]  # type: ignore[arg-type]
    try:
        yield made
    finally:
        for stub in made:
            stub.close()


@contextlib.contextmanager
def forwarder_to(*upstreams: StubUpstream, **kw: object) -> Iterator[Forwarder]:
    forwarder = Forwarder(tuple(address(stub) for stub in upstreams), **kw)  # type: ignore[arg-type]
    try:
        yield forwarder
    finally:
        forwarder.close()


def hostile(make: Callable[[DNSRecord], bytes]) -> Callable[[DNSRecord, bytes, str], bytes]:
    """A `rewrite` for the stub: every reply replaced by what `make` builds from the query."""
    return lambda query, _reply, _transport: make(query)


# --- Rule 2: one deadline ---------------------------------------------------------------


@pytest.mark.parametrize("count, total", [(2, 2.0), (4, 3.0)])
def test_one_deadline_whatever_upstreams_do(count: int, total: float) -> None:
    """Upstreams that truncate after 0.9 s and stall on TCP: 1 s each, retry included, and 3 s at most in all."""
    with stubs(count, mode="truncate", delay=0.9, tcp_stall=True) as ups, forwarder_to(*ups) as forwarder:
        query = client_query("www.example.org")
        started = time.monotonic()
        assert forwarder.forward(query, query.pack()) is None
        elapsed = time.monotonic() - started
    assert total - 0.1 <= elapsed <= total + 0.15, elapsed  # before: 1.9 s an upstream, 3.8 s for two
    asked = [stub for stub in ups if stub.seen]
    assert len(asked) == min(count, 3)  # a fourth upstream gets no time at all
    assert all([seen.transport for seen in stub.seen] == ["udp", "tcp"] for stub in asked)
    assert forwarder.failures == 1


# --- Rule 3: our query, never the client's bytes -----------------------------------------


def test_upstream_gets_our_query_built_from_the_question() -> None:
    """The question (lower-cased), RD, CD and our OPT (1232, DO copied, our nonce) go upstream; nothing else does."""
    junk = [EDNSOption(10, b"\x01" * 8), EDNSOption(12, b"\0" * 60_000), EDNSOption(65000, b"secret")]
    query = client_query("WwW.ExAmPlE.oRg", "A", do=True, cd=True, options=junk)
    query.add_ar(*RR.fromZone("extra.example. 5 IN A 10.9.9.9"))
    data = query.pack()
    assert len(data) > 60_000
    with stubs(1) as (up,), forwarder_to(up) as forwarder:
        assert forwarder.forward(query, data) is not None
    sent = up.seen[0].raw
    assert len(sent) < 80  # 60,046 bytes before
    upstream = DNSRecord.parse(sent)
    assert upstream.header.id != query.header.id
    assert (str(upstream.q.qname), upstream.q.qtype, upstream.q.qclass) == ("www.example.org.", QTYPE.A, 1)
    assert (upstream.header.rd, upstream.header.cd, upstream.header.qr) == (1, 1, 0)
    assert [len(upstream.questions), len(upstream.rr), len(upstream.auth), len(upstream.ar)] == [1, 0, 0, 1]
    opt = upstream.ar[0]
    assert (opt.rtype, opt.rclass, opt.ttl) == (QTYPE.OPT, EDNS_PAYLOAD, 0x8000)  # DO copied
    assert [(option.code, len(option.data)) for option in opt.rdata] == [(LOOP_OPTION, NONCE_LEN)]


def test_client_without_edns_gets_no_opt_but_upstream_does() -> None:
    """A client without EDNS gets an answer without OPT; upstream still sees our OPT, DO clear."""
    query = client_query("www.example.org", edns=False)
    with stubs(1) as (up,), forwarder_to(up) as forwarder:
        answer = DNSRecord.parse(forwarder.forward(query, query.pack()))
    assert zone_lines(answer.rr) == ["www.example.org. 300 IN A 192.0.2.11"] and answer.ar == []
    opt = DNSRecord.parse(up.seen[0].raw).ar[0]
    assert (opt.rtype, opt.ttl) == (QTYPE.OPT, 0)


def no_question(query: DNSRecord) -> bytes:
    reply = reply_of(query, "www.example.org. 300 IN A 6.6.6.6")
    reply.questions = []
    return bytes(reply.pack())


def other_question(query: DNSRecord) -> bytes:
    reply = reply_of(DNSRecord.question("www.bank.example", "A"), "www.bank.example. 300 IN A 6.6.6.6")
    reply.header.id = query.header.id
    return bytes(reply.pack())


def other_type(query: DNSRecord) -> bytes:
    reply = reply_of(DNSRecord.question(str(query.q.qname), "AAAA"))
    reply.header.id = query.header.id
    return bytes(reply.pack())


def not_a_response(query: DNSRecord) -> bytes:
    reply = reply_of(query, "www.example.org. 300 IN A 6.6.6.6")
    reply.header.qr = 0
    return bytes(reply.pack())


@pytest.mark.parametrize("make", [no_question, other_question, other_type, not_a_response],
                         ids=lambda make: make.__name__)
def test_reply_that_does_not_answer_our_question_is_ignored(make: Callable[[DNSRecord], bytes]) -> None:
    """A reply with no question (QDCOUNT 0), another question, or QR clear is ignored: the next upstream answers."""
    with stubs(1, rewrite=hostile(make)) as (bad,), stubs(1) as (good,), \
            forwarder_to(bad, good, timeout=0.3) as forwarder:
        query = client_query("www.example.org")
        answer = DNSRecord.parse(forwarder.forward(query, query.pack()))
    assert zone_lines(answer.rr) == ["www.example.org. 300 IN A 192.0.2.11"]
    assert len(bad.seen) == 1 and len(good.seen) == 1


def test_truncated_reply_without_question_still_goes_to_tcp() -> None:
    """A TC reply that dropped its question (as dnslib's server sends it) leads to TCP, where the answer is checked."""
    def truncate_udp(query: DNSRecord, reply: bytes, transport: str) -> bytes:
        if transport == "tcp":
            return reply
        return bytes(DNSRecord(DNSHeader(id=query.header.id, qr=1, tc=1)).pack())

    with stubs(1, rewrite=truncate_udp) as (up,), forwarder_to(up) as forwarder:
        query = client_query("www.example.org")
        answer = DNSRecord.parse(forwarder.forward(query, query.pack()))
    assert zone_lines(answer.rr) == ["www.example.org. 300 IN A 192.0.2.11"]
    assert [seen.transport for seen in up.seen] == ["udp", "tcp"]


# --- Rule 4: only what answers the question ------------------------------------------------

SOA_EXAMPLE = "example.org. 300 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 300"
SANITISE = [
    # name, type, upstream rcode, answer, authority, additional -> answer, authority
    ("records for other names dropped", "www.example.org", "A", RCODE.NOERROR,
     "www.example.org. 300 IN A 192.0.2.11\nwww.bank.example. 300 IN A 6.6.6.6",
     "com. 300 IN NS ns.evil.\nexample.org. 300 IN NS ns.evil.", "ns.evil. 300 IN A 6.6.6.6",
     ["www.example.org. 300 IN A 192.0.2.11"], []),
    ("CNAME chain kept in order, its neighbours dropped", "www.example.org", "A", RCODE.NOERROR,
     "evil.example. 300 IN A 6.6.6.6\nwww.example.org. 300 IN CNAME edge.cdn.example.\n"
     "edge.cdn.example. 60 IN CNAME e1.cdn.example.\ne1.cdn.example. 20 IN A 192.0.2.50\n"
     "e2.cdn.example. 20 IN A 6.6.6.6", "", "",
     ["www.example.org. 300 IN CNAME edge.cdn.example.", "edge.cdn.example. 60 IN CNAME e1.cdn.example.",
      "e1.cdn.example. 20 IN A 192.0.2.50"], []),
    ("other types at the name dropped", "www.example.org", "A", RCODE.NOERROR,
     "www.example.org. 300 IN A 192.0.2.11\nwww.example.org. 300 IN TXT \"x\"", "", "",
     ["www.example.org. 300 IN A 192.0.2.11"], []),
    ("CNAME asked: the CNAME alone", "www.example.org", "CNAME", RCODE.NOERROR,
     "www.example.org. 300 IN CNAME a.example.\na.example. 300 IN A 192.0.2.1", "", "",
     ["www.example.org. 300 IN CNAME a.example."], []),
    ("CNAME loop ends the chain", "a.example.org", "A", RCODE.NOERROR,
     "a.example.org. 300 IN CNAME b.example.org.\nb.example.org. 300 IN CNAME a.example.org.", "", "",
     ["a.example.org. 300 IN CNAME b.example.org.", "b.example.org. 300 IN CNAME a.example.org."], []),
    ("NXDOMAIN keeps the enclosing SOA only", "nope.example.org", "A", RCODE.NXDOMAIN, "",
     SOA_EXAMPLE + "\nevil. 300 IN SOA ns.evil. h.evil. 1 1 1 1 1\nexample.org. 300 IN NS ns.evil.", "",
     [], [SOA_EXAMPLE]),
    ("root SOA encloses every name", "nope.invalid", "A", RCODE.NXDOMAIN, "",
     ". 300 IN SOA a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 86400", "",
     [], [". 300 IN SOA a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 86400"]),
    ("NODATA after a chain keeps the target's SOA", "www.example.org", "AAAA", RCODE.NOERROR,
     "www.example.org. 300 IN CNAME host.example.net.",
     "example.net. 300 IN SOA ns.example.net. h.example.net. 1 1 1 1 60\n" + SOA_EXAMPLE, "",
     ["www.example.org. 300 IN CNAME host.example.net."],
     ["example.net. 300 IN SOA ns.example.net. h.example.net. 1 1 1 1 60"]),
    ("positive answer carries no authority", "www.example.org", "A", RCODE.NOERROR,
     "www.example.org. 300 IN A 192.0.2.11", SOA_EXAMPLE, "", ["www.example.org. 300 IN A 192.0.2.11"], []),
    # RFC 2181 section 8: the top bit set means 0; everything else is cut to max_ttl (a day).
    ("TTLs capped, top bit is 0", "www.example.org", "A", RCODE.NOERROR,
     "www.example.org. 4294967295 IN A 192.0.2.1\nwww.example.org. 2147483647 IN A 192.0.2.2\n"
     "www.example.org. 86400 IN A 192.0.2.3", "", "",
     ["www.example.org. 0 IN A 192.0.2.1", "www.example.org. 86400 IN A 192.0.2.2",
      "www.example.org. 86400 IN A 192.0.2.3"], []),
    ("SOA TTL and minimum capped", "nope.example.org", "A", RCODE.NXDOMAIN, "",
     "example.org. 2147483648 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 999999", "",
     [], ["example.org. 0 IN SOA ns.example.org. host.example.org. 1 3600 600 86400 86400"]),
]


@pytest.mark.parametrize("name, qtype, rcode, answer, authority, additional, expected, expected_auth",
                         [case[1:] for case in SANITISE], ids=[case[0] for case in SANITISE])
def test_only_what_answers_the_question(name: str, qtype: str, rcode: int, answer: str, authority: str,
                                        additional: str, expected: list[str], expected_auth: list[str]) -> None:
    """Of an upstream reply the client gets the chain of the name asked and, for negatives, its SOA: nothing else."""
    query = client_query(name, qtype)
    upstream = reply_of(query, answer, authority, additional, rcode)
    result = answering(upstream, question_of(query), 86400)  # type: ignore[arg-type]
    reply = DNSRecord.parse(answer_for(query, result))
    assert reply.header.rcode == rcode
    assert zone_lines(reply.rr) == expected
    assert zone_lines(reply.auth) == expected_auth
    assert [rr.rtype for rr in reply.ar] == [QTYPE.OPT]  # ours, not the upstream's additional section


SIGNED = """
www.example.org. 300 IN A 192.0.2.11
www.example.org. 300 IN RRSIG A 13 3 300 20300101000000 20200101000000 12345 example.org. c2ln
www.example.org. 300 IN RRSIG TXT 13 3 300 20300101000000 20200101000000 12345 example.org. c2ln
evil.example. 300 IN RRSIG A 13 2 300 20300101000000 20200101000000 12345 example. c2ln
"""


@pytest.mark.parametrize("do, kept", [(True, ["A", "RRSIG"]), (False, ["A"])])
def test_signatures_of_the_answer_kept_only_with_do(do: bool, kept: list[str]) -> None:
    """With DO the RRSIG covering the answer's RRset stays (RFC 4035); others, and all without DO, go."""
    query = client_query("www.example.org", do=do)
    result = answering(reply_of(query, SIGNED), question_of(query), 86400)  # type: ignore[arg-type]
    reply = DNSRecord.parse(answer_for(query, result))
    assert [QTYPE.get(rr.rtype) for rr in reply.rr] == kept
    assert reply.ar[0].ttl & 0x8000 == (0x8000 if do else 0)  # DO copied into our OPT (RFC 3225)


def test_header_is_the_clients() -> None:
    """The answer has the client's id, RD and CD, RA set and AA clear; AD only for a client that set DO or AD."""
    for do, ad_expected in ((True, 1), (False, 0)):
        query = client_query("www.example.org", ident=777, do=do, cd=True)
        upstream = reply_of(query, "www.example.org. 300 IN A 192.0.2.11")
        upstream.header.ad, upstream.header.aa = 1, 1
        reply = DNSRecord.parse(answer_for(query, answering(upstream, question_of(query), 86400)))  # type: ignore
        header = reply.header
        assert (header.id, header.qr, header.rd, header.cd, header.ra, header.aa) == (777, 1, 1, 1, 1, 0)
        assert header.ad == ad_expected


def test_trailing_garbage_and_huge_ttl_never_reach_the_client() -> None:
    """350 bytes of trailing garbage and TTL 2**32-1 from a real upstream socket: the client gets neither."""
    def garbage(query: DNSRecord) -> bytes:
        reply = reply_of(query, "www.example.org. 4294967295 IN A 192.0.2.11\nwww.bank.example. 300 IN A 6.6.6.6")
        return bytes(reply.pack()) + b"\xde\xad" * 175

    with stubs(1, rewrite=hostile(garbage)) as (up,), forwarder_to(up) as forwarder:
        query = client_query("WWW.example.org", edns=False)
        data = query.pack()
        answer = forwarder.forward(query, data)
    assert answer is not None
    reply = DNSRecord.parse(answer)
    assert zone_lines(reply.rr) == ["WWW.example.org. 0 IN A 192.0.2.11"]  # the owner compresses onto the question
    assert answer == bytes(reply.pack())  # nothing after the last record
    assert answer[12:12 + len(data) - 12] == data[12:]  # the question, byte for byte as asked


def test_max_ttl_follows_the_settings() -> None:
    """forward.max_ttl from the settings caps forwarded TTLs in a running server, and a reload changes it."""
    with stubs(1) as (up,):
        app = App(Settings(listen=(Address("127.0.0.1", 0),), forward=ForwardSettings(True, (address(up),), 60)),
                  docker=False)
        app.start()
        try:
            server = app.addresses()[0]
            ask = dns.message.make_query("www.example.org", "A")
            msg = dns.query.udp(ask, server.host, port=server.port, timeout=3)
            assert [rrset.ttl for rrset in msg.answer] == [60]
            app.reload(Settings(listen=app.settings.listen, forward=ForwardSettings(True, (address(up),), 10)))
            msg = dns.query.udp(dns.message.make_query("www.example.org", "A"), server.host, port=server.port,
                                timeout=3)
            assert [rrset.ttl for rrset in msg.answer] == [10]
        finally:
            app.stop()


# --- Rule 5: identical questions share one exchange ------------------------------------------


def test_identical_questions_in_flight_share_one_exchange() -> None:
    """Twenty clients asking one name (any case) while it is upstream: one exchange, each answered as it asked."""
    with stubs(1, delay=0.5) as (up,), forwarder_to(up) as forwarder:
        answers: dict[int, bytes | None] = {}
        done = threading.Event()
        queries = [client_query("wWw.ExAmple.org" if i % 2 else "www.example.org", ident=1000 + i)
                   for i in range(20)]

        def collect(ident: int) -> Callable[[bytes | None], None]:
            def got(answer: bytes | None) -> None:
                answers[ident] = answer
                if len(answers) == len(queries):
                    done.set()
            return got

        for query in queries:
            assert forwarder.submit(query, query.pack(), collect(query.header.id))
        assert done.wait(5)
        other = client_query("www.example.org", do=True)  # DO differs: a question of its own
        assert forwarder.forward(other, other.pack()) is not None
    assert len(up.seen) == 2 and forwarder.exchanges == 2 and forwarder.forwarded == 21
    for query in queries:
        answer = answers[query.header.id]
        assert answer is not None
        data = query.pack()
        question = data[12:12 + len(data) - 12 - 11]  # the question, without the client's 11-byte OPT
        assert answer[:2] == data[:2] and answer[12:12 + len(question)] == question
        assert zone_lines(DNSRecord.parse(answer).rr)[0].endswith("300 IN A 192.0.2.11")


# --- Rule 6: loops, detected by a nonce no client can know --------------------------------------


def test_our_queries_carry_a_fresh_nonce_and_only_they_are_own() -> None:
    """While a query is upstream, is_own knows its bytes; the client's bytes with any id, and a stale nonce, are not."""
    with stubs(1, delay=1.0) as (up,), forwarder_to(up) as forwarder:
        query = client_query("slow.example.org")
        data = query.pack()
        thread = threading.Thread(target=forwarder.forward, args=(query, data))
        thread.start()
        deadline = time.monotonic() + 5
        while not up.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        ours = up.seen[0].raw
        own = [forwarder.is_own(struct.pack("!H", ident) + data[2:]) for ident in range(2001)]
        assert not any(own) and forwarder.looping == {} and forwarder.loops == 0
        assert forwarder.is_own(ours) and address(up) in forwarder.looping
        thread.join(5)
        assert not forwarder.is_own(ours)  # answered: no longer in flight
        again = client_query("slow.example.org", ident=9)
        forwarder.looping = {}
        forwarder.forward(again, again.pack())
    nonces = {seen.raw[-NONCE_LEN:] for seen in up.seen}
    assert len(nonces) == 2  # each query its own


def test_client_resending_a_slow_names_bytes_never_marks_the_upstream_looping() -> None:
    """2001 copies of a slow name's query with ids 0..2000 through a running server: no loop, one upstream query."""
    with stubs(1, delay=2.0) as (up,):
        app = App(Settings(listen=(Address("127.0.0.1", 0),), forward=ForwardSettings(True, (address(up),))),
                  docker=False)
        app.forwarder.timeout = app.forwarder.total = 4.0  # slow enough that every copy arrives while it waits
        app.start()
        try:
            server = app.addresses()[0]
            data = dns.message.make_query("slow.example.org", "A").to_wire()
            answered = False
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for ident in range(2001):
                    sock.sendto(struct.pack("!H", ident) + data[2:], (server.host, server.port))
                sock.settimeout(5)
                with contextlib.suppress(socket.timeout):
                    while dns.message.from_wire(sock.recv(65535)).rcode() != dns.rcode.NOERROR:
                        pass  # copies past MAX_SHARING get SERVFAIL at once; the answer comes when the upstream's does
                    answered = True
            assert answered
            assert app.forwarder.looping == {} and app.forwarder.loops == 0
            assert len(up.seen) == 1  # every copy shared the one exchange, or was refused a place in it
            msg = dns.query.udp(dns.message.make_query("www.example.org", "A"), server.host, port=server.port,
                                timeout=3)
            assert [rd.to_text() for rrset in msg.answer for rd in rrset] == ["192.0.2.11"]  # still forwarding
        finally:
            app.stop()


def test_flags_of_a_forwarded_answer_over_the_wire() -> None:
    """dnspython sees RA, no AA, its own id and its question case in a forwarded answer."""
    with stubs(1) as (up,):
        app = App(Settings(listen=(Address("127.0.0.1", 0),), forward=ForwardSettings(True, (address(up),))),
                  docker=False)
        app.start()
        try:
            server = app.addresses()[0]
            ask = dns.message.make_query("WwW.example.ORG", "A", use_edns=0, payload=4096)
            msg = dns.query.udp(ask, server.host, port=server.port, timeout=3)
            assert msg.id == ask.id and msg.flags & dns.flags.RA and not msg.flags & dns.flags.AA
            assert msg.question[0].name.to_text() == "WwW.example.ORG." and msg.payload == EDNS_PAYLOAD
        finally:
            app.stop()
