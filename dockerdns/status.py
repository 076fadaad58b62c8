"""The read-only HTTP listener: GET / (the status page), /changes, /records, /healthz and /metrics.

Rule 1: read-only. GET (and HEAD) only; any other method, TRACE, CONNECT
        and unknown ones included, is 405 with an Allow header, so the
        listener can never change what is served.
Rule 2: it reads what the server already has (the live table snapshot, the
        counters in Stats, the docker source's state) and computes nothing
        on the answering path: metrics are gathered at scrape time.
Rule 3: bounded like the DNS TCP server (connections.py): at most
        MAX_HTTP_CONNECTIONS connections, each on a pool thread; at the cap
        the connection longest without a whole request makes room, so that
        /healthz always gets in. A connection must deliver each request
        within HTTP_IDLE_TIMEOUT of the last answer (or of connecting), and
        within HTTP_REQUEST_TIMEOUT of its first byte; an answer must be
        taken within HTTP_WRITE_TIMEOUT. The accept loop outlives a lack of
        file descriptors or threads.
Rule 4: only a Host that names this listener is answered: an IP address
        (a browser sends one only when the page's origin is that address),
        a name without a dot (`localhost`, a compose service name), a name
        under `localhost.` (RFC 6761 section 6.3), or this machine's
        hostname. A DNS-rebinding page reaches us under a name the attacker
        registered, which has a dot; it gets 421 and never reads /records.
        A request without Host (HTTP/1.0) comes from no browser: answered.
Rule 5: clients that reset or stall cost a sparse log line at debug level
        (an unexpected error: a sparse line at error level), never a
        traceback on stderr; the Server header names no Python version.

Thread-safety: requests are served on pool threads and only read; `stop`
may be called from any thread and does not wait for a poll interval.
"""

from __future__ import annotations

import functools
import io
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from . import page
from .connections import LISTEN_BACKLOG, Slots, accept_forever
from .pool import DaemonPool
from .records import fold
from .settings import Address
from .sparse import Sparse
from .stats import Histogram, Stats, value
from .table import Snapshot

log = logging.getLogger("dockerdns.http")

JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
ALLOW = "GET, HEAD"

MAX_HTTP_CONNECTIONS = 32  # open connections, one pool thread each (Rule 3)
HTTP_IDLE_TIMEOUT = 30.0  # seconds from connecting, or from the last answer, to the end of the next request
HTTP_REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to the end of its headers
HTTP_WRITE_TIMEOUT = 10.0  # seconds for the client to take one answer
MAX_REQUEST_LINE = 8192  # bytes of the request line; longer gets 414


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
        yield GaugeMetricFamily("dockerdns_health_left_out",
                                "Holders of shared names left out of them for being unhealthy or starting",
                                value=snapshot.left_out)
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


def host_allowed(host: str | None, hostname: str) -> bool:
    """True when a request's Host header names this listener (Rule 4); `hostname` is this machine's."""
    if host is None:
        return True
    text = host.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        literal, bracket, _ = text[1:].partition("]")
        try:
            return bool(bracket) and ipaddress.ip_address(literal).version == 6
        except ValueError:
            return False
    name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    name = fold(name).removesuffix(".")
    if not name or not name.isascii():
        return False
    return "." not in name or name.endswith(".localhost") or name == fold(hostname).removesuffix(".")


def _listen(address: Address) -> socket.socket:
    """A listening TCP socket on `address`; OSError (its strerror one plain phrase) when it cannot be bound."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, address.port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class _Writer(io.BufferedIOBase):
    """A socket's writing side: every write is sent whole (within the socket's timeout) or raises."""

    def __init__(self, sock: socket.socket):
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.sendall(data)
        return len(data)


class _Deadline(io.RawIOBase):
    """A socket's reading side with a deadline per request, however slowly its bytes come (Rule 3)."""

    def __init__(self, sock: socket.socket, request_timeout: float):
        self._sock = sock
        self._request_timeout = request_timeout
        self._deadline = 0.0
        self._waiting = True  # no byte of the next request yet

    def expect_request(self, idle_timeout: float) -> None:
        """The next request must be complete within `idle_timeout`."""
        self._deadline = time.monotonic() + idle_timeout
        self._waiting = True

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        now = time.monotonic()
        remaining = self._deadline - now
        if remaining <= 0:
            raise TimeoutError("request timed out")
        self._sock.settimeout(remaining)
        count = self._sock.recv_into(buffer)
        if count and self._waiting:
            self._waiting = False
            self._deadline = min(self._deadline, time.monotonic() + self._request_timeout)
        return count


