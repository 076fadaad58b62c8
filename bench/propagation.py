#!/usr/bin/env python3
"""Propagation: from `docker start` returning to dockerdns answering the new address.

The scenario of the Docker discovery issue, repeated: a database container
`db` on a user network; it is stopped, a squatter takes its old address, it
is started again and gets a new one. After each start the script asks
dockerdns (over UDP on loopback, as fast as it answers) until the answer is
the new address, and reports the delay. It also reports what the very first
query after the start returned.

    python3 bench/propagation.py [--rounds 20]

Needs a running Docker engine (tests/dockerd.py ensure) and root.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import time

import dns.message
import dns.query
import docker
import docker.types

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import dockerd  # noqa: E402

LABEL = {"dockerdns-bench": "1"}


def answer(port: int, name: str) -> list[str]:
    msg = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


def start_dockerdns() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockerdns", "--listen", "127.0.0.1:0", "--no-forward", "--log-level", "info"],
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    port = 0
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
        if port and "connected" in line:
            return proc, port
    proc.kill()
    raise SystemExit("dockerdns did not start or did not connect to Docker")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    dockerd.ensure_running()
    dockerd.ensure_image()
    client = docker.from_env(version="auto")
    tag = f"{random.randrange(16**6):06x}"
    subnet = f"10.232.{random.randrange(256)}.0/24"
    net = client.networks.create(f"bench-{tag}", labels=LABEL, ipam=docker.types.IPAMConfig(
        pool_configs=[docker.types.IPAMPool(subnet=subnet)]))
    made = []
    proc, port = start_dockerdns()
    try:
        db = client.containers.run(dockerd.IMAGE, ["sleep", "3600"], name=f"db-{tag}", network=net.name,
                                   init=True, detach=True, labels=LABEL)
        made.append(db)
        name = f"db-{tag}.docker"
        while not answer(port, name):
            pass
        rtts = []
        for _ in range(50):  # what one query costs this client, to read the delays against
            started = time.perf_counter()
            answer(port, name)
            rtts.append((time.perf_counter() - started) * 1000)
        delays, first_right = [], 0
        for _ in range(args.rounds):
            db.reload()
            old = db.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
            db.stop(timeout=0)
            squatter = client.containers.create(dockerd.IMAGE, ["sleep", "3600"], init=True, labels=LABEL)
            made.append(squatter)
            net.connect(squatter, ipv4_address=old)
            squatter.start()
            db.start()
            started = time.perf_counter()
            first = answer(port, name)
            seen = first
            while not seen or seen == [old]:
                if time.perf_counter() - started > 10:
                    raise SystemExit(f"dockerdns never answered a new address for {name}")
                seen = answer(port, name)
            delays.append(time.perf_counter() - started)
            db.reload()
            new = db.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
            if seen != [new]:
                raise SystemExit(f"dockerdns answered {seen}, but {name} has {new}")
            first_right += first == [new]
            squatter.remove(force=True)
            made.remove(squatter)
        ms = sorted(d * 1000 for d in delays)
        print(f"rounds: {len(ms)}")
        print("delay from `docker start` returning to dockerdns answering the new address:")
        print(f"  median {statistics.median(ms):.2f} ms, max {ms[-1]:.2f} ms, min {ms[0]:.2f} ms")
        print(f"first query after the start already right: {first_right}/{len(ms)}")
        print(f"(one query's round trip from this client alone: median {statistics.median(rtts):.2f} ms)")
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        for c in made:
            c.remove(force=True)
        net.remove()


if __name__ == "__main__":
    sys.exit(main())
