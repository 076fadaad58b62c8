"""The docker source against a real engine: the table follows every start, stop and restart.

Each test runs a DockerSource on a fresh RecordTable and waits (deadline
polling) for the table to show what Docker did. Propagation delays are
printed (`pytest -s`), never asserted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dockerd
from dockerdns import docker_source
from dockerdns.config import DockerSettings, Settings
from dockerdns.docker_source import DockerSource, DockerUnavailable, read_once
from dockerdns.records import STATIC, Record
from dockerdns.table import RecordTable

pytestmark = pytest.mark.docker

DOCKER_URL = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
UNREACHABLE = "unix:///nonexistent.sock"
LOGGER = "dockerdns.docker"
GATEWAY_RECORD = Record("gateway.docker.", "A", "192.0.2.53", 5)


def settings_for(url: str = DOCKER_URL, **kw: Any) -> Settings:
    return Settings(docker=DockerSettings(url=url), **kw)


def addresses(table: RecordTable, name: str, rtype: str = "A") -> set[str]:
    """The values of `name`'s `rtype` records in the table's current snapshot."""
    return {r.value for r in table.snapshot.names.get(name, {}).get(rtype, ())}


def ip_on(container: Any, network: str) -> str:
    container.reload()
    ip: str = container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    return ip


@pytest.fixture
def run_source() -> Iterator[Callable[..., tuple[DockerSource, RecordTable]]]:
    """Factory: run_source(url=..., table=None, **kw) -> a started (source, table); stopped at teardown."""
    started: list[DockerSource] = []

    def run(url: str = DOCKER_URL, table: RecordTable | None = None, settings: Settings | None = None,
            **kw: Any) -> tuple[DockerSource, RecordTable]:
        table = table if table is not None else RecordTable()
        source = DockerSource(settings or settings_for(url), table, **kw)
        started.append(source)
        source.start()
        return source, table

    yield run
    for source in started:
        source.stop()


@pytest.fixture
def synced(run_source: Callable[..., tuple[DockerSource, RecordTable]],
           wait_for: Callable[..., Any]) -> tuple[DockerSource, RecordTable]:
    """A source against the local engine, already in sync."""
    source, table = run_source()
    wait_for(lambda: source.in_sync, what="the first sync")
    return source, table


def test_started_container_gets_name(synced: tuple[DockerSource, RecordTable], make_container: Callable[..., Any],
                                     wait_for: Callable[..., Any]) -> None:
    """A container started after the sync answers <name>.docker. with its address."""
    _, table = synced
    c = make_container("web")
    ip = ip_on(c, "bridge")
    wait_for(lambda: addresses(table, f"{c.name}.docker.") == {ip}, what="the A record")
    assert addresses(table, f"{c.name}.bridge.docker.") == {ip}
    assert addresses(table, f"{c.id[:12]}.docker.") == {ip}


def test_sync_finds_running_containers(make_container: Callable[..., Any],
                                       run_source: Callable[..., tuple[DockerSource, RecordTable]],
                                       wait_for: Callable[..., Any]) -> None:
    """Containers already running when the source starts are in the table after the first sync."""
    c = make_container("early")
    ip = ip_on(c, "bridge")
    source, table = run_source()
    wait_for(lambda: source.in_sync, what="the first sync")
    assert addresses(table, f"{c.name}.docker.") == {ip}
    assert source.last_sync is not None


def test_stop_and_remove_drop_the_name(synced: tuple[DockerSource, RecordTable], make_container: Callable[..., Any],
                                       wait_for: Callable[..., Any]) -> None:
    """A stopped container loses its records; so does a removed one."""
    _, table = synced
    stopped, removed = make_container("stopped"), make_container("removed")
    for c in (stopped, removed):
        wait_for(lambda: addresses(table, f"{c.name}.docker."), what=f"{c.name}")
    stopped.stop(timeout=1)
    wait_for(lambda: not addresses(table, f"{stopped.name}.docker."), what="the stopped container's name to go")
    assert stopped.id not in table.snapshot.by_owner
    removed.remove(force=True)
    wait_for(lambda: removed.id not in table.snapshot.by_owner, what="the removed container's records to go")
    assert not addresses(table, f"{removed.name}.docker.")


def test_restart_with_a_new_address(synced: tuple[DockerSource, RecordTable], make_container: Callable[..., Any],
                                    make_network: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """db restarted after another container took its address answers the new address."""
    _, table = synced
    net = make_network("app")
    db = make_container("db", network=net.name)
    name = f"{db.name}.docker."
    old = ip_on(db, net.name)
    wait_for(lambda: addresses(table, name) == {old}, what="db's first address")
    delays = []
    for round_ in range(3):
        db.stop(timeout=1)
        wait_for(lambda: not addresses(table, name), what="db's name to go")
        thief = make_container(f"thief{round_}", network=net.name)
        assert ip_on(thief, net.name) == old, "the engine did not reuse the freed address"
        db.start()
        started = time.perf_counter()
        new = ip_on(db, net.name)
        assert new != old
        wait_for(lambda: addresses(table, name) == {new}, interval=0.0002, what="db's new address")
        delays.append(time.perf_counter() - started)
        assert addresses(table, f"{db.name}.{net.name}.docker.") == {new}
        old = new
    print(f"\npropagation, docker start returned -> table has the new address: "
          f"{', '.join(f'{d * 1000:.1f} ms' for d in delays)} (includes one inspect by the test)")


def test_rename(synced: tuple[DockerSource, RecordTable], make_container: Callable[..., Any],
                docker_client: Any, wait_for: Callable[..., Any]) -> None:
    """After a rename the old name is gone and the new one answers."""
    _, table = synced
    c = make_container("before")
    ip = ip_on(c, "bridge")
    wait_for(lambda: addresses(table, f"{c.name}.docker.") == {ip}, what="the old name")
    new_name = c.name.replace("before", "after")
    docker_client.api.rename(c.id, new_name)
    wait_for(lambda: addresses(table, f"{new_name}.docker.") == {ip}, what="the new name")
    assert not addresses(table, f"{c.name}.docker.")


def test_network_connect_and_disconnect(synced: tuple[DockerSource, RecordTable], make_container: Callable[..., Any],
                                        make_network: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """Connecting a running container adds <name>.<network>.docker.; disconnecting removes it."""
    _, table = synced
    c = make_container("roamer")
    wait_for(lambda: addresses(table, f"{c.name}.docker."), what="the container")
    net = make_network("extra")
    net.connect(c)
    ip = ip_on(c, net.name)
    per_network = f"{c.name}.{net.name}.docker."
    wait_for(lambda: addresses(table, per_network) == {ip}, what="the per-network name")
    assert ip in addresses(table, f"{c.name}.docker.")
    net.disconnect(c)
    wait_for(lambda: not addresses(table, per_network), what="the per-network name to go")
    assert ip not in addresses(table, f"{c.name}.docker.")
    assert addresses(table, f"{c.name}.docker.") == {ip_on(c, "bridge")}


def test_ignored_label_publishes_nothing(synced: tuple[DockerSource, RecordTable],
                                         make_container: Callable[..., Any], wait_for: Callable[..., Any],
                                         caplog: pytest.LogCaptureFixture) -> None:
    """dockerdns.ignore=true: the container publishes no record, and one `ignored:` line says so."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    _, table = synced
    hidden = make_container("hidden", labels={"dockerdns.ignore": "true"})
    sentinel = make_container("sentinel")  # events are handled in order: once it shows, hidden was handled
    wait_for(lambda: addresses(table, f"{sentinel.name}.docker."), what="the sentinel")
    assert hidden.id not in table.snapshot.by_owner
    assert not addresses(table, f"{hidden.name}.docker.")
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert f"ignored: {hidden.id[:12]} {hidden.name}: dockerdns.ignore=true" in lines


