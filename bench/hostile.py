#!/usr/bin/env python3
"""CPU per hostile packet, and the in-zone p99 while hostile packets arrive: dockerdns on loopback.

Issue 15 item 1: a query whose names are chains of compression pointers made
the name decoder recurse once per pointer. This benchmark starts a real
dockerdns process (`--no-forward`, no Docker, `--rate-limit 0`, `--allow
127.0.0.0/8`), pinned to core 1 when taskset and two cores are there, and:

(a) sends each family of hostile packets below (`FAMILIES`) over UDP (up to
    `UDP_BYTES`) and over TCP (up to `TCP_BYTES`), `--count` of each, and
    divides the server's CPU time (`cpu_seconds`: per-thread schedstat, in
    nanoseconds; utime + stime from /proc/PID/stat agree, in 10 ms ticks) by
    the packets sent. Every batch ends with a normal query whose answer says the
    batch was read; its cost (measured first, as the "normal query" family)
    is subtracted. A family that costs more than `--max-cpu` seconds stops
    early; the packets actually sent are printed. Targets: under 1 ms per UDP
    packet, under 5 ms per TCP message.
(b) measures the p50/p99/max latency of an allowed client asking an in-zone
    name at `--rate` queries per second for `--seconds`, quietly and while
    `--attack-rate` hostile packets a second arrive over UDP, from a foreign
    source (FOREIGN, added to `lo` for the run and removed after; outside
    `--allow`) and from an allowed one (127.0.0.2). The attacks are the
    issue's packet (answer owner names chained), the family that cost the
    most CPU per UDP packet in (a), and any `--attack FAMILY`. Queries go out
    on schedule whatever comes back; one not answered within LATE seconds
    of the run's end counts as lost, and as slower than any answered one in
    the p99. After each run the time the server takes to answer again
    (the attack's backlog) is printed when over a second. Target: p99
    under 2 ms.
(c) starts a second server forwarding to a hostile upstream on loopback
    (`HostileUpstream`) that answers each query with one of
    `REPLY_FAMILIES` (rdata names chained in RRSIG, NSEC, RP and NAPTR
    records, names of 124 labels), at 1,232 and 16,384 bytes, and prints
    the server's CPU per forwarded query.

    python3 bench/hostile.py [--count 2000] [--seconds 10] [--rate 200] [--attack-rate 50]
                             [--only FAMILY]... [--attack FAMILY]... [--skip a|b|c]... [--nice -10]

The server runs the dockerdns next to this file (PYTHONPATH), at niceness
`--nice` (and so does this client) so that other work on a shared machine
disturbs the latencies less. Needs root (for `ip addr` and `--nice`),
dnspython, and taskset for pinning (optional). Only loopback is used.

The families are plain functions of a size limit, also used by
tests/test_hostile.py (behaviour, and work counted in traced lines) and by
bench/fuzz.py, the long coverage-guided fuzzing run (atheris, a million
inputs per target):

    python3 bench/fuzz.py packets -runs=1000000 -max_len=2048 CORPUS_DIR
    python3 bench/fuzz.py naming -runs=1000000 -max_len=4096 CORPUS_DIR
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UDP_BYTES = 1500  # one Ethernet frame
TCP_BYTES = 16384  # the largest message whose every offset a compression pointer can reach (14 bits)
UDP_TARGET_MS = 1.0
TCP_TARGET_MS = 5.0
P99_TARGET_MS = 2.0
LATE = 2.0  # seconds after the last query that answers are still waited for
FOREIGN = "198.51.100.9"  # RFC 5737 documentation address, outside --allow
ALLOWED_OTHER = "127.0.0.2"  # an allowed source that is not the measured client

ZONE = "docker"
NAME = "host"  # the bench's in-zone name: host.docker. A 10.0.0.1
QNAME = b"\x04host\x06docker\x00"
IDENT = 0x4242  # hostile packets' id; the sync query has its own
SYNC_ID = 0x5A5A
RD = 0x0100
A, NS, CNAME, SOA, NULL, OPT = 1, 2, 5, 6, 10, 41
FORMERR = 1


# --- Packets ----------------------------------------------------------------------


def header(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = RD, ident: int = IDENT) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


def question(name: bytes = QNAME, qtype: int = A) -> bytes:
    return name + struct.pack("!HH", qtype, 1)


def pointer(offset: int) -> bytes:
    """A compression pointer to `offset` (RFC 1035 section 4.1.4)."""
    return struct.pack("!H", 0xC000 | (offset & 0x3FFF))


def record(owner: bytes, rtype: int = A, rdata: bytes = b"", rclass: int = 1, ttl: int = 0) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt(payload: int = 1232, options: bytes = b"", owner: bytes = b"\x00") -> bytes:
    """An OPT record (RFC 6891 section 6.1.2); `payload` sits in the class field."""
    return record(owner, OPT, options, rclass=payload)


def wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def long_name(octets: int) -> bytes:
    """An in-zone name of exactly `octets` octets on the wire, in 63-octet labels."""
    zone = b"\x06docker"
    left = octets - len(zone) - 1
    labels = []
    while left > 0:
        size = min(63, left - 1)
        labels.append(b"x" * size)
        left -= size + 1
    return wire_name(labels + [b"docker"])


MANY_LABELS = wire_name([b"a"] * 123 + [b"docker"])  # 254 octets, 124 labels: the most a name can have


def normal(limit: int) -> bytes:
    """A plain query for an in-zone name: the baseline."""
    return header() + question()


def normal_edns(limit: int) -> bytes:
    """A plain query with EDNS0 and DO."""
    return header(ar=1) + question() + record(b"\x00", OPT, rclass=1232, ttl=0x8000)


def _owner_chain(limit: int, section: int) -> bytes:
    """Records whose owner names each point at the previous one's: a chain as long as the packet."""
    q = question(b"\x09abcdefghi\x00")
    count = (limit - 12 - len(q)) // 12
    body = bytearray(q)
    previous = 12
    for _ in range(count):
        here = 12 + len(body)
        body += record(pointer(previous))
        previous = here
    counts = [0, 0, 0]
    counts[section] = count
    return header(1, *counts) + bytes(body)


