#!/usr/bin/env python3
"""Health propagation: from Docker's `health_status` event to dockerdns answering accordingly.

Two replicas of a compose-like service (labels com.docker.compose.service=web,
com.docker.compose.project=p<tag>) run busybox with a health check `test -f
/tmp/ok` (interval 1 s, retries 1). One replica is flipped FLIPS times:
`docker exec rm /tmp/ok` makes it unhealthy, `docker exec touch /tmp/ok`
healthy again. A thread reads the engine's event stream; another asks
dockerdns (over UDP on loopback, a query every ~1 ms) for `web.p<tag>.docker`
and keeps every change of the answer. For each flip it reports the time from
the event's timeNano to the first answer without the replica's address
(unhealthy) or with it again (healthy). Target: within 100 ms.

    python3 bench/health.py [--flips 10] [--dockerdns-path DIR]

Needs root and a running Docker engine (tests/dockerd.py ensure). Everything
it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import docker
import docker.types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import containers  # noqa: E402
from containers import AnswerWatch, BenchError, Cleanup  # noqa: E402

TARGET_MS = 100.0  # the bound on event-to-answer
EVENT_WAIT = 10.0  # seconds a flip's health_status event may take (interval 1 s, retries 1)
ANSWER_WAIT = 5.0  # seconds after the event that dockerdns may take before the flip counts as missed
SECOND = 1_000_000_000  # nanoseconds
BUSY_WINDOW = 2 * SECOND  # nanoseconds before a flip's event in which other engine events are counted
HEALTHCHECK = docker.types.Healthcheck(test=["CMD", "test", "-f", "/tmp/ok"], interval=SECOND, timeout=SECOND,
                                       retries=1, start_period=0)


class InspectProbe:
    """Times `GET /containers/<id>/json` every PROBE_EVERY on a thread: how fast the engine answers dockerdns's
    kind of call during the run. Thread-safe: one writer, read after exit."""

    PROBE_EVERY = 0.1  # seconds

    def __init__(self, client: Any, cid: str) -> None:
        self.seconds: list[float] = []
        self._client, self._cid = client, cid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InspectProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.PROBE_EVERY):
            started = time.monotonic()
            try:
                self._client.api.inspect_container(self._cid)
            except Exception:
                continue
            self.seconds.append(time.monotonic() - started)


@dataclass
class Flip:
    to: str  # "unhealthy" or "healthy"
    event_ns: int  # the health_status event's timeNano
    answer_ns: int | None  # first answer that follows it; None: not within ANSWER_WAIT
    busy: int = 0  # engine events (any container's) in the BUSY_WINDOW before this one: dockerdns handles each

    @property
    def already(self) -> bool:
        """The answer was already so before the event (the flip before was missed)."""
        return self.answer_ns is not None and self.answer_ns < self.event_ns

    @property
    def ms(self) -> float | None:
        return None if self.answer_ns is None or self.already else (self.answer_ns - self.event_ns) / 1e6


def run(client: Any, args: argparse.Namespace, tmp: str) -> tuple[list[Flip], AnswerWatch, list[float]]:
    tag = f"{random.randrange(16 ** 6):06x}"
    project = f"p{tag}"
    name = f"web.{project}.docker"
    label = f"dockerdns-bench-health={tag}"
    with Cleanup(client) as made:
        network = client.networks.create(f"bench-health-{tag}", labels=containers.LABEL)
        made.add(f"network {network.name}", network.remove)
        events = containers.EventStream(client, {"type": "container", "label": label})
        made.add("event stream", events.close)
        everything = containers.EventStream(client, {"type": ["container", "network"]})
        made.add("event stream", everything.close)
        replicas = []
        for i in (1, 2):
            replicas.append(made.container(client.containers.run(
                containers.BUSYBOX_IMAGE, ["sh", "-c", "touch /tmp/ok && exec sleep 3600"],
                name=f"{project}-web-{i}", network=network.name, detach=True, init=True, healthcheck=HEALTHCHECK,
                labels={**containers.LABEL, "dockerdns-bench-health": tag, "com.docker.compose.service": "web",
                        "com.docker.compose.project": project, "com.docker.compose.container-number": str(i)})))
        addresses = [containers.address_of(c, network.name) for c in replicas]
        port = containers.free_udp_port("127.0.0.1")
        proc = containers.start_dockerdns(f"127.0.0.1:{port}", ["--log-level", "warning"], path=args.dockerdns_path,
                                          log_path=os.path.join(tmp, "dockerdns.log"))
        made.add("dockerdns", lambda: containers.stop_process(proc))

        def healthy(c: Any) -> bool:
            c.reload()
            return bool(c.attrs["State"].get("Health", {}).get("Status") == "healthy")

        containers.wait_until(lambda: all(healthy(c) for c in replicas), 30, "both replicas to be healthy", 0.2)
        flipped, address = replicas[0], addresses[0]
        flips: list[Flip] = []
        with AnswerWatch("127.0.0.1", port, name) as watch, InspectProbe(client, replicas[1].id) as probe:
            containers.wait_until(lambda: watch.current() == tuple(sorted(addresses)), 10,
                                  f"dockerdns to answer both replicas for {name}")
            for i in range(args.flips):
                for to, command in (("unhealthy", "rm -f /tmp/ok"), ("healthy", "touch /tmp/ok")):
                    flipped.exec_run(["sh", "-c", command])
                    event_ns = events.next(flipped.id, f"health_status: {to}", EVENT_WAIT)
                    wanted = (lambda a: address not in a) if to == "unhealthy" else (lambda a: address in a)
                    deadline = time.monotonic() + ANSWER_WAIT
                    answer_ns = watch.first_change(event_ns, wanted)
                    while answer_ns is None and time.monotonic() < deadline:
                        time.sleep(0.01)
                        answer_ns = watch.first_change(event_ns, wanted)
                    flips.append(Flip(to, event_ns, answer_ns))
                    if answer_ns is None:
                        # The replica's address never left (or came back): the flip is a miss; go on.
                        containers.wait_until(lambda: healthy(flipped) == (to == "healthy"), EVENT_WAIT,
                                              f"{flipped.name} to be {to}", 0.2)
                print(f"  flip {i + 1}/{args.flips}", file=sys.stderr, end="\r")
            print(file=sys.stderr)
        times = sorted(t for _actor, _action, t in list(everything.queue.queue))
        for flip in flips:
            flip.busy = sum(flip.event_ns - BUSY_WINDOW <= t < flip.event_ns for t in times)
        if proc.poll() is not None:
            raise BenchError(f"dockerdns exited during the run (status {proc.returncode})")
    return flips, watch, probe.seconds


def report(flips: list[Flip], watch: AnswerWatch, inspects: list[float], argv: list[str]) -> None:
    print("command: python3 bench/health.py " + " ".join(argv))
    print("event-to-answer: Docker's health_status event (timeNano) to the first dockerdns answer that follows it")
    for to in ("unhealthy", "healthy", None):
        mine = [f for f in flips if to is None or f.to == to]
        got = sorted(ms for f in mine if (ms := f.ms) is not None)
        missed = sum(f.answer_ns is None for f in mine)
        already = sum(f.already for f in mine)
        what = {"unhealthy": "to unhealthy (address leaves)", "healthy": "to healthy (address returns)",
                None: "all flips"}[to]
        if got:
            over = sum(ms > TARGET_MS for ms in got)
            print(f"  {what:32s} n={len(mine):3d}  median {statistics.median(got):7.1f} ms  max {got[-1]:7.1f} ms  "
                  f"min {got[0]:6.1f} ms  over {TARGET_MS:.0f} ms: {over}  missed (> {ANSWER_WAIT:.0f} s): {missed}"
                  + (f"  already so before the event: {already}" if already else ""))
        else:
            print(f"  {what:32s} n={len(mine):3d}  no answer changed after any event within {ANSWER_WAIT:.0f} s "
                  f"(missed {missed}, already so before the event {already})")
    print("  each flip, ms (engine events in the 2 s before it): "
          + " ".join((f"{f.ms:.0f}" if f.ms is not None else "-") + f" ({f.busy})" for f in flips))
    print(f"  machine: {containers.load_note()}")
    if inspects:
        ordered = sorted(inspects)
        print(f"  engine: one container inspect took median {statistics.median(ordered) * 1000:.1f} ms, "
              f"p90 {ordered[int(len(ordered) * 0.9)] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms "
              f"({len(ordered)} probes during the flips; dockerdns makes one per event)")
    print(f"  (the watch asked {watch.queries} times, ~{AnswerWatch.PAUSE * 1000:.1f} ms apart plus a round trip; "
          f"{watch.lost} queries unanswered)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--flips", type=int, default=10,
                        help="unhealthy-and-back cycles, two measured flips each (default: 10)")
    parser.add_argument("--dockerdns-path", default=containers.ROOT,
                        help="source tree dockerdns is run from (default: this checkout)")
    args = parser.parse_args(argv)
    if args.flips < 1:
        parser.error(f"--flips must be at least 1, got {args.flips}")
    try:
        containers.dockerd.ensure_running()
        containers.dockerd.ensure_image()
        client = docker.from_env(version="auto")
        with tempfile.TemporaryDirectory(prefix="health-") as tmp:
            flips, watch, inspects = containers.with_engine_retries(client, "health", lambda: run(client, args, tmp))
    except (BenchError, containers.dockerd.DockerdError) as error:
        print(f"health: {error}", file=sys.stderr)
        return 1
    report(flips, watch, inspects, argv)
    return 0 if all(f.ms is not None for f in flips) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
