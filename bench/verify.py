#!/usr/bin/env python3
"""Independent checks of dockerdns: DNSViz, ISC's genreport, and unbound, dnsmasq and Knot Resolver in front of it.

Everything runs inside a network namespace of its own that holds nothing but
loopback (the script re-runs itself under `unshare --net` and brings `lo`
up), so no tool can reach the machine's resolver, the root servers or
anything else: a query that tries to leave fails at once. Docker is still
reached through its unix socket. In that namespace:

- dockerdns runs on 127.0.0.1:53 with conf/dockerdns.yaml (the sample
  config) plus static records that the resolver checks need (`ext` CNAME
  `db.example.test.`, a chain that leaves the zone; `dangle` CNAME
  `missing.docker.`, a chain that ends in NXDOMAIN; `many`, 100 A records,
  an answer too big for UDP), forwarding to the stub upstream of
  tests/dnsstub.py on loopback, which holds `example.test`. A busybox
  container with the alias `web` (the target of the sample's
  `api.example.test.` CNAME and SRV record) runs while the checks do; it is
  labelled like the tests' containers (`dockerdns-test=1` and the pid), so
  that a test sweep removes it should this script die.
- **dnsviz**: `dnsviz probe -A -E -4 -x docker+:ns.docker=127.0.0.1` on the
  zone and a few names in it (authoritative analysis with the zone's server
  given, `+`: the ancestry above `docker.` is not analysed; `-E`: the EDNS
  compatibility queries), then `dnsviz grok -l warning`. Verdict: every
  warning and error grok reports, with its code and where.
- **genreport** (only with `--genreport PATH`, an existing binary of ISC's
  DNS compliance tester): `docker ns.docker 127.0.0.1` through
  `genreport -r 127.0.0.1 -f -c` (EDNS, FULL and COMMON tests) and `-t`
  (query types), and `example.test ns.example.test 127.0.0.1` through `-R`
  (the recursive tests, on a name dockerdns forwards). Verdict: each test
  whose result is not `ok`, explained.
- **direct**: each case (a static name, a single label, NXDOMAIN, NODATA,
  an empty non-terminal, TXT, SRV, PTR, a truncated answer, CNAME chains
  inside the zone, leaving it and dangling, names above and below an
  absolute static name, mixed case) asked of dockerdns with RD, checked
  against DESIGN.md (rcode, records, SOA on negatives, AA, the question
  echoed exactly).
- **unbound** (UDP to dockerdns) and **unbound-tcp** (`tcp-upstream: yes`):
  stub zones `docker.` and the `web` container's reverse /16, a forward
  zone `example.test.`, all pointing at dockerdns through a recording
  relay; `use-caps-for-id: yes` (0x20), `local-zone: "." refuse` (nothing
  else is resolved) and the default qname minimisation. **dnsmasq**:
  `--no-resolv --server=/ZONE/127.0.0.1` for the same zones. **kresd**
  (Knot Resolver, skipped when not installed): `policy.STUB` for the stub
  zones, `policy.FORWARD` for `example.test.`, through a relay of its own,
  everything else REFUSE. The same cases (the single labels aside) through
  each; verdict: every difference from the direct answer in rcode, records
  or SOA on negatives; a TTL the resolver raised is noted, not failed.
  **unbound 0x20**, **kresd 0x20**: whether every question the resolver
  sent (in mixed case) came back byte for byte (its relay's log,
  RESOLVER-relay.log, lists each exchange).

Run it as root on the host (it needs `unshare`, and dockerd already running:
`python3 tests/dockerd.py ensure`):

    python3 bench/verify.py [--genreport PATH] [--only dnsviz,genreport,direct,unbound,dnsmasq,kresd]
                            [--dockerdns-path DIR] [--keep]

Needs: `pip install dnsviz` (its pygraphviz dependency builds against
Debian's `libgraphviz-dev`; only `probe` and `grok` are used), and Debian's
`unbound` and `dnsmasq`; `knot-resolver` optional. genreport is not installed or built by this
project: build it yourself from ISC's DNS Compliance Testing sources and pass
the binary. `--dockerdns-path` checks another source tree (its dockerdns
and its conf/dockerdns.yaml), for instance an older commit from `git
archive`. `--keep` keeps the work directory (configs, logs, DNSViz JSON).
A full run takes about 15 s.
Exit status 0 when every check that ran passed, 1 otherwise, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
import dockerd  # noqa: E402
from dnsstub import StubUpstream  # noqa: E402

INSIDE = "DOCKERDNS_VERIFY_NETNS"  # set in the re-run inside the private network namespace
CHECKS = ("dnsviz", "genreport", "direct", "unbound", "dnsmasq", "kresd")
SERVER = "127.0.0.1"  # dockerdns, on port 53 of the private namespace
UNBOUND_PORT, DNSMASQ_PORT, UNBOUND_TCP_PORT, KRESD_PORT = 5301, 5302, 5303, 5304
UNBOUND_RELAY_PORT, KRESD_RELAY_PORT = 5353, 5354  # the recording relays in front of dockerdns
START_SECONDS = 20  # for dockerdns, unbound and dnsmasq to answer their first query
QUERY_SECONDS = 4.0  # one query through a resolver (unbound retries a silent server within this)
TOOL_SECONDS = 300  # one DNSViz or genreport run
# In a case's name and records: the `web` container's address, and its reverse name (RFC 1035 section 3.5).
WEB_ADDRESS, WEB_REVERSE = "{web}", "{web-reverse}"
MANY = 100  # A records at `many.docker`: 1,616 bytes of answer, over 1232, so UDP answers are truncated

# Added to the sample config's records: chains the sample does not have (issue 10, points 3 and 4).
EXTRA_RECORDS = [
    {"name": "ext", "type": "CNAME", "value": "db.example.test."},
    {"name": "dangle", "type": "CNAME", "value": "missing.docker."},
] + [{"name": "many", "type": "A", "value": f"198.51.100.{i}"} for i in range(1, MANY + 1)]
# The loopback upstream: the zone above the sample's absolute name, and the target of `ext`.
UPSTREAM_ZONE = """
example.test. 60 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
example.test. 60 IN NS ns.example.test.
db.example.test. 60 IN A 192.0.2.10
"""
DNSVIZ_NAMES = ["docker", "gateway.docker", "info.docker", "_http._tcp.web.docker", "_tcp.web.docker", "dangle.docker",
                "many.docker"]

# What each genreport result other than `ok` means (genreport.c's tags; rcode names are the rcode received).
GENREPORT_TAGS = {
    "timeout": "no answer at all (the query was dropped)",
    "noopt": "an EDNS query was answered without an OPT record (RFC 6891 section 7)",
    "opt": "a query without EDNS got an OPT record back",
    "badversion": "an EDNS version 1 query was not answered BADVERS (RFC 6891 section 6.1.3)",
    "version-not-zero": "the answer's OPT carries an EDNS version other than 0",
    "mbz": "an unknown EDNS flag bit was echoed (must be zero, RFC 6891 section 6.1.4)",
    "z": "the reserved header bit Z was echoed (RFC 1035 section 4.1.1: must be zero)",
    "nosoa": "a NOERROR answer to the SOA query holds no SOA",
    "soa": "an SOA turned up where none belongs",
    "noaa": "a NOERROR answer to an authoritative test lacks AA",
    "aa": "AA set in an answer to an unknown opcode, or to a recursive test (-R: a name the server does not own)",
    "ra": "RA set in an answer to an unknown opcode (RA is defined for QUERY only)",
    "rd": "RD set in an answer to an unknown opcode, or to a query that had RD clear",
    "nord": "RD of a query not copied into the answer (RFC 1035 section 4.1.1)",
    "ad": "AD set in an answer to an unknown opcode, or to a query with neither AD nor DO (RFC 6840 section 5.8)",
    "cd": "CD set in an answer to an unknown opcode, or to a query that had CD clear",
    "nocd": "a signed answer to a query with DO and CD lacks CD (RFC 4035 section 3.1.6)",
    "nodo": "a signed answer (RRSIGs) to a query with DO lacks DO in its OPT (RFC 3225)",
    "echoed": "an unknown EDNS option was echoed back (RFC 6891: ignore it)",
    "toobig": "the UDP answer exceeds the size the query advertised",
    "mismatch": "the answer does not match the query (id or question)",
    "malformed": "the answer could not be parsed",
    "notsig": "the TSIG-signed query (dnswkk) was answered without a TSIG",
    "non-empty-question-section": "an unknown-opcode answer carries a question",
    "non-empty-answer-section": "an unknown-opcode answer carries answer records",
    "non-empty-authority-section": "an unknown-opcode answer carries authority records",
    "non-empty-additional-section": "an unknown-opcode answer carries additional records",
    "reset": "TCP connection reset", "eof": "TCP connection closed before the answer",
    "connection-refused": "TCP connection refused", "failed": "the query could not be sent",
}


@dataclass
class Verdict:
    check: str
    ok: bool | None  # None: skipped
    summary: str
    details: list[str] = field(default_factory=list)

    def show(self) -> None:
        word = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        print(f"{word:4}  {self.check}: {self.summary}", flush=True)
        for line in self.details:
            print(f"      {line}", flush=True)


# ---------------------------------------------------------------------------------------------- the namespace


def interfaces() -> list[str]:
    """The network interfaces of this process's namespace (/proc/self/net/dev; /sys/class/net shows sysfs's)."""
    with open("/proc/self/net/dev") as f:
        return sorted(line.split(":", 1)[0].strip() for line in f if ":" in line)


def rerun_inside(argv: list[str]) -> int:
    """Run this script again in a new network namespace (unshare --net); return its exit status."""
    if os.geteuid() != 0:
        print("verify: needs root (unshare --net, port 53 in the namespace); run it with sudo", file=sys.stderr)
        return 2
    if shutil.which("unshare") is None:
        print("verify: unshare (util-linux) is missing", file=sys.stderr)
        return 2
    env = dict(os.environ, **{INSIDE: "1"})
    return subprocess.call(["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), *argv], env=env)


# ---------------------------------------------------------------------------------------------- the servers


def wait_for(what: str, ready: Any, proc: subprocess.Popen[bytes] | None = None,
             seconds: float = START_SECONDS) -> None:
    """Return once ready() is true; exit with one line after `seconds` or when `proc` has exited."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"verify: {what} exited with status {proc.returncode}")
        if ready():
            return
        time.sleep(0.05)
    raise SystemExit(f"verify: {what} not ready after {seconds:.0f} s")


