#!/usr/bin/env python3
"""Reloads on a shared core: the query latency while the config is reloaded and another process wants the CPU.

dockerdns serves 200 static names, pinned to core 1 with a CPU hog beside it
(a busy loop at the same priority, as any other busy process on a small
host); its config is rewritten and SIGHUP sent RELOADS_PER_SECOND times a
second (200 or 201 records, alternately); dnsperf on core 0 asks a paced
stream of STREAM_QPS queries a second and reports each latency. Printed: the
stream's p50, p99, p99.9 and maximum, and how many answers took over 10 ms.

This is what a reload thread with a lower priority than the queries breaks:
it holds the GIL, the scheduler gives the core to the hog, and every query
waits for the niced thread to run again (nice 19: p99 300 ms; nice 0: 7 ms).

    python3 bench/reload_contention.py [--seconds 6] [--dockerdns-path DIR]

Needs dnsperf and taskset, two cores. Only loopback is queried.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CLIENT_CORE, SERVER_CORE, free_port, wait_answering  # noqa: E402
from workloads import NAMES, Zone, host, uniform  # noqa: E402

RELOADS_PER_SECOND = 5
STREAM_QPS = 2000
SLOW_MS = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--dockerdns-path", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=args.dockerdns_path)
    zone = Zone()
    with tempfile.TemporaryDirectory(prefix="dockerdns-reload-") as work:
        config, queries, out = (os.path.join(work, name) for name in ("dockerdns.yaml", "queries", "stream.out"))
        write(config, zone.dockerdns_yaml())
        write(queries, "".join(uniform(NAMES, 100_000)(random.Random(1))))
        port = free_port()
        server = subprocess.Popen(["taskset", "-c", SERVER_CORE, sys.executable, "-m", "dockerdns", "-c", config,
                                   "--listen", f"127.0.0.1:{port}", "--docker-url", "unix:///nonexistent.sock",
                                   "--log-level", "error", "--no-forward"], env=env)
        hog = None
        try:
            wait_answering(port, host(0), server)
            hog = subprocess.Popen(["taskset", "-c", SERVER_CORE, sys.executable, "-c", "while True: pass"])
            stop = threading.Event()

            def reload() -> None:
                toggled = False
                while not stop.wait(1 / RELOADS_PER_SECOND):
                    toggled = not toggled
                    write(config, zone.dockerdns_yaml(toggled))
                    server.send_signal(signal.SIGHUP)

            reloader = threading.Thread(target=reload, daemon=True)
            reloader.start()
            with open(out, "w") as sink:
                subprocess.run(["taskset", "-c", CLIENT_CORE, "dnsperf", "-s", "127.0.0.1", "-p", str(port),
                                "-d", queries, "-l", str(args.seconds), "-t", "2", "-c", "1",
                                "-Q", str(STREAM_QPS), "-v"], stdout=sink, stderr=subprocess.DEVNULL, check=True)
            stop.set()
            reloader.join()
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
            server.terminate()
            server.wait()
        latencies = sorted(float(line.split()[-1]) * 1000 for line in open(out)
                           if line.startswith("> ") and line.split()[-1].replace(".", "", 1).isdigit())
    if not latencies:
        print("no answers", file=sys.stderr)
        return 1
    n = len(latencies)
    print(f"{n} answers during {RELOADS_PER_SECOND} reloads a second beside a CPU hog: "
          f"p50 {latencies[n // 2]:.2f} ms, p99 {latencies[int(n * 0.99)]:.2f} ms, "
          f"p99.9 {latencies[int(n * 0.999)]:.2f} ms, max {latencies[-1]:.2f} ms, "
          f"{sum(1 for x in latencies if x > SLOW_MS)} over {SLOW_MS:.0f} ms")
    print(f"command: {' '.join(sys.argv)}")
    return 0


def write(path: str, text: str) -> None:
    """Replace `path` whole (a server reading it on SIGHUP never sees half a file)."""
    temporary = f"{path}.tmp.{time.monotonic_ns()}"
    with open(temporary, "w") as f:
        f.write(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
