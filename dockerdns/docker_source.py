"""The docker source: keeps the record table current from the Docker Engine API.

Rule 1: subscribe, then list. The event stream is opened first (with `since`
        a little in the past, because the engine answers the subscription
        before it registers it), then every running container is listed and
        inspected and the table is replaced whole; nothing that happens during
        the sync is lost.
Rule 2: an event only says which container to re-read. Events are handled one
        at a time, in order: inspect the container, derive its records
        (naming.records_for_container), replace its records in the table, or
        remove them when it is gone or no longer runs. Containers that share
        its network namespace (`--network container:<id>`) are re-read too.
Rule 3: read-only: GET requests only (/version, /events, /containers/json,
        /containers/<id>/json, /networks/<id>).
Rule 4: Docker going away is not an error of ours. The table keeps the last
        known records, one warning is logged, the connection is retried with
        exponential back-off (BACKOFF_FIRST doubling to BACKOFF_MAX) and, once
        back, the table is re-synced whole. An idle engine sends no events, so
        silence is never taken for a lost connection; only the end of the
        stream or an error is.
Rule 5: the resolver never waits on this module: it reads only the table.
Rule 7: a stream can also hang without ending (a frozen engine, a proxy that
        stalls). So while connected, a watchdog lists the running containers
        every `watch_interval` seconds: when the engine does not answer, or
        when the list and the table disagree about the same containers twice
        in a row (once may be an event still on its way), the stream is
        closed, which counts as a lost connection: one warning, reconnect,
        full re-sync.
Rule 8: one container's records never stop another's. Naming runs per
        container inside its own guard (_derive): should it raise (a bug: it
        promises not to), that container publishes nothing, one error line
        names it, and every other container is published as usual; it is
        never taken for a lost connection, so the table never freezes.
Rule 6: a network `connect` comes ~250 ms before `docker start` returns,
        while the engine still holds the container's lock. A container that
        is starting is NOT published then: its interface may not be up yet,
        and a client that connects to the new address at once leaves an
        unresolved neighbour entry that stalls every connection to it for
        about a second (bench/early_publish.py: 28 of 30 early connects
        failed or took ~1 s). It is published from the inspect after its
        start. A container already running that is connected to another
        network is published from the connect, with that network, at once.
Rule 8: a `health_status: <status>` event carries the new health: it is
        served from the container's last inspect with that status at once,
        before the inspect that follows (which a busy engine may answer in
        hundreds of milliseconds) confirms it.

Thread-safety: DockerSource runs one daemon thread that does all Docker I/O
and all table writes for containers. `start`, `stop` and `update_settings`
may be called from any thread; `update_settings` and the source thread
serialise on an internal lock while they derive records and write the table,
so records are always derived from one settings object. Docker calls are
made outside that lock. This is the only module that imports `docker`.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Union

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from .settings import Settings
from .naming import (LABEL_IGNORE, Ignored, Outcome, Published, bridge_gateway, container_name, netns_owner_id,
                     network_mode, networks, records_for_container, state)
from .records import SERVER, STATIC, Record
from .swarm import is_swarm_owner
from .table import RecordTable

log = logging.getLogger("dockerdns.docker")

UNIX_PREFIX = "unix://"  # a Docker URL naming a socket file

#: Seconds before the first reconnection attempt; doubled after each failure.
BACKOFF_FIRST = 0.05
#: Seconds: the longest wait between reconnection attempts.
BACKOFF_MAX = 2.0
#: Seconds any one non-streaming API call may take.
REQUEST_TIMEOUT = 10.0
#: Seconds `stop` waits for the source thread.
STOP_WAIT = 1.0
#: Nanoseconds of events replayed on subscribing (Rule 1): the engine flushes
#: the response headers before it registers the subscription.
SINCE_MARGIN_NS = 1_000_000_000
#: Inspect with a thread pool when more containers than this run. Most of an
#: inspect's cost is the SDK's Python (requests: ~0.8 of ~1.2 ms), which holds
#: the GIL: on 2 cores 300 containers took 340 ms serially and 370-400 ms with
#: 2 to 8 workers, so the pool is used only with more cores, and stays below
#: the SDK's 10 pooled connections, one of which is the event stream.
POOL_ABOVE = 8
POOL_WORKERS = min(8, (os.cpu_count() or 1) - 1)
#: Characters of the container id used in log lines (Docker's short id).
SHORT_ID = 12
#: Stopped containers whose last inspect is kept for Rule 6.
MAX_STOPPED = 1000
#: Seconds between two checks of the watchdog (Rule 7).
WATCH_INTERVAL = 15.0

CONTAINER_ACTIONS = frozenset(
    {"create", "start", "die", "stop", "kill", "pause", "unpause", "rename", "destroy", "health_status"}
)
NETWORK_ACTIONS = frozenset({"connect", "disconnect"})
EVENT_FILTERS = {
    "type": ["container", "network"],
    # The engine matches health_status by prefix ("health_status: healthy").
    "event": sorted(CONTAINER_ACTIONS | NETWORK_ACTIONS),
}

# What a lost or refused connection raises, through the SDK, requests or urllib3.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    docker.errors.DockerException,
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,  # a response cut in the middle of its JSON
)

Inspect = dict[str, Any]
#: Characters of an unexpected error quoted in the log line about it.
ERROR_TEXT = 200


@dataclass(frozen=True)
class Failed:
    """Naming raised for this container (Rule 8): it publishes nothing; `error` is one line."""

    error: str
    records: ClassVar[tuple[Record, ...]] = ()
    warnings: ClassVar[tuple[str, ...]] = ()


Derived = Union[Outcome, Failed]


def _derive(inspect: Mapping[str, Any], settings: Settings, owner: Mapping[str, Any] | None = None) -> Derived:
    """records_for_container, inside the guard of Rule 8: whatever happens, one container's outcome."""
    try:
        return records_for_container(inspect, settings, owner)
    except Exception as exc:
        log.debug("naming %s raised", _name(inspect), exc_info=True)
        return Failed(" ".join(f"{type(exc).__name__}: {exc}".split())[:ERROR_TEXT])


