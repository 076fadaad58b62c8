"""Naming rules: one container's inspect data -> the records it publishes.

DESIGN.md, "Names served", is the contract; the rules, in the order applied:

Rule 1: only a running container publishes. A paused one is running (it comes
        back with the same address) and keeps its names; a restarting one is
        not (its sandbox is torn down between attempts). `dockerdns.ignore`
        set to true/yes/1/on also makes it publish nothing; so does a Swarm
        task's container while Swarm names are on (swarm.py names it).
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

Pure: no I/O, no logging, no clocks; every function is safe to call from any
thread.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .records import InvalidName, Record, absolute, reverse_name, zone_name
from .settings import Settings

LABEL_NAME = "dockerdns.name"
LABEL_ALIASES = "dockerdns.aliases"
LABEL_IGNORE = "dockerdns.ignore"
LABEL_TTL = "dockerdns.ttl"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_PROJECT = "com.docker.compose.project"
#: On the containers of Swarm tasks; while Swarm names are on, swarm.py names them (DESIGN.md, "Docker Swarm").
SWARM_TASK = "com.docker.swarm.task.id"

#: Names taken from `dockerdns.aliases`, and from each network's aliases.
MAX_ALIASES = 64
#: Characters of a label value quoted in a warning.
WARN_TEXT = 80
#: RFC 2181 section 8: a TTL is an unsigned 31-bit number of seconds.
MAX_TTL = 2**31 - 1
#: Docker's default hostname is the short id: the first 12 hex digits.
SHORT_ID = 12

_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off", ""})
_DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class Published:
    """What one container publishes."""

    records: tuple[Record, ...]
    warnings: tuple[str, ...] = ()  # one line each, e.g. "alias 'bad name': not a valid DNS name"
    ignored: bool = False  # dockerdns.ignore=true, or not running


@dataclass(frozen=True)
class _Address:
    ip: str
    rtype: str  # "A" or "AAAA"
    network: str
    subnet: str | None


def records_for_container(
    inspect: Mapping[str, Any], settings: Settings, netns_owner: Mapping[str, Any] | None = None
) -> Published:
    """The records a container publishes, from its `docker inspect` dict.

    `netns_owner` is the inspect dict of the container whose network
    namespace this one joined (`--network container:<id>`), if any.
    """
    if not _running(inspect):
        return Published((), ignored=True)
    warnings: list[str] = []
    labels = _labels(inspect)
    if _ignored(labels, warnings):
        return Published((), ignored=True)
    if settings.swarm.enabled and SWARM_TASK in labels:
        return Published(())

    in_netns = netns_owner_id(inspect) is not None
    if in_netns:
        own: list[_Address] = []
        shared = _addresses(netns_owner, warnings) if netns_owner and _running(netns_owner) else []
    else:
        own = _addresses(inspect, warnings)
        shared = own
    if not shared:
        return Published(())

    names = _Names(settings, warnings)
    cid = _text(inspect.get("Id"))
    short_id = cid[:SHORT_ID]
    container = _container_name(inspect)
    primary = _primary(labels, container, names, warnings)
    networks = sorted({a.network for a in shared})
    on = {n: [a for a in shared if a.network == n] for n in networks}

    if names.relative("container name", primary, shared):
        for net in networks:
            names.relative("container name", f"{primary}.{net}", on[net])
    names.relative("short id", short_id, shared)
    if not in_netns:
        _hostname(inspect, short_id, shared, names)
        docker_added = {short_id.lower(), cid.lower(), container.lower()}
        for net in networks:
            for alias in _network_aliases(inspect, net, docker_added, warnings):
                if names.relative("network alias", alias, on[net]):
                    names.relative("network alias", f"{alias}.{net}", on[net])
    service, project = labels.get(COMPOSE_SERVICE), labels.get(COMPOSE_PROJECT)
    if service and project:
        names.relative("compose service", f"{service}.{project}", shared)
    for alias in _label_aliases(labels, warnings):
        if alias.endswith("."):
            names.external(LABEL_ALIASES, alias, shared)
        else:
            names.relative(LABEL_ALIASES, alias, shared)

    ttl = _ttl(labels, settings.ttl, warnings)
    target = names.target(primary) or names.target(short_id)
    records = names.records(ttl, cid, container)
    if target is not None:
        records += [Record(reverse_name(a.ip), "PTR", target, ttl, cid, container) for a in own]
    return Published(_dedupe(records), tuple(dict.fromkeys(warnings)))


def netns_owner_id(inspect: Mapping[str, Any]) -> str | None:
    """The id (or name, as given) of the container whose network namespace this one uses, if any."""
    host_config = inspect.get("HostConfig")
    mode = _text(host_config.get("NetworkMode")) if isinstance(host_config, Mapping) else ""
    if not mode.startswith("container:"):
        return None
    return mode[len("container:"):].strip() or None


class _Names:
    """Candidate names and their addresses, validated as they are added."""

    def __init__(self, settings: Settings, warnings: list[str]):
        self._zone = zone_name(settings.domain)
        self._external = settings.external_names
        self._warnings = warnings
        self._claims: list[tuple[str, list[_Address]]] = []

    def relative(self, source: str, text: str, addresses: list[_Address]) -> bool:
        """Claim `text` under the zone; a trailing dot is refused (Rule 4). False when skipped."""
        name = self.target(text)
        if name is None:
            self._warnings.append(f"{source} {_quote(text)}: not a valid DNS name")
            return False
        self._claims.append((name, addresses))
        return True

    def external(self, source: str, text: str, addresses: list[_Address]) -> None:
        """Claim absolute `text`: outside the zone only with external_names."""
        try:
            name = absolute(text, self._zone)
        except InvalidName:
            self._warnings.append(f"{source} {_quote(text)}: not a valid DNS name")
            return
        if name == self._zone:
            self._warnings.append(f"{source} {_quote(text)}: the zone apex cannot be claimed")
        elif not self._external and not name.endswith("." + self._zone):
            self._warnings.append(f"{source} {_quote(text)}: outside the zone {self._zone}; external_names is off")
        else:
            self._claims.append((name, addresses))

    def target(self, text: str) -> str | None:
        """`text` as an absolute name under the zone, or None when it is not a valid relative name."""
        text = text.strip()
        if not text or text.endswith("."):
            return None
        try:
            return absolute(text, self._zone)
        except InvalidName:
            return None

    def records(self, ttl: int, owner: str, owner_name: str) -> list[Record]:
        return [
            Record(name, a.rtype, a.ip, ttl, owner, owner_name, a.network, a.subnet)
            for name, addresses in self._claims
            for a in addresses
        ]


def _running(inspect: Mapping[str, Any]) -> bool:
    state = inspect.get("State")
    if not isinstance(state, Mapping):
        return False
    # A restarting container reports Running too, but has no sandbox.
    return state.get("Running") is True and not state.get("Restarting")


def _labels(inspect: Mapping[str, Any]) -> Mapping[str, str]:
    config = inspect.get("Config")
    labels = config.get("Labels") if isinstance(config, Mapping) else None
    if not isinstance(labels, Mapping):
        return {}
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def _ignored(labels: Mapping[str, str], warnings: list[str]) -> bool:
    value = labels.get(LABEL_IGNORE)
    if value is None:
        return False
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word not in _FALSE:
        warnings.append(f"{LABEL_IGNORE} {_quote(value)}: expected true or false; not ignored")
    return False


def _container_name(inspect: Mapping[str, Any]) -> str:
    return _text(inspect.get("Name")).removeprefix("/")


def _primary(labels: Mapping[str, str], container: str, names: _Names, warnings: list[str]) -> str:
    """The `dockerdns.name` label when it is a valid relative name, else the container name."""
    label = labels.get(LABEL_NAME, "").strip()
    if not label:
        return container
    if names.target(label) is None:
        warnings.append(f"{LABEL_NAME} {_quote(label)}: not a valid relative DNS name; using {_quote(container)}")
        return container
    return label


def _addresses(inspect: Mapping[str, Any], warnings: list[str]) -> list[_Address]:
    """Every address of the container, by network name (sorted), IPv4 first."""
    settings = inspect.get("NetworkSettings")
    networks = settings.get("Networks") if isinstance(settings, Mapping) else None
    if not isinstance(networks, Mapping):
        return []
    found: list[_Address] = []
    for name in sorted(n for n in networks if isinstance(n, str)):
        endpoint = networks[name]
        if not isinstance(endpoint, Mapping):
            continue
        for key, prefix_key, rtype, version in (
            ("IPAddress", "IPPrefixLen", "A", 4),
            ("GlobalIPv6Address", "GlobalIPv6PrefixLen", "AAAA", 6),
        ):
            text = _text(endpoint.get(key))
            if not text:
                continue
            try:
                ip = ipaddress.ip_address(text)
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
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _hostname(inspect: Mapping[str, Any], short_id: str, addresses: list[_Address], names: _Names) -> None:
    """`<hostname>.<zone>` when the user set it; `<hostname>.<domainname>.` when a domainname is set."""
    config = inspect.get("Config")
    if not isinstance(config, Mapping):
        return
    hostname = _text(config.get("Hostname")).strip()
    domainname = _text(config.get("Domainname")).strip()
    if hostname and hostname.lower() != short_id.lower():
        names.relative("hostname", hostname, addresses)
    if hostname and domainname:
        names.external("hostname.domainname", f"{hostname}.{domainname.rstrip('.')}.", addresses)


def _network_aliases(
    inspect: Mapping[str, Any], network: str, docker_added: set[str], warnings: list[str]
) -> list[str]:
    """The user's aliases on `network`: Docker's own (short id, name) removed, deduplicated, capped."""
    settings = inspect.get("NetworkSettings")
    networks = settings.get("Networks") if isinstance(settings, Mapping) else None
    endpoint = networks.get(network) if isinstance(networks, Mapping) else None
    raw = endpoint.get("Aliases") if isinstance(endpoint, Mapping) else None
    if not isinstance(raw, list):
        return []
    items = (a.strip() for a in raw if isinstance(a, str))
    aliases = _unique(a for a in items if a and a.lower() not in docker_added)
    return _capped(aliases, f"network aliases on {_quote(network)}", warnings)


def _label_aliases(labels: Mapping[str, str], warnings: list[str]) -> list[str]:
    """`dockerdns.aliases`: comma-separated, items stripped, empty items dropped, deduplicated, capped."""
    value = labels.get(LABEL_ALIASES)
    if value is None:
        return []
    aliases = _unique(item.strip() for item in value.split(","))
    return _capped([a for a in aliases if a], LABEL_ALIASES, warnings)


def _ttl(labels: Mapping[str, str], default: int, warnings: list[str]) -> int:
    value = labels.get(LABEL_TTL)
    if value is None:
        return default
    text = value.strip()
    if _DIGITS.match(text) and int(text) <= MAX_TTL:
        return int(text)
    warnings.append(f"{LABEL_TTL} {_quote(value)}: expected an integer from 0 to {MAX_TTL}; using {default}")
    return default


def _unique(items: Iterable[str]) -> list[str]:
    """`items` without case-insensitive repeats, first spelling kept, in order."""
    seen: dict[str, str] = {}
    for item in items:
        seen.setdefault(item.lower(), item)
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
