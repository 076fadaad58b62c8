"""Naming rules: one container's inspect data -> the records it publishes.

DESIGN.md, "Names served", is the contract; the rules, in the order applied:

Rule 1: only a running container publishes (State.publishes). A paused one
        is running (it comes back with the same address) and keeps its
        names; a restarting one is not (its sandbox is torn down between
        attempts): the outcome is NotRunning. `dockerdns.ignore` set to
        true/yes/1/on makes a running one publish nothing: Ignored. Two
        outcomes, two types: "ignored" means the label and nothing else.
        A Swarm task's container publishes nothing while Swarm names are on
        (swarm.py names it).
Rule 2: addresses come from NetworkSettings.Networks: IPAddress -> A,
        GlobalIPv6Address -> AAAA, each tagged with its network's name and
        subnet. `--network container:<other>` has none of its own: it is
        given the other container's addresses (and networks) by the caller.
        `--network host` and `none` have none at all: no records, no warnings.
Rule 3: the primary name is the `dockerdns.name` label, else the container
        name. It is used for `<primary>.<zone>`, `<primary>.<network>.<zone>`
        and, always, as the PTR target of every address (DESIGN.md: "PTR of
        each address: the container's primary name"). When the primary name
        is not a valid DNS name the PTR points at `<short id>.<zone>` instead.
        A `dockerdns.name` that is not a valid relative name is skipped with a
        warning and the container name is used.
Rule 4: names from Docker (container, host, network, alias, compose service
        and project names) are always relative to the zone; a trailing "."
        there is refused, so that no crafted alias or compose label escapes
        the zone. Only `dockerdns.aliases` items ending in "." and
        `<hostname>.<domainname>.` are absolute, and they are published only
        with `external_names` on, or when they fall inside the zone anyway
        (the apex itself excepted: it holds the SOA).
Rule 5: the network aliases Docker adds itself (the short id, and the
        container name that Compose and users repeat there) are not aliases:
        they would bring the container name back when `dockerdns.name`
        replaces it. A container in another's network namespace has no
        network aliases and no hostname of its own (Docker copies the other
        container's), so neither is published for it.
Rule 6: every candidate name goes through records.absolute(); an invalid one
        is skipped with one warning, never an exception. At most MAX_ALIASES
        names are taken from `dockerdns.aliases` and from each network's
        aliases; values quoted in warnings are cut to WARN_TEXT characters.
Rule 7: PTR records are published only for the container's own addresses,
        not for a namespace owner's (the owner publishes those).
Rule 8: the output is deduplicated by (name, type, value), an RRset holds no
        duplicate records (RFC 2181 section 5), and sorted.
Rule 9: no value in the inspect data can raise out of this module. Every
        field is type-checked where it is read and every label parsed
        defensively: a bad value skips that label (or name, or address) with
        one warning, the rest of the container still publishes. Names are
        compared and lower-cased as ASCII only (records.fold), so that no
        Unicode case mapping turns one name into another.

Rule 10: every port a container exposes or publishes (its own port, never
        the host's) and every `dockerdns.srv=NAME:PORT[/PROTO]` item gives
        `_<port or NAME>._<proto>.<n>.<zone> SRV 0 0 <port> <primary>.<zone>.`
        for each `n` among the primary name, the network aliases, the
        compose `<service>.<project>` and the relative label aliases
        (DESIGN.md, "Ports (SRV)"); a bad item is skipped with one warning.
Rule 11: every record carries the container's health: State.Health.Status
        (healthy, unhealthy, starting), or "none" without a check or with
        `dockerdns.health=ignore`; another value of that label is skipped
        with one warning. The table applies the rule for shared names.

The inspect accessors below (state, labels, container_name, network_mode,
netns_owner_id, bridge_gateway) are the only readers of those fields; the
docker source uses them too, so that both read a container the same way.

Pure: no I/O, no logging, no clocks; every function is safe to call from any
thread.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from .records import InvalidName, Record, absolute, fold, reverse_name, zone_name
from .settings import Settings

LABEL_NAME = "dockerdns.name"
LABEL_ALIASES = "dockerdns.aliases"
LABEL_IGNORE = "dockerdns.ignore"
LABEL_TTL = "dockerdns.ttl"
LABEL_HEALTH = "dockerdns.health"
LABEL_SRV = "dockerdns.srv"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_PROJECT = "com.docker.compose.project"
#: On the containers of Swarm tasks; while Swarm names are on, swarm.py names them (DESIGN.md, "Docker Swarm").
SWARM_TASK = "com.docker.swarm.task.id"

#: Names taken from `dockerdns.aliases`, and from each network's aliases.
MAX_ALIASES = 64
#: Ports taken from each of the inspect data's port maps and from `dockerdns.srv`.
MAX_PORTS = 64
#: Characters of a label value quoted in a warning.
WARN_TEXT = 80
#: RFC 2181 section 8: a TTL is an unsigned 31-bit number of seconds.
MAX_TTL = 2**31 - 1
#: Docker's default hostname is the short id: the first 12 hex digits.
SHORT_ID = 12

_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off", ""})
_DIGITS = re.compile(r"[0-9]+")
_TTL_DIGITS = len(str(MAX_TTL))  # longer is out of range: never handed to int()


class State(enum.Enum):
    """Where a container is in its life, from State.Running/Paused/Restarting."""

    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"  # Docker reports Running too, but there is no sandbox
    STOPPED = "stopped"  # created, exited, dead, or no readable state

    @property
    def publishes(self) -> bool:
        """True when the container has its addresses and publishes names (Rule 1)."""
        return self in (State.RUNNING, State.PAUSED)

    @property
    def listed(self) -> bool:
        """True when `GET /containers/json` lists it (what `docker ps` shows without -a)."""
        return self is not State.STOPPED


@dataclass(frozen=True)
class Published:
    """A running container's records (maybe none: no addresses), and what was skipped on the way."""

    records: tuple[Record, ...]
    warnings: tuple[str, ...] = ()  # one line each, e.g. "alias 'bad name': not a valid DNS name"


