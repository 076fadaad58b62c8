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
    """User + system seconds of a process (all its threads) and of its children, live or reaped; 0 once gone.

    dnsmasq forks a child per TCP connection: its children's time is its time.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime: fields 14 to 17 of proc(5); cutime/cstime hold the reaped children
    own = sum(int(x) for x in fields[11:15]) / CLK_TCK
    return own + sum(process_cpu_seconds(child) for child in children(pid))


def children(pid: int) -> list[int]:
    """The live children of a process, from every thread's children list."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return found


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