def lines_about(caplog: pytest.LogCaptureFixture, cid: str) -> list[str]:
    """The source's log lines that name container `cid` (by its short id)."""
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and cid[:12] in r.getMessage()]


def test_restarting_container_is_not_called_ignored(synced: tuple[DockerSource, RecordTable],
                                                    make_container: Callable[..., Any], wait_for: Callable[..., Any],
                                                    docker_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A container in a restart loop publishes nothing while restarting and is never logged as `ignored:`."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    _, table = synced
    looping = make_container("looping", command=["false"], restart_policy={"Name": "always"})
    wait_for(lambda: docker_client.api.inspect_container(looping.id)["RestartCount"] >= 3, timeout=20,
             what="three restarts")
    sentinel = make_container("sentinel")  # events are handled in order: once it shows, the restarts were handled
    wait_for(lambda: addresses(table, f"{sentinel.name}.docker."), what="the sentinel")
    assert not [line for line in lines_about(caplog, looping.id) if line.startswith("ignored:")]


def test_huge_ttl_label_skips_the_label_only(make_container: Callable[..., Any],
                                             run_source: Callable[..., tuple[DockerSource, RecordTable]],
                                             wait_for: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    """dockerdns.ttl with 4301 digits: the sync succeeds, that container publishes with the default ttl and one
    warning, a container started after it is served, and no connection is counted as lost."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    bad = make_container("bigttl", labels={"dockerdns.ttl": "9" * 4301})
    source, table = run_source()
    wait_for(lambda: source.in_sync, what="the first sync")
    good = make_container("after")
    wait_for(lambda: addresses(table, f"{good.name}.docker."), what="the container started after")
    assert addresses(table, f"{bad.name}.docker.") == {ip_on(bad, "bridge")}
    assert {r.ttl for r in table.snapshot.by_owner[bad.id]} == {Settings().ttl}
    skipped = [line for line in lines_about(caplog, bad.id) if line.startswith("skipped:")]
    assert len(skipped) == 1 and "dockerdns.ttl '999" in skipped[0] and len(skipped[0]) < 300
    source.update_settings(settings_for(ttl=7))  # SIGHUP's path: re-derives every container, raises nothing
    assert {r.ttl for r in table.snapshot.by_owner[good.id]} == {7}
    assert source.in_sync
    assert not [r for r in caplog.records if r.name == LOGGER and "connection" in r.getMessage()]


def test_naming_error_in_one_container_spares_the_others(
        make_container: Callable[..., Any], run_source: Callable[..., tuple[DockerSource, RecordTable]],
        wait_for: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Should naming raise for one container, it publishes nothing with one error line; the rest stay in sync."""
    real = docker_source.records_for_container

    def broken_for_one(inspect: Any, *args: Any) -> Any:
        if "boom" in str(inspect.get("Name")):
            raise ValueError("a bug in naming")
        return real(inspect, *args)

    monkeypatch.setattr(docker_source, "records_for_container", broken_for_one)
    caplog.set_level(logging.INFO, logger=LOGGER)
    boom = make_container("boom")
    before = make_container("before")
    source, table = run_source()
    wait_for(lambda: source.in_sync, what="the first sync")
    after = make_container("after")
    boom.restart(timeout=1)
    sentinel = make_container("sentinel")
    wait_for(lambda: addresses(table, f"{sentinel.name}.docker."), what="the sentinel")
    for served in (before, after):
        assert addresses(table, f"{served.name}.docker.") == {ip_on(served, "bridge")}
    assert boom.id not in table.snapshot.by_owner
    failed = [line for line in lines_about(caplog, boom.id) if line.startswith("failed:")]
    assert failed == [f"failed: {boom.id[:12]} {boom.name}: naming raised ValueError: a bug in naming; "
                      "nothing published for it"]
    assert source.in_sync
    assert not [r for r in caplog.records if r.name == LOGGER and "connection" in r.getMessage()]


def test_netns_sharer_follows_its_owner(synced: tuple[DockerSource, RecordTable], make_container: Callable[..., Any],
                                        make_network: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """A --network container:<owner> container answers the owner's addresses, re-read whenever the owner is."""
    _, table = synced
    owner = make_container("owner")
    sharer = make_container("sharer", network_mode=f"container:{owner.id}")
    ip = ip_on(owner, "bridge")
    wait_for(lambda: addresses(table, f"{sharer.name}.docker.") == {ip}, what="the sharer's name")
    net = make_network("ns")
    net.connect(owner)  # one event, about the owner only
    on_net = ip_on(owner, net.name)
    wait_for(lambda: addresses(table, f"{sharer.name}.{net.name}.docker.") == {on_net},
             what="the sharer's name on the owner's new network")
    owner.stop(timeout=1)
    wait_for(lambda: sharer.id not in table.snapshot.by_owner, what="the sharer's records to go with the owner")


def test_gateway_reported_after_sync(run_source: Callable[..., tuple[DockerSource, RecordTable]],
                                     make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """on_gateway receives the default bridge's gateway address (docker0's) once, after the sync."""
    c = make_container("gw")
    c.reload()
    expected = c.attrs["NetworkSettings"]["Networks"]["bridge"]["Gateway"]
    seen: list[str] = []
    source, _ = run_source(on_gateway=seen.append)
    wait_for(lambda: seen, what="on_gateway")
    assert seen == [expected]
    c.restart(timeout=1)
    wait_for(lambda: source.events_handled >= 2, what="the restart's events")
    assert seen == [expected], "an unchanged gateway is reported once"


def test_update_settings_rederives_without_docker(synced: tuple[DockerSource, RecordTable],
                                                  make_container: Callable[..., Any],
                                                  wait_for: Callable[..., Any]) -> None:
    """update_settings applies a new ttl to every container's records at once."""
    source, table = synced
    c = make_container("ttl")
    wait_for(lambda: c.id in table.snapshot.by_owner, what="the container")
    assert {r.ttl for r in table.snapshot.by_owner[c.id]} == {Settings().ttl}
    source.update_settings(settings_for(ttl=42))
    assert {r.ttl for r in table.snapshot.by_owner[c.id]} == {42}


def test_unreachable_docker_warns_once(run_source: Callable[..., tuple[DockerSource, RecordTable]],
                                       caplog: pytest.LogCaptureFixture, wait_for: Callable[..., Any]) -> None:
    """An unreachable engine: start() does not raise, the table is untouched, one warning over many retries."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    table = RecordTable()
    table.replace(STATIC, [GATEWAY_RECORD])
    before = table.snapshot
    source, _ = run_source(UNREACHABLE, table=table)

    def retries() -> int:
        return sum(1 for r in caplog.records if r.name == LOGGER and "still unreachable" in r.getMessage())

    wait_for(lambda: retries() >= 4, timeout=5, what="four retries")  # 50+100+200+400 ms of back-off
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert warnings == [
        "docker: cannot reach unix:///nonexistent.sock (No such file or directory); serving static records, retrying"
    ]
    assert table.snapshot is before
    assert not source.in_sync and source.last_sync is None
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks for an unreachable engine"


def test_stop_is_prompt(run_source: Callable[..., tuple[DockerSource, RecordTable]],
                        wait_for: Callable[..., Any]) -> None:
    """stop() returns within about a second, whether connected or retrying."""
    connected, _ = run_source()
    retrying, _ = run_source(UNREACHABLE)
    wait_for(lambda: connected.in_sync, what="the sync")
    for source in (connected, retrying):
        started = time.monotonic()
        source.stop()
        assert time.monotonic() - started < 1.5
        assert source._thread is not None and not source._thread.is_alive()


def test_read_once(make_container: Callable[..., Any]) -> None:
    """read_once returns every running container's records, by container id."""
    c = make_container("once")
    ip = ip_on(c, "bridge")
    records = read_once(settings_for())
    assert {r.value for r in records[c.id] if r.name == f"{c.name}.docker."} == {ip}


def test_read_once_unreachable() -> None:
    """read_once against an unreachable engine raises DockerUnavailable with one clear line."""
    with pytest.raises(DockerUnavailable) as info:
        read_once(settings_for(UNREACHABLE))
    assert str(info.value) == "docker: cannot reach unix:///nonexistent.sock (No such file or directory)"


def test_a_socket_nobody_listens_on_is_unreachable_too(tmp_path: Path) -> None:
    """A socket file that exists (a dockerd that died) is left to the SDK, which says why it failed."""
    path = tmp_path / "docker.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))  # bound, never listening
        with pytest.raises(DockerUnavailable) as info:
            read_once(settings_for(f"unix://{path}"))
    assert str(info.value) == f"docker: cannot reach unix://{path} (Connection refused)"


def test_the_sdks_two_slash_socket_form_still_reaches_docker() -> None:
    """unix://var/run/docker.sock (two slashes) is /var/run/docker.sock to the SDK: not a relative path."""
    if not os.path.exists("/var/run/docker.sock"):
        pytest.skip("the engine listens elsewhere")
    read_once(settings_for("unix://var/run/docker.sock"))  # raises DockerUnavailable if it did not reach it


# -- through a proxy: what the source sends, and a connection that goes away ----


class LoggingProxy:
    """A unix-socket proxy to the engine that records every request line and can be cut."""

    def __init__(self, upstream: str, path: str):
        self.upstream = upstream
        self.path = path
        self.requests: list[str] = []
        self._conns: list[socket.socket] = []
        self._stalled: set[socket.socket] = set()
        self._event_streams: set[socket.socket] = set()  # engine-side sockets carrying GET /events
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        listener.settimeout(0.02)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening, remove the socket file and break every connection: the engine is gone."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def stall(self) -> None:
        """Keep the event streams up but pass nothing more of them to the client: a hung stream."""
        with self._lock:
            self._stalled.update(self._event_streams)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.connect(self.upstream)
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        pending = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if requests:
                    pending = self._note(pending + data)
                    if b" /events" in data or b"/events?" in data:
                        with self._lock:
                            self._event_streams.add(dst)
                if src in self._stalled:
                    continue  # swallowed: the client waits for ever
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _note(self, buffer: bytes) -> bytes:
        """Record the request line of each complete request head; bodies are skipped by Content-Length."""
        while b"\r\n\r\n" in buffer:
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            self.requests.append(lines[0])
            for line in lines[1:]:
                key, _, value = line.partition(":")
                if key.strip().lower() == "content-length":
                    buffer = buffer[int(value):]
        return buffer


@pytest.fixture
def proxy(tmp_path: Any) -> Iterator[LoggingProxy]:
    upstream = DOCKER_URL.removeprefix("unix://")
    if not DOCKER_URL.startswith("unix://"):
        pytest.fail(f"the proxy tests need a unix socket engine, not {DOCKER_URL}")
    # Short path: a unix socket path has at most 107 bytes.
    path = f"/tmp/dnst-proxy-{os.getpid()}-{id(tmp_path) % 10**6}.sock"
    p = LoggingProxy(upstream, path)
    p.start()
    yield p
    p.cut()


def test_only_get_requests(proxy: LoggingProxy, run_source: Callable[..., tuple[DockerSource, RecordTable]],
                           make_container: Callable[..., Any], make_network: Callable[..., Any],
                           wait_for: Callable[..., Any], docker_client: Any) -> None:
    """Through a logging proxy: the source only ever sends GET requests."""
    source, table = run_source(proxy.url, on_gateway=lambda _: None)
    wait_for(lambda: source.in_sync, what="the sync")
    net = make_network("get")
    c = make_container("get", network=net.name)
    wait_for(lambda: addresses(table, f"{c.name}.docker."), what="the container")
    docker_client.api.rename(c.id, c.name + "-x")
    wait_for(lambda: addresses(table, f"{c.name}-x.docker."), what="the rename")
    c.stop(timeout=1)
    wait_for(lambda: c.id not in table.snapshot.by_owner, what="the stop")
    assert proxy.requests, "nothing went through the proxy"
    methods = {line.split(" ", 1)[0] for line in proxy.requests}
    assert methods == {"GET"}, proxy.requests
    paths = {line.split(" ")[1].split("?")[0].split("/", 2)[-1] for line in proxy.requests}
    assert {"events", "containers/json", "networks/bridge"} <= paths


def test_lost_connection_keeps_records_then_resyncs(
    proxy: LoggingProxy, run_source: Callable[..., tuple[DockerSource, RecordTable]],
    make_container: Callable[..., Any], wait_for: Callable[..., Any], caplog: pytest.LogCaptureFixture,
) -> None:
    """While the engine is unreachable the table keeps its records; once back, a re-sync drops and adds."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    table = RecordTable()
    table.replace(STATIC, [GATEWAY_RECORD])
    source, _ = run_source(proxy.url, table=table)
    wait_for(lambda: source.in_sync, what="the sync")
    leaver = make_container("leaver")
    wait_for(lambda: leaver.id in table.snapshot.by_owner, what="the leaver")
    proxy.cut()
    wait_for(lambda: not source.in_sync, what="the source to notice")
    kept = table.snapshot
    leaver.stop(timeout=1)  # unseen: the source cannot reach the engine
    newcomer = make_container("newcomer")
    assert table.snapshot is kept, "the table changed while the engine was unreachable"
    assert leaver.id in kept.by_owner
    proxy.start()
    wait_for(lambda: newcomer.id in table.snapshot.by_owner, what="the newcomer after the re-sync")
    wait_for(lambda: leaver.id not in table.snapshot.by_owner, what="the leaver to go")
    assert addresses(table, "gateway.docker.") == {"192.0.2.53"}, "static records are kept"

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == LOGGER]

    # The "connected" line follows the table swap; wait for it, do not race it.
    wait_for(lambda: sum(m.startswith("docker: connected") for m in messages()) == 2, what="a second 'connected'")
    lost = [m for m in messages() if m.startswith("docker: lost the connection")]
    assert len(lost) == 1, messages()


def test_hung_event_stream_is_noticed_and_resynced(
    proxy: LoggingProxy, run_source: Callable[..., tuple[DockerSource, RecordTable]],
    make_container: Callable[..., Any], wait_for: Callable[..., Any], caplog: pytest.LogCaptureFixture,
) -> None:
    """An event stream that hangs without ending is caught by the watchdog: one warning, then a re-sync."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    source, table = run_source(proxy.url)
    source.watch_interval = 0.2
    wait_for(lambda: source.in_sync, what="the sync")
    proxy.stall()  # the stream stays open and says nothing more
    unseen = make_container("unseen")
    wait_for(lambda: unseen.id in table.snapshot.by_owner, timeout=15, what="the container after the re-sync")
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("docker: lost the connection")]
    assert len(lost) == 1 and "the event stream missed changes" in lost[0], lost


def test_daemon_restart(run_source: Callable[..., tuple[DockerSource, RecordTable]],
                        make_container: Callable[..., Any], docker_client: Any,
                        wait_for: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    """dockerd restarted under a running source: the table is untouched while it is down, then re-synced."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    table = RecordTable()
    table.replace(STATIC, [GATEWAY_RECORD])
    source, _ = run_source(table=table)
    wait_for(lambda: source.in_sync, what="the sync")
    doomed = make_container("doomed")
    wait_for(lambda: doomed.id in table.snapshot.by_owner, what="the doomed container")
    try:
        dockerd.stop()
        wait_for(lambda: not source.in_sync, what="the source to notice")
        down = table.snapshot
        retries = sum("still unreachable" in r.getMessage() for r in caplog.records)
        wait_for(lambda: sum("still unreachable" in r.getMessage() for r in caplog.records) >= retries + 3,
                 timeout=10, what="three retries while dockerd is down")
        assert table.snapshot is down, "the table changed while dockerd was down"
        assert addresses(table, "gateway.docker.") == {"192.0.2.53"}
    finally:
        dockerd.ensure_running()
    newcomer = make_container("newcomer")
    wait_for(lambda: source.in_sync, timeout=15, what="the re-sync")
    wait_for(lambda: newcomer.id in table.snapshot.by_owner, what="the container started after the restart")
    wait_for(lambda: doomed.id not in table.snapshot.by_owner, what="the container that died with dockerd")
    assert addresses(table, "gateway.docker.") == {"192.0.2.53"}
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("docker: lost the connection"), warnings


def test_restart_published_when_the_start_ends(synced: tuple[DockerSource, RecordTable],
                                               make_network: Callable[..., Any],
                                               make_container: Callable[..., Any],
                                               caplog: pytest.LogCaptureFixture,
                                               wait_for: Callable[..., Any]) -> None:
    """A restarting container's new address comes from the inspect after its start, never from the connect."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    source, table = synced
    net = make_network("early")
    db = make_container("early-db", network=net.name)
    name = f"{db.name}.docker."
    wait_for(lambda: addresses(table, name), what="the first address")
    db.stop(timeout=0)
    wait_for(lambda: not addresses(table, name), what="the name to go")
    squatter = make_container("early-squatter", network=net.name)  # takes the freed address
    db.start()
    db.reload()
    new = db.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
    wait_for(lambda: addresses(table, name) == {new}, what="the new address")
    early = [r for r in caplog.records if r.getMessage().startswith(f"early: {db.id[:12]}")]
    assert not early, "a starting container was published from its connect event, before its start ended"
    assert squatter.id in table.snapshot.by_owner