@dataclass(frozen=True)
class Ignored:
    """`dockerdns.ignore` is true: the container publishes nothing, on purpose."""

    value: str  # the label's value, as set (stripped)
    records: ClassVar[tuple[Record, ...]] = ()
    warnings: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class NotRunning:
    """The container does not publish in its state (Rule 1)."""

    state: State
    records: ClassVar[tuple[Record, ...]] = ()
    warnings: ClassVar[tuple[str, ...]] = ()


Outcome = Union[Published, Ignored, NotRunning]


@dataclass(frozen=True)
class _Address:
    ip: str
    rtype: str  # "A" or "AAAA"
    network: str
    subnet: str | None


def records_for_container(
    inspect: Mapping[str, Any], settings: Settings, netns_owner: Mapping[str, Any] | None = None
) -> Outcome:
    """The records a container publishes, from its `docker inspect` dict; never raises (Rule 9).

    `netns_owner` is the inspect dict of the container whose network
    namespace this one joined (`--network container:<id>`), if any.
    """
    current = state(inspect)
    if not current.publishes:
        return NotRunning(current)
    warnings: list[str] = []
    tags = labels(inspect)
    ignore = _ignore_label(tags, warnings)
    if ignore is not None:
        return Ignored(ignore)
    if settings.swarm.enabled and SWARM_TASK in tags:
        return Published(())

    in_netns = netns_owner_id(inspect) is not None
    if in_netns:
        own: list[_Address] = []
        shared = _addresses(netns_owner, warnings) if netns_owner and state(netns_owner).publishes else []
    else:
        own = _addresses(inspect, warnings)
        shared = own
    if not shared:
        return Published(())

    names = _Names(settings, warnings)
    cid = _text(inspect.get("Id"))
    short_id = cid[:SHORT_ID]
    container = container_name(inspect)
    primary = _primary(tags, container, names, warnings)
    nets = sorted({a.network for a in shared})
    on = {n: [a for a in shared if a.network == n] for n in nets}

    if names.relative("container name", primary, shared):
        for net in nets:
            names.relative("container name", f"{primary}.{net}", on[net])
    names.relative("short id", short_id, shared)
    if not in_netns:
        _hostname(inspect, short_id, shared, names)
        docker_added = {fold(short_id), fold(cid), fold(container)}
        for net in nets:
            for alias in _network_aliases(inspect, net, docker_added, warnings):
                if names.relative("network alias", alias, on[net]):
                    names.relative("network alias", f"{alias}.{net}", on[net])
    # Rule 10: the names that hold SRV records, all relative (a wildcard cannot hold one).
    port_names = [primary] if names.target(primary) else []
    if not in_netns:
        port_names += [alias for net in nets for alias in _network_aliases(inspect, net, docker_added, [])]
    service, project = tags.get(COMPOSE_SERVICE), tags.get(COMPOSE_PROJECT)
    if service and project:
        if names.relative("compose service", f"{service}.{project}", shared):
            port_names.append(f"{service}.{project}")
    for alias in _label_aliases(tags, warnings):
        if alias.endswith("."):
            names.external(LABEL_ALIASES, alias, shared, wildcard=True)
        elif alias.strip() == "*":
            warnings.append(f"{LABEL_ALIASES} '*': a wildcard for the whole zone cannot be claimed; skipped")
        elif names.relative(LABEL_ALIASES, alias, shared, wildcard=True) and not alias.startswith("*"):
            port_names.append(alias)

    ttl = _ttl(tags, settings.ttl, warnings)
    health = _health(inspect, tags, warnings)
    target = names.target(primary) or names.target(short_id)
    records = names.records(ttl, cid, container, health)
    if target is not None:
        records += [Record(reverse_name(a.ip), "PTR", target, ttl, cid, container, health=health) for a in own]
        for port, proto, service_name in _ports(inspect, tags, warnings):
            for holder in _unique(port_names):
                name = names.target(f"_{service_name}._{proto}.{holder}")
                if name is not None:
                    records.append(Record(name, "SRV", f"0 0 {port} {target}", ttl, cid, container, health=health))
    return Published(_dedupe(records), tuple(dict.fromkeys(warnings)))