def answer_chain(limit: int) -> bytes:
    """Issue 15's packet: every answer owner name points at the previous one's (1,467 bytes at 1,467)."""
    return _owner_chain(limit, 0)


def authority_chain(limit: int) -> bytes:
    """The same chain in the authority section."""
    return _owner_chain(limit, 1)


def additional_chain(limit: int) -> bytes:
    """The same chain in the additional section (type A, not OPT)."""
    return _owner_chain(limit, 2)


def question_chain(limit: int) -> bytes:
    """QDCOUNT n: every question's name points at the previous question's."""
    first = question()
    count = 1 + (limit - 12 - len(first)) // 6
    body = bytearray(first)
    previous = 12
    for _ in range(count - 1):
        here = 12 + len(body)
        body += pointer(previous) + struct.pack("!HH", A, 1)
        previous = here
    return header(qd=count) + bytes(body)


def header_chain(limit: int) -> bytes:
    """The question's name hops backwards through the header's count fields (12 -> 10 -> 8 -> 6 -> 4: root)."""
    return struct.pack("!HHHHHH", IDENT, RD, 1, 0xC004, 0xC006, 0xC008) + pointer(10) + struct.pack("!HH", A, 1)


def rdata_chain(limit: int) -> bytes:
    """CNAME records whose target names each point at the previous record's target."""
    body = bytearray(question())
    previous = 12
    count = 0
    while 12 + len(body) + 14 <= limit:
        here = 12 + len(body) + 12
        body += record(pointer(12), CNAME, pointer(previous))
        previous = here
        count += 1
    return header(an=count) + bytes(body)


def soa_chain(limit: int) -> bytes:
    """SOA records in authority whose two rdata names point at the previous SOA's."""
    body = bytearray(question())
    mname = rname = 12
    count = 0
    while 12 + len(body) + 36 <= limit:
        here = 12 + len(body) + 12
        body += record(pointer(12), SOA, pointer(mname) + pointer(rname) + bytes(20))
        mname, rname = here, here + 2
        count += 1
    return header(ns=count) + bytes(body)


def forward_pointers(limit: int) -> bytes:
    """Every name, the question's included, points forwards, at a name at the end of the packet."""
    count = (limit - 12 - 6 - 3) // 12
    target = 12 + 6 + 12 * count
    body = pointer(target) + struct.pack("!HH", A, 1) + record(pointer(target)) * count + b"\x01a\x00"
    return header(an=count) + body


def pointer_loops(limit: int) -> bytes:
    """Names that point at themselves, and pairs of pointers that point at each other."""
    body = bytearray(b"\x01a" + pointer(12) + struct.pack("!HH", A, 1))  # the question: a label, then back to itself
    count = 0
    while 12 + len(body) + 26 <= limit:
        here = 12 + len(body)
        body += record(pointer(here))  # owner: itself
        here = 12 + len(body)
        body += record(pointer(here + 12)) + record(pointer(here))  # two owners, each pointing at the other
        count += 3
    return header(an=count) + bytes(body)


def name_255(limit: int) -> bytes:
    """A question name of exactly 255 octets, the most RFC 1035 section 3.1 allows."""
    return header() + question(long_name(255))


def name_256(limit: int) -> bytes:
    """A question name of 256 octets: one too many."""
    return header() + question(long_name(256))


