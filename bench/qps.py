#!/usr/bin/env python3
"""Throughput, CPU per query and latency: dockerdns against dnsmasq, same names, same queries, one run.

dnsperf runs pinned to core 0, the server under test to core 1. For each
server, `--runs` runs at full speed give queries per second and the CPU
time spent on core 1 (all of it, softirq included) per answered query;
then one run at half that rate, with dnsperf's per-query report, gives the
p99 latency. Medians over the runs are printed with the ratio to dnsmasq.

    python3 bench/qps.py [--seconds 10] [--runs 5] [--names 200]

Needs dnsperf and dnsmasq (Debian packages), taskset, two cores, root for
dnsmasq. Only loopback is queried.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from common import CLIENT_CORE, SERVER_CORE, free_port, wait_answering


@dataclass
class Result:
    qps: float
    cpu_us: float
    lost: float


def core_busy_seconds(core: str) -> float:
    """Seconds the core was busy (everything but idle and iowait), from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                fields = [int(x) for x in line.split()[1:]]
                idle = fields[3] + fields[4]
                return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def dnsperf(port: int, queries: str, seconds: int, extra: list[str]) -> str:
    cmd = ["taskset", "-c", CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
           "-l", str(seconds), "-c", "8", "-q", "500", "-t", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def full_speed(port: int, queries: str, seconds: int) -> Result:
    before = core_busy_seconds(SERVER_CORE)
    out = dnsperf(port, queries, seconds, [])
    busy = core_busy_seconds(SERVER_CORE) - before
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    lost = float(re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out).group(1))  # type: ignore[union-attr]
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return Result(qps, busy / max(completed, 1) * 1e6, lost)


def p99_at(port: int, queries: str, seconds: int, rate: int) -> float:
    out = dnsperf(port, queries, seconds, ["-Q", str(rate), "-v"])
    latencies = sorted(float(m) for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
    if not latencies:
        return float("nan")
    return latencies[int(len(latencies) * 0.99) - 1] * 1000


def measure(label: str, port: int, queries: str, args: argparse.Namespace) -> tuple[Result, float]:
    runs = [full_speed(port, queries, args.seconds) for _ in range(args.runs)]
    for r in runs:
        print(f"  {label}: {r.qps:,.0f} q/s, {r.cpu_us:.1f} us CPU/query, lost {r.lost}%", flush=True)
    med = Result(statistics.median(r.qps for r in runs), statistics.median(r.cpu_us for r in runs),
                 statistics.median(r.lost for r in runs))
    p99 = p99_at(port, queries, args.seconds, int(med.qps / 2))
    return med, p99


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--names", type=int, default=200)
    args = parser.parse_args()
    for tool in ("dnsperf", "dnsmasq", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench/qps.py needs {tool} (apt-get install -y dnsperf dnsmasq util-linux)")

    work = tempfile.mkdtemp(prefix="dockerdns-bench-")
    names = [(f"host{i}.docker", f"10.77.{i // 250}.{i % 250 + 1}") for i in range(args.names)]
    with open(f"{work}/hosts", "w") as f:
        f.writelines(f"{ip} {name}\n" for name, ip in names)
    with open(f"{work}/dockerdns.yaml", "w") as f:
        f.write("records:\n")
        f.writelines(f"  - {{name: {name}., type: A, value: {ip}}}\n" for name, ip in names)
    rng = random.Random(7)
    with open(f"{work}/queries", "w") as f:
        f.writelines(f"{rng.choice(names)[0]} A\n" for _ in range(10000))
    queries = f"{work}/queries"

    results: dict[str, tuple[Result, float]] = {}
    servers = {
        "dnsmasq": lambda port: ["dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                                 f"--addn-hosts={work}/hosts", f"--port={port}", "--listen-address=127.0.0.1",
                                 "--bind-interfaces", "--local=/docker/", "--user=root", "--pid-file="],
        "dockerdns": lambda port: [sys.executable, "-m", "dockerdns", "-c", f"{work}/dockerdns.yaml",
                                   "--listen", f"127.0.0.1:{port}", "--no-forward",
                                   "--docker-url", "unix:///nonexistent.sock", "--log-level", "error"],
    }
    for label, command in servers.items():
        port = free_port()
        server = subprocess.Popen(["taskset", "-c", SERVER_CORE, *command(port)], stderr=subprocess.DEVNULL)
        try:
            wait_answering(port, names[0][0])
            results[label] = measure(label, port, queries, args)
        finally:
            server.terminate()
            server.wait()
    shutil.rmtree(work)

    base = results["dnsmasq"][0]
    print(f"\n{args.names} names, {args.runs} runs of {args.seconds} s, medians; p99 at half the server's rate")
    print(f"{'server':<10} {'queries/s':>12} {'CPU/query':>10} {'p99':>9} {'lost':>6} {'qps ratio':>10}")
    for label, (r, p99) in results.items():
        print(f"{label:<10} {r.qps:>12,.0f} {r.cpu_us:>8.1f}us {p99:>7.2f}ms {r.lost:>5.2f}% {r.qps / base.qps:>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