# -- inspect accessors: the one place that reads these fields ----------------------


def state(inspect: Mapping[str, Any]) -> State:
    """The container's State (STOPPED when the inspect data has none that reads)."""
    raw = inspect.get("State") if isinstance(inspect, Mapping) else None
    if not isinstance(raw, Mapping) or raw.get("Running") is not True:
        return State.STOPPED
    if raw.get("Restarting") is True:
        return State.RESTARTING
    return State.PAUSED if raw.get("Paused") is True else State.RUNNING


def labels(inspect: Mapping[str, Any]) -> Mapping[str, str]:
    """Config.Labels, the string keys with string values only."""
    config = inspect.get("Config")
    raw = config.get("Labels") if isinstance(config, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def container_name(inspect: Mapping[str, Any]) -> str:
    """The container's name without Docker's leading "/"; "" when it has none."""
    return _text(inspect.get("Name")).removeprefix("/")


def network_mode(inspect: Mapping[str, Any]) -> str:
    """HostConfig.NetworkMode ("default", "host", "none", "container:<id>", a network); "" when absent."""
    host_config = inspect.get("HostConfig")
    return _text(host_config.get("NetworkMode")) if isinstance(host_config, Mapping) else ""


def netns_owner_id(inspect: Mapping[str, Any]) -> str | None:
    """The id (or name, as given) of the container whose network namespace this one uses, if any."""
    mode = network_mode(inspect)
    if not mode.startswith("container:"):
        return None
    return mode[len("container:"):].strip() or None


def networks(inspect: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """NetworkSettings.Networks: network name -> endpoint, entries of the wrong shape left out."""
    settings = inspect.get("NetworkSettings")
    raw = settings.get("Networks") if isinstance(settings, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    return {name: endpoint for name, endpoint in raw.items()
            if isinstance(name, str) and isinstance(endpoint, Mapping)}


def bridge_gateway(inspect: Mapping[str, Any]) -> str | None:
    """The gateway of the container's endpoint on the default bridge network, if it has one."""
    gateway = networks(inspect).get("bridge", {}).get("Gateway")
    return gateway if isinstance(gateway, str) and gateway else None


class _Names:
    """Candidate names and their addresses, validated as they are added."""

    def __init__(self, settings: Settings, warnings: list[str]):
        self._zone = zone_name(settings.domain)
        self._external = settings.external_names
        self._warnings = warnings
        self._claims: list[tuple[str, list[_Address]]] = []

    def relative(self, source: str, text: str, addresses: list[_Address], wildcard: bool = False) -> bool:
        """Claim `text` under the zone; a trailing dot is refused (Rule 4). False when skipped."""
        name = self.target(text, wildcard)
        if name is None:
            self._warnings.append(f"{source} {_quote(text)}: not a valid DNS name")
            return False
        self._claims.append((name, addresses))
        return True

    def external(self, source: str, text: str, addresses: list[_Address], wildcard: bool = False) -> None:
        """Claim absolute `text`: outside the zone only with external_names (a wildcard too: no `*.com.`)."""
        try:
            name = absolute(text, self._zone, wildcard)
        except InvalidName:
            self._warnings.append(f"{source} {_quote(text)}: not a valid DNS name")
            return
        if name in (self._zone, "*." + self._zone):
            self._warnings.append(f"{source} {_quote(text)}: the zone apex cannot be claimed")
        elif not self._external and not name.endswith("." + self._zone):
            self._warnings.append(f"{source} {_quote(text)}: outside the zone {self._zone}; external_names is off")
        else:
            self._claims.append((name, addresses))

    def target(self, text: str, wildcard: bool = False) -> str | None:
        """`text` as an absolute name under the zone, or None when it is not a valid relative name."""
        text = text.strip()
        if not text or text.endswith("."):
            return None
        try:
            return absolute(text, self._zone, wildcard)
        except InvalidName:
            return None

    def records(self, ttl: int, owner: str, owner_name: str, health: str) -> list[Record]:
        return [
            Record(name, a.rtype, a.ip, ttl, owner, owner_name, a.network, a.subnet, health)
            for name, addresses in self._claims
            for a in addresses
        ]


def _ignore_label(tags: Mapping[str, str], warnings: list[str]) -> str | None:
    """The `dockerdns.ignore` value when it says true; None when absent, false, or not a boolean (a warning)."""
    value = tags.get(LABEL_IGNORE)
    if value is None:
        return None
    word = fold(value.strip())
    if word in _TRUE:
        return value.strip()
    if word not in _FALSE:
        warnings.append(f"{LABEL_IGNORE} {_quote(value)}: expected true or false; not ignored")
    return None


def _primary(tags: Mapping[str, str], container: str, names: _Names, warnings: list[str]) -> str:
    """The `dockerdns.name` label when it is a valid relative name, else the container name."""
    label = tags.get(LABEL_NAME, "").strip()
    if not label:
        return container
    if names.target(label) is None:
        warnings.append(f"{LABEL_NAME} {_quote(label)}: not a valid relative DNS name; using {_quote(container)}")
        return container
    return label


def _addresses(inspect: Mapping[str, Any], warnings: list[str]) -> list[_Address]:
    """Every address of the container, by network name (sorted), IPv4 first."""
    found: list[_Address] = []
    for name, endpoint in sorted(networks(inspect).items()):
        for key, prefix_key, rtype, version in (
            ("IPAddress", "IPPrefixLen", "A", 4),
            ("GlobalIPv6Address", "GlobalIPv6PrefixLen", "AAAA", 6),
        ):
            text = _text(endpoint.get(key))
            if not text:
                continue
            try:
                # A scope ("fe80::1%eth0") parses, but has no place in a record.
                ip = None if "%" in text else ipaddress.ip_address(text)
            except ValueError:
                ip = None
            if ip is None or ip.version != version:
                warnings.append(f"network {_quote(name)}: {key} {_quote(text)} is not an IPv{version} address")
                continue
            found.append(_Address(str(ip), rtype, name, _subnet(ip, endpoint.get(prefix_key))))
    return found


def _subnet(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: object) -> str | None:
    """The network holding `ip`, as a CIDR; None when the prefix is missing or 0 (it would hold everything)."""
    if not isinstance(prefix, int) or isinstance(prefix, bool) or not 0 < prefix <= ip.max_prefixlen:
        return None
    return str(ipaddress.ip_network((ip, prefix), strict=False))


def _hostname(inspect: Mapping[str, Any], short_id: str, addresses: list[_Address], names: _Names) -> None:
    """`<hostname>.<zone>` when the user set it; `<hostname>.<domainname>.` when a domainname is set."""
    config = inspect.get("Config")
    if not isinstance(config, Mapping):
        return
    hostname = _text(config.get("Hostname")).strip()
    domainname = _text(config.get("Domainname")).strip()
    if hostname and fold(hostname) != fold(short_id):
        names.relative("hostname", hostname, addresses)
    if hostname and domainname:
        names.external("hostname.domainname", f"{hostname}.{domainname.rstrip('.')}.", addresses)


def _network_aliases(
    inspect: Mapping[str, Any], network: str, docker_added: set[str], warnings: list[str]
) -> list[str]:
    """The user's aliases on `network`: Docker's own (short id, name) removed, deduplicated, capped."""
    raw = networks(inspect).get(network, {}).get("Aliases")
    if not isinstance(raw, list):
        return []
    items = (a.strip() for a in raw if isinstance(a, str))
    aliases = _unique(a for a in items if a and fold(a) not in docker_added)
    return _capped(aliases, f"network aliases on {_quote(network)}", warnings)


def _label_aliases(tags: Mapping[str, str], warnings: list[str]) -> list[str]:
    """`dockerdns.aliases`: comma-separated, items stripped, empty items dropped, deduplicated, capped."""
    value = tags.get(LABEL_ALIASES)
    if value is None:
        return []
    aliases = _unique(item.strip() for item in value.split(","))
    return _capped([a for a in aliases if a], LABEL_ALIASES, warnings)


def _ttl(tags: Mapping[str, str], default: int, warnings: list[str]) -> int:
    """`dockerdns.ttl`: ASCII digits only, at most MAX_TTL; anything else warns and gives `default`."""
    value = tags.get(LABEL_TTL)
    if value is None:
        return default
    text = value.strip()
    # The length first: int() of more than 4300 digits raises, and costs time well before that.
    if len(text) <= _TTL_DIGITS and _DIGITS.fullmatch(text) and int(text) <= MAX_TTL:
        return int(text)
    warnings.append(f"{LABEL_TTL} {_quote(value)}: expected an integer from 0 to {MAX_TTL}; using {default}")
    return default


def _health(inspect: Mapping[str, Any], tags: Mapping[str, str], warnings: list[str]) -> str:
    """State.Health.Status (healthy, unhealthy, starting), "none" without a check (Rule 11)."""
    label = tags.get(LABEL_HEALTH)
    if label is not None:
        if fold(label.strip()) == "ignore":
            return "none"
        warnings.append(f"{LABEL_HEALTH} {_quote(label)}: expected 'ignore'; label skipped")
    raw = inspect.get("State")
    check = raw.get("Health") if isinstance(raw, Mapping) else None
    status = check.get("Status") if isinstance(check, Mapping) else None
    return status if status in ("healthy", "unhealthy", "starting") else "none"


_PORT_KEY = re.compile(r"([0-9]{1,5})/(tcp|udp|sctp)")
_SRV_ITEM = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?):([0-9]{1,5})(?:/(tcp|udp|sctp))?")


def _ports(inspect: Mapping[str, Any], tags: Mapping[str, str], warnings: list[str]) -> list[tuple[int, str, str]]:
    """(port, protocol, service label) for each exposed or published port, and each `dockerdns.srv` item (Rule 10).

    The container's port, never the host's: `EXPOSE`, `--expose` and `-p`
    all show as keys `PORT/PROTO` of Config.ExposedPorts,
    NetworkSettings.Ports and HostConfig.PortBindings.
    """
    found: dict[tuple[int, str, str], None] = {}
    for section, key in (("Config", "ExposedPorts"), ("NetworkSettings", "Ports"), ("HostConfig", "PortBindings")):
        part = inspect.get(section)
        ports = part.get(key) if isinstance(part, Mapping) else None
        if isinstance(ports, Mapping):
            for spec in list(ports)[:MAX_PORTS]:
                match = _PORT_KEY.fullmatch(spec) if isinstance(spec, str) else None
                if match and 0 < int(match.group(1)) < 65536:
                    found[(int(match.group(1)), match.group(2), match.group(1))] = None
    value = tags.get(LABEL_SRV)
    for item in (value.split(",") if value is not None else [])[:MAX_PORTS]:
        item = item.strip()
        match = _SRV_ITEM.fullmatch(item)
        if not match or not 0 < int(match.group(2)) < 65536:
            if item:
                warnings.append(f"{LABEL_SRV} item {_quote(item)}: expected NAME:PORT[/PROTO]; skipped")
            continue
        found[(int(match.group(2)), match.group(3) or "tcp", fold(match.group(1)))] = None
    return list(found)


def _unique(items: Iterable[str]) -> list[str]:
    """`items` without (ASCII) case-insensitive repeats, first spelling kept, in order."""
    seen: dict[str, str] = {}
    for item in items:
        seen.setdefault(fold(item), item)
    return list(seen.values())


def _capped(items: list[str], what: str, warnings: list[str]) -> list[str]:
    if len(items) <= MAX_ALIASES:
        return items
    warnings.append(f"{what}: {len(items)} names, only the first {MAX_ALIASES} are used")
    return items[:MAX_ALIASES]


def _dedupe(records: list[Record]) -> tuple[Record, ...]:
    """One record per (name, type, value), the first kept; sorted."""
    unique: dict[tuple[str, str, str], Record] = {}
    for rec in records:
        unique.setdefault((rec.name, rec.rtype, rec.value), rec)
    return tuple(sorted(unique.values(), key=lambda r: (r.name, r.rtype, r.value)))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _quote(text: str) -> str:
    """`text` quoted for a one-line warning, cut to WARN_TEXT characters."""
    if len(text) > WARN_TEXT:
        return repr(text[:WARN_TEXT]) + "..."
    return repr(text)
