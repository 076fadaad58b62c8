"""Wires Settings into the parts: bind, start, reload, stop.

Data flows one way: the docker source, the Swarm source and the static
records fill the table; the responder reads it; the servers carry bytes.
Nothing here answers queries or talks DNS.

Thread-safety: `start`, `reload` and `stop` are called from one thread (the
main one); `_on_gateway` comes from the docker source's thread and takes
the lock that guards the server list; `_on_swarm_active` comes from the
Swarm source's thread and only hands the docker source new settings.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TextIO

from .cache import UpstreamCache
from .changes import Change, Changes, ChangeWatcher
from .config import BRIDGE, Address, ConfigError, RateLimitSettings, Settings, host_networks
from .forwarder import Forwarder
from .records import STATIC, Record, zone_name
from .resolver import Policy
from .responder import Responder
from .rrl import LOOPBACK, RateLimit
from .settings import SWARM_OFF
from .servers import BindError, TcpServer, UdpServer, bind
from .stats import Stats
from .status import StatusServer, View
from .table import BREATHER, SERVER, RecordTable

log = logging.getLogger("dockerdns")

FREEZE_RECORDS = 10_000  # static records from which the C heap is trimmed after loading them
SWITCH_INTERVAL = 0.0002  # seconds: sys.setswitchinterval, see App.start
PORT_ATTEMPTS = 20  # tries at one free port for UDP and TCP alike, when asked for port 0


class StartError(Exception):
    """The server cannot start; the message names the address and what to try."""


def rate_limit_of(settings: RateLimitSettings, table: RecordTable) -> RateLimit | None:
    if not settings.responses_per_second:
        return None
    # Rule 5 of rrl: loopback, the host's own addresses and those of running containers are never limited.
    return RateLimit(settings.responses_per_second, window=settings.window, slip=settings.slip,
                     exempt=LOOPBACK + host_networks(), local=lambda client: client in table.snapshot.hosts)


def policy_of(settings: Settings) -> Policy:
    return Policy(allow=settings.allow, forwarding=settings.forward.enabled)


def _trim_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim), where there is one.

    Reading a large YAML config leaves tens of MB of freed parser memory
    behind the records kept; glibc keeps it unless asked. Elsewhere, nothing.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _tighten_timers() -> None:
    """Timer slack TIMER_SLACK_NS for this thread and every thread it starts (prctl, Linux; elsewhere none).

    A table writer's pause (table.py Rule 6) asks for 50 µs; with the kernel's
    default slack of 50 µs it took 140 µs here, with 1 µs 85: a large change
    spends that much less of its time asleep.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
    except (AttributeError, OSError):
        pass


def _settle(app: App) -> None:
    """Put what the process has loaded by now out of the cyclic collector's sight (gc.freeze).

    The modules, the config and its table live as long as the process. A
    full collection walks every object it sees, in one call that holds the
    GIL: 15-20 ms with them in sight, once every few reloads or bursts of
    events, while queries wait; without them, under 1 ms. A large static
    table also gives the C heap's free pages back.
    """
    gc.collect()
    gc.freeze()
    if app.table.snapshot.record_count >= FREEZE_RECORDS:
        _trim_heap()


