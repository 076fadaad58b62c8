"""Wires Settings into the parts: bind, start, reload, stop.

Data flows one way: the docker source and the static records fill the
table; the responder reads it; the servers carry bytes. Nothing here
answers queries or talks DNS.

Thread-safety: `start`, `reload` and `stop` are called from one thread (the
main one); `_on_gateway` comes from the docker source's thread and takes
the lock that guards the server list.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from .config import BRIDGE, Address, ConfigError, RateLimitSettings, Settings
from .forwarder import Forwarder
from .records import STATIC, Record, zone_name
from .resolver import Policy
from .responder import Responder
from .rrl import RateLimit
from .servers import BindError, TcpServer, UdpServer, bind
from .stats import Stats
from .status import StatusServer, View
from .table import RecordTable

log = logging.getLogger("dockerdns")

PORT_ATTEMPTS = 20  # tries at one free port for UDP and TCP alike, when asked for port 0


class StartError(Exception):
    """The server cannot start; the message names the address and what to try."""


def rate_limit_of(settings: RateLimitSettings) -> RateLimit | None:
    if not settings.responses_per_second:
        return None
    return RateLimit(settings.responses_per_second, window=settings.window, slip=settings.slip)


def policy_of(settings: Settings, ns_addresses: tuple[str, ...] = ()) -> Policy:
    return Policy(
        zone=zone_name(settings.domain),
        allow=settings.allow,
        forwarding=settings.forward.enabled,
        soa_ttl=settings.ttl,
        ns_addresses=ns_addresses,
    )


class App:
    """One running dockerdns: table, responder, servers and the docker source."""

    def __init__(self, settings: Settings, *, docker: bool = True):
        self.settings = settings
        self.table = RecordTable(settings.domain)
        self.table.replace(STATIC, settings.records)
        self.forwarder = Forwarder(settings.forward.upstreams)
        self.stats = Stats()
        self.responder = Responder(self.table, policy_of(settings), self._forwarder_for(settings), self.stats)
        self.rate_limit = rate_limit_of(settings.rate_limit)
        self.servers: list[UdpServer | TcpServer] = []
        self.status: StatusServer | None = None
        self._bridge: dict[int, tuple[str, list[UdpServer | TcpServer]]] = {}  # port -> (gateway, servers)
        self._lock = threading.Lock()
        self.source: Any = None
        if docker:
            from .docker_source import DockerSource

            self.source = DockerSource(settings, self.table, on_gateway=self._on_gateway)
            self.source.on_propagation = self.stats.propagation.observe

    def _forwarder_for(self, settings: Settings) -> Forwarder | None:
        return self.forwarder if settings.forward.enabled else None

    def start(self) -> None:
        """Bind every listen address (UDP and TCP), then start serving; StartError if any fails."""
        try:
            for address in self.settings.listen:
                if address.host != BRIDGE:
                    self.servers.extend(self._bind_pair(address))
            if self.settings.http.listen is not None:
                self.status = self._bind_status(self.settings.http.listen)
        except BindError as err:
            self._close(self.servers)
            raise StartError(str(err)) from err
        for server in self.servers:
            server.start()
        self._update_policy()
        if self.status is not None:
            self.status.start()
            log.info("HTTP status on http://%s/ (records, healthz, metrics)", self.status.address)
        log.info("listening on %s", ", ".join(sorted({str(s.address) for s in self.servers})) or "nothing yet")
        if any(a.host == BRIDGE for a in self.settings.listen):
            log.info("waiting for Docker to tell the bridge gateway address")
        if self.source is not None:
            self.source.start()

    def _bind_pair(self, address: Address) -> list[UdpServer | TcpServer]:
        """UDP and TCP on one address; port 0 gets one port free for both."""
        # With port 0 the kernel picks a UDP port whose TCP twin may be in use
        # (an outgoing connection's local port): then try another.
        attempts = PORT_ATTEMPTS if address.port == 0 else 1
        for attempt in range(1, attempts + 1):
            udp = bind(address, socket.SOCK_DGRAM)
            try:
                tcp = bind(Address(address.host, udp.getsockname()[1]), socket.SOCK_STREAM)
            except BindError:
                udp.close()
                if attempt == attempts:
                    raise
                continue
            return [UdpServer(udp, self.responder, rate_limit=self.rate_limit), TcpServer(tcp, self.responder)]
        raise AssertionError("not reached: the last attempt raises")

    def _bind_status(self, address: Address) -> StatusServer:
        view = View(
            snapshot=lambda: self.table.snapshot,
            rows=lambda snapshot: record_rows(snapshot.records()),
            health=self.health,
            stats=self.stats,
            source=lambda: self.source,
            forwarder=lambda: self.responder.forwarder,
            rate_limit=lambda: self.rate_limit,
        )
        try:
            return StatusServer(address, view)
        except OSError as err:
            raise BindError(f"cannot listen on {address} (HTTP): {err.strerror}; check --http") from err

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy when every DNS socket is bound and the table is in sync with Docker."""
        problems = []
        wants_bridge = any(a.host == BRIDGE for a in self.settings.listen)
        with self._lock:
            bridge_bound = bool(self._bridge)
        if wants_bridge and not bridge_bound:
            problems.append("the Docker bridge address is not bound yet")
        if self.source is not None and not self.source.in_sync:
            problems.append("not in sync with Docker")
        snapshot = self.table.snapshot
        details: dict[str, object] = {
            "status": "unavailable" if problems else "ok",
            "listening": [str(a) for a in self.addresses()],
            "docker": "in sync" if self.source is not None and self.source.in_sync else "not in sync",
            "records": sum(len(recs) for recs in snapshot.by_owner.values()),
        }
        if problems:
            details["reason"] = "; ".join(problems)
        return not problems, details

    def _on_gateway(self, gateway: str) -> None:
        """Docker told us the default bridge's gateway: serve `bridge:PORT` there."""
        with self._lock:
            for address in self.settings.listen:
                if address.host != BRIDGE:
                    continue
                current = self._bridge.get(address.port)
                if current is not None and current[0] == gateway:
                    continue
                if current is not None:
                    self._close(current[1])
                try:
                    pair = self._bind_pair(Address(gateway, address.port))
                except BindError as err:
                    log.warning("bridge: %s", err)
                    self._bridge.pop(address.port, None)
                    continue
                for server in pair:
                    server.start()
                self._bridge[address.port] = (gateway, pair)
                self._update_policy(locked=True)
                log.info("listening on %s (the Docker bridge)", Address(gateway, address.port))

    def reload(self, settings: Settings) -> None:
        """Swap in new settings: static records, ttl, upstreams, allow, forwarding, rate limiting."""
        if settings.listen != self.settings.listen:
            log.warning("reload: listen addresses change only on restart")
        previous, self.settings = self.settings, settings
        self.table.replace(STATIC, settings.records)
        self.forwarder.upstreams = settings.forward.upstreams
        self.responder.forwarder = self._forwarder_for(settings)
        self._update_policy()
        if settings.rate_limit != previous.rate_limit:
            self.rate_limit = rate_limit_of(settings.rate_limit)
            for server in self._all_servers():
                if isinstance(server, UdpServer):
                    server.rate_limit = self.rate_limit
        if self.source is not None:
            self.source.update_settings(settings)
        log.info("reloaded %s: %d static records", settings.config_file or "settings", len(settings.records))

    def _update_policy(self, locked: bool = False) -> None:
        """The resolver's policy from the settings and the addresses now bound (for `ns.<zone>`)."""
        servers = self._servers_locked() if locked else self._all_servers()
        hosts = sorted({s.address.host for s in servers} - {"0.0.0.0", "::"})
        self.responder.policy = policy_of(self.settings, tuple(hosts))

    def _servers_locked(self) -> list[UdpServer | TcpServer]:
        return self.servers + [s for _, pair in self._bridge.values() for s in pair]

    def _all_servers(self) -> list[UdpServer | TcpServer]:
        with self._lock:
            return self._servers_locked()

    def addresses(self) -> list[Address]:
        """The addresses actually bound (UDP and TCP share each)."""
        return sorted({s.address for s in self._all_servers()}, key=str)

    def stop(self) -> None:
        if self.source is not None:
            self.source.stop()
        with self._lock:
            for _, pair in self._bridge.values():
                self._close(pair)
            self._bridge.clear()
        self._close(self.servers)
        if self.status is not None:
            self.status.stop()
        self.forwarder.close()

    @staticmethod
    def _close(servers: list[UdpServer | TcpServer]) -> None:
        for server in servers:
            server.stop()


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class _Reloader:
    """Reads the config on its own thread when asked (SIGHUP), and applies it.

    The signal loop only asks: a config path that blocks (a FIFO, a hung
    network file system) holds up this thread and nothing else, so SIGTERM
    is always taken. SIGHUPs that come while a read is under way fold into
    one more read after it. Once stopped, a read that finally returns is
    dropped, never applied to a stopped App.
    """

    def __init__(self, app: App, load: Callable[[], Settings]):
        self._app = app
        self._load = load
        self._wanted = threading.Event()
        self._lock = threading.Lock()  # app.reload against app.stop
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="dockerdns-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        """Stop; returns at once, whatever a read is doing (the thread is a daemon)."""
        with self._lock:
            self._stopped = True
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopped:
                return
            try:
                settings = self._load()
            except ConfigError as err:
                for problem in err.problems:
                    log.error("reload: %s", problem)
                log.error("reload: kept the previous settings")
                continue
            except Exception as err:  # whatever reading the file did: the server keeps running
                log.error("reload: cannot load the settings (%s: %s); kept the previous settings",
                          type(err).__name__, err)
                continue
            with self._lock:
                if self._stopped:
                    return
                try:
                    self._app.reload(settings)
                except Exception:  # a bug; the server keeps running on what it has
                    log.exception("reload: failed; the server goes on with what it had")


def serve(load: Callable[[], Settings], settings: Settings | None = None) -> int:
    """Run the server until SIGTERM/SIGINT; `load` reads the config again on SIGHUP.

    `settings` are the ones already loaded, if any. Returns 0 on a clean
    stop; raises StartError when a socket cannot be bound. The config is
    read again on a thread of its own (_Reloader), never on this one.
    """
    if settings is None:
        settings = load()
    # Signals are taken synchronously by this thread; every thread started
    # from here on inherits the mask, so none of them is interrupted.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS | {signal.SIGHUP})
    app = App(settings)
    app.start()
    reloader = _Reloader(app, load)
    reloader.start()
    try:
        while True:
            signum = signal.sigwait(STOP_SIGNALS | {signal.SIGHUP})
            if signum in STOP_SIGNALS:
                log.info("stopping (%s)", signal.Signals(signum).name)
                break
            reloader.request()
    finally:
        reloader.stop()
        app.stop()
    return 0


def records_of(settings: Settings) -> list[Record]:
    """The records `serve` would publish now: static ones and a one-off read of Docker.

    Raises docker_source.DockerUnavailable when Docker cannot be reached.
    """
    from .docker_source import read_once

    table = RecordTable(settings.domain)
    table.replace(STATIC, settings.records)
    table.replace_all(read_once(settings))
    return table.snapshot.records()


def record_rows(records: list[Record]) -> list[dict[str, object]]:
    """`dockerdns records --json` (and GET /records): one object per record."""
    return [
        {"name": r.name, "type": r.rtype, "value": r.value, "ttl": r.ttl, "owner": r.owner_name} for r in records
    ]


def print_records(settings: Settings, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print the table that would be served; DockerUnavailable when Docker is not reachable."""
    rows = record_rows(records_of(settings))
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    header = {"name": "NAME", "type": "TYPE", "value": "VALUE", "ttl": "TTL", "owner": "CONTAINER"}
    table = [header] + rows
    widths = {key: max(len(str(row[key])) for row in table) for key in header}
    for row in table:
        out.write("  ".join(str(row[key]).ljust(widths[key]) for key in header).rstrip() + "\n")
    return 0