def many_labels(limit: int) -> bytes:
    """A question name of 124 labels (254 octets)."""
    return header() + question(MANY_LABELS)


def many_labels_records(limit: int) -> bytes:
    """Within every bound: a 124-label question and answer records whose owners point at it."""
    q = question(MANY_LABELS)
    count = (limit - 12 - len(q)) // 12
    return header(an=count) + q + record(pointer(12)) * count


def many_labels_soa(limit: int) -> bytes:
    """Within every bound: SOA records whose owner and two rdata names point at a 124-label question."""
    q = question(MANY_LABELS)
    count = (limit - 12 - len(q)) // 36
    return header(ns=count) + q + record(pointer(12), SOA, pointer(12) + pointer(12) + bytes(20)) * count


def label_0x40(limit: int) -> bytes:
    """A label of type 0x40 (extended label, RFC 6891 section 5) in the question."""
    return header() + question(b"\x41\x08abcdefgh\x06docker\x00")


def label_0x80(limit: int) -> bytes:
    """A label of type 0x80 (reserved) in the question, and in answer owners."""
    count = (limit - 12 - 18) // 14
    return header(an=count) + question(b"\x81a\x06docker\x00") + record(b"\x81a\x00") * count


def huge_opt(limit: int) -> bytes:
    """One OPT whose one option fills the packet."""
    q = question()
    size = limit - 12 - len(q) - 11 - 4
    return header(ar=1) + q + opt(options=struct.pack("!HH", 65001, size) + bytes(size))


def many_options(limit: int) -> bytes:
    """One OPT holding as many empty options as fit."""
    q = question()
    count = (limit - 12 - len(q) - 11) // 4
    return header(ar=1) + q + opt(options=struct.pack("!HH", 65001, 0) * count)


def many_opts(limit: int) -> bytes:
    """Many OPT records (RFC 6891 section 6.1.1: more than one is FORMERR)."""
    q = question()
    count = (limit - 12 - len(q)) // 11
    return header(ar=count) + q + opt() * count


def many_opts_long_owner(limit: int) -> bytes:
    """Many OPT records whose owner names point at a 124-label question (an OPT's owner must be root)."""
    q = question(MANY_LABELS)
    count = (limit - 12 - len(q)) // 12
    return header(ar=count) + q + opt(owner=pointer(12)) * count


