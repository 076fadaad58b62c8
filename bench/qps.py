#!/usr/bin/env python3
"""Throughput, CPU per query, latency and memory: dockerdns against dnsmasq, same names, same queries, one run.

For each workload (bench/workloads.py) both servers are started with the
same names, pinned to core 1; dnsperf runs pinned to core 0, and so does
this script (and the loopback stub upstream and the churn writer it runs in
threads). Runs alternate between the servers (dnsmasq, dockerdns, dnsmasq,
...), `--runs` rounds of `--seconds` at full speed, after a 1 s warm-up each.
Printed per workload, as medians over the rounds:

- queries/s of each server and the ratio dockerdns / dnsmasq;
- CPU per answered query: the server's own user + system time (all its
  threads, and its children: dnsmasq forks one per TCP connection); with
  tick accounting the softirq work done in its context is included;
- p99 latency at half the server's own median rate (one more run with
  dnsperf -Q and -v, LATENCY_WARM_UP_SECONDS longer: the answers of its
  first second are not in the percentile, nor are lost queries);
- loss at full speed; the response codes and mean response size of the
  last full-speed run (a run dnsperf itself fails is run once more);
- noise: the share of both cores' time that processes other than ours (and
  the hypervisor's steal) took during a run. Other work on this machine
  makes the figures unreliable: the table says so when noise exceeded
  NOISY_PERCENT.

Special workloads: `churn` rewrites each server's table 5 times a second
(SIGHUP after rewriting its file: dockerdns's YAML config, dnsmasq's
addn-hosts) during its runs and reports p99 quiet and during the churn at
the same rate; `nxflood` runs a second dnsperf beside the flood at 500 q/s
with -v and reports that stream's p99 after its first second (the stream's
dnsperf runs at nice -10: on one core with the flood's dnsperf, it would
otherwise wait for that core, not for the server); `tcp` also measures unbound when it is
installed; `upstream` forwards to tests/dnsstub.py on loopback (in this
process, on core 0; it sees only the cache misses). Memory: `spread` reports
the servers' VmRSS with 50,000 names before any query (one readiness probe
aside) and after its runs; `stranger` and `hostile60k` run dockerdns with
`--allow 10.0.0.0/8`, so that our loopback queries come from a client outside
`allow`, and report its RSS growth.

    python3 bench/qps.py [--workload NAME]... [--seconds 10] [--runs 5] [--dockerdns-path DIR]

Needs dnsperf and dnsmasq (Debian packages), taskset, two cores, root for
dnsmasq; unbound optional. Only loopback is queried.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import resource
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.message
import dns.query
from common import CLIENT_CORE, SERVER_CORE, core_times, free_port, process_cpu_seconds, rss_mib, wait_answering
from workloads import (CHURN_PER_SECOND, HOSTILE_OPTION_BYTES, HOSTILE_QUERIES, MEMORY_WORKLOADS, NAMES,
                       SPREAD_NAMES, STRANGER_QUERIES, STREAM_QPS, ZONE, Workload, Zone, all_workloads, host, label)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from dnsstub import StubUpstream  # noqa: E402

WARM_UP_SECONDS = 1
# A latency run (dnsperf -Q -v) lasts this much longer and its first answers (this many seconds' worth at
# its rate) are not in the p99: dnsperf's own start stalls its receiving for ~2 ms several times in its
# first ~100 ms, against dnsmasq and dockerdns alike and with the server already busy (measured).
LATENCY_WARM_UP_SECONDS = 1
STREAM_NICE = "-10"  # nxflood: the stream's dnsperf beside the flood's, on the same core (see `run`)
LARGE_ZONE_START_SECONDS = 180  # dockerdns reading 50,000 static records
NOISY_PERCENT = 5.0  # other processes' share of the two cores above which a workload is flagged
STRANGER_ALLOW = "10.0.0.0/8"  # loopback is outside it
STRANGER_SECONDS = 300  # bound on sending the 100,000 distinct queries
DNSPERF_CLIENTS, DNSPERF_OUTSTANDING, DNSPERF_TIMEOUT = "8", "500", "2"
STOP_SECONDS = 5
RELOAD_SECONDS = 5  # a reload must show within this
RETRIES = 1  # a dnsperf run that failed (dnsperf 2.10 over TCP to dnsmasq: "Bad file descriptor") is run again
HOSTILE_DEADLINE_SECONDS = 60  # per transport
EDNS_LOCAL_OPTION = 65001  # RFC 6891 section 9: 65001-65534 reserved for local/experimental use
NAN = float("nan")


@dataclass
class Run:
    qps: float = NAN
    cpu_us: float = NAN
    lost: float = NAN
    rcodes: str = ""
    p99_ms: float = NAN
    noise: float = 0.0
    response_bytes: str = ""
    stream_p99_ms: float = NAN
    error: str = ""


@dataclass
class Server:
    label: str
    proc: subprocess.Popen[bytes]
    port: int
    reload: Callable[[bool], None] | None = None  # churn: rewrite the table with the extra name on/off, then SIGHUP

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Outcome:
    workload: Workload
    runs: dict[str, list[Run]] = field(default_factory=dict)
    p99: dict[str, float] = field(default_factory=dict)  # half load (churn: during the churn)
    quiet_p99: dict[str, float] = field(default_factory=dict)  # churn only
    notes: list[str] = field(default_factory=list)
    memory: list[tuple[str, str, str]] = field(default_factory=list)  # (figure, dockerdns, dnsmasq)

    def median(self, server: str, attr: str) -> float:
        values = [getattr(r, attr) for r in self.runs.get(server, []) if not math.isnan(getattr(r, attr))]
        return statistics.median(values) if values else NAN

    @property
    def noise(self) -> float:
        return max((r.noise for runs in self.runs.values() for r in runs), default=0.0)


class Bench:
    """One benchmark session: the work directory, the dockerdns source tree, the settings."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="dockerdns-bench-")
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (args.dockerdns_path, os.environ.get("PYTHONPATH", "")) if p))
        self.rng = random.Random(7)

    # -- servers ---------------------------------------------------------------------------------

    def _spawn(self, label: str, command: list[str], port: int, probe: str, seconds: float) -> Server:
        log = open(os.path.join(self.work, f"{label}-{port}.log"), "wb")
        proc = subprocess.Popen(["taskset", "-c", SERVER_CORE, *command], stdout=subprocess.DEVNULL, stderr=log,
                                env=self.env if label == "dockerdns" else None)
        log.close()
        server = Server(label, proc, port)
        try:
            wait_answering(port, probe, proc, seconds)
        except SystemExit as exc:
            self.stop(server)
            with open(os.path.join(self.work, f"{label}-{port}.log"), errors="replace") as f:
                last = f.read().strip().splitlines()[-1:] or [""]
            raise SystemExit(f"{label} did not start: {exc} {last[0]}") from None
        return server

    def dnsmasq(self, d: str, zone: Zone, upstream: int | None) -> Server:
        port = free_port()
        hosts, conf = os.path.join(d, "hosts"), os.path.join(d, "dnsmasq.conf")
        write(hosts, zone.hosts_text())
        options = ["cache-size=10000", *zone.dnsmasq_options]
        if upstream:
            options.append(f"server=127.0.0.1#{upstream}")
        write(conf, "".join(f"{o}\n" for o in options))
        command = ["dnsmasq", "-k", f"--conf-file={conf}", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
                   f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", f"--local=/{ZONE}/",
                   "--user=root", "--pid-file="]
        server = self._spawn("dnsmasq", command, port, host(0), 20)

        texts = {toggled: zone.hosts_text(toggled) for toggled in (False, True)}  # made once: the writer runs
        # on dnsperf's core, and the less it does there, the less it disturbs the client (both servers alike)

        def reload(toggled: bool) -> None:
            write(hosts, texts[toggled])
            server.proc.send_signal(signal.SIGHUP)  # dnsmasq re-reads its addn-hosts files
        server.reload = reload
        return server

    def dockerdns(self, d: str, zone: Zone, upstream: int | None, allow: str | None = None,
                  notes: list[str] | None = None) -> Server:
        port = free_port()
        config = os.path.join(d, "dockerdns.yaml")
        with_optional = True
        if zone.optional:
            write(config, zone.dockerdns_yaml())
            check = subprocess.run([sys.executable, "-m", "dockerdns", "check-config", "-c", config],
                                   capture_output=True, text=True, env=self.env)
            if check.returncode != 0:
                with_optional = False
                if notes is not None:
                    reason = (check.stderr.strip().splitlines() or ["?"])[-1]
                    notes.append(f"dockerdns refused {', '.join(zone.optional)} ({reason}); run without it")
        write(config, zone.dockerdns_yaml(optional=with_optional))
        command = [sys.executable, "-m", "dockerdns", "-c", config, "--listen", f"127.0.0.1:{port}",
                   "--docker-url", "unix:///nonexistent.sock", "--log-level", "error"]
        command += ["--upstream", f"127.0.0.1:{upstream}"] if upstream else ["--no-forward"]
        if allow:
            command += ["--allow", allow]
        seconds = LARGE_ZONE_START_SECONDS if zone.names > 10 * NAMES else 20
        server = self._spawn("dockerdns", command, port, host(0), seconds)

        texts = {toggled: zone.dockerdns_yaml(toggled, with_optional) for toggled in (False, True)}  # as dnsmasq's

        def reload(toggled: bool) -> None:
            write(config, texts[toggled])
            server.proc.send_signal(signal.SIGHUP)  # DESIGN.md: SIGHUP reloads the static records
        server.reload = reload
        return server

    def unbound(self, d: str, zone: Zone) -> Server:
        port = free_port()
        conf = os.path.join(d, "unbound.conf")
        write(conf, "server:\n"
                    f"  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  chroot: \"\"\n"
                    f"  username: \"\"\n  pidfile: \"\"\n  directory: \"{d}\"\n  use-syslog: no\n"
                    "  num-threads: 1\n  do-ip6: no\n  access-control: 127.0.0.0/8 allow\n"
                    "  incoming-num-tcp: 64\n" + zone.unbound_local_data() +
                    "remote-control:\n  control-enable: no\n")
        return self._spawn("unbound", ["unbound", "-d", "-c", conf], port, host(0), 20)

    @staticmethod
    def stop(server: Server) -> None:
        if server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()

    # -- dnsperf ---------------------------------------------------------------------------------

    def dnsperf(self, server: Server, path: str, seconds: float, extra: list[str]) -> list[str]:
        return ["taskset", "-c", CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-d", path,
                "-l", str(seconds), "-t", DNSPERF_TIMEOUT, *extra]

    def run(self, server: Server, servers: list[Server], path: str, wl: Workload, *, rate: int = 0,
            stream: str | None = None) -> Run:
        """One dnsperf run against `server`: at full speed, or at `rate` with per-query latencies."""
        seconds = self.args.seconds
        extra = [*wl.dnsperf, "-c", DNSPERF_CLIENTS, "-q", DNSPERF_OUTSTANDING]
        if rate:
            extra += ["-Q", str(rate), "-v"]
            seconds += LATENCY_WARM_UP_SECONDS  # its answers are not in the percentile
        before = Meter.read(servers)
        cpu_before = process_cpu_seconds(server.pid)
        # dnsperf writes its report (with -v a line per query) to a file: nothing on core 0 reads a pipe meanwhile.
        main_out, side_out = os.path.join(self.work, "dnsperf.out"), os.path.join(self.work, "stream.out")
        side = None
        with open(main_out, "w") as main_file, open(side_out, "w") as side_file:
            if stream:  # at a higher priority than the flood's dnsperf: as if on a core of its own
                paced = self.dnsperf(server, stream, seconds, ["-c", "1", "-Q", str(STREAM_QPS), "-v"])
                side = subprocess.Popen(["nice", "-n", STREAM_NICE, *paced], stdout=side_file,
                                        stderr=subprocess.DEVNULL)
            main = subprocess.run(self.dnsperf(server, path, seconds, extra), stdout=main_file,
                                  stderr=subprocess.PIPE, text=True)
            if side:
                side.wait()
        cpu = process_cpu_seconds(server.pid) - cpu_before
        noise = Meter.read(servers).noise_since(before)
        if main.returncode != 0:
            return Run(noise=noise, error=(main.stderr.strip().splitlines() or ["dnsperf failed"])[-1])
        stats = Summary.parse(read(main_out))
        run = Run(stats.qps, cpu / max(stats.completed, 1) * 1e6, stats.lost, stats.rcodes,
                  p99(warmed(stats.latencies, rate)), noise, stats.response_bytes)
        if side:
            run.stream_p99_ms = p99(warmed(Summary.parse(read(side_out)).latencies, STREAM_QPS))
        return run

    # -- workloads -------------------------------------------------------------------------------

    def workload(self, wl: Workload) -> Outcome:
        out = Outcome(wl)
        d = os.path.join(self.work, wl.name)
        os.makedirs(d)
        queries = os.path.join(d, "queries")
        write(queries, "".join(wl.lines(self.rng)))
        stream = None
        if wl.stream:
            stream = os.path.join(d, "stream")
            write(stream, "".join(wl.stream(self.rng)))
        stub = None
        if wl.zone.upstream:
            stub = StubUpstream(zone="".join(f"{n}. 300 IN A {a}\n" for n, a in wl.zone.upstream))
        servers: list[Server] = []
        try:
            upstream = stub.port if stub else None
            servers.append(self.dnsmasq(d, wl.zone, upstream))
            servers.append(self.dockerdns(d, wl.zone, upstream, notes=out.notes))
            if wl.unbound:
                if shutil.which("unbound"):
                    servers.append(self.unbound(d, wl.zone))
                else:
                    out.notes.append("unbound not installed: no unbound figure")
            rss_before = {s.label: rss_mib(s.pid) for s in servers}
            if stub:
                out.notes.append(self.prime(servers, wl.zone.upstream, stub))
            if wl.kind == "churn":
                out.notes += [self.check_reload(s) for s in servers]
            for s in servers:
                self.warm_up(s, queries, wl)
            primed = len(stub.seen) if stub else 0
            for i in range(self.args.runs):
                if wl.fresh:
                    write(queries, "".join(wl.lines(self.rng)))
                for s in servers:
                    for _ in range(1 + RETRIES):
                        with self.churning(s if wl.kind == "churn" else None):
                            run = self.run(s, servers, queries, wl, stream=stream)
                        if not run.error:
                            break
                        progress(wl.name, s.label, i, run)
                    out.runs.setdefault(s.label, []).append(run)
                    progress(wl.name, s.label, i, run)
            if wl.kind != "nxflood":
                for s in servers:
                    rate = int(out.median(s.label, "qps") / 2) if not math.isnan(out.median(s.label, "qps")) else 0
                    if rate <= 0:
                        continue
                    if wl.fresh:
                        write(queries, "".join(wl.lines(self.rng)))
                    if wl.kind == "churn":
                        out.quiet_p99[s.label] = self.run(s, servers, queries, wl, rate=rate).p99_ms
                    with self.churning(s if wl.kind == "churn" else None):
                        out.p99[s.label] = self.run(s, servers, queries, wl, rate=rate).p99_ms
            if stub:
                out.notes.append(f"the stub upstream saw {len(stub.seen) - primed} queries after the warm-up "
                                 "(answers came from the servers' caches)")
            if wl.name == "spread":
                after = {s.label: rss_mib(s.pid) for s in servers}
                out.memory += [
                    (f"RSS with {SPREAD_NAMES:,} names, before any query",
                     mib(rss_before["dockerdns"]), mib(rss_before["dnsmasq"])),
                    (f"RSS with {SPREAD_NAMES:,} names, after the spread runs",
                     mib(after["dockerdns"]), mib(after["dnsmasq"])),
                ]
        finally:
            for s in servers:
                self.stop(s)
            if stub:
                stub.close()
        return out

    def prime(self, servers: list[Server], names: list[tuple[str, str]], stub: StubUpstream) -> str:
        """Ask each outside name once from each server, so that the timed runs are served from the caches."""
        answered = 0
        for s in servers:
            for name, _ in names:
                try:
                    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=s.port, timeout=2)
                    answered += bool(reply.answer)
                except Exception:
                    pass
        return f"warm-up: {answered} of {len(names) * len(servers)} outside queries answered with an address"

    @staticmethod
    def check_reload(server: Server) -> str:
        """Show that a reload changes what `server` answers: churn.<zone> appears, then goes."""
        assert server.reload is not None
        name, took = f"churn.{ZONE}", []
        for toggled in (True, False):
            start = time.monotonic()
            server.reload(toggled)
            while time.monotonic() - start < RELOAD_SECONDS:
                try:
                    reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=server.port,
                                          timeout=0.5)
                except Exception:
                    continue
                if bool(reply.answer) == toggled:
                    took.append(f"{(time.monotonic() - start) * 1000:.0f} ms")
                    break
                time.sleep(0.005)
            else:
                return f"{server.label}: {name} did not {'appear' if toggled else 'go'} within {RELOAD_SECONDS} s " \
                       "of a reload: the churn may not change its table"
        return f"{server.label}: {name} served {took[0]} after a reload, gone {took[1]} after the next"

    def warm_up(self, server: Server, path: str, wl: Workload) -> None:
        subprocess.run(self.dnsperf(server, path, WARM_UP_SECONDS, [*wl.dnsperf, "-c", DNSPERF_CLIENTS]),
                       capture_output=True)

    @contextmanager
    def churning(self, server: Server | None) -> Iterator[None]:
        """While the block runs, change `server`'s table CHURN_PER_SECOND times a second (one name on, off)."""
        if server is None or server.reload is None:
            yield
            return
        stop = threading.Event()
        reload = server.reload

        def loop() -> None:
            toggled = False
            while not stop.wait(1 / CHURN_PER_SECOND):
                toggled = not toggled
                reload(toggled)
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            reload(False)

    # -- memory ----------------------------------------------------------------------------------

    def stranger(self) -> Outcome:
        """dockerdns with 50,000 names; 100,000 distinct queries from loopback, which is outside `allow`."""
        wl = Workload("stranger", MEMORY_WORKLOADS["stranger"], Zone(names=SPREAD_NAMES), lambda rng: [])
        out = Outcome(wl)
        d = os.path.join(self.work, "stranger")
        os.makedirs(d)
        half = STRANGER_QUERIES // 2
        lines = [f"{host(i)} A\n" for i in range(half)]
        lines += [f"{label(self.rng)}.{ZONE} A\n" for _ in range(STRANGER_QUERIES - half)]
        self.rng.shuffle(lines)
        queries = os.path.join(d, "queries")
        write(queries, "".join(lines))
        server = self.dockerdns(d, wl.zone, None, allow=STRANGER_ALLOW)
        try:
            before = rss_mib(server.pid)
            once = ["-n", "1", "-c", DNSPERF_CLIENTS, "-q", DNSPERF_OUTSTANDING]  # each query once
            done = subprocess.run(self.dnsperf(server, queries, STRANGER_SECONDS, once), capture_output=True, text=True)
            after = rss_mib(server.pid)
            stats = Summary.parse(done.stdout)
            out.memory.append((f"RSS growth after {STRANGER_QUERIES:,} distinct queries from outside allow "
                               f"({mib(before)} -> {mib(after)})", mib(after - before), "-"))
            out.notes.append(f"{stats.completed:,} answered: {stats.rcodes or 'none'}")
        finally:
            self.stop(server)
        return out

    def hostile(self) -> Outcome:
        """dockerdns, loopback outside `allow`: 2,000 UDP then 2,000 TCP queries, each with a 60 KB EDNS option."""
        wl = Workload("hostile60k", MEMORY_WORKLOADS["hostile60k"], Zone(), lambda rng: [])
        out = Outcome(wl)
        d = os.path.join(self.work, "hostile60k")
        os.makedirs(d)
        server = self.dockerdns(d, wl.zone, None, allow=STRANGER_ALLOW)
        try:
            before = rss_mib(server.pid)
            udp_answers = hostile_udp(server.port, self.rng)
            after_udp = rss_mib(server.pid)
            tcp_answers = hostile_tcp(server.port, self.rng)
            after_tcp = rss_mib(server.pid)
            out.memory.append((f"RSS growth after {HOSTILE_QUERIES:,} UDP queries with a 60 KB option "
                               f"({mib(before)} -> {mib(after_udp)})", mib(after_udp - before), "-"))
            out.memory.append((f"RSS growth after {HOSTILE_QUERIES:,} more over TCP "
                               f"(-> {mib(after_tcp)})", mib(after_tcp - after_udp), "-"))
            out.notes.append(f"answers: {udp_answers} of {HOSTILE_QUERIES} over UDP, "
                             f"{tcp_answers} of {HOSTILE_QUERIES} over TCP")
        finally:
            self.stop(server)
        return out


