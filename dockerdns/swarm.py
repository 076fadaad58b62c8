"""Swarm naming rules: what a manager reports (services, tasks, networks) -> records.

DESIGN.md, "Docker Swarm", is the contract; the rules, in the order applied:

Rule 1: a task is served while both its Status.State and its DesiredState
        are `running`: a task being shut down leaves DNS first, a task still
        starting enters it only once it runs.
Rule 2: a service with no served task publishes nothing (NXDOMAIN, like a
        stopped container), in vip mode too: a virtual IP with nothing
        behind it is no answer.
Rule 3: addresses come from each task's NetworksAttachments (`ip/len`,
        IPv4 -> A, IPv6 -> AAAA) and each service's Endpoint.VirtualIPs,
        tagged with their network's name and subnet so that the resolver can
        answer source-aware. The ingress network (the routing mesh) is left
        out: no client resolves into it.
Rule 4: per service `n` (stack `k`, `n` without its `k_` prefix is `s`):
        `n` holds the virtual IPs (vip mode) or the task addresses (dnsrr);
        `n.<net>` the same on one network; `tasks.n` and `tasks.n.<net>` the
        task addresses; `<slot>.n` one task of a replicated service,
        `<node id, 12 chars>.n` one of a global service; `s.k` answers what
        `n` answers.
Rule 5: PTR: a task address -> `<slot>.n.` (or the node-id form), a virtual
        IP -> `n.`; under the zone.
Rule 6: every record of a service has the owner `swarm:<service id>`, so a
        service is replaced whole and never disturbs a container's records;
        records of a task carry the task's name (`n.<slot>`) as owner_name.
Rule 7: a name that is not valid is skipped with one warning, never an
        exception; the output is deduplicated by (name, type, value) and
        sorted.

Pure: no I/O, no threads, no clocks, no logging; every function is safe to
call from any thread. Input is the decoded JSON of `GET /services`,
`GET /tasks` and `GET /networks`, as the Engine API returns it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .records import InvalidName, Record, absolute, reverse_name, zone_name
from .settings import Settings

#: Owners of Swarm records start with this, then the service id.
OWNER_PREFIX = "swarm:"
#: The label `docker stack deploy` puts on a stack's services.
LABEL_STACK = "com.docker.stack.namespace"
#: Characters of a node id in `<node id>.<service>` (Docker's short id).
SHORT_NODE_ID = 12
#: Characters of a value quoted in a warning.
WARN_TEXT = 80

RUNNING = "running"
VIP = "vip"
DNSRR = "dnsrr"
GLOBAL_MODES = frozenset({"Global", "GlobalJob"})


@dataclass(frozen=True)
class Address:
    """One address of a task or a virtual IP of a service, on one network."""

    ip: str
    rtype: str  # "A" or "AAAA"
    network: str | None  # the network's name; None when the manager did not say
    subnet: str | None


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    ingress: bool = False


@dataclass(frozen=True)
class Service:
    id: str
    name: str
    mode: str  # "Replicated", "Global", "ReplicatedJob", "GlobalJob"
    endpoint_mode: str  # "vip" or "dnsrr"
    vips: tuple[Address, ...]
    stack: str | None


@dataclass(frozen=True)
class Task:
    """A served task (Rule 1)."""

    id: str
    service_id: str
    slot: int | None
    node_id: str
    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class Cluster:
    """What one read of the manager holds, parsed."""

    services: Mapping[str, Service]  # by id
    tasks: tuple[Task, ...]  # served tasks only, sorted by service, slot, node, id
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServiceRecords:
    """What one service publishes."""

    name: str
    records: tuple[Record, ...]
    warnings: tuple[str, ...] = ()


def owner_of(service_id: str) -> str:
    """The table owner of a service's records."""
    return OWNER_PREFIX + service_id


def is_swarm_owner(owner: str) -> bool:
    return owner.startswith(OWNER_PREFIX)


# --- Parsing what the manager says --------------------------------------------------------


def parse_cluster(services: object, tasks: object, networks: object) -> Cluster:
    """The decoded JSON of /services, /tasks and /networks as a Cluster; bad entries are skipped with a warning."""
    warnings: list[str] = []
    nets = parse_networks(networks)
    parsed = {s.id: s for s in (parse_service(item, nets, warnings) for item in entries(services)) if s is not None}
    return Cluster(parsed, served_tasks(tasks, nets), tuple(dict.fromkeys(warnings)))


