#!/usr/bin/env python3
"""The cost of the Swarm source's poll: 200 services and 1,000 running tasks, from a synthetic manager.

A Swarm of that size does not fit on one test machine, so the manager is
synthetic: an HTTP server on loopback that answers /version, /services,
/networks, /nodes, /events and /tasks with JSON made from the services and
tasks captured on the real test Swarm (tests/fixtures/swarm), copied with
new ids, names and addresses. The manager's own cost (Go encoding ~1.7 MB
of tasks) is not measured; what is measured is dockerdns's side, on the
thread that polls (time.thread_time: the fake manager's threads are left
out) and on the wall clock:

- a poll when nothing changed (the common case: one request, a byte compare);
- a poll when one task changed (decode, re-derive every service, replace one);
- a whole read (after an event: services, networks, tasks).

    python3 bench/swarm_poll.py [--services 200] [--tasks 1000] [--polls 50]

No Docker engine, no root needed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dockerdns.docker_source import _open  # noqa: E402
from dockerdns.settings import Settings  # noqa: E402
from dockerdns.swarm_source import SwarmSource  # noqa: E402
from dockerdns.table import RecordTable  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "swarm")
API = "1.41"


def _fixture(name: str) -> Any:
    with open(os.path.join(FIXTURES, f"{name}.json")) as f:
        return json.load(f)


def _ip(n: int) -> str:
    return f"10.{100 + n // 65536}.{n // 256 % 256}.{n % 256 or 1}"


def synthetic(services: int, tasks: int) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """(services, tasks, networks, nodes) JSON: captured entries copied with new ids, names and addresses."""
    captured_services = {s["Spec"]["Name"]: s for s in _fixture("services")}
    captured_task = next(t for t in _fixture("tasks") if t["ServiceID"] == captured_services["web"]["ID"])
    template = captured_services["web"]
    networks = _fixture("networks")
    net = next(n for n in networks if n["Name"] == "dnsw-net")
    net["IPAM"]["Config"][0]["Subnet"] = "10.96.0.0/11"
    out_services, out_tasks = [], []
    for i in range(services):
        service = copy.deepcopy(template)
        service["ID"] = f"svc{i:022d}"
        service["Spec"]["Name"] = f"svc{i}"
        service["Endpoint"]["VirtualIPs"] = [{"NetworkID": net["Id"], "Addr": f"{_ip(i + 1)}/11"}]
        out_services.append(service)
    for j in range(tasks):
        task = copy.deepcopy(captured_task)
        task["ID"] = f"task{j:021d}"
        task["ServiceID"] = f"svc{j % services:022d}"
        task["Slot"] = j // services + 1
        task["NetworksAttachments"] = [a for a in task["NetworksAttachments"]
                                       if a["Network"]["Spec"]["Name"] == "dnsw-net"]
        task["NetworksAttachments"][0]["Addresses"] = [f"{_ip(services + 1 + j)}/11"]
        out_tasks.append(task)
    return out_services, out_tasks, networks, _fixture("nodes")


class Manager:
    """The synthetic manager: fixed JSON bodies, and a tasks body that can be switched."""

    def __init__(self, services: list[Any], tasks: list[Any], networks: list[Any], nodes: list[Any]):
        self.bodies = {
            "/services": json.dumps(services).encode(),
            "/networks": json.dumps(networks).encode(),
            "/nodes": json.dumps(nodes).encode(),
            "/version": json.dumps({"ApiVersion": API, "Version": "20.10.24"}).encode(),
        }
        self.tasks = [json.dumps(tasks).encode()]
        changed = copy.deepcopy(tasks)
        changed[0]["Status"]["State"] = "shutdown"
        self.tasks.append(json.dumps(changed).encode())
        self.toggle = False  # serve the two tasks bodies in turn: every poll sees one task change
        self.turn = 0
        manager = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                path = path.split("/", 2)[2] if path.startswith("/v1.") else path[1:]
                path = "/" + path
                if path == "/events":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.flush()
                    threading.Event().wait(3600)  # an idle Swarm sends no events
                    return
                if path == "/tasks":
                    body = manager.tasks[manager.turn % 2]
                    if manager.toggle:
                        manager.turn += 1
                else:
                    body = manager.bodies.get(path, b"{}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"tcp://127.0.0.1:{self.server.server_address[1]}"


def _measure(call: Any, rounds: int) -> tuple[list[float], list[float]]:
    """(wall ms, this thread's CPU ms) of `call()` over `rounds` calls."""
    wall, cpu = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.thread_time()
        call()
        cpu.append((time.thread_time() - c) * 1000)
        wall.append((time.perf_counter() - w) * 1000)
    return wall, cpu


def _row(what: str, wall: list[float], cpu: list[float]) -> str:
    return (f"{what:<34} wall median {statistics.median(wall):6.1f} ms (max {max(wall):6.1f}), "
            f"CPU median {statistics.median(cpu):6.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--polls", type=int, default=50)
    args = parser.parse_args()
    manager = Manager(*synthetic(args.services, args.tasks))
    table = RecordTable()
    source = SwarmSource(Settings(), table)
    client = _open(manager.url)
    try:
        source._read_all(client)  # warm up: connection, first publication
        records = len(table.snapshot.records())
        sizes = len(manager.tasks[0]) / 1e6, len(manager.bodies["/services"]) / 1e6
        print(f"synthetic manager: {args.services} services, {args.tasks} running tasks; "
              f"/tasks is {sizes[0]:.2f} MB, /services {sizes[1]:.2f} MB; {records} records")
        print(_row("poll, nothing changed", *_measure(lambda: source._poll(client), args.polls)))
        manager.toggle = True
        print(_row("poll, one task changed", *_measure(lambda: source._poll(client), args.polls)))
        manager.toggle = False
        print(_row("whole read (after an event)", *_measure(lambda: source._read_all(client), max(5, args.polls // 5))))
        unchanged_cpu = statistics.median(_measure(lambda: source._poll(client), args.polls)[1])
        print(f"at the default poll (1 s), an unchanged Swarm costs {unchanged_cpu / 10:.1f} % of one core")
    finally:
        client.close()
        manager.server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
