"""The Swarm source: keeps every service's and task's records current from a Swarm manager.

Rule 1: which engine: `swarm.url` when set; else the `docker.url` engine,
        when `GET /info` says it is a manager (auto). An engine that is a
        worker gives no Swarm names and one info line on how to get them;
        its role is looked at again every ROLE_RECHECK seconds, so a later
        `docker swarm init` or promotion is picked up.
Rule 2: subscribe, then list. The manager's event stream (`service` and
        `node` events: tasks on other nodes send it none) is opened first;
        then services, networks and running tasks are read whole and
        published (and, once per connection, the nodes, for the log). An
        event only says "re-read everything". A proxy that forbids /events
        leaves the polls to do the work.
Rule 3: every `swarm.poll` seconds the running tasks are read again
        (`GET /tasks?filters={"desired-state":["running"]}`). The raw
        response is compared with the last one first, so an unchanged Swarm
        costs one HTTP request and a byte comparison, no JSON decoding.
        Otherwise each entry is parsed once per (ID, Version.Index) and a
        service's records are derived again only when its entry or its
        tasks changed. A task of a service not known yet makes the next
        read a whole one.
Rule 4: read-only: GET requests only (/version, /info in auto mode,
        /events, /services, /tasks, /nodes, /networks).
Rule 5: the manager going away, restarting or being demoted is not an error
        of ours: the table keeps the last known Swarm names, one warning is
        logged, the connection is retried with exponential back-off
        (BACKOFF_FIRST doubling to BACKOFF_MAX) and everything is read again
        once it is back. The local containers (the docker source) are never
        touched by any of this.
Rule 6: the table is written per service (owner `swarm:<service id>`):
        replace() for a service whose records changed, remove() for one that
        went; never replace_all, which would race with the docker source.
        Each poll also checks that the table still holds what was published
        and puts back what a concurrent full re-sync of the docker source
        may have dropped.

Thread-safety: SwarmSource runs one daemon thread that does the reads and
the table writes, and one that reads the event stream and only wakes the
first. `start`, `stop` and `update_settings` may be called from any thread;
`update_settings` and the source thread serialise on an internal lock while
they derive records and write the table.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import docker.errors

from .docker_source import CONNECTION_ERRORS, _open, _reason
from .records import Record
from .settings import SWARM_OFF, Settings
from .swarm import (
    OWNER_PREFIX, Network, Service, ServiceRecords, Task, entries, owner_of, parse_cluster, parse_networks,
    parse_service, parse_task, records_for_cluster, records_for_service, sort_tasks, version_key)
from .table import RecordTable

log = logging.getLogger("dockerdns.swarm")

#: Seconds before the first reconnection attempt; doubled after each failure.
BACKOFF_FIRST = 0.05
#: Seconds: the longest wait between reconnection attempts.
BACKOFF_MAX = 2.0
#: Seconds between two looks at the role of an engine that is not a manager (auto mode).
ROLE_RECHECK = 30.0
#: Seconds `stop` waits for the source thread.
STOP_WAIT = 1.0
#: Seconds after an event before the tasks are read once more: the
#: orchestrator acts on a service update a moment after the event.
EVENT_FOLLOW_UP = 0.25
#: Characters of a service id in log lines.
SHORT_ID = 12

EVENT_FILTERS = {"type": ["service", "node"]}
TASK_FILTERS = json.dumps({"desired-state": ["running"]})
NETWORK_FILTERS = json.dumps({"scope": ["swarm"]})


class SwarmUnavailable(Exception):
    """The manager cannot be read; str() is one clear line."""


class NotManager(Exception):
    """The engine answers but is not a Swarm manager; str() says what it is."""


def swarm_url(settings: Settings) -> str | None:
    """The engine to read Swarm names from: swarm.url, or docker.url in auto mode; None when off."""
    if settings.swarm.url == SWARM_OFF:
        return None
    return settings.swarm.url or settings.docker.url


def read_once(settings: Settings) -> tuple[bool, dict[str, tuple[Record, ...]]]:
    """(Swarm names on, the records of every service by owner), read once (for `dockerdns records`).

    In auto mode an engine that is not a manager gives (False, {}). Raises
    SwarmUnavailable when the manager cannot be read.
    """
    url = swarm_url(settings)
    if url is None:
        return False, {}
    try:
        client = _open(url)
    except CONNECTION_ERRORS as exc:
        raise SwarmUnavailable(f"swarm: cannot reach {url} ({_reason(exc)})") from None
    try:
        if settings.swarm.url is None and _role(client) != "manager":
            return False, {}
        cluster = parse_cluster(*(json.loads(_get_raw(client, path, filters)) for path, filters in (
            ("/services", None), ("/tasks", TASK_FILTERS), ("/networks", NETWORK_FILTERS))))
    except NotManager as exc:
        raise SwarmUnavailable(f"swarm: {url} {exc}") from None
    except CONNECTION_ERRORS as exc:
        raise SwarmUnavailable(f"swarm: cannot read {url} ({_reason(exc)})") from None
    finally:
        client.close()
    published = records_for_cluster(cluster, settings)
    for warning in cluster.warnings:
        log.warning("skipped: %s", warning)
    for service in published.values():
        for warning in service.warnings:
            log.warning("skipped: service %s: %s", service.name, warning)
    return True, {owner: p.records for owner, p in published.items() if p.records}


class SwarmSource:
    """Feeds a RecordTable from a Swarm manager; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        table: RecordTable,
        *,
        on_active: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self._settings = settings
        self._table = table
        self._on_active = on_active
        self._clock = clock
        self.last_sync: float | None = None
        self.polls = 0  # task reads, for tests and /metrics
        self.attempts = 0  # connections tried
        #: True while Swarm names are served (or kept); False when the engine is no manager
        #: (auto mode); None: not known yet.
        self.active: bool | None = True if settings.swarm.url not in (None, SWARM_OFF) else None

        self._lock = threading.Lock()  # guards the state below and table writes
        self._networks_raw: object = None  # the last /networks
        self._networks: dict[str, Network] = {}
        self._services: dict[str, Service] = {}  # by id, from the last /services
        self._tasks: tuple[Task, ...] = ()  # the served tasks of the last /tasks
        self._tasks_raw: bytes | None = None  # the last /tasks response, byte for byte (Rule 3)
        # Parsed entries by (ID, Version.Index), and each service's records by the inputs they were
        # derived from: a poll that sees one task change parses one task and re-derives one service.
        self._service_memo: dict[tuple[str, int], tuple[Service | None, tuple[str, ...]]] = {}
        self._task_memo: dict[tuple[str, int], Task | None] = {}
        self._derived: dict[str, tuple[tuple[Service, tuple[Task, ...]], ServiceRecords]] = {}
        self._published: dict[str, ServiceRecords] = {}  # what the table holds, by owner
        self._noted: set[object] = set()  # warnings already logged

        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by the event thread, and by stop()
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._stream: Any = None
        self._stream_ended: str | None = None  # why the event stream ended
        self._in_sync = False

    # -- public -----------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        """True after a whole read while the manager answers."""
        return self._in_sync and not self._stopping.is_set()

    def start(self) -> None:
        """Start the source thread. Never raises because the manager is unreachable."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="dockerdns-swarm", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the source threads, within about STOP_WAIT seconds. The records stay in the table."""
        self._stopping.set()
        self._in_sync = False
        self._wake.set()
        self._close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(STOP_WAIT)

    def remove_all(self) -> None:
        """Drop every record this source published (Swarm names turned off)."""
        with self._lock:
            for owner in list(self._published):
                self._table.remove(owner)
            self._published = {}

    def update_settings(self, settings: Settings) -> None:
        """Re-derive every service's records with `settings` from the last read (no manager call)."""
        with self._lock:
            self._settings = settings
            self._derived = {}
            if self.last_sync is not None:
                self._publish()

    # -- the source thread ------------------------------------------------

    def _run(self) -> None:
        delay = BACKOFF_FIRST
        warned = False
        while not self._stopping.is_set():
            settings = self._settings
            url = swarm_url(settings)
            if url is None:
                return
            auto = settings.swarm.url is None
            started = time.monotonic()
            synced_before = self.last_sync
            self.attempts += 1
            try:
                self._session(url, auto)
                reason = self._stream_ended or "stopped"
            except NotManager as exc:
                reason = str(exc)
                if auto and self.active is not True:
                    self._set_active(False, reason)
                    self._close()
                    if self._stopping.wait(ROLE_RECHECK):
                        break
                    continue
            except CONNECTION_ERRORS as exc:
                reason = _reason(exc)
            except Exception as exc:  # a bug: say so loudly, then re-read as after a lost connection
                log.exception("swarm: unexpected error")
                reason = _reason(exc)
            finally:
                self._in_sync = False
                self._close()
            if self._stopping.is_set():
                break
            if self.last_sync != synced_before:  # this connection worked for a while: warn anew, retry soon
                warned = False
                if time.monotonic() - started > BACKOFF_MAX:
                    delay = BACKOFF_FIRST
            if warned:
                log.debug("swarm: %s still unreadable (%s); next attempt in %.2f s", url, reason, delay)
            elif self.last_sync is not None:
                log.warning("swarm: lost the manager at %s (%s); serving the last known Swarm names, retrying",
                            url, reason)
                warned = True
            elif auto:  # the docker source warns about its own engine already
                log.debug("swarm: cannot read %s (%s); retrying", url, reason)
            else:
                log.warning("swarm: cannot read the manager at %s (%s); retrying", url, reason)
                warned = True
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_MAX)

    def _session(self, url: str, auto: bool) -> None:
        """Connect, subscribe, read whole, then poll until the manager fails or stop (Rules 2 and 3)."""
        client = _open(url)
        self._client = client
        if self._stopping.is_set():
            return
        if auto:
            role = _role(client)
            if role != "manager":
                raise NotManager(role)
        self._stream_ended = None
        stream = client.events(filters=EVENT_FILTERS, decode=True)
        self._stream = stream
        threading.Thread(target=self._events, args=(stream,), name="dockerdns-swarm-events", daemon=True).start()
        self._read_all(client)
        if auto:
            self._set_active(True)
        poll_due = time.monotonic() + self._settings.swarm.poll
        while not self._stopping.is_set():
            woken = self._wake.wait(max(0.0, poll_due - time.monotonic()))
            if self._stopping.is_set():
                return
            if self._stream_ended is not None:
                return
            if woken:
                self._wake.clear()
                self._read_all(client)
                poll_due = time.monotonic() + min(EVENT_FOLLOW_UP, self._settings.swarm.poll)
                continue
            poll_due = time.monotonic() + self._settings.swarm.poll
            self._poll(client)

    def _events(self, stream: Any) -> None:
        """Wake the source thread on every event; when the stream ends, wake it to reconnect."""
        reason = "the event stream ended"
        try:
            for _ in stream:
                self._wake.set()
        except docker.errors.APIError as exc:
            if exc.status_code in (403, 404) and not self._stopping.is_set():
                # A socket proxy that forbids /events: the polls alone keep the names current.
                self._note("no-events", f"swarm: no events from {swarm_url(self._settings)} "
                                        f"({_reason(exc)}); changes are seen by the polls only")
                return
            reason = f"the event stream failed: {_reason(exc)}"
        except CONNECTION_ERRORS as exc:
            reason = f"the event stream failed: {_reason(exc)}"
        except Exception as exc:  # a closed stream fails in many ways; it has ended either way
            reason = f"the event stream failed: {_reason(exc)}"
        if not self._stopping.is_set():
            self._stream_ended = reason
            self._wake.set()

    def _read_all(self, client: Any) -> None:
        """Read services, networks and tasks whole; publish (Rule 2)."""
        started = time.perf_counter()
        services = json.loads(_get_raw(client, "/services"))
        networks = json.loads(_get_raw(client, "/networks", NETWORK_FILTERS))
        tasks_raw = _get_raw(client, "/tasks", TASK_FILTERS)
        with self._lock:
            if networks != self._networks_raw:  # network names and ingress flags go into parsed entries
                self._networks_raw, self._networks = networks, parse_networks(networks)
                self._service_memo, self._task_memo = {}, {}
            self._services = self._parse_services(services)
            self._tasks_raw = tasks_raw
            self._tasks = self._parse_tasks(json.loads(tasks_raw))
            self._publish()
        self.polls += 1
        first = not self._in_sync
        self.last_sync = self._clock()
        self._in_sync = True
        if first:
            log.info("swarm: connected to the manager at %s: %d nodes, %d services, %d running tasks "
                     "(read in %.0f ms)", swarm_url(self._settings), _nodes(client), len(self._services),
                     len(self._tasks), (time.perf_counter() - started) * 1000)

    def _poll(self, client: Any) -> None:
        """Read the running tasks; publish only when the response changed (Rule 3)."""
        raw = _get_raw(client, "/tasks", TASK_FILTERS)
        self.polls += 1
        self.last_sync = self._clock()
        with self._lock:
            if raw != self._tasks_raw:
                self._tasks_raw = raw
                self._tasks = self._parse_tasks(json.loads(raw))
                if any(task.service_id not in self._services for task in self._tasks):
                    self._wake.set()  # a service created since the last whole read: read again at once
                self._publish()
            self._heal()

    # -- state, under self._lock ------------------------------------------

    def _parse_services(self, items: object) -> dict[str, Service]:
        memo: dict[tuple[str, int], tuple[Service | None, tuple[str, ...]]] = {}
        services: dict[str, Service] = {}
        for item in entries(items):
            key = version_key(item)
            parsed = self._service_memo.get(key) if key is not None else None
            if parsed is None:
                warnings: list[str] = []
                parsed = (parse_service(item, self._networks, warnings), tuple(warnings))
                for warning in warnings:
                    self._note(warning, f"skipped: {warning}")
            if key is not None:
                memo[key] = parsed
            if parsed[0] is not None:
                services[parsed[0].id] = parsed[0]
        self._service_memo = memo
        return services

    def _parse_tasks(self, items: object) -> tuple[Task, ...]:
        memo: dict[tuple[str, int], Task | None] = {}
        tasks: list[Task] = []
        for item in entries(items):
            key = version_key(item)
            if key is not None and key in self._task_memo:
                task = self._task_memo[key]
            else:
                task = parse_task(item, self._networks)
            if key is not None:
                memo[key] = task
            if task is not None:
                tasks.append(task)
        self._task_memo = memo
        return sort_tasks(tasks)

    def _publish(self) -> None:
        """Make the table hold what the Swarm publishes: changed services replaced, gone ones removed (Rule 6)."""
        by_service: dict[str, list[Task]] = {}
        for task in self._tasks:
            by_service.setdefault(task.service_id, []).append(task)
        derived: dict[str, tuple[tuple[Service, tuple[Task, ...]], ServiceRecords]] = {}
        for service_id, service in self._services.items():
            inputs = (service, tuple(by_service.get(service_id, ())))
            cached = self._derived.get(service_id)
            if cached is not None and cached[0] == inputs:
                derived[service_id] = cached
            else:
                derived[service_id] = (inputs, records_for_service(service, inputs[1], self._settings))
        self._derived = derived
        new = {owner_of(sid): p for sid, (_, p) in derived.items() if p.records or p.warnings}
        for owner in [o for o in self._published if o not in new]:
            self._table.remove(owner)
            log.info("removed: %s %s", owner[len(OWNER_PREFIX):][:SHORT_ID], self._published[owner].name)
            del self._published[owner]
        for owner, published in new.items():
            old = self._published.get(owner)
            if old is published or (old is not None and old.records == published.records):
                continue
            self._table.replace(owner, published.records)
            self._published[owner] = published
            short = owner[len(OWNER_PREFIX):][:SHORT_ID]
            if published.records and (old is None or not old.records):
                log.info("added: %s %s (%d records)", short, published.name, len(published.records))
            elif published.records:
                log.info("updated: %s %s (%d records)", short, published.name, len(published.records))
            for warning in published.warnings:
                self._note((owner, warning), f"skipped: service {published.name}: {warning}")

    def _note(self, key: object, line: str) -> None:
        """Log a warning once."""
        if key not in self._noted:
            self._noted.add(key)
            log.warning("%s", line)

    def _heal(self) -> None:
        """Put back records that a concurrent re-sync of the docker source dropped (Rule 6)."""
        snapshot = self._table.snapshot
        for owner, published in self._published.items():
            held = snapshot.by_owner.get(owner, ())
            if held is not published.records and held != published.records:
                self._table.replace(owner, published.records)

    def _set_active(self, active: bool, role: str = "manager") -> None:
        if active == self.active:
            return
        if not active and role == "worker":
            log.info("swarm: %s is a Swarm worker: no Swarm names; to serve every service and task, "
                     "give a manager's API with --swarm-url (for instance through a read-only socket proxy), "
                     "or turn this off with --swarm-url off", self._settings.docker.url)
        elif not active:
            log.debug("swarm: %s is %s: no Swarm names", self._settings.docker.url, role)
        self.active = active
        if self._on_active is not None:
            try:
                self._on_active(active)
            except Exception:
                log.exception("swarm: on_active(%s) failed", active)

    def _close(self) -> None:
        stream, self._stream = self._stream, None
        client, self._client = self._client, None
        for thing in (stream, client):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # already closed, or the socket is gone
                    pass


# -- manager calls ------------------------------------------------------------


def _role(client: Any) -> str:
    """"manager", "worker" or "not in a Swarm", from `GET /info`."""
    swarm = (client.info() or {}).get("Swarm") or {}
    if swarm.get("ControlAvailable") is True:
        return "manager"
    if swarm.get("LocalNodeState") == "active":
        return "worker"
    return "not in a Swarm"


def _get_raw(client: Any, path: str, filters: str | None = None) -> bytes:
    """The body of `GET path` as bytes; NotManager on a 503 from a worker or a demoted manager."""
    response = client._get(client._url(path), params={"filters": filters} if filters else None)
    if response.status_code == 503:
        text = response.text.strip().splitlines()
        raise NotManager(f"is not a Swarm manager ({text[0][:200] if text else '503'})")
    client._raise_for_status(response)
    body: bytes = response.content
    return body


def _nodes(client: Any) -> int:
    """How many nodes the Swarm has (`GET /nodes`), for the log; 0 when it cannot be read."""
    try:
        nodes = json.loads(_get_raw(client, "/nodes"))
    except (NotManager, docker.errors.APIError, *CONNECTION_ERRORS):
        return 0
    return len(nodes) if isinstance(nodes, list) else 0
