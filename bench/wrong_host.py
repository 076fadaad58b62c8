#!/usr/bin/env python3
"""Wrong host: how many requests a proxy sends to whoever takes a restarted backend's freed address.

A real nginx in a container proxies to a backend by name (`set $backend NAME;
proxy_pass http://$backend;`), so it resolves the name through its
`resolver` and keeps each answer for its TTL (no `valid=`). The backend, a
busybox httpd answering "backend", is restarted ROUNDS times; each time, as
soon as `docker stop` returns, a filler (busybox httpd answering "filler")
is started with the backend's old address (`--ip`), then the backend is
started again and gets a new address. Fillers stay until the configuration
ends, so the backend never gets back an address a resolver may still hold
(Docker hands out the lowest free address, not the next one). A client on the host sends GET / to
nginx 20 times a second for the whole run and classifies each response:
backend, filler, 502, or another error.

Configurations: dockerdns with `--ttl 5`, `--ttl 1` (the default) and
`--ttl 0`, run from the source tree on the user network's gateway address;
and Docker's embedded DNS (`resolver 127.0.0.11`) as the baseline.

Per configuration it prints the filler responses, the 502s and other errors,
the time from `docker stop` returning to the last filler response (by the
time the request was sent; max and median over the rounds that had one),
and how many rounds recovered (the backend answering every request for
CLEAN seconds) within the cap. Target: with the default TTL, no filler
response later than 1.2 s after `docker stop` returns.

    python3 bench/wrong_host.py [--rounds 20] [--configs 5,1,0,embedded] [--dockerdns-path DIR]

Needs root and a running Docker engine (tests/dockerd.py ensure). The first
run builds the nginx image with mmdebstrap (about a minute, Debian's mirrors);
later runs reuse it (tag dockerdns-bench/nginx:bookworm, label
dockerdns-bench-cache=1). Everything else it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import containers  # noqa: E402
from containers import BenchError, Cleanup  # noqa: E402

RATE = 20  # requests per second through nginx
REQUEST_TIMEOUT = 3.0  # seconds one request may take before it counts as an error
CLEAN = 1.0  # seconds of backend-only responses that end a round
CAP = 8.0  # seconds after `docker start` returns that a round may take at most (dockerdns)
BASELINE_CAP = 4.0  # the same for Docker's embedded DNS, which never recovers within a run (TTL 600)
STOP_TIMEOUT = 2  # seconds `docker stop` waits before SIGKILL (httpd under --init exits on SIGTERM)
TARGET = 1.2  # seconds: the bound on the last filler response with the default TTL
SPARE_ADDRESSES = 4  # network, gateway, nginx, broadcast
EMBEDDED = "embedded"

NGINX_CONF = """\
worker_processes 1;
error_log stderr error;
pid /tmp/nginx.pid;
events {{ worker_connections 512; }}
http {{
    access_log off;
    # No valid=: nginx keeps an answer for its TTL. ipv6=off: A queries only.
    resolver {resolver} ipv6=off;
    resolver_timeout 2s;
    proxy_connect_timeout 1s;
    proxy_read_timeout 2s;
    server {{
        listen 80;
        location / {{
            set $backend {name};
            proxy_pass http://$backend;
        }}
    }}
}}
"""


@dataclass
class Sample:
    sent: float  # time.monotonic() when the request was sent
    outcome: str  # "backend", "filler", "502", "HTTP nnn", "error: ..."


@dataclass
class Round:
    stop_called: float
    stop_returned: float
    filler_started: float
    backend_started: float
    end: float = 0.0
    recovered: bool = False


@dataclass
class Result:
    config: str
    rounds: list[Round] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


class Load:
    """GET / on nginx at RATE per second from a pool of threads; every outcome kept in `samples`.

    Thread-safe: the sender thread and the pool append to one list (list.append is atomic).
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=int(RATE * REQUEST_TIMEOUT) + 10)
        self._thread = threading.Thread(target=self._send, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _send(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self._pool.submit(self._one, time.monotonic())
            due += 1 / RATE
            self._stop.wait(max(0.0, due - time.monotonic()))

    def _one(self, sent: float) -> None:
        conn = http.client.HTTPConnection(self.host, 80, timeout=REQUEST_TIMEOUT)
        try:
            conn.request("GET", "/", headers={"Connection": "close"})
            reply = conn.getresponse()
            body = reply.read().decode(errors="replace").strip()
            if reply.status == 200 and body in ("backend", "filler"):
                outcome = body
            else:
                outcome = "502" if reply.status == 502 else f"HTTP {reply.status}"
        except Exception as error:
            outcome = f"error: {type(error).__name__}"
        finally:
            conn.close()
        self.samples.append(Sample(sent, outcome))

    def backend_only_since(self, since: float, seconds: float) -> bool:
        """True when requests sent in the last `seconds` (all after `since`) all reached the backend."""
        now = time.monotonic()
        if now - seconds < since:
            return False
        window = [s for s in self.samples[-int(RATE * (seconds + REQUEST_TIMEOUT)) - 5:]
                  if now - seconds <= s.sent]
        return len(window) >= int(RATE * seconds) - 2 and all(s.outcome == "backend" for s in window)


def make_network(client: Any, made: Cleanup, tag: str, hosts: int) -> tuple[Any, str]:
    """A user network with the smallest random subnet under 10.240.0.0/12 that has `hosts` addresses to spare.

    Returns the network and its gateway.
    """
    prefix = 32 - max(3, (hosts + SPARE_ADDRESSES - 1).bit_length())
    if prefix < 16:
        raise BenchError(f"{hosts} addresses do not fit a /16")
    for _ in range(20):
        third = random.randrange(256) if prefix >= 24 else random.randrange(0, 256, 2 ** (24 - prefix))
        fourth = random.randrange(0, 256, 2 ** (32 - prefix)) if prefix >= 24 else 0
        net = ipaddress.ip_network(f"10.{random.randrange(240, 256)}.{third}.{fourth}/{prefix}")
        gateway = str(net.network_address + 1)
        try:
            network = client.networks.create(f"bench-wh-{tag}", labels=containers.LABEL, ipam=docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=str(net), gateway=gateway)]))
        except docker.errors.APIError as error:
            if "overlap" in str(error).lower():
                continue
            raise
        made.add(f"network {network.name}", network.remove)
        return network, gateway
    raise BenchError(f"no free /{prefix} under 10.240.0.0/12 after 20 tries")