def opt_relocation(limit: int) -> bytes:
    """OPT owners that are short, valid names where they sit, but a long chain once the OPTs are moved.

    A first answer record of type NULL holds zero bytes where, once the
    answer section is left out and the OPTs move up, the first OPT's option
    holds a chain of backward pointers; every later OPT's owner points there.
    """
    chain_bytes = min(1800, max(64, limit // 4))
    qd = question(b"\x01a\x00")
    base = 12 + len(qd)  # where the answer record sits, and the first OPT once moved
    answer = record(b"\x00", NULL, bytes(chain_bytes + 4))
    start = base + 11 + 4  # the option's data, once moved
    chain = bytearray(b"\x00")  # a root name, then pointers each to the one before
    last = start
    while len(chain) + 2 <= chain_bytes:
        here = start + len(chain)
        chain += pointer(last)
        last = here
    first = opt(options=struct.pack("!HH", 65001, chain_bytes) + bytes(chain).ljust(chain_bytes, b"\x00"))
    count = (limit - base - len(answer) - len(first)) // 12
    return header(an=1, ar=1 + count) + qd + answer + first + opt(owner=pointer(last)) * count


def qdcount_65535(limit: int) -> bytes:
    """QDCOUNT 65535, one question present."""
    return header(qd=65535) + question()


def counts_65535(limit: int) -> bytes:
    """ANCOUNT, NSCOUNT and ARCOUNT 65535, nothing after the question."""
    return header(an=65535, ns=65535, ar=65535) + question()


def truncated_records(limit: int) -> bytes:
    """ANCOUNT 100; three records and half of a fourth."""
    whole = record(pointer(12), A, bytes(4))
    return header(an=100) + question() + whole * 3 + whole[:7]


def truncated_rdata(limit: int) -> bytes:
    """An answer record whose RDLENGTH runs past the end of the packet."""
    return header(an=1) + question() + pointer(12) + struct.pack("!HHIH", A, 1, 0, 60000) + bytes(8)


def truncated_question(limit: int) -> bytes:
    """A question name without its type and class."""
    return header() + QNAME


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[int], bytes]
    formerr: bool  # True: the only right answers are FORMERR or none; False: any well-formed answer
    # A query is its question and at most one OPT (wire.decode): records in the answer or authority
    # section of a query make it FORMERR, however well formed they are.


FAMILIES = (
    Family("normal query", normal, False),
    Family("normal query + EDNS", normal_edns, False),
    Family("answer owner chain", answer_chain, True),
    Family("authority owner chain", authority_chain, True),
    Family("additional owner chain", additional_chain, True),
    Family("question chain, QDCOUNT n", question_chain, True),
    Family("question -> header chain", header_chain, True),
    Family("CNAME rdata chain", rdata_chain, True),
    Family("SOA rdata chain", soa_chain, True),
    Family("forward pointers", forward_pointers, True),
    Family("pointer loops", pointer_loops, True),
    Family("255-octet name", name_255, False),
    Family("256-octet name", name_256, True),
    Family("124 labels", many_labels, False),
    Family("124 labels x answer owners", many_labels_records, True),
    Family("124 labels x SOA rdata", many_labels_soa, True),
    Family("label type 0x40", label_0x40, True),
    Family("label type 0x80", label_0x80, True),
    Family("huge OPT option", huge_opt, False),
    Family("many OPT options", many_options, False),
    Family("many OPT records", many_opts, True),
    Family("many OPTs, owner -> 124 labels", many_opts_long_owner, True),
    Family("OPTs moved onto a chain", opt_relocation, True),
    Family("QDCOUNT 65535", qdcount_65535, True),
    Family("counts 65535", counts_65535, True),
    Family("truncated records", truncated_records, True),
    Family("truncated rdata", truncated_rdata, True),
    Family("truncated question", truncated_question, True),
)
BY_NAME = {family.name: family for family in FAMILIES}

# --- Upstream replies ---------------------------------------------------------------
#
# What a hostile upstream can send back: `build(limit, q)` is a reply to the
# question `q` (name, type and class on the wire, as asked), at most `limit`
# bytes. The forwarder reads every name of a reply before it accepts it.

RESPONSE = 0x8180  # QR, RD, RA
RRSIG, NSEC, RP, NAPTR = 46, 47, 17, 35


def _rdata_chain_reply(limit: int, q: bytes, rtype: int, before: bytes, after: bytes) -> bytes:
    """Answer records whose rdata name (after `before`) points at the previous record's rdata name."""
    body = bytearray(q)
    previous = 12
    count = 0
    while 12 + len(body) + 12 + len(before) + 2 + len(after) <= limit:
        here = 12 + len(body) + 12 + len(before)
        body += record(pointer(12), rtype, before + pointer(previous) + after)
        previous = here
        count += 1
    return header(an=count, flags=RESPONSE) + bytes(body)


def normal_reply(limit: int, q: bytes) -> bytes:
    """One A record: the baseline."""
    return header(an=1, flags=RESPONSE) + q + record(pointer(12), A, bytes((192, 0, 2, 1)))


def rrsig_chain(limit: int, q: bytes) -> bytes:
    """RRSIG records whose signer names chain backwards (RFC 4034 section 3.1: the name after 18 octets)."""
    return _rdata_chain_reply(limit, q, RRSIG, struct.pack("!HBBIIIH", A, 8, 2, 0, 0, 0, 0), b"")


def nsec_chain(limit: int, q: bytes) -> bytes:
    """NSEC records whose next-owner names chain backwards."""
    return _rdata_chain_reply(limit, q, NSEC, b"", b"")


def rp_chain(limit: int, q: bytes) -> bytes:
    """RP records whose mailbox names chain backwards."""
    return _rdata_chain_reply(limit, q, RP, b"", b"\x00")


def naptr_chain(limit: int, q: bytes) -> bytes:
    """NAPTR records whose replacement names chain backwards (after three empty strings)."""
    return _rdata_chain_reply(limit, q, NAPTR, struct.pack("!HH", 1, 1) + b"\x00\x00\x00", b"")


def labels_reply(limit: int, q: bytes) -> bytes:
    """Within every bound: A records whose owners point at the question (124 labels when asked so)."""
    count = (limit - 12 - len(q)) // 16
    return header(an=count, flags=RESPONSE) + q + record(pointer(12), A, bytes(4)) * count


@dataclass(frozen=True)
class ReplyFamily:
    name: str
    build: Callable[[int, bytes], bytes]


REPLY_FAMILIES = (
    ReplyFamily("normal reply", normal_reply),
    ReplyFamily("RRSIG signer chain", rrsig_chain),
    ReplyFamily("NSEC next-name chain", nsec_chain),
    ReplyFamily("RP mailbox chain", rp_chain),
    ReplyFamily("NAPTR replacement chain", naptr_chain),
    ReplyFamily("124 labels x A", labels_reply),
)
LONG_OUTSIDE = wire_name([b"a"] * 122 + [b"example"])  # 253 octets, outside the zone: forwarded
ISSUE_PACKET = BY_NAME["answer owner chain"]
ISSUE_BYTES = 1467  # the size of the packet in issue 15


# --- Measuring ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`: the sum over its threads of /proc/PID/task/TID/schedstat, in seconds.

    Nanoseconds, where utime + stime (`stat_seconds`) count 10 ms ticks; the
    server's threads (UDP workers, connection and forwarding pools) never
    exit, so no thread's time is lost. Both are printed for part (a).
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # the thread ended in between
    return total / 1e9


def stat_seconds(pid: int) -> float:
    """utime + stime of process `pid` (all its threads, ended ones included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15 of proc(5)


def settled(pid: int, timeout: float = 300.0) -> float:
    """The server's CPU seconds once it has stopped working (under 2 ms of CPU in 0.2 s), at most `timeout` on."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)  # sampling the CPU counter, not synchronisation
        now = cpu_seconds(pid)
        if now - last < 0.002:
            return now
        last = now
    return last


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the server's UDP socket 127.0.0.1:`port` (its receive buffer was full)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 12 and parts[1] == local:
                return int(parts[-1])
    return 0


def sync_query() -> bytes:
    return header(ident=SYNC_ID) + question()


def rcode_of(reply: bytes) -> str:
    names = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
    return names.get(reply[3] & 0x0F, str(reply[3] & 0x0F)) if len(reply) >= 4 else "short"


@dataclass
class Cost:
    sent: int
    cpu: float  # seconds, sync queries included
    syncs: int
    replies: collections.Counter
    drops: int = 0
    closed: int = 0

    def per_packet_ms(self, sync_ms: float) -> float:
        return max(self.cpu * 1e3 - self.syncs * sync_ms, 0.0) / max(self.sent, 1)

    def answers(self) -> str:
        got = sum(self.replies.values())
        if not got:
            text = "none"
        else:
            text = " ".join(f"{k} {v}" for k, v in self.replies.most_common(2))
        extra = f" (closed {self.closed})" if self.closed else ""
        extra += f" (kernel dropped {self.drops})" if self.drops else ""
        return text + extra


def _batches(count: int) -> list[int]:
    """1, 2, 4, ... up to 50 a batch: a family that costs seconds stops after a few packets."""
    out, size, total = [], 1, 0
    while total < count:
        size = min(size, count - total)
        out.append(size)
        total += size
        size = min(size * 2, 50)
    return out


def udp_cost(pid: int, port: int, packet: bytes, count: int, max_cpu: float) -> Cost:
    """Send `packet` `count` times over UDP, in batches each followed by a sync query; the server's CPU."""
    sync = sync_query()
    cost = Cost(0, 0.0, 0, collections.Counter())
    drops = udp_drops(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        sock.connect(("127.0.0.1", port))
        sock.settimeout(120)
        before = cpu_seconds(pid)
        for size in _batches(count):
            for _ in range(size):
                sock.send(packet)
            sock.send(sync)
            cost.sent += size
            cost.syncs += 1
            while True:
                reply = sock.recv(65535)
                if reply[:2] == struct.pack("!H", SYNC_ID):
                    break
                cost.replies[rcode_of(reply)] += 1
            cost.cpu = cpu_seconds(pid) - before
            if cost.cpu > max_cpu:
                break
        cost.cpu = settled(pid) - before  # a packet the other worker took may still be in hand
    cost.drops = udp_drops(port) - drops
    return cost


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def tcp_cost(pid: int, port: int, packet: bytes, count: int, max_cpu: float) -> Cost:
    """Send `packet` `count` times over TCP (pipelined on one connection), batched like `udp_cost`."""
    message = struct.pack("!H", len(packet)) + packet
    sync = sync_query()
    sync = struct.pack("!H", len(sync)) + sync
    cost = Cost(0, 0.0, 0, collections.Counter())
    sock: socket.socket | None = None
    before = cpu_seconds(pid)
    try:
        for size in _batches(count):
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=120)
            sock.sendall(message * size + sync)
            cost.sent += size
            cost.syncs += 1
            while True:
                head = _recv_exact(sock, 2)
                reply = _recv_exact(sock, struct.unpack("!H", head)[0]) if head else None
                if reply is None:  # the server closed the connection: the rest of the batch was not read
                    cost.closed += 1
                    sock.close()
                    sock = None
                    break
                if reply[:2] == struct.pack("!H", SYNC_ID):
                    break
                cost.replies[rcode_of(reply)] += 1
            cost.cpu = cpu_seconds(pid) - before
            if cost.cpu > max_cpu:
                break
    finally:
        if sock is not None:
            sock.close()
    cost.cpu = settled(pid) - before
    return cost


@dataclass
class Latency:
    answered: int
    lost: int
    p50: float
    p99: float
    worst: float


def attack(stop: threading.Event, source: str, port: int, packet: bytes, rate: float) -> None:
    """Send `packet` from `source` at `rate` a second until `stop` (replies are never read)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        started = time.monotonic()
        sent = 0
        while not stop.is_set():
            due = started + sent / rate
            if stop.wait(max(due - time.monotonic(), 0)):
                return
            try:
                sock.sendto(packet, ("127.0.0.1", port))
            except OSError:
                pass
            sent += 1


def client_latency(port: int, seconds: float, rate: float) -> Latency:
    """An allowed client asking the in-zone name at a steady `rate` for `seconds`: its answers' latency.

    Queries go out on schedule whatever comes back (a receiving thread
    matches the answers by id), so a stalled server costs the run no more
    than `seconds` plus LATE seconds; an answer later than that is lost.
    """
    total = int(seconds * rate)
    sent_at: dict[int, float] = {}
    times: list[float] = []
    done = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.2)

        def receive() -> None:
            while not done.is_set():
                try:
                    reply = sock.recv(65535)
                except socket.timeout:
                    continue
                except OSError:
                    return
                at = sent_at.pop(struct.unpack("!H", reply[:2])[0], None)
                if at is not None:
                    times.append((time.perf_counter() - at) * 1e3)

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        body = header()[2:] + question()
        started = time.monotonic()
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the client, not synchronisation
            sent_at[i & 0xFFFF] = time.perf_counter()
            sock.send(struct.pack("!H", i & 0xFFFF) + body)
        deadline = time.monotonic() + LATE
        while sent_at and time.monotonic() < deadline:
            time.sleep(0.01)  # the last answers: polled, up to LATE
        done.set()
        receiver.join()
    times.sort()
    lost = total - len(times)
    if not times:
        return Latency(0, lost, float("nan"), float("nan"), float("nan"))
    # Lost queries count as the slowest: the p99 of all queries asked, not only of those answered.
    everything = times + [float("inf")] * lost
    return Latency(len(times), lost, statistics.median(everything), everything[max(int(total * 0.99) - 1, 0)],
                   times[-1])


def drained(port: int, timeout: float = 300.0) -> float:
    """Seconds until the server answers a query again (what an attack left queued is worked off first)."""
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(1.0)
        while time.monotonic() - started < timeout:
            sock.send(sync_query())
            try:
                while sock.recv(65535)[:2] != struct.pack("!H", SYNC_ID):
                    pass
                return time.monotonic() - started
            except socket.timeout:
                continue
    raise SystemExit(f"the server did not answer for {timeout:.0f} s after an attack")


def under_attack(port: int, args: argparse.Namespace, packet: bytes | None, source: str) -> Latency:
    stop = threading.Event()
    thread = None
    if packet is not None:
        thread = threading.Thread(target=attack, args=(stop, source, port, packet, args.attack_rate), daemon=True)
        thread.start()
    try:
        return client_latency(port, args.seconds, args.rate)
    finally:
        stop.set()
        if thread is not None:
            thread.join()


class HostileUpstream:
    """A UDP server on loopback that answers every query with `family.build(limit, the query's question)`."""

    def __init__(self, family: ReplyFamily, limit: int):
        self.family, self.limit = family, limit
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            pos = 12
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1  # our forwarder's questions are never compressed
            reply = self.family.build(self.limit, data[12:pos + 5])
            try:
                self.sock.sendto(data[:2] + reply[2:65507], peer)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def forwarded_cost(pid: int, port: int, long_names: bool, count: int, max_cpu: float) -> Cost:
    """Ask `count` distinct names outside the zone, 20 at a time; the server's CPU while it forwards them."""
    cost = Cost(0, 0.0, 0, collections.Counter())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(30)
        before = cpu_seconds(pid)
        while cost.sent < count:
            batch = min(20, count - cost.sent)
            waiting = set()
            for i in range(cost.sent, cost.sent + batch):
                first = f"q{i}".encode()
                name = wire_name([first] + [b"a"] * 120 + [b"example"]) if long_names else \
                    wire_name([first, b"example"])
                sock.send(header(ident=i & 0xFFFF) + question(name))
                waiting.add(i & 0xFFFF)
            cost.sent += batch
            while waiting:
                try:
                    reply = sock.recv(65535)
                except socket.timeout:
                    cost.replies["none"] += len(waiting)  # not even SERVFAIL within 30 s
                    break
                ident = struct.unpack("!H", reply[:2])[0]
                if ident in waiting:
                    waiting.discard(ident)
                    cost.replies[rcode_of(reply)] += 1
            cost.cpu = cpu_seconds(pid) - before
            if cost.cpu > max_cpu:
                break
        cost.cpu = settled(pid) - before  # replies that came too late are still being read
    return cost


# --- Running ----------------------------------------------------------------------


def _ip(*words: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *words], capture_output=True, text=True)