def parse_networks(networks: object) -> dict[str, Network]:
    """`GET /networks` -> {id: Network}."""
    found: dict[str, Network] = {}
    for item in entries(networks):
        net_id, name = _text(item.get("Id")), _text(item.get("Name"))
        if net_id and name:
            found[net_id] = Network(net_id, name, item.get("Ingress") is True)
    return found


def served_tasks(tasks: object, networks: Mapping[str, Network] | None = None) -> tuple[Task, ...]:
    """The tasks of `GET /tasks` that are served (Rule 1), sorted."""
    found = [t for t in (parse_task(item, networks or {}) for item in entries(tasks)) if t is not None]
    return sort_tasks(found)


def sort_tasks(tasks: Iterable[Task]) -> tuple[Task, ...]:
    """Tasks in a stable order: by service, slot, node and id."""
    return tuple(sorted(tasks, key=lambda t: (t.service_id, t.slot or 0, t.node_id, t.id)))


def version_key(item: object) -> tuple[str, int] | None:
    """(ID, Version.Index) of a service or task: the same key means the same content; None when it has none."""
    if not isinstance(item, Mapping):
        return None
    object_id, index = item.get("ID"), _map(item.get("Version")).get("Index")
    if isinstance(object_id, str) and isinstance(index, int) and not isinstance(index, bool):
        return object_id, index
    return None


def parse_service(item: Mapping[str, Any], networks: Mapping[str, Network], warnings: list[str]) -> Service | None:
    """One entry of `GET /services`; None when it has no id or name. Problems go to `warnings`."""
    service_id = _text(item.get("ID"))
    spec = _map(item.get("Spec"))
    name = _text(spec.get("Name"))
    if not service_id or not name:
        return None
    mode = next(iter(_map(spec.get("Mode"))), "Replicated")
    endpoint = _map(item.get("Endpoint"))
    endpoint_mode = _text(_map(endpoint.get("Spec")).get("Mode")) or _text(
        _map(spec.get("EndpointSpec")).get("Mode")) or VIP
    vips: list[Address] = []
    for vip in entries(endpoint.get("VirtualIPs")):
        network = networks.get(_text(vip.get("NetworkID")))
        if network is not None and network.ingress:
            continue
        address = _address(_text(vip.get("Addr")), network.name if network else None)
        if address is None:
            warnings.append(f"service {_quote(name)}: virtual IP {_quote(_text(vip.get('Addr')))} is not an address")
        else:
            vips.append(address)
    stack = _text(_map(spec.get("Labels")).get(LABEL_STACK)).strip() or None
    return Service(service_id, name, str(mode), endpoint_mode.lower(), tuple(vips), stack)


def parse_task(item: Mapping[str, Any], networks: Mapping[str, Network]) -> Task | None:
    """One entry of `GET /tasks`, when it is served (Rule 1); else None."""
    if _text(_map(item.get("Status")).get("State")) != RUNNING or _text(item.get("DesiredState")) != RUNNING:
        return None
    task_id, service_id = _text(item.get("ID")), _text(item.get("ServiceID"))
    if not task_id or not service_id:
        return None
    slot = item.get("Slot")
    addresses: list[Address] = []
    for attachment in entries(item.get("NetworksAttachments")):
        network = _map(attachment.get("Network"))
        spec = _map(network.get("Spec"))
        known = networks.get(_text(network.get("ID")))
        if spec.get("Ingress") is True or (known is not None and known.ingress):
            continue
        name = _text(spec.get("Name")) or (known.name if known else "") or None
        for text in attachment.get("Addresses") or ():
            address = _address(_text(text), name)
            if address is not None:
                addresses.append(address)
    return Task(
        task_id,
        service_id,
        slot if isinstance(slot, int) and not isinstance(slot, bool) and slot > 0 else None,
        _text(item.get("NodeID")),
        tuple(addresses),
    )


def _address(text: str, network: str | None) -> Address | None:
    """`ip/len` (or a bare ip) on `network`; None when it is not an address."""
    try:
        interface = ipaddress.ip_interface(text.strip())
    except ValueError:
        return None
    subnet = str(interface.network) if "/" in text and interface.network.prefixlen > 0 else None
    return Address(str(interface.ip), "A" if interface.version == 4 else "AAAA", network, subnet if network else None)


# --- Naming ------------------------------------------------------------------------------


def records_for_cluster(cluster: Cluster, settings: Settings) -> dict[str, ServiceRecords]:
    """The records of every service, by owner (`swarm:<service id>`); services without records left out."""
    by_service: dict[str, list[Task]] = {}
    for task in cluster.tasks:
        by_service.setdefault(task.service_id, []).append(task)
    result: dict[str, ServiceRecords] = {}
    for service_id, service in cluster.services.items():
        published = records_for_service(service, by_service.get(service_id, ()), settings)
        if published.records or published.warnings:
            result[owner_of(service_id)] = published
    return result