def answers(port: int, name: str = "docker.", qtype: str = "SOA") -> bool:
    try:
        dns.query.udp(dns.message.make_query(name, qtype), SERVER, port=port, timeout=0.5)
        return True
    except Exception:
        return False


def write_config(work: str, tree: str) -> str:
    """The sample config of the dockerdns in `tree` with EXTRA_RECORDS appended; returns its path."""
    with open(os.path.join(tree, "conf", "dockerdns.yaml")) as f:
        config = yaml.safe_load(f)
    config["records"] = list(config.get("records") or []) + EXTRA_RECORDS
    path = os.path.join(work, "dockerdns.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def start_dockerdns(work: str, tree: str, config: str, upstream: str, docker_url: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(work, "dockerdns.log"), "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockerdns", "serve", "-c", config, "--listen", f"{SERVER}:53",
         "--docker-url", docker_url, "--upstream", upstream],
        cwd=tree, env=dict(os.environ, PYTHONPATH=tree), stdout=log, stderr=subprocess.STDOUT)  # -m puts cwd first
    try:
        wait_for("dockerdns", lambda: answers(53), proc)
    except SystemExit as e:
        with open(log.name, errors="replace") as f:
            tail = "".join(f.readlines()[-10:])
        raise SystemExit(f"{e}; its log ends:\n{tail}") from None
    return proc


