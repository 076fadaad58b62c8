"""The HTTP status listener, asked with real HTTP requests; /metrics parsed with prometheus_client."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import dns.message
import dns.query
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dockerdns.app import App
from dockerdns.config import Address, DockerSettings, ForwardSettings, HttpSettings, Settings
from dockerdns.records import Record
from dockerdns.stats import FAST_SAMPLE, Stats
from dockerdns.status import MAX_HTTP_CONNECTIONS, StatusServer, View, host_allowed
from dockerdns.table import RecordTable

STATIC = (Record("gateway.docker.", "A", "172.17.0.1", 5),)


@pytest.fixture
def app() -> Iterator[App]:
    running = App(Settings(listen=(Address("127.0.0.1", 0),), records=STATIC,
                           http=HttpSettings(Address("127.0.0.1", 0)), forward=ForwardSettings(False, ())),
                  docker=False)
    running.start()
    yield running
    running.stop()


def get(app: App, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    assert app.status is not None
    url = f"http://{app.status.address}{path}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def ask(app: App, name: str) -> None:
    addr = app.addresses()[0]
    dns.query.udp(dns.message.make_query(name, "A"), addr.host, port=addr.port, timeout=3)


def test_records_same_json_as_the_command(app: App) -> None:
    """GET /records lists the live table with the keys of `records --json`."""
    code, ctype, body = get(app, "/records")
    assert code == 200 and ctype == "application/json"
    assert json.loads(body) == [{"name": "gateway.docker.", "type": "A", "value": "172.17.0.1", "ttl": 5,
                                 "owner": "static", "health": "none"}]
    app.table.replace("c1", [Record("web.docker.", "A", "10.0.0.2", 5, "c1", "web")])
    assert {"name": "web.docker.", "type": "A", "value": "10.0.0.2", "ttl": 5, "owner": "web",
            "health": "none"} in json.loads(
        get(app, "/records")[2])


def test_healthz_without_docker_part(app: App) -> None:
    """/healthz is 200 with a small JSON object when the sockets are bound (no Docker part here)."""
    code, _, body = get(app, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"


def request(app: App, method: str, path: str = "/records", **headers: str) -> http.client.HTTPResponse:
    """One request on a fresh connection, with `headers` as given (Host included); the response, read."""
    assert app.status is not None
    conn = http.client.HTTPConnection(app.status.address.host, app.status.address.port, timeout=5)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "BREW", "get"])
def test_every_other_method_gets_405(app: App, method: str) -> None:
    """The listener is read-only: every method but GET and HEAD, unknown ones too, gets 405 with an Allow header."""
    response = request(app, method)
    assert response.status == 405 and response.headers["Allow"] == "GET, HEAD"


def test_head_and_unknown_paths(app: App) -> None:
    """HEAD answers like GET without a body; unknown paths get 404."""
    assert request(app, "HEAD", "/healthz").status == 200
    assert get(app, "/nope")[0] == 404


def test_server_header_names_no_python() -> None:
    """The Server header says dockerdns and nothing about Python."""
    running = App(Settings(listen=(Address("127.0.0.1", 0),), http=HttpSettings(Address("127.0.0.1", 0)),
                           forward=ForwardSettings(False, ())), docker=False)
    running.start()
    try:
        assert request(running, "GET", "/healthz").headers["Server"] == "dockerdns"
    finally:
        running.stop()


@pytest.mark.parametrize(
    "host, allowed",
    [
        (None, True),
        ("127.0.0.1:5380", True),
        ("172.17.0.1", True),
        ("[::1]:5380", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST:5380", True),
        ("localhost.", True),
        ("dockerdns:5380", True),  # a compose service name: no dot, no registered domain behind it
        ("app.localhost", True),
        ("buildhost.example.net:5380", True),  # this machine's hostname
        ("evil.example", False),
        ("evil.example:5380", False),
        ("127.0.0.1.nip.io", False),
        ("localhost.evil.example", False),
        ("[evil.example]", False),
        ("\u212aocalhost.", False),
        ("", False),
    ],
)
def test_host_allowed(host: str | None, allowed: bool) -> None:
    """Only a Host that names this listener is answered (IP, dot-less name, *.localhost, the machine's hostname)."""
    assert host_allowed(host, "buildhost.example.net") is allowed


def test_dns_rebinding_host_gets_421(app: App) -> None:
    """A page whose name was rebound to us sends its own Host: 421 with a one-line body, and no records."""
    assert app.status is not None
    port = app.status.address.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/records", headers={"Host": f"attacker.example:{port}"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 421 and body.count(b"\n") == 1 and b"gateway" not in body
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"{socket.gethostname()}:{port}"):
        assert request(app, "GET", "/records", Host=host).status == 200