@dataclass
class Meter:
    """CPU time of both cores, and of the processes that are ours, at one moment."""

    wall: float
    busy: float
    steal: float
    ours: float

    @classmethod
    def read(cls, servers: list[Server]) -> Meter:
        busy = steal = 0.0
        for core in (CLIENT_CORE, SERVER_CORE):
            b, s = core_times(core)
            busy, steal = busy + b, steal + s
        me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
        ours += sum(process_cpu_seconds(s.pid) for s in servers)
        return cls(time.monotonic(), busy, steal, ours)

    def noise_since(self, before: Meter) -> float:
        """Percent of the two cores' time taken by others: busy time not ours (softirq included), plus steal."""
        others = (self.busy - before.busy) - (self.ours - before.ours) + (self.steal - before.steal)
        return max(0.0, others / (2 * max(self.wall - before.wall, 1e-9)) * 100)


@dataclass
class Summary:
    completed: int = 0
    lost: float = NAN
    qps: float = NAN
    rcodes: str = ""
    latencies: list[float] = field(default_factory=list)
    response_bytes: str = ""

    @classmethod
    def parse(cls, out: str) -> Summary:
        def find(pattern: str) -> str | None:
            m = re.search(pattern, out)
            return m.group(1) if m else None
        completed = find(r"Queries completed:\s+(\d+)")
        lost = find(r"Queries lost:\s+\d+ \(([\d.]+)%\)")
        qps = find(r"Queries per second:\s+([\d.]+)")
        rcodes = find(r"Response codes:\s+(.+)") or ""
        response_bytes = find(r"Average packet size:.*response (\d+)") or ""
        latencies = [float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M)]
        return cls(int(completed or 0), float(lost) if lost else NAN, float(qps) if qps else NAN,
                   re.sub(r" \d+ \(([\d.]+)%\)", r" \1%", rcodes), latencies, response_bytes)