def start_web(docker_url: str) -> tuple[Any, str] | None:
    """A busybox container with the alias `web`, and its address; None when Docker cannot be used."""
    import docker

    try:
        client = docker.DockerClient(base_url=docker_url, version="auto")
        client.ping()
        dockerd.ensure_image()
    except Exception as e:  # unreachable engine, no image: the cases that need `web` are skipped
        print(f"verify: no Docker ({e}); cases that need the `web` container are skipped", flush=True)
        return None
    labels = {"dockerdns-test": "1", "dockerdns-test.pid": str(os.getpid()), "dockerdns.aliases": "web"}
    container = client.containers.run(dockerd.IMAGE, ["sleep", "3600"], detach=True, init=True,
                                      name=f"dnst-{os.urandom(3).hex()}-verify-web", labels=labels)
    container.reload()
    address = container.attrs["NetworkSettings"]["IPAddress"]

    def served() -> bool:
        try:
            reply = dns.query.udp(dns.message.make_query("web.docker.", "A"), SERVER, port=53, timeout=0.5)
        except Exception:
            return False
        return any(address == rd.to_text() for rrset in reply.answer for rd in rrset)

    wait_for("web.docker", served)
    return container, address


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------- 1: DNSViz


def grok_findings(tree: Any, where: str = "") -> Iterator[str]:
    """Every warning and error in `dnsviz grok` output, as 'LEVEL CODE at WHERE: description'."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key in ("warnings", "errors") and isinstance(value, list):
                for item in value:
                    code = item.get("code", "?") if isinstance(item, dict) else "?"
                    text = item.get("description", item) if isinstance(item, dict) else item
                    servers = ", ".join(item.get("servers", [])) if isinstance(item, dict) else ""
                    yield f"{key[:-1]} {code} at {where or '/'}{f' (servers {servers})' if servers else ''}: {text}"
            else:
                yield from grok_findings(value, f"{where}/{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from grok_findings(value, f"{where}[{i}]")


def check_dnsviz(work: str, with_web: bool) -> Verdict:
    if shutil.which("dnsviz") is None:
        return Verdict("dnsviz", None, "dnsviz is not installed (pip install dnsviz)")
    names = DNSVIZ_NAMES + (["web.docker"] if with_web else [])
    probe_json = os.path.join(work, "dnsviz-probe.json")
    probe = subprocess.run(["dnsviz", "probe", "-A", "-E", "-4", "-x", f"docker+:ns.docker={SERVER}",
                            "-o", probe_json, *names], capture_output=True, text=True, timeout=TOOL_SECONDS)
    if probe.returncode != 0:
        return Verdict("dnsviz", False, f"dnsviz probe exited {probe.returncode}", probe.stderr.strip().splitlines())
    grok = subprocess.run(["dnsviz", "grok", "-l", "warning", "-r", probe_json], capture_output=True, text=True,
                          timeout=TOOL_SECONDS)
    if grok.returncode != 0:
        return Verdict("dnsviz", False, f"dnsviz grok exited {grok.returncode}", grok.stderr.strip().splitlines())
    with open(os.path.join(work, "dnsviz-grok-warning.json"), "w") as f:
        f.write(grok.stdout)
    findings = list(grok_findings(json.loads(grok.stdout))) if grok.stdout.strip() else []
    # grok at the lowest level, to show the probe did reach the server: the zone's status and its SOA answer.
    full = subprocess.run(["dnsviz", "grok", "-l", "debug", "-r", probe_json], capture_output=True, text=True,
                          timeout=TOOL_SECONDS)
    analysis = json.loads(full.stdout or "{}")
    zone = analysis.get("docker.", {})
    soa = zone.get("queries", {}).get("docker./IN/SOA", {}).get("answer", [])
    if zone.get("status") != "NOERROR" or not soa:
        findings.append(f"the probe got no SOA for docker. (status {zone.get('status')!r}): nothing was analysed")
    statuses = ", ".join(f"{name} {value.get('status')}" for name, value in analysis.items()
                         if isinstance(value, dict) and "status" in value)
    options = sorted({opt for answer in soa for opt in answer.get("query_options", [])})
    summary = (f"{len(findings)} warnings/errors from grok -l warning; names probed: {statuses}; "
               f"SOA asked with {len(options)} query variants")
    return Verdict("dnsviz", not findings, summary, findings)


# ---------------------------------------------------------------------------------------------- 2: genreport


def genreport_results(line: str) -> dict[str, str]:
    """`zone. @addr (ns.): dns=ok edns=nosoa,noaa ...` -> {'dns': 'ok', 'edns': 'nosoa,noaa', ...}."""
    _, _, tail = line.partition("): ")
    return dict(item.split("=", 1) for item in tail.split() if "=" in item)


# (zone server address, flags): the zone's authoritative tests (EDNS, FULL, COMMON), its query types, and the
# recursive tests on a name dockerdns forwards (its authoritative tests would only say `noaa`, rightly).
GENREPORT_RUNS = [
    (f"docker ns.docker {SERVER}", ["-f", "-c"]),
    (f"docker ns.docker {SERVER}", ["-t"]),
    (f"example.test ns.example.test {SERVER}", ["-R"]),
]


def check_genreport(path: str) -> Verdict:
    lines, flagged = [], []
    for target, flags in GENREPORT_RUNS:
        done = subprocess.run([path, "-r", SERVER, *flags], input=target + "\n", capture_output=True, text=True,
                              timeout=TOOL_SECONDS)
        out = done.stdout.strip()
        lines.append(f"genreport {' '.join(flags)}: {out or done.stderr.strip() or '(no output)'}")
        if done.returncode != 0 or not out:
            flagged.append(f"genreport {' '.join(flags)} exited {done.returncode} without a report")
            continue
        for test, result in genreport_results(out).items():
            if result != "ok":
                meanings = "; ".join(GENREPORT_TAGS.get(tag, f"{tag}: rcode or tag received")
                                     for tag in result.split(","))
                flagged.append(f"{target.split()[0]} {test}={result}: {meanings}")
    summary = f"{len(flagged)} tests not ok" if flagged else "every test ok"
    return Verdict("genreport", not flagged, summary, lines + flagged)


@dataclass(frozen=True)
class Case:
    qname: str
    qtype: str
    rcode: str
    has: tuple[str, ...] = ()  # records the answer must hold, "TYPE rdata"
    count: int = 0  # the number of records the answer must hold, when not 0
    empty: bool = False  # the answer section must be empty
    soa: bool = False  # the authority section must hold the zone's SOA (RFC 2308)
    aa: bool | None = None  # the AA flag dockerdns must set (None: not checked)
    needs_web: bool = False
    direct_only: bool = False  # a name no resolver would send to dockerdns (a single label)
    why: str = ""


CASES = [
    Case("gateway.docker.", "A", "NOERROR", ("A 172.17.0.1",), aa=True, why="a static name"),
    Case("gateway.", "A", "NOERROR", ("A 172.17.0.1",), aa=False, direct_only=True,
         why="a single label answers A from the zone, without AA"),
    Case("gateway.", "MX", "NXDOMAIN", aa=False, direct_only=True,
         why="a single label forwards every type but A and AAAA (the upstream has no such name)"),
    Case("info.", "DS", "NXDOMAIN", aa=False, direct_only=True,
         why="a single label the zone holds (info TXT) is not the TLD's authority: DS is forwarded"),
    Case("GaTeWaY.dOcKeR.", "A", "NOERROR", ("A 172.17.0.1",), why="mixed case, echoed as asked"),
    Case("nothere.docker.", "A", "NXDOMAIN", empty=True, soa=True, why="a missing name: NXDOMAIN with SOA"),
    Case("gateway.docker.", "AAAA", "NOERROR", empty=True, soa=True, why="NODATA: AAAA of an A-only name"),
    Case("info.docker.", "TXT", "NOERROR", ('TXT "served by dockerdns"',), why="a static TXT"),
    Case("_http._tcp.web.docker.", "SRV", "NOERROR", ("SRV 0 0 80 web.docker.",), why="a static SRV"),
    Case("_tcp.web.docker.", "A", "NOERROR", empty=True, soa=True,
         why="an empty non-terminal is NODATA, not NXDOMAIN (RFC 8020; qname minimisation walks it)"),
    Case("web.docker.", "A", "NOERROR", (f"A {WEB_ADDRESS}",), needs_web=True, why="a container's alias"),
    Case(WEB_REVERSE, "PTR", "NOERROR", count=1, needs_web=True, why="the PTR of a container's address"),
    Case("many.docker.", "A", "NOERROR", ("A 198.51.100.1",), count=MANY,
         why="an answer over 1232 bytes: TC over UDP, the whole RRset over TCP"),
    Case("api.example.test.", "A", "NOERROR", ("CNAME web.docker.", f"A {WEB_ADDRESS}"), needs_web=True,
         why="an absolute static CNAME into the zone, followed"),
    Case("api.example.test.", "AAAA", "NOERROR", ("CNAME web.docker.",), soa=True, needs_web=True,
         why="a chain that ends in NODATA carries the SOA (RFC 2308 section 3)"),
    Case("ext.docker.", "A", "NOERROR", ("CNAME db.example.test.", "A 192.0.2.10"),
         why="a CNAME that leaves the zone, the rest resolved through the forwarder"),
    Case("dangle.docker.", "A", "NXDOMAIN", ("CNAME missing.docker.",), soa=True,
         why="a chain that ends in NXDOMAIN carries the SOA (RFC 2308 section 3)"),
    Case("example.test.", "SOA", "NOERROR", ("SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60",),
         aa=False, why="the name above an absolute static name is forwarded, not ours"),
    Case("x.api.example.test.", "A", "NXDOMAIN", empty=True, why="a name below an absolute static name is forwarded"),
]


@dataclass(frozen=True)
class Outcome:
    rcode: str
    answer: tuple[str, ...]  # "name TYPE rdata", lower case, sorted, TTLs left out
    soa: bool  # an SOA in the authority section
    question: str  # the question name exactly as echoed
    aa: bool
    ttl: int | None  # the smallest TTL in the answer section

    def text(self) -> str:
        records = "; ".join(self.answer) or "no records"
        return f"{self.rcode} [{records}]{' +SOA' if self.soa else ''}"


def ask(port: int, case: Case) -> Outcome | str:
    """The outcome of `case` asked with RD over UDP (TCP after TC) of 127.0.0.1:`port`, or why there was none."""
    query = dns.message.make_query(case.qname, case.qtype, use_edns=0, payload=1232)
    query.flags |= dns.flags.RD
    try:
        reply, _ = dns.query.udp_with_fallback(query, SERVER, port=port, timeout=QUERY_SECONDS)
    except Exception as e:
        return f"no answer ({type(e).__name__})"
    answer = sorted(f"{rrset.name.to_text().lower()} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text().lower()}"
                    for rrset in reply.answer for rd in rrset)
    soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in reply.authority)
    question = reply.question[0].name.to_text() if reply.question else ""
    ttl = min((rrset.ttl for rrset in reply.answer), default=None)
    return Outcome(dns.rcode.to_text(reply.rcode()), tuple(answer), soa, question, bool(reply.flags & dns.flags.AA),
                   ttl)


def concrete(case: Case, web: str) -> Case:
    """`case` with the `web` container's address (and reverse name) in place of the placeholders."""
    reverse = dns.reversename.from_address(web).to_text() if web else ""

    def fill(text: str) -> str:
        return text.replace(WEB_REVERSE, reverse).replace(WEB_ADDRESS, web)

    return dataclasses.replace(case, qname=fill(case.qname), has=tuple(fill(r) for r in case.has))