def records_for_service(service: Service, tasks: Sequence[Task], settings: Settings) -> ServiceRecords:
    """The records one service publishes, from its served tasks (Rules 2 to 7)."""
    tasks = [t for t in tasks if t.service_id == service.id]
    if not tasks:
        return ServiceRecords(service.name, ())
    zone = zone_name(settings.domain)
    warnings: list[str] = []
    name = _name(service.name, zone, "service name", warnings)
    if name is None:
        return ServiceRecords(service.name, (), tuple(warnings))
    ttl = settings.ttl
    owner = owner_of(service.id)
    records: list[Record] = []

    def add(names: Iterable[str], addresses: Iterable[Address], owner_name: str) -> None:
        for address in addresses:
            for record_name in names:
                records.append(Record(record_name, address.rtype, address.ip, ttl, owner, owner_name,
                                      address.network, address.subnet))

    stack_name = _stack_name(service, zone, warnings)
    if service.endpoint_mode == DNSRR:
        front: list[tuple[Address, str]] = [(a, _task_name(service, t)) for t in tasks for a in t.addresses]
    else:
        front = [(a, service.name) for a in service.vips]
    for address, owner_name in front:
        own = [name] + ([stack_name] if stack_name else [])
        if address.network is not None:
            by_net = _name(f"{service.name}.{address.network}", zone, "network name", warnings)
            own += [by_net] if by_net else []
        add(own, [address], owner_name)
    if service.endpoint_mode != DNSRR:
        for vip in service.vips:
            records.append(Record(reverse_name(vip.ip), "PTR", name, ttl, owner, service.name))

    for task in tasks:
        task_label = _task_label(service, task)
        task_name = _name(f"{task_label}.{service.name}", zone, "task name", warnings) if task_label else None
        owner_name = _task_name(service, task)
        for address in task.addresses:
            own = [f"tasks.{name}"]
            if address.network is not None:
                by_net = _name(f"tasks.{service.name}.{address.network}", zone, "network name", warnings)
                own += [by_net] if by_net else []
            if task_name:
                own.append(task_name)
            add(own, [address], owner_name)
            records.append(Record(reverse_name(address.ip), "PTR", task_name or name, ttl, owner, owner_name))
    return ServiceRecords(service.name, _dedupe(records), tuple(dict.fromkeys(warnings)))


def _task_label(service: Service, task: Task) -> str | None:
    """`<slot>` of a replicated task, `<node id, 12 chars>` of a global one; None when it has neither."""
    if service.mode in GLOBAL_MODES:
        return task.node_id[:SHORT_NODE_ID].lower() or None
    return str(task.slot) if task.slot is not None else None


def _task_name(service: Service, task: Task) -> str:
    """The task as `docker service ps` names it (`web.1`, `agent.<node id>`), for owner_name."""
    label = task.slot if service.mode not in GLOBAL_MODES and task.slot is not None else task.node_id[:SHORT_NODE_ID]
    return f"{service.name}.{label}"


def _stack_name(service: Service, zone: str, warnings: list[str]) -> str | None:
    """`<service>.<stack>` without the `<stack>_` prefix, for a stack's service."""
    if not service.stack:
        return None
    short = service.name.removeprefix(service.stack + "_") or service.name
    return _name(f"{short}.{service.stack}", zone, "stack name", warnings)


def _name(text: str, zone: str, what: str, warnings: list[str]) -> str | None:
    """`text` as an absolute name under the zone; None (and a warning) when it is not a valid relative name."""
    if not text or text.endswith("."):
        warnings.append(f"{what} {_quote(text)}: not a valid DNS name")
        return None
    try:
        return absolute(text, zone)
    except InvalidName:
        warnings.append(f"{what} {_quote(text)}: not a valid DNS name")
        return None


def _dedupe(records: list[Record]) -> tuple[Record, ...]:
    """One record per (name, type, value), the first kept; sorted (RFC 2181 section 5: an RRset has no duplicates)."""
    unique: dict[tuple[str, str, str], Record] = {}
    for rec in records:
        unique.setdefault((rec.name, rec.rtype, rec.value), rec)
    return tuple(sorted(unique.values(), key=lambda r: (r.name, r.rtype, r.value)))


def entries(value: object) -> list[Mapping[str, Any]]:
    """The objects of a JSON list; anything else is no entries."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _quote(text: str) -> str:
    if len(text) > WARN_TEXT:
        return repr(text[:WARN_TEXT]) + "..."
    return repr(text)