def start_server(port: int, pin: bool, work: str, forward: list[str],
                 nice: int = 0) -> tuple[subprocess.Popen, list[str]]:
    """A dockerdns process on 127.0.0.1:`port`; `forward` is ["--no-forward"] or ["--upstream", HOST:PORT]."""
    from common import SERVER_CORE  # bench/ is on sys.path when this file runs as a script

    config = os.path.join(work, "dockerdns.yaml")
    with open(config, "w") as f:
        f.write(f"records:\n  - {{name: {NAME}.{ZONE}., type: A, value: 10.0.0.1}}\n")
    cmd = [sys.executable, "-m", "dockerdns", "-c", config, "--listen", f"127.0.0.1:{port}", *forward,
           "--docker-url", "unix:///nonexistent.sock", "--log-level", "error", "--rate-limit", "0",
           "--allow", "127.0.0.0/8"]
    if pin:
        cmd = ["taskset", "-c", SERVER_CORE, *cmd]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    # The dockerdns next to this file, whatever is installed.
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(cmd, env={**os.environ, "DOCKERDNS_CONFIG": "", "PYTHONPATH": path}), cmd


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def packets_table(pid: int, port: int, proc: subprocess.Popen, families: list[Family],
                  args: argparse.Namespace) -> Family:
    """Part (a); returns the FORMERR family that cost the most CPU per UDP packet."""
    print(f"\n(a) server CPU per packet ({args.count} of each unless --max-cpu {args.max_cpu:g} s ran out; "
          f"each batch ends with a normal query, whose cost is subtracted); targets: UDP < {UDP_TARGET_MS:g} ms, "
          f"TCP < {TCP_TARGET_MS:g} ms\n")
    print(f"{'family':<32} {'UDP B':>6} {'sent':>6} {'us/pkt':>10} {'UDP answers':<28} "
          f"{'TCP B':>6} {'sent':>6} {'us/msg':>10} {'TCP answers':<24}")
    sync_ms = {"udp": 0.0, "tcp": 0.0}
    worst: tuple[float, Family] = (-1.0, ISSUE_PACKET)
    started = (cpu_seconds(pid), stat_seconds(pid))
    for family in families:
        row = f"{family.name:<32}"
        for transport, limit, measure, target in (("udp", UDP_BYTES, udp_cost, UDP_TARGET_MS),
                                                  ("tcp", TCP_BYTES, tcp_cost, TCP_TARGET_MS)):
            packet = family.build(ISSUE_BYTES if family is ISSUE_PACKET and transport == "udp" else limit)
            cost = measure(pid, port, packet, args.count, args.max_cpu)
            if family.name == "normal query":
                sync_ms[transport] = ms = cost.cpu * 1e3 / (cost.sent + cost.syncs)
            else:
                ms = cost.per_packet_ms(sync_ms[transport])
            if transport == "udp" and family.formerr and ms > worst[0]:
                worst = (ms, family)
            width = 28 if transport == "udp" else 24
            row += f" {len(packet):>6} {cost.sent:>6} {ms * 1e3:>9.1f}{'!' if ms > target else ' '} " \
                   f"{cost.answers():<{width}}"
        print(row, flush=True)
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) during {family.name!r}")
    print("(! over target)")
    print(f"CPU of part (a): {cpu_seconds(pid) - started[0]:.2f} s by schedstat, "
          f"{stat_seconds(pid) - started[1]:.2f} s by utime + stime")
    return worst[1]