def start_busybox(client: Any, made: Cleanup, name: str, body: str, network: str, ip: str | None = None) -> Any:
    """A busybox httpd container answering `body`, on `network` (at `ip` when given)."""
    endpoint = client.api.create_endpoint_config(ipv4_address=ip) if ip else client.api.create_endpoint_config()
    created = client.api.create_container(
        containers.BUSYBOX_IMAGE, containers.httpd_command(body), name=name, labels=containers.LABEL,
        host_config=client.api.create_host_config(init=True),
        networking_config=client.api.create_networking_config({network: endpoint}))
    container = made.container(client.containers.get(created["Id"]))
    container.start()
    return container


def run_config(client: Any, config: str, args: argparse.Namespace, tag: str, tmp: str) -> Result:
    """One configuration: its own network, backend, nginx and (for a TTL) dockerdns; ROUNDS restarts."""
    result = Result(config)
    with Cleanup(client) as made:
        # one address per filler and two for the backend
        network, gateway = make_network(client, made, f"{tag}-{config}", args.rounds + 2)
        backend_name = f"wh-backend-{tag}"
        backend = start_busybox(client, made, backend_name, "backend", network.name)
        proc = None
        if config == EMBEDDED:
            resolver, name = "127.0.0.11", backend_name
        else:
            port = containers.free_udp_port(gateway)
            log_path = os.path.join(tmp, f"dockerdns-ttl{config}.log")
            proc = containers.start_dockerdns(f"{gateway}:{port}", ["--ttl", config, "--log-level", "warning"],
                                              path=args.dockerdns_path, log_path=log_path)
            made.add("dockerdns", lambda: containers.stop_process(proc))
            resolver, name = f"{gateway}:{port}", f"{backend_name}.docker"
        conf = os.path.join(tmp, f"nginx-{config}.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(resolver=resolver, name=name))
        nginx = made.container(client.containers.run(
            containers.NGINX_IMAGE, name=f"wh-nginx-{tag}-{config}", network=network.name, detach=True,
            labels=containers.LABEL, volumes={conf: {"bind": "/etc/nginx/nginx.conf", "mode": "ro"}}))
        nginx_ip = containers.address_of(nginx, network.name)
        cap = BASELINE_CAP if config == EMBEDDED else CAP

        def serving() -> bool:
            try:
                return fetch(nginx_ip) == "backend"
            except OSError:
                return False

        containers.wait_until(serving, 30, f"nginx ({config}) to reach the backend")
        with Load(nginx_ip) as load:
            for i in range(args.rounds):
                old = containers.address_of(backend, network.name)
                stop_called = time.monotonic()
                backend.stop(timeout=STOP_TIMEOUT)
                stop_returned = time.monotonic()
                start_busybox(client, made, f"wh-filler-{tag}-{i}", "filler", network.name, ip=old)
                filler_started = time.monotonic()
                backend.start()
                backend_started = time.monotonic()
                rnd = Round(stop_called, stop_returned, filler_started, backend_started)
                while time.monotonic() - backend_started < cap:
                    if load.backend_only_since(backend_started, CLEAN):
                        rnd.recovered = True
                        break
                    time.sleep(0.05)
                rnd.end = time.monotonic()
                result.rounds.append(rnd)
                print(f"  {config}: round {i + 1}/{args.rounds}", file=sys.stderr, end="\r")
        print(file=sys.stderr)
        result.samples = sorted(load.samples, key=lambda s: s.sent)
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"dockerdns (ttl {config}) exited during the run; see {tmp}")
    return result


def fetch(host: str) -> str:
    conn = http.client.HTTPConnection(host, 80, timeout=2)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode(errors="replace").strip()
    finally:
        conn.close()