class DockerUnavailable(Exception):
    """Docker cannot be reached; str() is one clear line."""


def read_once(settings: Settings) -> dict[str, tuple[Record, ...]]:
    """The records of every running container, read once (for `dockerdns records`).

    Owners with no records are left out. Raises DockerUnavailable.
    """
    url = settings.docker.url
    client = _connect(url)
    try:
        inspects = _inspect_running(client)
    except CONNECTION_ERRORS as exc:
        raise DockerUnavailable(f"docker: lost the connection to {url} ({_reason(exc)})") from None
    finally:
        client.close()
    result: dict[str, tuple[Record, ...]] = {}
    for cid, inspect in inspects.items():
        published = _derive(inspect, settings, _owner_of(inspect, inspects))
        if isinstance(published, Failed):
            log.error("failed: %s %s: naming raised %s; nothing published for it", cid[:SHORT_ID], _name(inspect),
                      published.error)
        for warning in published.warnings:
            log.warning("skipped: %s %s: %s", cid[:SHORT_ID], _name(inspect), warning)
        if published.records:
            result[cid] = published.records
    return result


class DockerSource:
    """Feeds a RecordTable from one Docker engine; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        table: RecordTable,
        *,
        on_gateway: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._settings = settings
        self._table = table
        self._on_gateway = on_gateway
        self._clock = clock
        self.last_sync: float | None = None
        self.events_handled = 0
        #: Called with the seconds from an event's timeNano to its table update.
        self.on_propagation: Callable[[float], None] | None = None
        #: Called after each event was handled, with the container's id and the event's time (epoch seconds).
        self.on_event: Callable[[str, float], None] | None = None

        self._lock = threading.Lock()  # guards the state below and table writes
        self._inspects: dict[str, Inspect] = {}  # running containers by id
        self._stopped: dict[str, Inspect] = {}  # the last inspect of containers not running (Rule 6)
        self._early: dict[str, dict[str, Inspect]] = {}  # id -> networks connected during a start
        self._dependents: dict[str, str] = {}  # id -> netns owner, as NetworkMode names it
        self._published: dict[str, tuple[Record, ...]] = {}  # what the table holds, by id
        self._names: dict[str, str] = {}  # id -> name, for log lines
        self._noted: dict[str, set[str]] = {}  # id -> warnings/ignores already logged

        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None  # docker.APIClient, while connected
        self._stream: Any = None  # its CancellableStream of events
        self._in_sync = False
        self._synced_at: float | None = None  # time.monotonic() of this connection's sync
        self._gateway: str | None = None
        self.watch_interval = WATCH_INTERVAL
        self._broken: str | None = None  # why the watchdog closed the stream

    # -- public -----------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        """True after a full sync while the event stream is connected."""
        return self._in_sync and not self._stopping.is_set()

    def start(self) -> None:
        """Start the source thread. Never raises because Docker is unreachable."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="dockerdns-docker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the source thread, within about STOP_WAIT seconds."""
        self._stopping.set()
        self._in_sync = False
        self._close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT)

    def update_settings(self, settings: Settings) -> None:
        """Re-derive every container's records with `settings`, from the cached inspect data (no Docker call)."""
        with self._lock:
            self._settings = settings
            self._publish_all(self._inspects)

    # -- the source thread --------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        warned = False
        ever_synced = False
        while not self._stopping.is_set():
            url = self._settings.docker.url  # a new url (update_settings) applies from the next connection
            self._synced_at = None
            try:
                self._broken = None
                self._session()
                reason = self._broken or "the event stream ended"
            except CONNECTION_ERRORS as exc:
                reason = _reason(exc)
            except Exception as exc:  # a bug: say so loudly, then re-sync as after a lost connection
                log.exception("docker: unexpected error")
                reason = _reason(exc)
            finally:
                self._in_sync = False
                self._close()
            if self._stopping.is_set():
                break
            if self._synced_at is not None:
                ever_synced = True
                warned = False
                if time.monotonic() - self._synced_at > BACKOFF_MAX:
                    delay = BACKOFF_FIRST
            if not warned:
                if ever_synced:
                    log.warning("docker: lost the connection to %s (%s); serving the last known records, retrying",
                                url, reason)
                else:
                    log.warning("docker: cannot reach %s (%s); serving static records, retrying", url, reason)
                warned = True
            else:
                log.debug("docker: %s still unreachable (%s); next attempt in %.2f s", url, reason, delay)
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX)

    def _session(self) -> None:
        """Connect, subscribe, sync, then handle events until the stream ends (Rule 1)."""
        client = _open(self._settings.docker.url)
        self._client = client
        if self._stopping.is_set():
            return
        since = time.time_ns() - SINCE_MARGIN_NS
        stream = client.events(since=f"{since // 10**9}.{since % 10**9:09d}", filters=EVENT_FILTERS, decode=True)
        self._stream = stream
        if self._stopping.is_set():
            return
        started = time.perf_counter()
        inspects = _inspect_running(client)
        with self._lock:
            if self._stopping.is_set():
                return
            self._early.clear()  # starts seen half on the last connection: the sync has the truth
            self._publish_all(inspects)
        self.last_sync = self._clock()
        self._in_sync = True
        self._synced_at = time.monotonic()
        log.info("docker: connected, %d containers (synced in %.0f ms)", len(inspects),
                 (time.perf_counter() - started) * 1000)
        self._update_gateway(client)
        ended = threading.Event()
        threading.Thread(target=self._watch, args=(client, stream, ended), name="dockerdns-watch", daemon=True).start()
        try:
            # The SDK's stream ends (StopIteration) on a broken connection too.
            for event in stream:
                if self._stopping.is_set():
                    return
                self._handle(client, event)
        finally:
            ended.set()

    def _watch(self, client: Any, stream: Any, ended: threading.Event) -> None:
        """Rule 7: close a stream that hangs, so that the source reconnects and re-syncs."""
        suspects: set[str] = set()
        while not ended.wait(self.watch_interval):
            try:
                running = {c["Id"] for c in client.containers()}
            except CONNECTION_ERRORS as exc:
                self._broken = f"the engine stopped answering: {_reason(exc)}"
                break
            with self._lock:
                known = set(self._inspects) | set(self._early)
            disagree = running ^ known
            if disagree & suspects:
                self._broken = f"the event stream missed changes to {len(disagree & suspects)} containers"
                break
            suspects = disagree
        if not ended.is_set() and not self._stopping.is_set():
            try:
                stream.close()
            except Exception:  # closing a broken stream may fail in many ways; it is closed either way
                pass

    def _handle(self, client: Any, event: Mapping[str, Any]) -> None:
        """Re-read the container an event names (Rule 2)."""
        cid = _event_container(event)
        if cid is None:
            return
        self.events_handled += 1
        if event.get("Type") == "network" and event.get("Action") == "connect":
            self._publish_early(client, cid, event)
        action = event.get("Action")
        if event.get("Type") == "container" and isinstance(action, str) and action.startswith("health_status:"):
            self._publish_health(cid, action.partition(":")[2].strip())
        self._refresh(client, cid)
        with self._lock:
            dependents = [dep for dep, owner in self._dependents.items() if _is(owner, cid, self._inspects)]
        for dep in dependents:
            if dep != cid:
                self._refresh(client, dep)
        time_ns = event.get("timeNano")
        # Only container events: a network connect during `docker start` is
        # emitted before the start and its inspect waits for the start to end
        # (the engine holds the container's lock), which is no delay of ours.
        if self.on_propagation is not None and isinstance(time_ns, int) and event.get("Type") == "container":
            try:
                self.on_propagation(self._clock() - time_ns / 1e9)
            except Exception:
                log.exception("docker: on_propagation hook failed")
        if self.on_event is not None and isinstance(time_ns, int):
            try:
                self.on_event(cid, time_ns / 1e9)
            except Exception:
                log.exception("docker: on_event hook failed")

    def _refresh(self, client: Any, cid: str) -> None:
        """Inspect one container and publish what it now has."""
        inspect = _inspect(client, cid)
        owner: Inspect | None = None
        if inspect is not None:
            owner_ref = netns_owner_id(inspect)
            if owner_ref is not None:
                with self._lock:
                    owner = _find(owner_ref, self._inspects)
                if owner is None:
                    owner = _inspect(client, owner_ref)
        with self._lock:
            if self._stopping.is_set():
                return
            self._early.pop(cid, None)
            if inspect is not None and state(inspect).listed:
                self._remember(cid, inspect)
                self._stopped.pop(cid, None)
            else:
                self._forget(cid)
                self._stopped.pop(cid, None)
                if inspect is not None:
                    self._stopped[cid] = inspect
                    if len(self._stopped) > MAX_STOPPED:
                        del self._stopped[next(iter(self._stopped))]
            self._publish(cid, inspect, owner)
            if inspect is None:
                self._noted.pop(cid, None)
        gateway = bridge_gateway(inspect) if inspect is not None and state(inspect).listed else None
        if gateway is not None:
            self._report_gateway(gateway)

    def _publish_early(self, client: Any, cid: str, event: Mapping[str, Any]) -> None:
        """Rule 6: publish the address a network connect just gave a running container."""
        net_id = (event.get("Actor") or {}).get("ID")
        with self._lock:
            running = self._inspects.get(cid)
            base = running
        if base is None or not isinstance(net_id, str):
            return  # a container still starting waits for its start to end (Rule 6)
        try:
            network = client.inspect_network(net_id)
        except docker.errors.NotFound:
            return
        containers = network.get("Containers")
        endpoint = containers.get(cid) if isinstance(containers, Mapping) else None
        name = network.get("Name")
        if not isinstance(endpoint, Mapping) or not isinstance(name, str):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            connected = self._early.setdefault(cid, {})
            connected[name] = _endpoint_settings(base, name, net_id, endpoint)
            provisional = _as_running(base, connected, keep_others=running is not None)
            published = _derive(provisional, self._settings, _owner_of(provisional, self._inspects))
            self._table.replace(cid, published.records)
        log.debug("early: %s %s on %s", cid[:SHORT_ID], _name(base), name)

    def _publish_health(self, cid: str, status: str) -> None:
        """Rule 8: serve the health an event reports at once; the inspect that follows confirms it."""
        if status not in ("healthy", "unhealthy", "starting"):
            return
        with self._lock:
            if self._stopping.is_set():
                return
            inspect = self._inspects.get(cid)
            if inspect is None:
                return
            old_state = inspect.get("State")
            old_state = old_state if isinstance(old_state, Mapping) else {}
            old_health = old_state.get("Health")
            old_health = old_health if isinstance(old_health, Mapping) else {}
            reported = {**inspect, "State": {**old_state, "Health": {**old_health, "Status": status}}}
            owner_ref = netns_owner_id(reported)
            owner = _find(owner_ref, self._inspects) if owner_ref is not None else None
            self._table.replace(cid, _derive(reported, self._settings, owner).records)

    # -- state, under self._lock ----------------------------------------------

    def _remember(self, cid: str, inspect: Inspect) -> None:
        self._inspects[cid] = inspect
        self._names[cid] = _name(inspect)
        owner_ref = netns_owner_id(inspect)
        if owner_ref is None:
            self._dependents.pop(cid, None)
        else:
            self._dependents[cid] = owner_ref

    def _forget(self, cid: str) -> None:
        self._inspects.pop(cid, None)
        self._dependents.pop(cid, None)

    def _publish_all(self, inspects: Mapping[str, Inspect]) -> None:
        """Make the table hold exactly what `inspects` publish (a full sync, or new settings)."""
        self._inspects = {}
        self._dependents = {}
        for cid, inspect in inspects.items():
            self._remember(cid, inspect)
        published: dict[str, Derived] = {
            cid: _derive(inspect, self._settings, _owner_of(inspect, self._inspects))
            for cid, inspect in self._inspects.items()
        }
        starting = {  # Rule 6: containers published early, still starting
            cid: _derive(_as_running(self._stopped[cid], nets, keep_others=False), self._settings).records
            for cid, nets in self._early.items() if cid in self._stopped and cid not in published
        }
        # Containers only: static records, dockerdns's own and the Swarm source's stay.
        self._table.replace_all({**starting, **{cid: p.records for cid, p in published.items()}},
                                keep=lambda owner: owner in (STATIC, SERVER) or is_swarm_owner(owner))
        for cid in list(self._published):
            if cid not in published:
                self._log_change(cid, self._names.get(cid, "?"), None)
        for cid, p in published.items():
            self._log_change(cid, _name(self._inspects[cid]), p)
        for kept in (self._names, self._noted):
            for cid in [c for c in kept if c not in self._inspects]:
                del kept[cid]

    def _publish(self, cid: str, inspect: Inspect | None, owner: Inspect | None) -> None:
        """Derive one container's records and write them to the table."""
        if inspect is None:
            published = None
            self._table.remove(cid)
        else:
            published = _derive(inspect, self._settings, owner)
            self._table.replace(cid, published.records)
        self._log_change(cid, _name(inspect) if inspect else self._names.get(cid, "?"), published)
        if inspect is None or not state(inspect).listed:
            self._names.pop(cid, None)

    def _log_change(self, cid: str, name: str, published: Derived | None) -> None:
        """One line per change, in the vocabulary added/updated/removed/ignored/no addresses/skipped/failed.

        "ignored" means the `dockerdns.ignore` label and nothing else; a
        container that is not running (stopped, restarting) gets no line of
        its own: "removed" says it when it had records.
        """
        short = cid[:SHORT_ID]
        old = self._published.get(cid, ())
        new = published.records if published is not None else ()
        if new:
            self._published[cid] = new
        else:
            self._published.pop(cid, None)
        if new and not old:
            log.info("added: %s %s (%d records)", short, name, len(new))
        elif new and new != old:
            log.info("updated: %s %s (%d records)", short, name, len(new))
        elif old and not new:
            log.info("removed: %s %s", short, name)
        if published is None:
            return
        noted = self._noted.setdefault(cid, set())
        inspect = self._inspects.get(cid)
        if isinstance(published, Ignored):
            why = f"{LABEL_IGNORE}={published.value}"
            if why not in noted:
                noted.add(why)
                log.info("ignored: %s %s: %s", short, name, why)
        elif isinstance(published, Failed):
            if published.error not in noted:
                noted.add(published.error)
                log.error("failed: %s %s: naming raised %s; nothing published for it", short, name, published.error)
        elif isinstance(published, Published) and not new and inspect is not None:
            why = f"network mode {_network_mode(inspect)}"
            if why not in noted:
                noted.add(why)
                log.info("no addresses: %s %s (%s)", short, name, why)
        for warning in published.warnings:
            if warning not in noted:
                noted.add(warning)
                log.warning("skipped: %s %s: %s", short, name, warning)

    # -- connection ---------------------------------------------------------

    def _update_gateway(self, client: Any) -> None:
        """Tell on_gateway the default bridge's gateway address when it is new.

        Engines started without --bip report no Gateway in the bridge's IPAM
        config; then a container on the bridge tells it, and failing that the
        first address of the subnet (where dockerd puts docker0) is assumed.
        """
        try:
            network = client.inspect_network("bridge")
        except docker.errors.NotFound:  # dockerd --bridge=none
            return
        configs = (network.get("IPAM") or {}).get("Config") or []
        config = configs[0] if configs and isinstance(configs[0], Mapping) else {}
        with self._lock:
            gateway = config.get("Gateway") or next(filter(None, map(bridge_gateway, self._inspects.values())), None)
        if not gateway and config.get("Subnet"):
            try:
                gateway = str(next(ipaddress.ip_network(config["Subnet"], strict=False).hosts()))
            except (ValueError, StopIteration):
                gateway = None
        if gateway:
            self._report_gateway(gateway)

    def _report_gateway(self, gateway: str) -> None:
        if gateway == self._gateway:
            return
        self._gateway = gateway
        if self._on_gateway is not None:
            try:
                self._on_gateway(gateway)
            except Exception:
                log.exception("docker: on_gateway(%s) failed", gateway)

    def _close(self) -> None:
        """Close the event stream and the client; unblocks the source thread."""
        stream, self._stream = self._stream, None
        client, self._client = self._client, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # already closed, or the socket is gone
                pass
        if client is not None:
            try:
                client.close()
            except Exception:
                pass