def latency_table(port: int, worst: Family, args: argparse.Namespace) -> None:
    """Part (b): quiet, then each attack from outside `allow` and from inside."""
    print(f"\n(b) in-zone latency of an allowed client at {args.rate:g} q/s for {args.seconds:g} s, "
          f"hostile UDP packets at {args.attack_rate:g}/s; target p99 < {P99_TARGET_MS:g} ms\n")
    print(f"{'attack':<40} {'from':<14} {'answered':>8} {'lost':>5} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>8}")
    runs: list[tuple[Family | None, str]] = [(None, "-")]
    for family in dict.fromkeys([ISSUE_PACKET, worst, *(BY_NAME[name] for name in args.attack)]):
        runs += [(family, FOREIGN), (family, ALLOWED_OTHER)]
    for family, source in runs:
        packet, label = None, "none"
        if family is not None:
            packet = family.build(ISSUE_BYTES if family is ISSUE_PACKET else UDP_BYTES)
            label = f"{family.name} ({len(packet)} B)"
        lat = under_attack(port, args, packet, source)
        flag = "!" if not lat.p99 < P99_TARGET_MS else " "
        backlog = drained(port)
        print(f"{label:<40} {source:<14} {lat.answered:>8} {lat.lost:>5} {lat.p50:>8.3f} {lat.p99:>8.3f}{flag} "
              f"{lat.worst:>8.3f}" + (f"  (backlog: {backlog:.1f} s to drain)" if backlog > 1 else ""), flush=True)
    print("(! over target)")


