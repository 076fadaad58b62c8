"""The workloads of bench/qps.py: which names each server holds and which queries dnsperf sends.

A workload is data: a `Zone` (the names both servers serve, written as a
dockerdns YAML config and as dnsmasq options), the dnsperf input lines, and
how to run them (`kind`). Nothing here starts a process; `qps.py` does.

Names are `host<i>.docker` with the address 10.77.<i // 250>.<i % 250 + 1>,
A only, so AAAA queries get NODATA from both servers.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

ZONE = "docker"
NAMES = 200  # the usual table
SPREAD_NAMES = 50_000  # the large table (spread, the memory figures)
SPREAD_LINES = 200_000
CASE_LINES = 400_000
MIX_NAMES = 2_000
MIX_LINES = 100_000
SHUFFLED_LINES = 10_000  # input of the 200-name workloads: a uniform draw, repeated by dnsperf
UNIQUE_LINES_PER_SECOND = 300_000  # fresh-name inputs: more lines than either server answers, so none repeats
MAX_UNIQUE_LINES = 3_000_000
STREAM_QPS = 500  # nxflood: the in-zone stream beside the flood
CHURN_PER_SECOND = 5
WILDCARD_ADDRESS = "10.77.255.1"
COOKIE = "10:" + "5a17c0ffee0ddba1"  # dnsperf -E code:hex: an EDNS cookie option (RFC 7873, code 10)


def address(i: int) -> str:
    return f"10.77.{i // 250}.{i % 250 + 1}"


def host(i: int) -> str:
    return f"host{i}.{ZONE}"


@dataclass
class Zone:
    """What both servers serve: `names` hosts (A only) and per-server extras."""

    names: int = NAMES
    dockerdns_records: list[str] = field(default_factory=list)  # extra YAML flow mappings
    dnsmasq_options: list[str] = field(default_factory=list)  # extra dnsmasq.conf lines
    upstream: list[tuple[str, str]] = field(default_factory=list)  # outside (name, address) the stub answers
    optional: list[str] = field(default_factory=list)  # dockerdns records dropped (with a note) if refused

    def hosts_text(self, toggled: bool = False) -> str:
        lines = [f"{address(i)} {host(i)}\n" for i in range(self.names)]
        if toggled:
            lines.append(f"10.99.0.1 churn.{ZONE}\n")
        return "".join(lines)

    def dockerdns_yaml(self, toggled: bool = False, optional: bool = True) -> str:
        lines = ["records:\n"]
        lines += [f"  - {{name: host{i}, type: A, value: {address(i)}}}\n" for i in range(self.names)]
        lines += [f"  - {r}\n" for r in self.dockerdns_records]
        if optional:
            lines += [f"  - {r}\n" for r in self.optional]
        if toggled:
            lines.append("  - {name: churn, type: A, value: 10.99.0.1}\n")
        return "".join(lines)

    def unbound_local_data(self) -> str:
        lines = [f'  local-zone: "{ZONE}." static\n']
        lines += [f'  local-data: "{host(i)}. 5 IN A {address(i)}"\n' for i in range(self.names)]
        return "".join(lines)


Lines = Callable[[random.Random], list[str]]


@dataclass
class Workload:
    name: str
    title: str
    zone: Zone
    lines: Lines  # dnsperf input
    fresh: bool = False  # a new input every round, so that no query repeats
    dnsperf: list[str] = field(default_factory=list)  # extra dnsperf flags
    kind: str = "plain"  # "plain", "churn" (table changes during the run), "nxflood" (with a paced stream)
    stream: Lines | None = None  # nxflood: the paced in-zone stream's input
    unbound: bool = False  # also measure unbound (when installed)


def uniform(count: int, lines: int, qtype: str = "A") -> Lines:
    return lambda rng: [f"{host(rng.randrange(count))} {qtype}\n" for _ in range(lines)]


def random_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def case_lines(rng: random.Random) -> list[str]:
    """A fresh random letter case on every query, as resolvers with 0x20 (use-caps-for-id) send."""
    return [f"{random_case(host(rng.randrange(NAMES)), rng)} A\n" for _ in range(CASE_LINES)]


def spread_lines(rng: random.Random) -> list[str]:
    lines = [f"{host(i % SPREAD_NAMES)} A\n" for i in range(SPREAD_LINES)]
    rng.shuffle(lines)
    return lines


def mix_lines(rng: random.Random) -> list[str]:
    """60% A, 30% AAAA (NODATA: the names have only A), 10% NXDOMAIN (in-zone names that do not exist)."""
    def one() -> str:
        i, roll = rng.randrange(MIX_NAMES), rng.random()
        if roll < 0.6:
            return f"{host(i)} A\n"
        if roll < 0.9:
            return f"{host(i)} AAAA\n"
        return f"missing{i}.{ZONE} A\n"
    return [one() for _ in range(MIX_LINES)]


def label(rng: random.Random, length: int = 12) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits, k=length))


def unique_lines(suffix: str, seconds: float) -> Lines:
    """Random labels under `suffix`, enough that no name repeats within a run."""
    count = min(MAX_UNIQUE_LINES, int(UNIQUE_LINES_PER_SECOND * max(seconds, 1)))
    return lambda rng: [f"{label(rng)}.{suffix} A\n" for _ in range(count)]


def all_workloads(seconds: float) -> list[Workload]:
    outside = [(f"host{i}.example.test", f"10.88.{i // 250}.{i % 250 + 1}") for i in range(NAMES)]
    return [
        Workload("lower", f"{NAMES} names, A, lowercase", Zone(), uniform(NAMES, SHUFFLED_LINES)),
        Workload("case", f"the same {NAMES} names, a fresh random letter case on every query "
                 f"({CASE_LINES:,} lines)", Zone(), case_lines),
        Workload("spread", f"{SPREAD_NAMES:,} distinct names, uniform, {SPREAD_LINES:,} shuffled lines",
                 Zone(names=SPREAD_NAMES), spread_lines),
        Workload("mix", f"60% A, 30% AAAA (NODATA), 10% NXDOMAIN over {MIX_NAMES:,} names",
                 Zone(names=MIX_NAMES), mix_lines),
        Workload("edns", f"{NAMES} names, EDNS with a cookie option (dnsperf -e -E {COOKIE})", Zone(),
                 uniform(NAMES, SHUFFLED_LINES), dnsperf=["-e", "-E", COOKIE]),
        Workload("upstream", f"{NAMES} outside names from the upstream cache (loopback stub, TTL 300)",
                 Zone(upstream=outside),
                 lambda rng: [f"{rng.choice(outside)[0]} A\n" for _ in range(SHUFFLED_LINES)]),
        Workload("tcp", f"TCP (dnsperf -m tcp), {NAMES} names", Zone(), uniform(NAMES, SHUFFLED_LINES),
                 dnsperf=["-m", "tcp"], unbound=True),
        Workload("churn", f"{NAMES} names while the table changes {CHURN_PER_SECOND} times a second", Zone(),
                 uniform(NAMES, SHUFFLED_LINES), kind="churn"),
        Workload("nxflood", f"unique in-zone NXDOMAIN names, a {STREAM_QPS}/s in-zone stream beside",
                 Zone(), unique_lines(ZONE, seconds), fresh=True, kind="nxflood",
                 stream=uniform(NAMES, SHUFFLED_LINES)),
        Workload("srv", f"SRV _http._tcp.hostN.{ZONE}, {NAMES} names",
                 Zone(dockerdns_records=[f'{{name: _http._tcp.host{i}, type: SRV, value: "0 0 80 {host(i)}."}}'
                                         for i in range(NAMES)],
                      dnsmasq_options=[f"srv-host=_http._tcp.{host(i)},{host(i)},80" for i in range(NAMES)]),
                 lambda rng: [f"_http._tcp.{host(rng.randrange(NAMES))} SRV\n" for _ in range(SHUFFLED_LINES)]),
        Workload("wildcard", f"random names below a wildcard (*.web.{ZONE}), none repeats",
                 Zone(optional=[f'{{name: "*.web", type: A, value: {WILDCARD_ADDRESS}}}'],
                      dnsmasq_options=[f"address=/web.{ZONE}/{WILDCARD_ADDRESS}"]),
                 unique_lines(f"web.{ZONE}", seconds), fresh=True),
    ]


MEMORY_WORKLOADS = {
    "stranger": "RSS growth after 100,000 distinct queries from a client outside allow (50,000 names)",
    "hostile60k": "RSS growth after 2,000 UDP and 2,000 TCP queries with a 60 KB EDNS option, client outside allow",
}
STRANGER_QUERIES = 100_000
HOSTILE_QUERIES = 2_000
HOSTILE_OPTION_BYTES = 60 * 1024