# -- Docker calls -----------------------------------------------------------


def _open(url: str) -> Any:
    """A low-level client for `url`, TLS settings from the environment as the SDK reads them."""
    path = url[len(UNIX_PREFIX):] if url.startswith(UNIX_PREFIX) else ""
    if path.startswith("/"):
        # No socket (dockerd not started yet): say so as the SDK would, without building a client
        # (about a millisecond of CPU, held under the GIL, at every retry). Anything else (no permission)
        # and other forms (the SDK reads unix://var/run/docker.sock as /var/run/docker.sock) are the SDK's.
        try:
            os.stat(path)
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        except OSError:
            pass
    kwargs = docker.utils.kwargs_from_env()
    kwargs["base_url"] = url
    # version="auto" asks the engine (GET /version): no API version pinned.
    return docker.APIClient(version="auto", timeout=REQUEST_TIMEOUT, **kwargs)


def _connect(url: str) -> Any:
    """_open(url), raising DockerUnavailable when the engine cannot be reached."""
    try:
        return _open(url)
    except CONNECTION_ERRORS as exc:
        raise DockerUnavailable(f"docker: cannot reach {url} ({_reason(exc)})") from None


def _inspect(client: Any, ref: str) -> Inspect | None:
    """`GET /containers/<ref>/json`; None when there is no such container."""
    try:
        result: Inspect = client.inspect_container(ref)
    except docker.errors.NotFound:
        return None
    return result