class App:
    """One running dockerdns: table, responder, servers and the docker source."""

    def __init__(self, settings: Settings, *, docker: bool = True):
        self.settings = settings
        self.table = RecordTable(settings.domain, settings.ttl)
        self.table.replace(STATIC, settings.records)
        self.forwarder = Forwarder(settings.forward.upstreams, max_ttl=settings.forward.max_ttl)
        self.stats = Stats()
        self.responder = Responder(self.table, policy_of(settings), self._forwarder_for(settings), self.stats,
                                   UpstreamCache(settings.forward.cache_size))
        self.rate_limit = rate_limit_of(settings.rate_limit, self.table)
        self.servers: list[UdpServer | TcpServer] = []
        self.status: StatusServer | None = None
        self._bridge: dict[int, tuple[str, list[UdpServer | TcpServer]]] = {}  # port -> (gateway, servers)
        self._lock = threading.Lock()
        self.source: Any = None
        self.swarm: Any = None  # the SwarmSource, while Swarm names are not off
        if docker:
            from .docker_source import DockerSource

            self.swarm = self._swarm_source(settings)
            self.source = DockerSource(self._docker_settings(settings), self.table, on_gateway=self._on_gateway)
            self.source.on_propagation = self.stats.propagation.observe
        self._watcher = watch_changes(self.table, self.source)
        self.changes: Changes = self._watcher.changes

    # -- Swarm ----------------------------------------------------------------

    def _swarm_source(self, settings: Settings) -> Any:
        """A SwarmSource for `settings`, or None when Swarm names are off."""
        if not settings.swarm.enabled:
            return None
        from .swarm_source import SwarmSource

        return SwarmSource(settings, self.table, on_active=self._on_swarm_active)

    def _docker_settings(self, settings: Settings) -> Settings:
        """The settings of the docker source: Swarm off for it while no Swarm source serves names.

        Task containers are named by the Swarm rules while those are on (naming.SWARM_TASK); in
        auto mode that is known only once the engine has said whether it is a manager.
        """
        if self.swarm is None or self.swarm.active is not False:
            return settings
        return replace(settings, swarm=replace(settings.swarm, url=SWARM_OFF))

    def _on_swarm_active(self, active: bool) -> None:
        """The Swarm source found the engine (auto mode) to be a manager, or not: re-derive the containers."""
        if self.source is not None:
            self.source.update_settings(self._docker_settings(self.settings))

    def _forwarder_for(self, settings: Settings) -> Forwarder | None:
        return self.forwarder if settings.forward.enabled else None

    def start(self) -> None:
        """Bind every listen address (UDP and TCP), then start serving; StartError if any fails."""
        # A thread that wants the GIL (a query) waits at most this long for one that holds it (a
        # reload parsing its config, a batch of events): 5 ms by default, the p99 of a busy server.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self.table.breathing = True  # queries are served from here on: writers pause for them (table.py Rule 6)
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
        self._watcher.start()
        if self.source is not None:
            self.source.start()
        if self.swarm is not None:
            self.swarm.start()

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
            # Reserved TCP slots go to clients the table knows: running containers (servers.py Rule 2).
            known = self._known_client
            return [UdpServer(udp, self.responder, rate_limit=self.rate_limit),
                    TcpServer(tcp, self.responder, known=known)]
        raise AssertionError("not reached: the last attempt raises")

    def _known_client(self, client: str) -> bool:
        return client in self.table.snapshot.hosts

    def _bind_status(self, address: Address) -> StatusServer:
        view = View(
            snapshot=lambda: self.table.snapshot,
            rows=lambda snapshot: record_rows(snapshot.records()),
            health=self.health,
            stats=self.stats,
            source=lambda: self.source,
            forwarder=lambda: self.responder.forwarder,
            rate_limit=lambda: self.rate_limit,
            changes=lambda: [change.as_json() for change in self.changes.recent()],
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
            "records": snapshot.record_count,
            "forwarding": self.settings.forward.enabled,
            "upstreams": [str(a) for a in self.forwarder.upstreams],
            # Not a problem when out of sync: the last known Swarm names are served (DESIGN.md, "Docker Swarm").
            "swarm": "off" if self.swarm is None or self.swarm.active is False
            else "in sync" if self.swarm.in_sync else "not in sync",
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
        self.table.configure(settings.ttl)
        self.table.replace(STATIC, settings.records)
        self.forwarder.upstreams = settings.forward.upstreams
        self.forwarder.max_ttl = settings.forward.max_ttl
        self.responder.forwarder = self._forwarder_for(settings)
        if settings.forward != previous.forward:
            self.responder.cache = UpstreamCache(settings.forward.cache_size)  # none kept from before
        self._update_policy()
        if settings.rate_limit != previous.rate_limit:
            self.rate_limit = rate_limit_of(settings.rate_limit, self.table)
            for server in self._all_servers():
                if isinstance(server, UdpServer):
                    server.rate_limit = self.rate_limit
        if self.source is not None:
            self._reload_swarm(previous, settings)
            self.source.update_settings(self._docker_settings(settings))
        log.info("reloaded %s: %d static records", settings.config_file or "settings", len(settings.records))

    def _reload_swarm(self, previous: Settings, settings: Settings) -> None:
        """New Swarm settings: a new url (or off) starts over; anything else re-derives the names."""
        if settings.swarm.url == previous.swarm.url and self.swarm is not None:
            self.swarm.update_settings(settings)
            return
        if self.swarm is not None:
            self.swarm.stop()
            self.swarm.remove_all()
        self.swarm = self._swarm_source(settings)
        if self.swarm is not None:
            self.swarm.start()

    def _update_policy(self, locked: bool = False) -> None:
        """The resolver's policy from the settings, and `ns.<zone>`'s addresses: those now bound."""
        servers = self._servers_locked() if locked else self._all_servers()
        bound = {s.address.host for s in servers}
        hosts = sorted(bound - {"0.0.0.0", "::"})
        if bound & {"0.0.0.0", "::"}:
            # A wildcard listen address stands for every address of the machine (of its family).
            families = {4 if host == "0.0.0.0" else 6 for host in bound & {"0.0.0.0", "::"}}
            hosts = sorted(set(hosts) | {str(net.network_address) for net in host_networks()
                                         if net.version in families and not net.network_address.is_link_local})
        self.responder.policy = policy_of(self.settings)
        name = f"ns.{zone_name(self.settings.domain)}"
        self.table.replace(SERVER, [
            Record(name, "AAAA" if ":" in host else "A", host, self.settings.ttl, SERVER, "dockerdns") for host in hosts
        ])

    def _servers_locked(self) -> list[UdpServer | TcpServer]:
        return self.servers + [s for _, pair in self._bridge.values() for s in pair]

    def _all_servers(self) -> list[UdpServer | TcpServer]:
        with self._lock:
            return self._servers_locked()

    def addresses(self) -> list[Address]:
        """The addresses actually bound (UDP and TCP share each)."""
        return sorted({s.address for s in self._all_servers()}, key=str)

    def stop(self) -> None:
        if self.swarm is not None:
            self.swarm.stop()
        if self.source is not None:
            self.source.stop()
        self._watcher.stop()
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
PR_SET_TIMERSLACK = 29  # prctl(2)
TIMER_SLACK_NS = 1000
RELOAD_STOP_WAIT = 1.0  # seconds a stop waits for a reload being applied (DESIGN.md: exit within 2 s)


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
        """Stop: no reload is applied once this returns, but for one still being applied after
        RELOAD_STOP_WAIT (a very large table's; the thread is a daemon, and the process is ending).
        Returns at once whatever a read is doing."""
        self._stopped = True  # a read that ends later is dropped: checked under the lock before applying
        self._wanted.set()
        if self._lock.acquire(timeout=RELOAD_STOP_WAIT):
            self._lock.release()
        else:
            log.warning("stopping while a reload is still being applied")

    def _run(self) -> None:
        # At the process's own priority: a lower one (nice 19 was tried) lets another process on the core
        # preempt this thread while it holds the GIL, and every query then waits with it: p99 300 ms
        # under a CPU hog with 5 reloads a second, against 7 ms at nice 0 (and threads a reload starts,
        # Swarm's, would inherit it).
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
                if self._stopped:
                    return  # stopped while reading: nothing to report
                log.error("reload: cannot load the settings (%s: %s); kept the previous settings",
                          type(err).__name__, err)
                continue
            time.sleep(BREATHER)  # between the read's last step and the table's first (table.py Rule 6)
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
    _tighten_timers()
    app = App(settings)
    app.start()
    _settle(app)
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


def watch_changes(table: RecordTable, source: Any) -> ChangeWatcher:
    """The one source of change records (GET /changes, the status page, `records --watch`) for `table`."""
    watcher = ChangeWatcher(Changes(lambda: table.snapshot))
    if source is not None:
        source.on_event = watcher.on_event
    return watcher


def records_of(settings: Settings) -> list[Record]:
    """The records `serve` would publish now: static ones and a one-off read of Docker (and of the Swarm).

    Raises docker_source.DockerUnavailable when Docker cannot be reached; a
    Swarm manager that cannot be read is one warning, and no Swarm names.
    """
    from .docker_source import read_once
    from .swarm_source import SwarmUnavailable
    from .swarm_source import read_once as read_swarm

    try:
        swarm_on, services = read_swarm(settings)
    except SwarmUnavailable as err:
        if settings.swarm.url is not None:  # in auto mode, the engine is Docker's: read_once says what is wrong
            log.warning("%s; no Swarm names", err)
        swarm_on, services = settings.swarm.url not in (None, SWARM_OFF), {}
    if not swarm_on:
        settings = replace(settings, swarm=replace(settings.swarm, url=SWARM_OFF))
    table = RecordTable(settings.domain)
    table.replace(STATIC, settings.records)
    table.replace_all({**read_once(settings), **services})
    return table.snapshot.records()


def record_rows(records: list[Record]) -> list[dict[str, object]]:
    """`dockerdns records --json` (and GET /records): one object per record."""
    return [
        {"name": r.name, "type": r.rtype, "value": r.value, "ttl": r.ttl, "owner": r.owner_name, "health": r.health}
        for r in records
    ]


def print_records(settings: Settings, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print the table that would be served; DockerUnavailable when Docker is not reachable."""
    rows = record_rows(records_of(settings))
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    header = {"name": "NAME", "type": "TYPE", "value": "VALUE", "ttl": "TTL", "owner": "CONTAINER", "health": "HEALTH"}
    table = [header] + rows
    widths = {key: max(len(str(row[key])) for row in table) for key in header}
    for row in table:
        out.write("  ".join(str(row[key]).ljust(widths[key]) for key in header).rstrip() + "\n")
    return 0


WATCH_POLL = 0.05  # seconds `records --watch` waits for a change before it looks whether to stop


def watch_records(settings: Settings, as_json: bool, out: TextIO = sys.stdout,
                  stop: threading.Event | None = None) -> int:
    """`dockerdns records --watch`: the table, then each change as it happens, until interrupted.

    The changes are the ones GET /changes lists (one source: dockerdns.changes);
    the table comes first as each owner's first change. A change is lines
    `- NAME TYPE VALUE TTL CONTAINER` for the records it lost, then `+` for
    the records it gained; with
    `as_json`, one JSON object per line with a "change" key. Docker being
    unreachable is not fatal here either: the source warns and retries.
    """
    from .docker_source import DockerSource
    from .swarm_source import SwarmSource

    table = RecordTable(settings.domain)
    table.replace(STATIC, settings.records)
    source = DockerSource(settings, table)
    swarm_off = replace(settings, swarm=replace(settings.swarm, url=SWARM_OFF))
    swarm = SwarmSource(settings, table, on_active=lambda on: source.update_settings(settings if on else swarm_off))
    watcher = watch_changes(table, source)
    seen: queue.Queue[Change] = queue.Queue()
    watcher.changes.subscribe(seen.put)
    watcher.start()
    source.start()
    if settings.swarm.enabled:
        swarm.start()
    stop = stop or threading.Event()
    try:
        while not stop.is_set():
            try:
                _print_change(seen.get(timeout=WATCH_POLL), as_json, out)
            except queue.Empty:
                continue
            while not seen.empty():
                _print_change(seen.get_nowait(), as_json, out)
            out.flush()
    finally:
        swarm.stop()
        source.stop()
        watcher.stop()
    return 0


def _print_change(change: Change, as_json: bool, out: TextIO) -> None:
    """The lines of one change: its records lost (`-`), then gained (`+`)."""
    for sign, records in (("-", change.removed), ("+", change.added)):
        for row in sorted(record_rows(list(records)), key=lambda r: tuple(map(str, r.values()))):
            if as_json:
                out.write(json.dumps({"change": sign, **row}) + "\n")
            else:
                out.write(" ".join([sign, *map(str, row.values())]) + "\n")