WATCH_POLL = 0.05  # seconds between two looks at the table in `records --watch`


def watch_records(settings: Settings, as_json: bool, out: TextIO = sys.stdout,
                  stop: threading.Event | None = None) -> int:
    """`dockerdns records --watch`: the table, then each change as it happens, until interrupted.

    A change is a line `+ NAME TYPE VALUE TTL CONTAINER` (or `-`); with
    `as_json`, one JSON object per line with a "change" key. Docker being
    unreachable is not fatal here either: the source warns and retries.
    """
    from .docker_source import DockerSource

    table = RecordTable(settings.domain)
    table.replace(STATIC, settings.records)
    source = DockerSource(settings, table)
    source.start()
    stop = stop or threading.Event()
    shown: set[tuple[object, ...]] = set()
    snapshot = None
    try:
        while not stop.is_set():
            if table.snapshot is not snapshot:
                snapshot = table.snapshot
                rows = {tuple(row.values()) for row in record_rows(snapshot.records())}
                for sign, changed in (("-", shown - rows), ("+", rows - shown)):
                    for row in sorted(changed, key=str):
                        if as_json:
                            keys = ("name", "type", "value", "ttl", "owner")
                            out.write(json.dumps({"change": sign, **dict(zip(keys, row))}) + "\n")
                        else:
                            out.write(" ".join([sign, *map(str, row)]) + "\n")
                out.flush()
                shown = rows
            stop.wait(WATCH_POLL)
    finally:
        source.stop()
    return 0