def _inspect_running(client: Any) -> dict[str, Inspect]:
    """Every running container's inspect data, by id (inspected concurrently when many)."""
    ids = [c["Id"] for c in client.containers()]
    if len(ids) > POOL_ABOVE and POOL_WORKERS > 1:
        with ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="dockerdns-inspect") as pool:
            found: Iterable[Inspect | None] = list(pool.map(lambda cid: _inspect(client, cid), ids))
    else:
        found = [_inspect(client, cid) for cid in ids]
    return {i["Id"]: i for i in found if i is not None}


# -- pure helpers -----------------------------------------------------------


def _event_container(event: Mapping[str, Any]) -> str | None:
    """The id of the container an event asks to re-read, or None."""
    kind = event.get("Type")
    action = event.get("Action")
    actor = event.get("Actor")
    if not isinstance(action, str) or not isinstance(actor, Mapping):
        return None
    if kind == "container" and (action in CONTAINER_ACTIONS or action.startswith("health_status")):
        cid = actor.get("ID")
    elif kind == "network" and action in NETWORK_ACTIONS:
        cid = (actor.get("Attributes") or {}).get("container")
    else:
        return None
    return cid if isinstance(cid, str) and cid else None


def _endpoint_settings(base: Mapping[str, Any], network: str, net_id: str, endpoint: Mapping[str, Any]) -> Inspect:
    """A container's Networks entry for `network`, from the network's own view of its endpoint."""
    old = networks(base).get(network, {})
    ip4, _, len4 = str(endpoint.get("IPv4Address") or "").partition("/")
    ip6, _, len6 = str(endpoint.get("IPv6Address") or "").partition("/")
    return {
        **old,
        "NetworkID": net_id,
        "IPAddress": ip4,
        "IPPrefixLen": int(len4) if len4.isdigit() else 0,
        "GlobalIPv6Address": ip6,
        "GlobalIPv6PrefixLen": int(len6) if len6.isdigit() else 0,
    }