@dataclass
class Summary:
    config: str
    filler: int
    status_502: int
    other_errors: Counter[str]  # outcome -> count, for outcomes neither backend, filler nor 502
    last_filler: list[float]  # seconds after stop returned, one per round with a filler response
    late_rounds: int  # rounds with a filler response later than TARGET
    recovered: int
    rounds: int
    first_backend: list[float]  # seconds from `docker start` returning to the first backend response


def summarise(result: Result) -> Summary:
    """Attribute each sample to the round whose `docker stop` call precedes it, and count."""
    rounds = result.rounds
    bounds = [r.stop_called for r in rounds] + [float("inf")]
    filler = status_502 = late = 0
    other: Counter[str] = Counter()
    last_filler: list[float] = []
    first_backend: list[float] = []
    for i, rnd in enumerate(rounds):
        mine = [s for s in result.samples if bounds[i] <= s.sent < bounds[i + 1]]
        fill = [s for s in mine if s.outcome == "filler"]
        filler += len(fill)
        status_502 += sum(s.outcome == "502" for s in mine)
        other.update(s.outcome for s in mine if s.outcome not in ("backend", "filler", "502"))
        if fill:
            last = fill[-1].sent - rnd.stop_returned
            last_filler.append(last)
            late += last > TARGET
        back = [s for s in mine if s.outcome == "backend" and s.sent >= rnd.backend_started]
        if back:
            first_backend.append(back[0].sent - rnd.backend_started)
    recovered = sum(r.recovered for r in rounds)
    return Summary(result.config, filler, status_502, other, last_filler, late, recovered, len(rounds), first_backend)


def label(config: str) -> str:
    if config == EMBEDDED:
        return "Docker embedded DNS (TTL 600)"
    return f"dockerdns --ttl {config}" + (" (default)" if config == "1" else "")


def seconds(values: list[float], how: str) -> str:
    if not values:
        return "-"
    return f"{(max(values) if how == 'max' else statistics.median(values)):.2f} s"


def print_table(summaries: list[Summary], argv: list[str]) -> None:
    print("command: python3 bench/wrong_host.py " + " ".join(argv))
    print(f"machine: {containers.load_note()}")
    print(f"{RATE} requests/s through nginx; per configuration {summaries[0].rounds} restarts "
          f"(stop backend, filler takes its address, start backend)")
    head = ("configuration", "filler responses", "502s", "other errors", "last filler after stop: max",
            "median", f"rounds > {TARGET} s", "recovered", "first backend after start: median")
    rows = [head]
    for s in summaries:
        cap = BASELINE_CAP if s.config == EMBEDDED else CAP
        rows.append((label(s.config), str(s.filler), str(s.status_502), str(sum(s.other_errors.values())),
                     seconds(s.last_filler, "max"), seconds(s.last_filler, "median"),
                     f"{s.late_rounds}/{s.rounds}", f"{s.recovered}/{s.rounds} (cap {cap:.0f} s)",
                     seconds(s.first_backend, "median")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for s in summaries:
        if s.other_errors:
            counts = ", ".join(f"{k} x{n}" for k, n in s.other_errors.most_common())
            print(f"other errors, {label(s.config)}: {counts}")
    print("(504: nginx's 1 s connect timeout to an address nobody holds, between `docker stop` and the filler)")
    default = [s for s in summaries if s.config == "1"]
    if default:
        worst = max(default[0].last_filler, default=0.0)
        verdict = "met" if worst <= TARGET else "missed"
        print(f"target (default TTL: no filler response later than {TARGET} s after stop returns): {verdict} "
              f"(latest {worst:.2f} s)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="restarts per configuration (default: 20)")
    parser.add_argument("--configs", default=f"5,1,0,{EMBEDDED}",
                        help=f"comma-separated TTLs for dockerdns and/or '{EMBEDDED}' (default: 5,1,0,{EMBEDDED})")
    parser.add_argument("--dockerdns-path", default=containers.ROOT,
                        help="source tree dockerdns is run from (default: this checkout)")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c != EMBEDDED and not c.isdigit()]
    if bad or not configs or args.rounds < 1:
        parser.error(f"--configs takes TTLs and '{EMBEDDED}', --rounds at least 1 (got {args.configs!r}, "
                     f"{args.rounds})")
    try:
        containers.dockerd.ensure_running()
        containers.dockerd.ensure_image()
        client = docker.from_env(version="auto")
        containers.ensure_nginx_image(client)
        tag = f"{random.randrange(16 ** 6):06x}"
        summaries = []
        with tempfile.TemporaryDirectory(prefix="wrong-host-") as tmp:
            for config in configs:
                started = time.monotonic()
                summaries.append(summarise(containers.with_engine_retries(
                    client, label(config), lambda: run_config(client, config, args, tag, tmp))))
                print(f"  {label(config)}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    except (BenchError, containers.dockerd.DockerdError) as error:
        print(f"wrong_host: {error}", file=sys.stderr)
        return 1
    print_table(summaries, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