def test_reset_clients_print_no_traceback(app: App, capfd: pytest.CaptureFixture[str],
                                          wait_for: Callable[..., Any]) -> None:
    """Clients that reset in the middle of a request or of an answer leave no traceback on stderr."""
    assert app.status is not None
    addr = (app.status.address.host, app.status.address.port)
    for partial in (b"GET /records HTTP/1.1\r\nHost: localhost\r\n", b"GET /metr", b""):
        sock = socket.create_connection(addr, timeout=5)
        sock.sendall(partial)
        wait_for(lambda: len(app.status.slots) == 1, timeout=5, what="the connection to be taken")  # type: ignore
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        wait_for(lambda: len(app.status.slots) == 0, timeout=5, what="the server to notice")  # type: ignore
    assert get(app, "/healthz")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def make_view(table: RecordTable) -> View:
    return View(snapshot=lambda: table.snapshot, rows=lambda snapshot: [], health=lambda: (True, {"status": "ok"}),
                stats=Stats(), source=lambda: None, forwarder=lambda: None, rate_limit=lambda: None)


@pytest.fixture
def status() -> Iterator[StatusServer]:
    """A StatusServer with short timeouts: idle 0.6 s, a request's bytes 0.4 s."""
    server = StatusServer(Address("127.0.0.1", 0), make_view(RecordTable()), idle_timeout=0.6, request_timeout=0.4)
    server.start()
    yield server
    server.stop()


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `timeout` seconds."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_and_slow_connections_are_closed(status: StatusServer) -> None:
    """An idle connection is closed after the idle timeout, a request trickled byte by byte after the request
    timeout; a client that keeps asking keeps its connection."""
    addr = (status.address.host, status.address.port)
    started = time.monotonic()
    idle = socket.create_connection(addr)
    assert closed_within(idle, 3.0) and 0.5 <= time.monotonic() - started < 3.0
    slow = socket.create_connection(addr)
    started = time.monotonic()
    for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n":
        try:
            slow.send(bytes([byte]))
        except OSError:
            break
        if closed_within(slow, 0.05):
            break
    assert time.monotonic() - started < 1.5, "a trickled request was never cut off"
    busy = http.client.HTTPConnection(*addr, timeout=5)
    for _ in range(8):  # 8 x 0.2 s: past the idle timeout, on one connection
        busy.request("GET", "/healthz", headers={"Host": "localhost"})
        assert busy.getresponse().read() == b'{"status": "ok"}\n'
        time.sleep(0.2)  # the pause between a scraper's requests, which is what is tested
    busy.close()


def test_thousand_idle_connections_bounded(app: App) -> None:
    """1,000 idle connections hold at most MAX_HTTP_CONNECTIONS threads and slots, and /healthz still answers."""
    assert app.status is not None
    addr = (app.status.address.host, app.status.address.port)
    before = threading.active_count()
    clients = []
    try:
        for _ in range(1000):
            clients.append(socket.create_connection(addr, timeout=5))
        started = time.monotonic()
        code, _, _ = get(app, "/healthz")
        assert code == 200 and time.monotonic() - started < 2.0
        assert len(app.status.slots) <= MAX_HTTP_CONNECTIONS
        assert threading.active_count() - before <= MAX_HTTP_CONNECTIONS + 2
    finally:
        for sock in clients:
            sock.close()


