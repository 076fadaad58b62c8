"""The HTTP status listener, asked with real HTTP requests; /metrics parsed with prometheus_client."""

from __future__ import annotations

import json
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
from dockerdns.stats import FAST_SAMPLE

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


def test_write_methods_refused(app: App) -> None:
    """The listener is read-only: POST, PUT and DELETE get 405; unknown paths 404."""
    for method in ("POST", "PUT", "DELETE"):
        assert get(app, "/records", method)[0] == 405
    assert get(app, "/nope")[0] == 404


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