def upstream_table(pin: bool, work: str, args: argparse.Namespace, nice: int) -> None:
    """Part (c): a second server forwarding to a hostile upstream."""
    from common import free_port, wait_answering

    stub = HostileUpstream(REPLY_FAMILIES[0], UPSTREAM_BYTES[0])
    port = free_port()
    proc, cmd = start_server(port, pin, work, ["--upstream", f"127.0.0.1:{stub.port}"], nice)
    try:
        wait_answering(port, f"{NAME}.{ZONE}")
        print(f"\n(c) server CPU per forwarded query whose upstream replies with each family "
              f"({args.upstream_count} distinct names each)\nserver: {shlex.join(cmd)}\n")
        columns = [f"{f'{n} B: sent':>12} {'ms/query':>9} {'answers':<18}" for n in UPSTREAM_BYTES]
        print(f"{'reply family':<28} " + " ".join(columns))
        for family in REPLY_FAMILIES:
            row = f"{family.name:<28}"
            for limit in UPSTREAM_BYTES:
                stub.family, stub.limit = family, limit
                cost = forwarded_cost(proc.pid, port, family is REPLY_FAMILIES[-1], args.upstream_count,
                                      args.max_cpu)
                ms = cost.cpu * 1e3 / max(cost.sent, 1)
                row += f" {cost.sent:>12} {ms:>8.2f}{'!' if ms > UDP_TARGET_MS else ' '} {cost.answers():<18}"
            print(row, flush=True)
        print(f"(! over {UDP_TARGET_MS:g} ms)")
    finally:
        stop_server(proc)
        stub.close()