def expected_problems(case: Case, got: Outcome) -> list[str]:
    """What in dockerdns's own answer contradicts DESIGN.md."""
    problems = []
    if got.rcode != case.rcode:
        problems.append(f"rcode {got.rcode}, expected {case.rcode}")
    for record in case.has:
        rtype, _, rdata = record.partition(" ")
        if not any(line.split(" ", 2)[1:] == [rtype, rdata.lower()] for line in got.answer):
            problems.append(f"no {rtype} {rdata} in the answer")
    if case.count and len(got.answer) != case.count:
        problems.append(f"{len(got.answer)} records in the answer, expected {case.count}")
    if case.empty and got.answer:
        problems.append("expected an empty answer section")
    if case.soa and not got.soa:
        problems.append("no SOA in the authority section")
    if case.aa is not None and got.aa != case.aa:
        problems.append(f"AA {'clear' if case.aa else 'set'}, expected it {'set' if case.aa else 'clear'}")
    if got.question != case.qname:
        problems.append(f"question echoed as {got.question!r}, asked as {case.qname!r}")
    return problems


@dataclass
class Exchange:
    transport: str
    sent: str  # the question name as the resolver sent it
    qtype: str
    echoed: str  # as dockerdns echoed it
    rcode: str
    answers: int

    def line(self) -> str:
        return f"{self.transport} {self.sent} {self.qtype} -> {self.rcode} {self.answers} answers, echoed {self.echoed}"


