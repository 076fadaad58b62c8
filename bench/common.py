"""What the benchmarks share: a free loopback port, waiting for a server, the cores they pin to, /proc readings."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import dns.message
import dns.query

CLIENT_CORE, SERVER_CORE = "0", "1"  # dnsperf on one core, the server under test on the other
START_SECONDS = 20  # how long a server may take to answer its first query
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port free for both UDP and TCP (the TCP twin of a free UDP port may be taken)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no loopback port free for both UDP and TCP")


def wait_answering(port: int, name: str, proc: subprocess.Popen[bytes] | None = None,
                   seconds: float = START_SECONDS) -> None:
    """Return once something on 127.0.0.1:`port` answers a query for `name` (any rcode).

    Exit with one line after `seconds`, or as soon as `proc` (the server) has exited.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server on 127.0.0.1:{port} exited with status {proc.returncode}")
        try:
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.5)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port} after {seconds:.0f} s")


def core_times(core: str) -> tuple[float, float]:
    """(busy, steal) seconds of one core from /proc/stat; busy is user+nice+system+irq+softirq."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in line.split()[1:9])
                return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def process_cpu_seconds(pid: int) -> float:
    """User + system seconds of a process, all its threads; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime: fields 14 and 15 of proc(5)


def rss_mib(pid: int) -> float:
    """Resident memory (VmRSS) of a process in MiB; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