class StatusServer:
    """An HTTP listener: an accept thread and a pool of connection threads (Rule 3)."""

    def __init__(self, address: Address, view: View, *, max_connections: int = MAX_HTTP_CONNECTIONS,
                 idle_timeout: float = HTTP_IDLE_TIMEOUT, request_timeout: float = HTTP_REQUEST_TIMEOUT,
                 write_timeout: float = HTTP_WRITE_TIMEOUT):
        registry = CollectorRegistry(auto_describe=True)
        registry.register(_Collector(view))
        registry.register(ProcessCollector(registry=None))
        self._sock = _listen(address)
        self.address = Address(address.host, int(self._sock.getsockname()[1]))
        self._handler = _handler(view, registry, self)
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.hostname = socket.gethostname()
        self.slots = Slots(max_connections)
        self._pool = DaemonPool(max_connections, f"http {self.address}")
        self._stopping = threading.Event()
        self._failed = Sparse(log, f"http {self.address}: answering failed", level=logging.ERROR)
        self._dropped = Sparse(log, f"http {self.address}: clients went away (reset, timed out)", level=logging.DEBUG)
        accept = (self._sock, self._take, self._stopping, f"http {self.address}")
        self._thread = threading.Thread(target=accept_forever, args=accept, name=f"http {self.address}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close the listener and every connection; returns at once (no poll to wait out)."""
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self._sock.close()
        self.slots.close_all()
        self._pool.close()

    def _take(self, conn: socket.socket, client: str) -> None:
        if not self.slots.admit(conn):
            conn.close()
            return
        try:
            self._pool.submit(functools.partial(self._serve, conn, client))
        except RuntimeError:  # pool.Unavailable: the accept loop backs off
            self.slots.release(conn)
            conn.close()
            raise

    def _serve(self, conn: socket.socket, client: str) -> None:
        try:
            self._handler(conn, (client, 0), self)
        except OSError:  # reset, broken pipe, timed out: the client's doing (Rule 5)
            self._dropped()
        except Exception:
            self._failed(exc_info=True)
        finally:
            self.slots.release(conn)
            try:
                conn.close()
            except OSError:
                pass


def _handler(view: View, registry: CollectorRegistry, server: StatusServer) -> Callable[..., object]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "dockerdns"
        protocol_version = "HTTP/1.1"  # keep-alive, for scrapers

        def version_string(self) -> str:
            return self.server_version  # no Python version (Rule 5)

        def setup(self) -> None:
            self.connection = self.request
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._reader = _Deadline(self.connection, server.request_timeout)
            self.rfile = io.BufferedReader(self._reader)
            self.wfile = _Writer(self.connection)

        def finish(self) -> None:
            self.rfile.close()
            self.wfile.close()

        def handle_one_request(self) -> None:
            """One request, its deadline, its dispatch; the stdlib's loop calls it until the connection closes."""
            self._reader.expect_request(server.idle_timeout)
            self.close_connection = True
            try:
                self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
                if not self.raw_requestline:
                    return
                if len(self.raw_requestline) > MAX_REQUEST_LINE:
                    self.requestline, self.request_version, self.command = "", "", ""
                    self.send_error(414)
                    return
                if not self.parse_request():  # an error was sent
                    return
            except TimeoutError:
                return  # idle or too slow: closed without a word
            self.close_connection = self.close_connection or self.command not in ("GET", "HEAD")
            server.slots.delivered(self.connection)
            self.connection.settimeout(server.write_timeout)  # sendall: a total for each answer
            if self.command not in ("GET", "HEAD"):
                self._refuse()
            elif not host_allowed(self.headers.get("Host"), server.hostname):
                self._send(421, TEXT, b"421 Misdirected Request: this Host does not name this listener\n",
                           head=self.command == "HEAD")
            else:
                self._respond(head=self.command == "HEAD")

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
            """405 for every method but GET and HEAD (Rule 1); the connection closes, a body may follow."""
            self.send_response(405)
            self.send_header("Allow", ALLOW)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()

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
