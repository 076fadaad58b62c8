#!/usr/bin/env python3
"""Early publish: can a client connect to a restarted container as soon as dockerdns answers its address?

dockerdns publishes a container it has seen before on its network `connect`
event, which comes before `docker start` returns (docker_source Rule 6).
This benchmark restarts a busybox container whose command listens at once
(`httpd -f -p 8080`, under --init) ROUNDS times on a user network (stop,
let dockerdns finish the stop's events, start; or with --immediate start as
soon as the name answers NXDOMAIN, as a quick `stop; start` does). For each
start, the main thread asks dockerdns for the name (UDP on loopback, back to
back) from the moment `docker start` is called until an address appears; at
that moment ("first answer") it starts a TCP connect to the address every
ATTEMPT_EVERY for ATTEMPTS_FOR (until one succeeds fast), each with its own
thread and a CONNECT_TIMEOUT long enough to see a SYN retransmit (1 s). The
client is the host (the network's gateway), which has talked to the
container before, as an application would have.

It reports where the first answer falls against `docker start` returning,
what the connect started at the first answer did (fast, slow, refused,
unreachable, timeout), how many rounds had a failed or slow connect in the
window, and the distribution of "first successful connect, minus first
answer" (when the earliest successful connect completed).

    python3 bench/early_publish.py [--rounds 30] [--dockerdns-path DIR]

Needs root and a running Docker engine (tests/dockerd.py ensure). Everything
it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import errno
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import docker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import containers  # noqa: E402
from containers import BenchError, Cleanup  # noqa: E402

PORT = 8080
ATTEMPT_EVERY = 0.010  # seconds between connect attempts
ATTEMPTS_FOR = 0.300  # seconds after the first answer that attempts start
CONNECT_TIMEOUT = 3.0  # seconds one connect may take: long enough to see a SYN retransmitted after 1 s
SLOW = 0.050  # seconds: a successful connect that took longer than this was slow (a lost SYN, an ARP wait)
ANSWER_WAIT = 15.0  # seconds from `docker start` being called to the first answer, at most
QUERY_TIMEOUT = 0.5  # seconds one query may take
STOP_TIMEOUT = 2  # seconds `docker stop` waits before SIGKILL
#: Seconds after the stop's last event (`stop`) before the next start: time for dockerdns to finish the
#: inspects of the stop's events. An inspect still waiting when the start begins blocks until the start
#: ends (the engine holds the container's lock), and the `connect` behind it is handled too late to be early.
SETTLE = 0.3
EVENT_WAIT = 10.0  # seconds the stop's `stop` event may take


@dataclass
class Attempt:
    started: float  # seconds after the first answer
    outcome: str  # "ok", "refused", "unreachable", "timeout", or an errno name
    took: float  # seconds the connect took

    @property
    def fast(self) -> bool:
        return self.outcome == "ok" and self.took <= SLOW


@dataclass
class Round:
    answer: float  # time.monotonic() of the first answer with an address
    start_called: float
    start_returned: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def first_success(self) -> float | None:
        """Seconds from the first answer until the earliest successful connect completed."""
        done = [a.started + a.took for a in self.attempts if a.outcome == "ok"]
        return min(done) if done else None


def connect_once(address: str, first_answer: float, into: list[Attempt]) -> None:
    """One TCP connect to address:PORT; appends what happened to `into` (thread-safe: list.append)."""
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((address, PORT))
            outcome = "ok"
        except ConnectionRefusedError:
            outcome = "refused"
        except socket.timeout:
            outcome = "timeout"
        except OSError as error:
            outcome = "unreachable" if error.errno == errno.EHOSTUNREACH else errno.errorcode.get(
                error.errno or 0, str(error))
    into.append(Attempt(started - first_answer, outcome, time.monotonic() - started))


def ask(sock: socket.socket, name: str) -> tuple[str, list[str]]:
    """One A query on the connected UDP socket: (rcode, addresses); ("lost", []) when no reply came."""
    query = dns.message.make_query(name, "A")
    sock.send(query.to_wire())
    try:
        while True:
            reply = dns.message.from_wire(sock.recv(4096))
            if reply.id == query.id:
                break
    except (socket.timeout, dns.exception.DNSException):
        return "lost", []
    return dns.rcode.to_text(reply.rcode()), [rd.to_text() for rrset in reply.answer for rd in rrset
                                              if rrset.rdtype == 1]


def one_round(container: Any, sock: socket.socket, name: str) -> Round:
    """Start the (stopped) container, wait for the first answer, then connect every ATTEMPT_EVERY."""
    returned: list[float] = []

    def start() -> None:
        container.start()
        returned.append(time.monotonic())

    starter = threading.Thread(target=start)
    start_called = time.monotonic()
    starter.start()
    while True:
        _rcode, addresses = ask(sock, name)
        if addresses:
            answer = time.monotonic()
            break
        if time.monotonic() - start_called > ANSWER_WAIT:
            raise BenchError(f"dockerdns answered no address for {name} within {ANSWER_WAIT:.0f} s of the start")
    rnd = Round(answer, start_called)
    threads = []
    for k in range(round(ATTEMPTS_FOR / ATTEMPT_EVERY)):
        delay = answer + k * ATTEMPT_EVERY - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if any(a.fast for a in list(rnd.attempts)):
            # The listener answers: more connects would only fill busybox httpd's accept queue (backlog 9),
            # whose overflow drops SYNs as a starting container does.
            break
        thread = threading.Thread(target=connect_once, args=(addresses[0], answer, rnd.attempts))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    starter.join()
    rnd.start_returned = returned[0] if returned else float("nan")
    rnd.attempts.sort(key=lambda a: a.started)
    return rnd


def run(client: Any, args: argparse.Namespace, tmp: str) -> list[Round]:
    tag = f"{random.randrange(16 ** 6):06x}"
    name = f"ep-{tag}.docker"
    rounds: list[Round] = []
    with Cleanup(client) as made:
        network = client.networks.create(f"bench-ep-{tag}", labels=containers.LABEL)
        made.add(f"network {network.name}", network.remove)
        container = made.container(client.containers.run(
            containers.BUSYBOX_IMAGE, ["httpd", "-f", "-p", str(PORT)], name=f"ep-{tag}", network=network.name,
            detach=True, init=True, labels=containers.LABEL))
        port = containers.free_udp_port("127.0.0.1")
        proc = containers.start_dockerdns(f"127.0.0.1:{port}", ["--log-level", "warning"], path=args.dockerdns_path,
                                          log_path=os.path.join(tmp, "dockerdns.log"))
        made.add("dockerdns", lambda: containers.stop_process(proc))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("127.0.0.1", port))
            sock.settimeout(QUERY_TIMEOUT)
            containers.wait_until(lambda: bool(ask(sock, name)[1]), 10, f"dockerdns to answer {name}")
            address = containers.address_of(container, network.name)
            containers.wait_until(lambda: tcp_ok(address), 10, f"{address}:{PORT} to accept connections")
            events = containers.EventStream(client, {"type": "container", "container": container.id})
            made.add("event stream", events.close)
            for i in range(args.rounds):
                container.stop(timeout=STOP_TIMEOUT)
                containers.wait_until(lambda: ask(sock, name)[0] == "NXDOMAIN", 10,
                                      f"dockerdns to drop {name} after the stop")
                if not args.immediate:
                    events.next(container.id, "stop", EVENT_WAIT)
                    time.sleep(SETTLE)
                rounds.append(one_round(container, sock, name))
                print(f"  round {i + 1}/{args.rounds}", file=sys.stderr, end="\r")
            print(file=sys.stderr)
        if proc.poll() is not None:
            raise BenchError(f"dockerdns exited during the run (status {proc.returncode})")
    return rounds


def tcp_ok(address: str) -> bool:
    try:
        socket.create_connection((address, PORT), timeout=1).close()
        return True
    except OSError:
        return False


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return (f"median {statistics.median(values) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
            f"min {values[0] * 1000:.1f} ms, max {values[-1] * 1000:.1f} ms")


def report(rounds: list[Round], argv: list[str], immediate: bool) -> None:
    n = len(rounds)
    print("command: python3 bench/early_publish.py " + " ".join(argv))
    print(f"machine: {containers.load_note()}")
    print(f"{n} restarts; TCP connects from the host every {ATTEMPT_EVERY * 1000:.0f} ms for "
          f"{ATTEMPTS_FOR * 1000:.0f} ms after dockerdns first answers the address (slow: > {SLOW * 1000:.0f} ms)")
    print("start: " + ("as soon as dockerdns answered NXDOMAIN after the stop (--immediate)" if immediate else
                       f"{SETTLE * 1000:.0f} ms after the stop's `stop` event"))
    lead = [r.start_returned - r.answer for r in rounds]
    print("`docker start` returned after the first answer by: " + ms(lead)
          + f"; first answer before the start returned in {sum(x > 0 for x in lead)}/{n} rounds")
    first = Counter(kind(r.attempts[0]) for r in rounds if r.attempts)
    print("the connect started at the first answer: " + ", ".join(f"{k} {v}" for k, v in first.most_common()))
    bad = [r for r in rounds if any(not a.fast for a in r.attempts)]
    print(f"rounds with a failed or slow connect in the window: {len(bad)}/{n}")
    every = Counter(kind(a) for r in rounds for a in r.attempts)
    print("all connects: " + ", ".join(f"{k} {v}" for k, v in every.most_common()))
    slow = [a.took for r in rounds for a in r.attempts if a.outcome == "ok" and not a.fast]
    if slow:
        print("  slow connects took: " + ms(slow) + " (a SYN lost, resent after 1 s)")
    after = [a for r in rounds for a in r.attempts if a.started >= r.start_returned - r.answer]
    print(f"connects started after `docker start` returned: {len(after)}, failed or slow: "
          f"{sum(not a.fast for a in after)}")
    successes = [s for r in rounds if (s := r.first_success) is not None]
    print("first successful connect minus first answer: " + ms(successes)
          + (f" ({n - len(successes)} rounds without one)" if len(successes) < n else ""))
    fast_from = [f for r in rounds if (f := min((a.started for a in r.attempts if a.fast), default=-1.0)) >= 0]
    print(f"first connect that succeeded fast, started after the first answer ({len(fast_from)}/{n} rounds had one "
          f"in the window): " + ms(fast_from))


def kind(attempt: Attempt) -> str:
    """fast, slow (ok after a lost SYN), refused, refused late (after a lost SYN), unreachable, timeout."""
    if attempt.outcome == "ok":
        return "fast" if attempt.fast else "slow"
    return attempt.outcome + (" late" if attempt.took > SLOW and attempt.outcome == "refused" else "")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="restarts (default: 30)")
    parser.add_argument("--immediate", action="store_true",
                        help="start as soon as dockerdns answers NXDOMAIN after the stop, without letting it "
                             f"finish the stop's events ({SETTLE * 1000:.0f} ms after the `stop` event)")
    parser.add_argument("--dockerdns-path", default=containers.ROOT,
                        help="source tree dockerdns is run from (default: this checkout)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    try:
        containers.dockerd.ensure_running()
        containers.dockerd.ensure_image()
        client = docker.from_env(version="auto")
        with tempfile.TemporaryDirectory(prefix="early-publish-") as tmp:
            rounds = containers.with_engine_retries(client, "early_publish", lambda: run(client, args, tmp))
    except (BenchError, containers.dockerd.DockerdError) as error:
        print(f"early_publish: {error}", file=sys.stderr)
        return 1
    report(rounds, argv, args.immediate)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