def warmed(latencies: list[float], rate: int) -> list[float]:
    """A latency run's answers after its warm-up (LATENCY_WARM_UP_SECONDS at `rate`); all of them without a rate."""
    return latencies[rate * LATENCY_WARM_UP_SECONDS:]


def p99(latencies: list[float]) -> float:
    """The 99th percentile in ms (nearest rank), NaN for none."""
    if not latencies:
        return NAN
    ordered = sorted(latencies)
    return ordered[max(0, math.ceil(len(ordered) * 0.99) - 1)] * 1000


def hostile_query(rng: random.Random) -> bytes:
    """A query for a random in-zone name with one OPT RR carrying a 60 KB option of random bytes."""
    qname = b"".join(bytes([len(p)]) + p for p in (label(rng).encode(), ZONE.encode())) + b"\0"
    option = struct.pack("!HH", EDNS_LOCAL_OPTION, HOSTILE_OPTION_BYTES) + rng.randbytes(HOSTILE_OPTION_BYTES)
    opt = b"\0" + struct.pack("!HHIH", 41, 4096, 0, len(option)) + option  # RFC 6891 section 6.1.2
    return struct.pack("!HHHHHH", rng.randrange(65536), 0x0100, 1, 0, 0, 1) + qname + struct.pack("!HH", 1, 1) + opt


