"""The read-only HTTP listener: GET / (the status page), /changes, /records, /healthz and /metrics.

Rule 1: read-only. GET (and HEAD) only; anything else is 405, so the
        listener can never change what is served.
Rule 2: it reads what the server already has (the live table snapshot, the
        counters in Stats, the docker source's state) and computes nothing
        on the answering path: metrics are gathered at scrape time.

Thread-safety: requests are served on their own threads and only read.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from . import page
from .settings import Address
from .stats import Histogram, Stats, value
from .table import Snapshot

log = logging.getLogger("dockerdns.http")

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class View:
    """What the listener may read, as callables so it always sees the current state."""

    snapshot: Callable[[], Snapshot]
    rows: Callable[[Snapshot], list[dict[str, object]]]
    health: Callable[[], tuple[bool, dict[str, object]]]  # (healthy, details)
    stats: Stats
    source: Callable[[], Any]  # the docker source, or None
    forwarder: Callable[[], Any]  # the forwarder, or None
    rate_limit: Callable[[], Any]  # the RateLimit, or None
    changes: Callable[[], list[dict[str, object]]] = list  # GET /changes: the last table changes, oldest first


class _Collector:
    """Turns dockerdns's own counters into Prometheus metrics at scrape time."""

    def __init__(self, view: View):
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view, stats = self._view, self._view.stats
        queries = CounterMetricFamily("dockerdns_queries", "DNS queries answered, by type, transport and rcode",
                                      labels=["qtype", "transport", "rcode"])
        for labels, count in stats.queries():
            queries.add_metric(list(labels), count)
        yield queries
        buckets, total = stats.answer_latency()
        yield HistogramMetricFamily("dockerdns_answer_latency_seconds",
                                    "Time from a query's arrival to its answer (ready-made ones sampled)",
                                    buckets=buckets, sum_value=total)
        yield CounterMetricFamily("dockerdns_dropped_packets", "Packets dropped unanswered (not a query)",
                                  value=value(stats.dropped))
        limit = view.rate_limit()
        limited = CounterMetricFamily("dockerdns_rate_limited_responses",
                                      "UDP responses held back by response rate limiting", labels=["verdict"])
        limited.add_metric(["drop"], getattr(limit, "dropped", 0))
        limited.add_metric(["slip"], getattr(limit, "slipped", 0))
        yield limited
        forwarder = view.forwarder()
        yield CounterMetricFamily("dockerdns_forwarded_queries", "Queries sent to the upstream servers",
                                  value=getattr(forwarder, "forwarded", 0))
        yield CounterMetricFamily("dockerdns_upstream_failures", "Forwarded queries that no upstream answered",
                                  value=getattr(forwarder, "failures", 0))
        source = view.source()
        yield CounterMetricFamily("dockerdns_docker_events", "Docker events handled",
                                  value=getattr(source, "events_handled", 0))
        snapshot = view.snapshot()
        yield GaugeMetricFamily("dockerdns_table_records", "Records in the table",
                                value=snapshot.record_count)
        yield GaugeMetricFamily("dockerdns_table_names", "Names in the table", value=len(snapshot.names))
        yield GaugeMetricFamily("dockerdns_docker_in_sync", "1 when the table is in sync with Docker",
                                value=1 if getattr(source, "in_sync", False) else 0)
        last = getattr(source, "last_sync", None)
        yield GaugeMetricFamily("dockerdns_last_sync_timestamp_seconds", "Time of the last full sync with Docker",
                                value=last or 0)
        yield _histogram("dockerdns_propagation_delay_seconds",
                         "From a Docker event's timestamp to the table update", stats.propagation)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets, total = histogram.snapshot()
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """An HTTP listener on its own thread."""

    def __init__(self, address: Address, view: View):
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_Collector(view))
        registry.register(ProcessCollector(registry=None))
        handler = _handler(view, registry)
        host = address.host
        server_class = _Server6 if ":" in host else _Server
        self._server = server_class((host, address.port), handler)
        self.address = Address(host, int(self._server.server_address[1]))
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"http {self.address}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(view: View, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dockerdns"

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            self._respond(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._respond(head=True)

        def _respond(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/records":
                self._send(200, JSON, json.dumps(view.rows(view.snapshot()), indent=2).encode() + b"\n", head)
            elif path == "/healthz":
                healthy, details = view.health()
                self._send(200 if healthy else 503, JSON, json.dumps(details).encode() + b"\n", head)
            elif path == "/metrics":
                self._send(200, PROMETHEUS, generate_latest(registry), head)
            elif path == "/changes":
                self._send(200, JSON, json.dumps(view.changes(), indent=2).encode() + b"\n", head)
            elif path == "/":
                self._send(200, page.HTML, page.html(), head)
            else:
                self._send(404, JSON, b'{"error": "not found"}\n', head)

        def _refuse(self) -> None:
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

        def _send(self, code: int, ctype: str, body: bytes, head: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