class Relay:
    """A UDP and TCP relay from 127.0.0.1:`port` to dockerdns that records each question's case both ways."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[Exchange] = []
        self._lock = threading.Lock()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((SERVER, port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((SERVER, port))
        self.tcp.listen(16)
        for target in (self._udp, self._tcp):
            threading.Thread(target=target, daemon=True).start()

    def _record(self, transport: str, query: bytes, reply: bytes) -> None:
        try:
            asked = dns.message.from_wire(query).question[0]
            got = dns.message.from_wire(reply)
        except Exception:
            return
        echoed = got.question[0].name.to_text() if got.question else ""
        exchange = Exchange(transport, asked.name.to_text(), dns.rdatatype.to_text(asked.rdtype), echoed,
                            dns.rcode.to_text(got.rcode()), sum(len(rrset) for rrset in got.answer))
        with self._lock:
            self.seen.append(exchange)

    def _udp(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            threading.Thread(target=self._udp_one, args=(data, peer), daemon=True).start()

    def _udp_one(self, data: bytes, peer: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(QUERY_SECONDS)
            try:
                up.sendto(data, (SERVER, 53))
                reply = up.recv(65535)
                self.udp.sendto(reply, peer)
            except OSError:
                return
        self._record("udp", data, reply)

    def _tcp(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._tcp_one, args=(conn,), daemon=True).start()

    def _tcp_one(self, conn: socket.socket) -> None:
        with conn, socket.create_connection((SERVER, 53), timeout=QUERY_SECONDS) as up:
            conn.settimeout(QUERY_SECONDS)
            while True:
                try:
                    query = _read_framed(conn)
                    if query is None:
                        return
                    up.sendall(struct.pack("!H", len(query)) + query)
                    reply = _read_framed(up)
                    if reply is None:
                        return
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return
                self._record("tcp", query, reply)

    def close(self) -> None:
        for sock in (self.udp, self.tcp):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def _read_framed(sock: socket.socket) -> bytes | None:
    data = b""
    while len(data) < 2:
        chunk = sock.recv(2 - len(data))
        if not chunk:
            return None
        data += chunk
    size = struct.unpack("!H", data)[0]
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


UNBOUND_CONF = """server:
    interface: 127.0.0.1@{port}
    port: {port}
    do-ip6: no
    do-daemonize: no
    use-syslog: no
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: "{work}/{name}.pid"
    logfile: "{work}/{name}.log"
    verbosity: 1
    module-config: "iterator"
    do-not-query-localhost: no
    use-caps-for-id: yes
    qname-minimisation: yes
    tcp-upstream: {tcp}
    # Nothing but the zones below is resolved: no root priming, no internet.
    local-zone: "." refuse
{zones}"""
UNBOUND_ZONE = """    local-zone: "{zone}" transparent
{kind}-zone:
    name: "{zone}"
    {kind}-addr: 127.0.0.1@{relay}