def hostile_udp(port: int, rng: random.Random) -> int:
    """Send the queries one at a time (the next after an answer or 50 ms); return how many were answered."""
    answered = 0
    deadline = time.monotonic() + HOSTILE_DEADLINE_SECONDS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.05)
        for _ in range(HOSTILE_QUERIES):
            if time.monotonic() > deadline:
                break
            sock.sendto(hostile_query(rng), ("127.0.0.1", port))
            try:
                sock.recv(65535)
                answered += 1
            except socket.timeout:
                pass
    return answered


def hostile_tcp(port: int, rng: random.Random) -> int:
    """Send the queries over TCP, reconnecting whenever the server closes; return how many were answered."""
    answered = 0
    deadline = time.monotonic() + HOSTILE_DEADLINE_SECONDS
    conn: socket.socket | None = None
    for _ in range(HOSTILE_QUERIES):
        if time.monotonic() > deadline:
            break
        try:
            if conn is None:
                conn = socket.create_connection(("127.0.0.1", port), timeout=1)
            data = hostile_query(rng)
            conn.sendall(struct.pack("!H", len(data)) + data)
            head = conn.recv(2)
            if len(head) < 2:
                raise OSError("closed")
            size, got = struct.unpack("!H", head)[0], b""
            while len(got) < size:
                chunk = conn.recv(size - len(got))
                if not chunk:
                    raise OSError("closed")
                got += chunk
            answered += 1
        except OSError:
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    return answered