def test_listen_backlog_at_least_128(app: App) -> None:
    """The listener queues at least 128 pending connections (5 before: 200 connects took 33 s)."""
    assert app.status is not None
    out = subprocess.run(["ss", "-Hltn", f"sport = :{app.status.address.port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[2]) >= 128  # State Recv-Q Send-Q ...: for a listener, Send-Q is the backlog


def test_stop_is_immediate() -> None:
    """stop() returns at once: it does not wait out a poll interval (five start/stop cycles in under 0.25 s)."""
    spent = 0.0
    for _ in range(5):
        server = StatusServer(Address("127.0.0.1", 0), make_view(RecordTable()))
        server.start()
        started = time.monotonic()
        server.stop()
        spent += time.monotonic() - started
    assert spent < 0.25


def test_metrics_parse_and_count(app: App) -> None:
    """/metrics parses as Prometheus text and counts queries by type, transport and rcode."""
    for _ in range(40):
        ask(app, "gateway.docker")  # every one from the answer index, the first included
    ask(app, "absent.docker")
    code, ctype, body = get(app, "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    queries = {(s.labels["qtype"], s.labels["transport"], s.labels["rcode"]): s.value
               for s in families["dockerdns_queries"].samples if s.name == "dockerdns_queries_total"}
    assert queries[("A", "udp", "NOERROR")] == 40
    assert queries[("A", "udp", "NXDOMAIN")] == 1
    latency = {s.labels.get("le"): s.value for s in families["dockerdns_answer_latency_seconds"].samples
               if s.name.endswith("_bucket")}
    # Every answer came from the index: one in FAST_SAMPLE is timed and stands for FAST_SAMPLE of them
    # (timing each would cost more than answering it).
    assert latency["+Inf"] % FAST_SAMPLE == 0 and 41 - FAST_SAMPLE < latency["+Inf"] <= 41 + FAST_SAMPLE
    assert families["dockerdns_table_records"].samples[0].value == 1
    for name in ("dockerdns_forwarded_queries", "dockerdns_upstream_failures", "dockerdns_docker_events",
                 "dockerdns_last_sync_timestamp_seconds", "dockerdns_propagation_delay_seconds"):
        assert name in families


@pytest.mark.docker
def test_healthz_follows_docker(docker_client: Any, wait_for: Callable[..., Any]) -> None:
    """/healthz is 200 once in sync with a real engine, and 503 with the reason when Docker is unreachable."""
    good = App(Settings(listen=(Address("127.0.0.1", 0),), http=HttpSettings(Address("127.0.0.1", 0)),
                        forward=ForwardSettings(False, ())))
    good.start()
    try:
        wait_for(lambda: get(good, "/healthz")[0] == 200, what="healthy")
        assert json.loads(get(good, "/healthz")[2])["docker"] == "in sync"
    finally:
        good.stop()
    bad = App(Settings(listen=(Address("127.0.0.1", 0),), http=HttpSettings(Address("127.0.0.1", 0)),
                       docker=DockerSettings("unix:///nonexistent.sock"), forward=ForwardSettings(False, ())))
    bad.start()
    try:
        code, _, body = get(bad, "/healthz")
        assert code == 503 and "Docker" in json.loads(body)["reason"]
    finally:
        bad.stop()


def test_metrics_count_holders_left_out_for_health(app: App) -> None:
    """/metrics shows how many holders of shared names are left out for their health."""
    app.table.replace("c1", [Record("web.p.docker.", "A", "10.0.0.1", 1, "c1", health="healthy")])
    app.table.replace("c2", [Record("web.p.docker.", "A", "10.0.0.2", 1, "c2", health="unhealthy")])
    families = {f.name: f for f in text_string_to_metric_families(get(app, "/metrics")[2].decode())}
    assert families["dockerdns_health_left_out"].samples[0].value == 1