server:
"""


def resolver_zones(web: str | None) -> list[tuple[str, str]]:
    """(zone, how unbound reaches it) for every zone the cases touch: dockerdns's zone and reverse zone as
    stub zones (unbound iterates, with qname minimisation), example.test. as a forward zone (RD set)."""
    zones = [("docker.", "stub"), ("example.test.", "forward")]
    if web:  # the container's /16 (the default bridge's prefix length): unbound holds it as an AS112 zone otherwise
        zones.append((".".join(reversed(web.split(".")[:2])) + ".in-addr.arpa.", "stub"))
    return zones


def start_unbound(work: str, name: str, port: int, tcp: bool, zones: list[tuple[str, str]]) -> subprocess.Popen[bytes]:
    conf = os.path.join(work, f"{name}.conf")
    text = "".join(UNBOUND_ZONE.format(zone=zone, kind=kind, relay=UNBOUND_RELAY_PORT) for zone, kind in zones)
    with open(conf, "w") as f:
        f.write(UNBOUND_CONF.format(port=port, work=work, name=name, tcp="yes" if tcp else "no", zones=text))
    checked = subprocess.run(["unbound-checkconf", conf], capture_output=True, text=True)
    if checked.returncode != 0:
        raise SystemExit(f"verify: unbound-checkconf: {checked.stdout.strip()} {checked.stderr.strip()}")
    proc = subprocess.Popen(["unbound", "-d", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(name, lambda: answers(port), proc)
    return proc


def start_dnsmasq(work: str, zones: list[tuple[str, str]]) -> subprocess.Popen[bytes]:
    servers = [f"--server=/{zone.rstrip('.')}/{SERVER}#53" for zone, _ in zones]
    proc = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--port={DNSMASQ_PORT}", f"--listen-address={SERVER}", "--bind-interfaces", "--user=root",
         f"--pid-file={work}/dnsmasq.pid", f"--log-facility={work}/dnsmasq.log", "--log-queries", *servers],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("dnsmasq", lambda: answers(DNSMASQ_PORT), proc)
    return proc


KRESD_CONF = """-- written by bench/verify.py
net.listen('127.0.0.1', {port}, {{ kind = 'dns' }})
trust_anchors.remove('.')  -- nothing here is signed, and there is no root to refresh the key from
cache.open(10 * MB, 'lmdb://{work}/kresd-cache')
{zones}policy.add(policy.all(policy.REFUSE))  -- nothing else is resolved
"""
KRESD_ZONE = "policy.add(policy.suffix(policy.{kind}({{'127.0.0.1@{relay}'}}), {{todname('{zone}')}}))\n"


def start_kresd(work: str, zones: list[tuple[str, str]]) -> subprocess.Popen[bytes]:
    """Knot Resolver with dockerdns's zones as STUB (stub zones) or FORWARD (forward zones) targets."""
    rundir = os.path.join(work, "kresd")
    os.makedirs(rundir)
    text = "".join(KRESD_ZONE.format(kind=kind.upper(), relay=KRESD_RELAY_PORT, zone=zone) for zone, kind in zones)
    conf = os.path.join(work, "kresd.conf")
    with open(conf, "w") as f:
        f.write(KRESD_CONF.format(port=KRESD_PORT, work=work, zones=text))
    log = open(os.path.join(work, "kresd.log"), "wb")
    proc = subprocess.Popen(["kresd", "-n", "-c", conf, rundir], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)
    wait_for("kresd", lambda: answers(KRESD_PORT), proc)
    return proc