def _as_running(base: Mapping[str, Any], connected: Mapping[str, Inspect], keep_others: bool) -> Inspect:
    """`base` as a running container on the `connected` networks (and its others, if it runs already)."""
    settings = base.get("NetworkSettings")
    settings = settings if isinstance(settings, Mapping) else {}
    old_state = base.get("State")
    old_state = old_state if isinstance(old_state, Mapping) else {}
    nets = {**networks(base), **connected} if keep_others else dict(connected)
    return {
        **base,
        "State": {**old_state, "Running": True, "Paused": False, "Restarting": False},
        "NetworkSettings": {**settings, "Networks": nets},
    }


def _name(inspect: Mapping[str, Any]) -> str:
    """The container's name for log lines: "?" when it has none."""
    return container_name(inspect) or "?"


def _network_mode(inspect: Mapping[str, Any]) -> str:
    """The network mode for log lines, a container id cut to its short form."""
    mode = network_mode(inspect)
    if mode.startswith("container:"):
        return "container:" + mode[len("container:"):][:SHORT_ID]
    return mode or "?"


def _is(ref: str, cid: str, inspects: Mapping[str, Inspect]) -> bool:
    """True when `ref` (an id, short id or name from NetworkMode) names container `cid`."""
    if ref == cid:
        return True
    found = _find(ref, inspects)
    return found is not None and found.get("Id") == cid


def _find(ref: str, inspects: Mapping[str, Inspect]) -> Inspect | None:
    """The cached container `ref` names: a full id, an id prefix, or a name."""
    if ref in inspects:
        return inspects[ref]
    for cid, inspect in inspects.items():
        if _name(inspect) == ref.lstrip("/") or (len(ref) >= SHORT_ID and cid.startswith(ref)):
            return inspect
    return None


def _owner_of(inspect: Mapping[str, Any], inspects: Mapping[str, Inspect]) -> Inspect | None:
    """The inspect data of the container whose network namespace `inspect` joined, if cached."""
    ref = netns_owner_id(inspect)
    return _find(ref, inspects) if ref is not None else None


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words ("No such file or directory")."""
    seen: set[int] = set()
    queue: list[BaseException] = [exc]
    timed_out = False
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, (TimeoutError, requests.exceptions.Timeout, urllib3.exceptions.TimeoutError)):
            timed_out = True
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        queue.extend(e for e in linked if isinstance(e, BaseException))
    if timed_out:
        return "timed out"
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