def write(path: str, text: str) -> None:
    """Replace `path` whole (a server reading it on SIGHUP never sees half a file)."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def mib(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f} MiB"


def progress(workload: str, server: str, i: int, run: Run) -> None:
    if run.error:
        print(f"  {workload} #{i + 1} {server}: {run.error}", flush=True)
        return
    stream = f", stream p99 {run.stream_p99_ms:.2f} ms" if not math.isnan(run.stream_p99_ms) else ""
    print(f"  {workload} #{i + 1} {server}: {run.qps:,.0f} q/s, {run.cpu_us:.1f} us CPU/query, "
          f"lost {run.lost}%{stream}, noise {run.noise:.0f}%", flush=True)


def fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def report(outcomes: list[Outcome], args: argparse.Namespace, loads: list[str]) -> None:
    a, b = "dnsmasq", "dockerdns"
    timed = [o for o in outcomes if o.runs]
    if timed:
        print(f"\nMedians of {args.runs} alternating runs of {args.seconds} s; p99 at half each server's rate "
              f"(nxflood: the {STREAM_QPS}/s stream's p99 during the flood; churn: during the churn)\n")
        print("| workload | dnsmasq q/s | dockerdns q/s | ratio | CPU µs/query dnsmasq / dockerdns "
              "| p99 ms dnsmasq / dockerdns | lost % dnsmasq / dockerdns |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for o in timed:
            qa, qb = o.median(a, "qps"), o.median(b, "qps")
            if o.workload.kind == "nxflood":
                pa, pb = o.median(a, "stream_p99_ms"), o.median(b, "stream_p99_ms")
            else:
                pa, pb = o.p99.get(a, NAN), o.p99.get(b, NAN)
            print(f"| {o.workload.name}{' (noisy)' if o.noise > NOISY_PERCENT else ''} | {fmt(qa, ',.0f')} "
                  f"| {fmt(qb, ',.0f')} | {fmt(qb / qa if qa else NAN, '.2f')} "
                  f"| {fmt(o.median(a, 'cpu_us'), '.1f')} / {fmt(o.median(b, 'cpu_us'), '.1f')} "
                  f"| {fmt(pa, '.2f')} / {fmt(pb, '.2f')} "
                  f"| {fmt(o.median(a, 'lost'), '.2f')} / {fmt(o.median(b, 'lost'), '.2f')} |")
    print("\nPer workload:")
    for o in outcomes:
        print(f"- {o.workload.name}: {o.workload.title}")
        for server, runs in o.runs.items():
            last = runs[-1]
            size = f", {last.response_bytes} bytes per response" if last.response_bytes else ""
            print(f"    {server}: response codes {last.rcodes or '-'}{size}{'; ' + last.error if last.error else ''}")
        if o.workload.kind == "nxflood":
            print("    the in-zone stream's p99 beside the flood: "
                  + ", ".join(f"{s} {fmt(o.median(s, 'stream_p99_ms'), '.2f')} ms" for s in o.runs))
        if o.workload.kind == "churn":
            for server in o.p99:
                print(f"    {server}: p99 at half load quiet {fmt(o.quiet_p99.get(server, NAN), '.2f')} ms, "
                      f"during the churn {fmt(o.p99[server], '.2f')} ms")
        if "unbound" in o.runs:
            qu, qa = o.median("unbound", "qps"), o.median(a, "qps")
            print(f"    unbound: {fmt(qu, ',.0f')} q/s ({fmt(qu / qa if qa else NAN, '.2f')} of dnsmasq), "
                  f"{fmt(o.median('unbound', 'cpu_us'), '.1f')} µs CPU/query, "
                  f"p99 {fmt(o.p99.get('unbound', NAN), '.2f')} ms")
        for note in o.notes:
            print(f"    {note}")
        if o.runs:
            print(f"    noise: others took up to {o.noise:.0f}% of the two cores during a run")
    memory = [m for o in outcomes for m in o.memory]
    if memory:
        print("\n| memory (VmRSS) | dockerdns | dnsmasq |\n| --- | ---: | ---: |")
        for figure, dd, dm in memory:
            print(f"| {figure} | {dd} | {dm} |")
    print(f"\n/proc/loadavg before each workload: {'; '.join(loads)}")
    noisy = [o.workload.name for o in timed if o.noise > NOISY_PERCENT]
    if noisy:
        print(f"NOISY: other processes took more than {NOISY_PERCENT:.0f}% of the cores during "
              f"{', '.join(noisy)}; repeat on an idle machine")
    if args.runs < 3:
        print("fewer than 3 runs: the medians are not robust")
    print(f"dockerdns from {args.dockerdns_path} {source_version(args.dockerdns_path)}")
    print(f"command: {shlex.join(['python3', *sys.argv])}")


def source_version(path: str) -> str:
    head = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return "(not a git tree)"
    dirty = subprocess.run(["git", "-C", path, "status", "--porcelain", "--", "dockerdns"],
                           capture_output=True, text=True).stdout.strip()
    return f"(commit {head.stdout.strip()}{', with uncommitted changes' if dirty else ''})"


def main() -> int:
    names = [w.name for w in all_workloads(1)] + list(MEMORY_WORKLOADS)
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="workloads: " + ", ".join(names))
    parser.add_argument("--workload", action="append", choices=names, metavar="NAME",
                        help="run this workload, repeatable (default: all)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run (default: 10)")
    parser.add_argument("--runs", type=int, default=5, help="alternating rounds per workload (default: 5)")
    parser.add_argument("--dockerdns-path", default=REPO, metavar="DIR",
                        help="source tree whose dockerdns package to run (default: this repository)")
    args = parser.parse_args()
    if args.seconds < 1 or args.runs < 1:
        parser.error("--seconds and --runs must be at least 1")
    args.dockerdns_path = os.path.abspath(args.dockerdns_path)
    if not os.path.isfile(os.path.join(args.dockerdns_path, "dockerdns", "__init__.py")):
        parser.error(f"--dockerdns-path: no dockerdns package in {args.dockerdns_path}")
    for tool in ("dnsperf", "dnsmasq", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/qps.py needs {tool} (apt-get install -y dnsperf dnsmasq util-linux)")
    if os.cpu_count() is None or (os.cpu_count() or 0) < 2:
        raise SystemExit("bench/qps.py needs two cores (dnsperf on one, the server on the other)")
    os.sched_setaffinity(0, {int(CLIENT_CORE)})  # this script, its stub and churn threads stay off the server's core

    chosen = args.workload or names
    bench = Bench(args)
    outcomes: list[Outcome] = []
    loads: list[str] = []
    try:
        for wl in all_workloads(args.seconds):
            if wl.name in chosen:
                loads.append(f"{wl.name} {read_loadavg()}")
                print(f"{wl.name}: {wl.title}", flush=True)
                outcomes.append(attempt(wl, lambda: bench.workload(wl)))
        for name, run in (("stranger", bench.stranger), ("hostile60k", bench.hostile)):
            if name in chosen:
                loads.append(f"{name} {read_loadavg()}")
                print(f"{name}: {MEMORY_WORKLOADS[name]}", flush=True)
                outcomes.append(attempt(Workload(name, MEMORY_WORKLOADS[name], Zone(), lambda rng: []), run))
    except KeyboardInterrupt:
        print("interrupted; partial results", flush=True)
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)
    report(outcomes, args, loads)
    return 0


def attempt(wl: Workload, run: Callable[[], Outcome]) -> Outcome:
    """The workload's outcome, or one that says why it did not run (a server that did not start)."""
    try:
        return run()
    except SystemExit as exc:
        print(f"  {wl.name} did not run: {exc}", flush=True)
        return Outcome(wl, notes=[f"did not run: {exc}"])


def read_loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


if __name__ == "__main__":
    sys.exit(main())