def run_cases(web: str | None) -> tuple[list[Case], dict[Case, Outcome | str], Verdict]:
    """Ask each case of dockerdns directly; the verdict lists every contradiction of DESIGN.md."""
    cases = [concrete(c, web or "") for c in CASES if web is not None or not c.needs_web]
    direct = {case: ask(53, case) for case in cases}
    problems, wrong = [], 0
    for case in cases:
        got = direct[case]
        found = [got] if isinstance(got, str) else expected_problems(case, got)
        wrong += bool(found)
        for problem in found:
            problems.append(f"{case.qname} {case.qtype} ({case.why}): {problem}"
                            f"{'' if isinstance(got, str) else '; got ' + got.text()}")
    skipped = len(CASES) - len(cases)
    summary = (f"{len(cases) - wrong} of {len(cases)} cases as DESIGN.md says"
               f"{f', {skipped} skipped (no Docker)' if skipped else ''}")
    return cases, direct, Verdict("direct", not problems, summary, problems)


def compare(resolver: str, port: int, cases: list[Case], direct: dict[Case, Outcome | str]) -> Verdict:
    """Each case through the resolver on `port` against dockerdns's direct answer; longer TTLs are noted only."""
    differences, raised = [], []
    cases = [case for case in cases if not case.direct_only]
    for case in cases:
        mine, theirs = direct[case], ask(port, case)
        if isinstance(theirs, str) or isinstance(mine, str):
            if theirs != mine:
                differences.append(f"{case.qname} {case.qtype}: direct {_text(mine)}; {resolver} {_text(theirs)}")
            continue
        if (theirs.rcode, theirs.answer, theirs.soa) != (mine.rcode, mine.answer, mine.soa):
            differences.append(f"{case.qname} {case.qtype} ({case.why}): direct {mine.text()}; "
                               f"{resolver} {theirs.text()}")
        elif theirs.ttl is not None and mine.ttl is not None and theirs.ttl > mine.ttl:
            raised.append(f"{case.qname} {case.qtype} TTL {mine.ttl} -> {theirs.ttl}")
    summary = (f"{len(cases) - len(differences)} of {len(cases)} cases answered as dockerdns answers them directly"
               " (rcode, records, SOA on negatives)")
    notes = [f"note: the resolver raised TTLs (its minimum cache TTL): {', '.join(raised)}"] if raised else []
    return Verdict(resolver, not differences, summary, differences + notes)


def caps_verdict(resolver: str, relay: Relay, work: str) -> Verdict:
    """Whether dockerdns echoed the question byte for byte to every query `resolver` sent through `relay`."""
    with relay._lock:
        seen = list(relay.seen)
    with open(os.path.join(work, f"{resolver}-relay.log"), "w") as f:
        f.writelines(x.line() + "\n" for x in seen)
    mixed = [x for x in seen if x.sent != x.sent.lower() and x.sent != x.sent.upper()]
    wrong = [f"sent {x.sent}, echoed {x.echoed}" for x in seen if x.sent != x.echoed]
    if not mixed:
        return Verdict(f"{resolver} 0x20", not wrong, f"none of {resolver}'s {len(seen)} queries had mixed case "
                       "(it does not use 0x20 here); every question echoed exactly" if not wrong else "", wrong)
    return Verdict(f"{resolver} 0x20", not wrong, f"{len(mixed)} of {len(seen)} queries from {resolver} in mixed case; "
                   f"{len(seen) - len(wrong)} echoed byte for byte", wrong)