UPSTREAM_BYTES = (1232, 16384)  # our EDNS payload size; and what a UDP datagram on loopback can carry


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` removes the address
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="packets of each family, per transport")
    parser.add_argument("--max-cpu", type=float, default=10.0, help="server CPU seconds a family may cost")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    parser.add_argument("--rate", type=float, default=200.0, help="in-zone queries per second")
    parser.add_argument("--attack-rate", type=float, default=50.0, help="hostile packets per second")
    parser.add_argument("--upstream-count", type=int, default=200, help="forwarded queries per reply family")
    parser.add_argument("--only", action="append", default=[], choices=list(BY_NAME), metavar="FAMILY",
                        help="measure only this family in (a) (repeatable); default: all")
    parser.add_argument("--attack", action="append", default=[], choices=list(BY_NAME), metavar="FAMILY",
                        help="also attack with this family in (b) (repeatable)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="niceness of the server and of this client (default -10: ahead of other work on a "
                             "shared machine; needs root, ignored without)")
    parser.add_argument("--skip", action="append", default=[], choices=["a", "b", "c"], help="skip a part")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to cores with taskset")
    args = parser.parse_args()
    from common import CLIENT_CORE, free_port, wait_answering

    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {int(CLIENT_CORE)})
    families = [BY_NAME[name] for name in args.only] if args.only else list(FAMILIES)
    baseline = BY_NAME["normal query"]  # first: its cost is subtracted from the others'
    families = [baseline, *dict.fromkeys(f for f in [ISSUE_PACKET, *families] if f is not baseline)]
    port = free_port()
    work = tempfile.mkdtemp(prefix="dockerdns-hostile-")
    nice = 0
    if args.nice:
        try:
            os.nice(args.nice)
            nice = args.nice
        except PermissionError:
            print(f"--nice {args.nice}: not permitted, running at the default priority")
    proc, cmd = start_server(port, pin, work, ["--no-forward"], nice)
    added = False
    try:
        wait_answering(port, f"{NAME}.{ZONE}")
        print("bench: ", shlex.join([sys.executable, *sys.argv]))
        print("server:", shlex.join(cmd))
        print("load average before: {:.2f} {:.2f} {:.2f} ({} cores)".format(*os.getloadavg(), os.cpu_count()))
        worst = ISSUE_PACKET
        if "a" not in args.skip:
            worst = packets_table(proc.pid, port, proc, families, args)
        if "b" not in args.skip:
            added = _ip("addr", "add", f"{FOREIGN}/32", "dev", "lo").returncode == 0
            latency_table(port, worst, args)
    finally:
        if added:
            _ip("addr", "del", f"{FOREIGN}/32", "dev", "lo")
        stop_server(proc)
    try:
        if "c" not in args.skip:
            upstream_table(pin, work, args, nice)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