def _text(x: Outcome | str) -> str:
    return x if isinstance(x, str) else x.text()


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--genreport", metavar="PATH", help="a built genreport binary (ISC DNS Compliance Testing)")
    parser.add_argument("--only", metavar="LIST", default=",".join(CHECKS),
                        help=f"comma-separated checks to run (default: {','.join(CHECKS)})")
    parser.add_argument("--docker-url", default="unix:///var/run/docker.sock",
                        help="Docker Engine API; a unix socket (the namespace has no network)")
    parser.add_argument("--dockerdns-path", metavar="DIR", default=REPO,
                        help="the source tree whose dockerdns and conf/dockerdns.yaml are checked (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and say where it is")
    args = parser.parse_args(argv)
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    if only - set(CHECKS):
        parser.error(f"--only: unknown check(s) {', '.join(sorted(only - set(CHECKS)))}; known: {', '.join(CHECKS)}")
    if args.genreport and not (os.path.isfile(args.genreport) and os.access(args.genreport, os.X_OK)):
        parser.error(f"--genreport: {args.genreport!r} is not an executable file")
    if not args.docker_url.startswith("unix://"):
        parser.error(f"--docker-url: expected a unix:// socket (no network in the namespace), got {args.docker_url!r}")
    if os.environ.get(INSIDE) != "1":
        return rerun_inside(argv)  # once: the re-run has INSIDE set and never comes back here
    if interfaces() != ["lo"]:
        print(f"verify: the namespace has interfaces {interfaces()}, expected only lo; stopping", file=sys.stderr)
        return 2
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = tempfile.mkdtemp(prefix="dockerdns-verify-")
    stub = StubUpstream(zone=UPSTREAM_ZONE, host=SERVER)
    procs: list[subprocess.Popen[bytes]] = []
    container = None
    relays: list[Relay] = []
    verdicts: list[Verdict] = []
    try:
        tree = os.path.abspath(args.dockerdns_path)
        server = start_dockerdns(work, tree, write_config(work, tree), stub.address, args.docker_url)
        procs.append(server)
        web = start_web(args.docker_url)
        container, address = web if web else (None, None)
        print(f"verify: dockerdns on {SERVER}:53 in a namespace with loopback only; upstream stub {stub.address}; "
              f"web container {address or 'none'}; work dir {work}", flush=True)

        def record(verdict: Verdict) -> None:
            verdicts.append(verdict)
            verdict.show()

        if "dnsviz" in only:
            record(check_dnsviz(work, address is not None))
        if "genreport" in only:
            record(check_genreport(args.genreport) if args.genreport
                   else Verdict("genreport", None, "no --genreport PATH given"))
        if only & {"direct", "unbound", "dnsmasq", "kresd"}:  # the resolvers are compared with the direct answers
            cases, direct, verdict = run_cases(address)
            record(verdict)
            zones = resolver_zones(address)
            if "unbound" in only and shutil.which("unbound") is None:
                record(Verdict("unbound", None, "unbound is not installed (apt-get install unbound)"))
            elif "unbound" in only:
                relays.append(Relay(UNBOUND_RELAY_PORT))
                for name, port, tcp in (("unbound", UNBOUND_PORT, False), ("unbound-tcp", UNBOUND_TCP_PORT, True)):
                    procs.append(start_unbound(work, name, port, tcp, zones))
                    record(compare(name, port, cases, direct))
                record(caps_verdict("unbound", relays[-1], work))
            if "kresd" in only and shutil.which("kresd") is None:
                record(Verdict("kresd", None, "kresd is not installed (apt-get install knot-resolver)"))
            elif "kresd" in only:
                relays.append(Relay(KRESD_RELAY_PORT))
                procs.append(start_kresd(work, zones))
                record(compare("kresd", KRESD_PORT, cases, direct))
                record(caps_verdict("kresd", relays[-1], work))
            if "dnsmasq" in only and shutil.which("dnsmasq") is None:
                record(Verdict("dnsmasq", None, "dnsmasq is not installed (apt-get install dnsmasq)"))
            elif "dnsmasq" in only:
                procs.append(start_dnsmasq(work, zones))
                record(compare("dnsmasq", DNSMASQ_PORT, cases, direct))
    finally:
        for proc in reversed(procs):
            stop(proc)
        for relay in relays:
            relay.close()
        stub.close()
        if container is not None:
            container.remove(force=True)
        if args.keep:
            print(f"verify: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failed = [v.check for v in verdicts if v.ok is False]
    print(f"verify: {len(verdicts) - len(failed)} of {len(verdicts)} checks passed or skipped"
          f"{'; failed: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
