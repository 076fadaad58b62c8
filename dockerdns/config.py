"""Settings: one validated, immutable object built from YAML < DOCKERDNS_* < flags.

Rule 1: configuration is validated once, here, at the edge. Every problem is
        reported as one line naming where it came from (the YAML key path,
        the environment variable or the flag) and the bad value, and all
        problems are reported together (ConfigError.problems). Nothing else
        in dockerdns validates configuration again.
Rule 2: layers stack: built-in defaults < YAML file < DOCKERDNS_* environment
        < command-line flags. A key set in a higher layer wins; every layer's
        values are checked, even those a higher layer overrides.
Rule 3: a YAML key with an empty value (null) takes its default; so does an
        environment variable set to the empty string.

Rule 4: static records are checked as a zone: a CNAME stands alone at its
        name and one RRset has one TTL (RFC 2181 sections 10.1 and 5.2); a
        problem names both records by their place in `records`.
Rule 5: the default `allow` is DEFAULT_ALLOW plus every address of this
        host, read when the settings are loaded (start and SIGHUP); an
        `allow` list given in any layer is used exactly as written.

Reads the config file, resolv.conf and the kernel's address lists under
/proc/net, and nothing else; no logging. Settings are immutable and safe to
share between threads.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

import dnslib
import yaml

from .records import STATIC, STATIC_TYPES, InvalidName, Record, absolute, is_valid_name, zone_name
from .settings import (  # noqa: F401 (re-exported: the settings types are part of this module's interface)
    BRIDGE, DEFAULT_ALLOW, DEFAULT_LISTEN, Address, DockerSettings, ForwardSettings, HttpSettings, IPNetwork,
    LogSettings, RateLimitSettings, Settings)
from .settings import MIN_SWARM_POLL, SWARM_OFF, SwarmSettings


class ConfigError(Exception):
    """Bad configuration; `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


# --- Names of the keys -------------------------------------------------------

#: The flag of each YAML key path; also the keys `load` accepts in `flags`.
FLAGS: Mapping[str, str] = {
    "listen": "--listen",
    "domain": "--domain",
    "ttl": "--ttl",
    "docker.url": "--docker-url",
    "forward.upstreams": "--upstream",
    "forward.enabled": "--no-forward",
    "forward.max_ttl": "--forward-max-ttl",
    "forward.cache_size": "--forward-cache-size",
    "allow": "--allow",
    "external_names": "--external-names",
    "http.listen": "--http",
    "log.level": "--log-level",
    "rate_limit.responses_per_second": "--rate-limit",
    "rate_limit.slip": "--rate-limit-slip",
    "rate_limit.window": "--rate-limit-window",
    "swarm.url": "--swarm-url",
    "swarm.poll": "--swarm-poll",
}
CONFIG_FLAG = "config"  # the key of -c/--config in `flags`
CONFIG_ENV = "DOCKERDNS_CONFIG"
DEFAULT_CONFIG = "/etc/dockerdns/dockerdns.yaml"
RESOLV_CONF = "/etc/resolv.conf"
PROC_NET = "/proc/net"  # the kernel's address lists: fib_trie (IPv4) and if_inet6 (IPv6)
DEFAULT_DOCKER_URL = DockerSettings().url

LOG_LEVELS = ("debug", "info", "warning", "error")
DNS_PORT = 53
MAX_TTL = 2**31 - 1  # RFC 2181 section 8: a TTL is an unsigned 31-bit number
MAX_RATE = 1_000_000  # responses per second; beyond any one server
MAX_SLIP = 10  # BIND's bound too
MAX_CACHE_SIZE = 2**34  # bytes: 16 GiB, beyond any sane cache
MAX_WINDOW = 3600  # seconds; BIND's bound too
MAX_SWARM_POLL = 3600  # seconds

_RECORDS = "records"
_RECORD_KEYS = ("name", "type", "value", "ttl")
_DEFAULTS = Settings()
_WILDCARDS = ("0.0.0.0", "::")
# Docker's embedded DNS in containers on user-defined networks. Docker's DNAT
# rule sends 127.0.0.11:53 to its own resolver, so it never reaches a socket
# dockerdns binds to 0.0.0.0:53 in the same container.
_DOCKER_EMBEDDED_DNS = "127.0.0.11"


def env_name(key: str) -> str:
    """The environment variable of a YAML key path ("forward.upstreams" -> "DOCKERDNS_FORWARD_UPSTREAMS")."""
    return "DOCKERDNS_" + key.upper().replace(".", "_")


# --- Entry points --------------------------------------------------------------


def load(
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    *,
    resolv_conf: str = RESOLV_CONF,
    default_config: str = DEFAULT_CONFIG,
    proc_net: str = PROC_NET,
) -> Settings:
    """Settings from flags > DOCKERDNS_* environment > YAML file > defaults.

    `flags` holds only the options given on the command line, keyed by YAML
    key path (see FLAGS) plus "config". Raises ConfigError listing every problem.
    """
    unknown = set(flags) - set(FLAGS) - {CONFIG_FLAG}
    if unknown:
        raise ValueError(f"unknown flag keys: {sorted(unknown)}")
    problems: list[str] = []
    path = _config_path(flags, environ, default_config)
    file_values = _flatten(_read_document(path, problems), problems) if path else {}
    layers = (
        _Layer(file_values, label=str, text=False),
        _Layer(_env_values(environ), label=env_name, text=True),
        _Layer({key: flags[key] for key in FLAGS if key in flags}, label=FLAGS.__getitem__, text=True),
    )
    settings = _build(layers, file_values.get(_RECORDS), environ, resolv_conf, proc_net, problems)
    if problems:
        raise ConfigError(problems)
    return replace(settings, config_file=path)


def check_file(path: str) -> list[str]:
    """The problems of the config file at `path`, one line each; empty when it is fine."""
    try:
        load({CONFIG_FLAG: path}, {}, resolv_conf=os.devnull, proc_net=os.devnull)
    except ConfigError as exc:
        return exc.problems
    return []


def nameservers(resolv_conf: str) -> tuple[Address, ...]:
    """The `nameserver` addresses of a resolv.conf file, on port 53; none when it cannot be read."""
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return ()
    found: dict[Address, None] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        host = fields[1].split("%", 1)[0]  # fe80::1%eth0: the scope names a link of this host
        try:
            found[Address(str(ipaddress.ip_address(host)), DNS_PORT)] = None
        except ValueError:
            continue
    return tuple(found)


def host_networks(proc_net: str = PROC_NET) -> tuple[IPNetwork, ...]:
    """Every address of this host (in this network namespace), as networks of one; none when unreadable.

    Read from the kernel's own lists rather than a new dependency or a
    subprocess: IPv4 from the LOCAL routes of /proc/net/fib_trie, IPv6 from
    /proc/net/if_inet6. Both exist on every Linux since 2.6; elsewhere the
    result is empty and `allow` keeps only DEFAULT_ALLOW.
    """
    found: dict[IPNetwork, None] = {}
    for network in [*_fib_trie_local(_read_text(os.path.join(proc_net, "fib_trie"))),
                    *_if_inet6(_read_text(os.path.join(proc_net, "if_inet6")))]:
        found[network] = None
    return tuple(found)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as stream:
            return stream.read()
    except OSError:
        return ""


def _fib_trie_local(text: str) -> list[IPNetwork]:
    """The `/N host LOCAL` leaves of /proc/net/fib_trie: the IPv4 addresses of this host.

    A leaf is a line `|-- 192.0.2.2` followed by lines such as `/32 host
    LOCAL` (an address of ours) or `/32 link BROADCAST` (not one).
    """
    networks: list[IPNetwork] = []
    leaf: str | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "|--":
            leaf = fields[1]
        elif leaf is not None and len(fields) >= 3 and fields[0].startswith("/") and fields[-1] == "LOCAL":
            try:
                networks.append(ipaddress.ip_network(f"{leaf}{fields[0]}", strict=False))
            except ValueError:
                continue
    return networks


def _if_inet6(text: str) -> list[IPNetwork]:
    """The addresses in /proc/net/if_inet6: 32 hex digits first on each line."""
    networks: list[IPNetwork] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or len(fields[0]) != 32:
            continue
        try:
            networks.append(ipaddress.ip_network(int(fields[0], 16).to_bytes(16, "big")))
        except ValueError:
            continue
    return networks


def default_allow(proc_net: str = PROC_NET) -> tuple[IPNetwork, ...]:
    """DEFAULT_ALLOW and the host's own addresses that it does not already hold.

    The host's addresses are there because Docker's MASQUERADE rule makes a
    query from the host to the bridge gateway (`dig @172.17.0.1`) arrive
    from the host's primary address, which may be public (DESIGN.md).
    """
    extra = [net for net in host_networks(proc_net)
             if not any(net.network_address in known and net.broadcast_address in known for known in DEFAULT_ALLOW)]
    return DEFAULT_ALLOW + tuple(extra)


# --- Reading the layers ------------------------------------------------------


def _config_path(flags: Mapping[str, object], environ: Mapping[str, str], default_config: str) -> str | None:
    """The file to read: -c, else DOCKERDNS_CONFIG, else the default file if it exists."""
    explicit = flags.get(CONFIG_FLAG) or environ.get(CONFIG_ENV, "").strip()
    if explicit:
        return str(explicit)
    return default_config if os.path.exists(default_config) else None


def _parse_document(text: str) -> object:
    """YAML; JSON (which is YAML too) goes through the json module, some 30 times faster.

    50,000 static records take PyYAML about 2 s even with libyaml, and json
    0.1 s: a generated config can be written as JSON to start fast.
    """
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # YAML flow style that is not JSON: YAML reads it, and names the line if it is wrong
    # libyaml's loader when PyYAML has it (it does in PyYAML's wheels).
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _read_document(path: str, problems: list[str]) -> Mapping[object, object]:
    """The top-level mapping of a YAML file; an empty file is an empty mapping."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
        document = _parse_document(text)
    except FileNotFoundError:
        problems.append(f"{path}: no such file")
        return {}
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror or exc}")
        return {}
    except UnicodeDecodeError:
        problems.append(f"{path}: not UTF-8 text")
        return {}
    except yaml.MarkedYAMLError as exc:
        line = f":{exc.problem_mark.line + 1}" if exc.problem_mark else ""
        problems.append(f"{path}{line}: {exc.problem or exc}")
        return {}
    except yaml.YAMLError as exc:
        problems.append(f"{path}: {exc}")
        return {}
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.append(f"{path}: expected a mapping of keys at the top level, got {_kind(document)}")
        return {}
    return document


def _flatten(document: Mapping[object, object], problems: list[str]) -> dict[str, object]:
    """YAML mapping -> {key path: value}; unknown keys are problems, null values are left out."""
    values: dict[str, object] = {}
    for key, value in document.items():
        path = str(key)
        if _is_section(path):
            values.update(_flatten_section(path, value, problems))
        elif path not in FLAGS and path != _RECORDS:
            problems.append(f"{path}: unknown key")
        elif value is not None:
            values[path] = value
    return values


def _is_section(name: str) -> bool:
    return any(key.startswith(name + ".") for key in FLAGS)


def _flatten_section(section: str, value: object, problems: list[str]) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{section}: expected a mapping, got {_show(value)}")
        return {}
    values: dict[str, object] = {}
    for key, subvalue in value.items():
        path = f"{section}.{key}"
        if path not in FLAGS:
            problems.append(f"{path}: unknown key")
        elif subvalue is not None:
            values[path] = subvalue
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, object]:
    """{key path: text} of the DOCKERDNS_* variables that are set and not empty."""
    return {key: environ[env_name(key)] for key in FLAGS if environ.get(env_name(key), "").strip()}


# --- Checking values -----------------------------------------------------------

T = TypeVar("T")


class _Invalid(Exception):
    """One or more problem lines, each already naming its key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class _Where:
    """Where a value came from: names it in problems, and says how to read it."""

    label: str  # "forward.upstreams", "DOCKERDNS_FORWARD_UPSTREAMS", "--upstream"
    text: bool = False  # environment and flags: lists are comma-separated, numbers and booleans are text
    indexed: bool = True  # YAML: list items are named key[i]

    def item(self, index: int) -> _Where:
        return _Where(f"{self.label}[{index}]", self.text, self.indexed) if self.indexed else self

    def key(self, name: str) -> _Where:
        return _Where(f"{self.label}.{name}", self.text, self.indexed)

    def invalid(self, expected: str, value: object) -> _Invalid:
        return _Invalid([f"{self.label}: expected {expected}, got {_show(value)}"])


_Parse = Callable[[object, _Where], T]


@dataclass(frozen=True)
class _Layer:
    """The values of one source, by key path, and how that source names a key."""

    values: Mapping[str, object]
    label: Callable[[str], str]
    text: bool

    def where(self, key: str) -> _Where:
        return _Where(self.label(key), text=self.text, indexed=not self.text)


def _resolve(key: str, parse: _Parse[T], layers: Iterable[_Layer], problems: list[str]) -> T | None:
    """The value of `key` from the highest layer that sets it; None when none does."""
    result: T | None = None
    for layer in layers:
        if key in layer.values:
            result = _collect(parse, layer.values[key], layer.where(key), problems)
    return result


def _collect(parse: _Parse[T], value: object, where: _Where, problems: list[str]) -> T | None:
    """`parse(value, where)`, or None with its problems added to `problems`."""
    try:
        return parse(value, where)
    except _Invalid as exc:
        problems.extend(exc.problems)
        return None


def _show(value: object) -> str:
    """A value as the user wrote it: strings quoted, booleans and null in YAML spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _kind(value: object) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return kinds.get(type(value), type(value).__name__)


def _list_of(item: _Parse[T]) -> _Parse[tuple[T, ...]]:
    """A parser of lists (comma-separated in text) whose items `item` parses; all bad items are reported."""

    def parse(value: object, where: _Where) -> tuple[T, ...]:
        if where.text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise where.invalid("a list", value)
        items: list[T] = []
        problems: list[str] = []
        for index, element in enumerate(value):
            parsed = _collect(item, element, where.item(index), problems)
            if parsed is not None:
                items.append(parsed)
        if problems:
            raise _Invalid(problems)
        return tuple(items)

    return parse


def _boolean(value: object, where: _Where) -> bool:
    if isinstance(value, bool):
        return value
    if where.text and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise where.invalid("true or false", value)


def _integer(lowest: int, highest: int) -> _Parse[int]:
    """A parser of integers from `lowest` to `highest`; text is read as decimal."""

    def parse(value: object, where: _Where) -> int:
        if where.text and isinstance(value, str):
            try:
                number: object = int(value.strip())
            except ValueError:
                raise where.invalid("an integer", value) from None
        else:
            number = value
        # YAML's true and false are Python bools, and so ints: not a number here.
        if isinstance(number, bool) or not isinstance(number, int):
            raise where.invalid("an integer", value)
        if not lowest <= number <= highest:
            raise where.invalid(f"an integer from {lowest} to {highest}", value)
        return number

    return parse


_ttl = _integer(0, MAX_TTL)


def _string(value: object, where: _Where) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.invalid("a non-empty string", value)
    return value.strip()


def _seconds(lowest: float, highest: float) -> _Parse[float]:
    """A parser of seconds from `lowest` to `highest`, fractions allowed; text is read as decimal."""

    def parse(value: object, where: _Where) -> float:
        expected = f"seconds from {lowest:g} to {highest:g}"
        number: object = value
        if where.text and isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise where.invalid(expected, value) from None
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise where.invalid(expected, value)
        if not lowest <= number <= highest:  # NaN fails this too
            raise where.invalid(expected, value)
        return float(number)

    return parse


def _swarm_url(value: object, where: _Where) -> str:
    """A manager's API URL, or "off"."""
    url = _string(value, where)
    return SWARM_OFF if url.lower() == SWARM_OFF else url


def _domain(value: object, where: _Where) -> str:
    if not isinstance(value, str) or not is_valid_name(value.strip()):
        raise where.invalid("a DNS name", value)
    return value.strip().lower().rstrip(".")


def _log_level(value: object, where: _Where) -> str:
    if not isinstance(value, str) or value.strip().lower() not in LOG_LEVELS:
        raise where.invalid("one of " + ", ".join(LOG_LEVELS), value)
    return value.strip().lower()


def _cidr(value: object, where: _Where) -> IPNetwork:
    """A network; a bare address is a network of one (/32, /128); host bits are cleared."""
    if not isinstance(value, str):
        raise where.invalid("a CIDR", value)
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise where.invalid("a CIDR", value) from None


# --- Addresses ---------------------------------------------------------------


def _split_host_port(text: str) -> tuple[str, str | None]:
    """"host:port", "[v6]:port", "[v6]", "host", "v6" -> (host, port text or None)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(text)
        return host, rest[1:] if rest else None
    if text.count(":") > 1:
        return text, None  # a bare IPv6 address
    host, colon, port = text.partition(":")
    return host, port if colon else None


def _address(
    value: object,
    where: _Where,
    *,
    expected: str,
    default_port: int | None,
    lowest_port: int = 0,
    keywords: tuple[str, ...] = (),
) -> Address:
    """An Address whose host is an IP literal (or one of `keywords`); the port may default."""
    if not isinstance(value, str):
        raise where.invalid(expected, value)
    try:
        host, port = _split_host_port(value.strip())
        host = host.lower() if host.lower() in keywords else str(ipaddress.ip_address(host))
    except ValueError:
        raise where.invalid(expected, value) from None
    if port is None:
        if default_port is None:
            raise where.invalid(expected, value)
        return Address(host, default_port)
    if not (port.isascii() and port.isdigit() and lowest_port <= int(port) <= 65535):
        raise where.invalid(f"{expected} with a port from {lowest_port} to 65535", value)
    return Address(host, int(port))


def _listen_address(value: object, where: _Where) -> Address:
    """A listen address: an IP or "bridge", port optional (53); port 0 lets the system choose."""
    return _address(value, where, expected="HOST:PORT", default_port=DNS_PORT, keywords=(BRIDGE,))


def _listen(value: object, where: _Where) -> tuple[Address, ...]:
    addresses = _list_of(_listen_address)(value, where)
    if not addresses:
        raise where.invalid("at least one HOST:PORT", value)
    return addresses


def _upstream(value: object, where: _Where) -> Address:
    return _address(value, where, expected="HOST[:PORT]", default_port=DNS_PORT, lowest_port=1)


def _http_listen(value: object, where: _Where) -> Address | None:
    """The HTTP listener's address; the empty string turns it off."""
    if isinstance(value, str) and not value.strip():
        return None
    return _address(value, where, expected="HOST:PORT", default_port=None)


def _reaches_self(upstream: Address, listen: Iterable[Address]) -> bool:
    """True when a query sent to `upstream` would arrive at one of dockerdns's own sockets."""
    for own in listen:
        if own.port != upstream.port:
            continue
        if own.host == upstream.host:
            return True
        if own.host in _WILDCARDS and upstream.host != _DOCKER_EMBEDDED_DNS:
            if ipaddress.ip_address(upstream.host).is_loopback:
                return True
    return False


# --- Static records ----------------------------------------------------------

# What the value of each static record type looks like, for problems.
_VALUE_SYNTAX = {
    "A": "an IPv4 address",
    "AAAA": "an IPv6 address",
    "CNAME": "a DNS name",
    "PTR": "a DNS name",
    "MX": "PREFERENCE NAME",
    "SRV": "PRIORITY WEIGHT PORT TARGET",
    "TXT": 'quoted text ("...")',
}
# The number of fields of each type's value; TXT takes any number of strings.
_VALUE_FIELDS = {"A": 1, "AAAA": 1, "CNAME": 1, "PTR": 1, "MX": 2, "SRV": 4}
_ADDRESS_TYPES = {"A": ipaddress.IPv4Address, "AAAA": ipaddress.IPv6Address}


# The records the last `records` list parsed into, by what they were read from (and the zone and
# default TTL they were read with): a reload reads again only the entries that changed. Lists of
# up to MAX_KEPT_RECORDS only: the keys hold the parser's strings (1.5 KB a record), and a large
# generated config is read once, at start.
_last_records: dict[tuple, Record] = {}
MAX_KEPT_RECORDS = 2000


def _static_records(domain: str, ttl: int) -> _Parse[tuple[Record, ...]]:
    """A parser of the `records` list; names go under `domain`, `ttl` is the default TTL (Rule 4)."""
    last: dict[tuple, Record] = _last_records
    seen: dict[tuple, Record] = {}

    def parse_record(item: object, where: _Where) -> Record:
        key = _record_key(item, domain, ttl)
        record = last.get(key) if key is not None else None
        if record is None:
            record = _static_record(item, where, domain, ttl)
        if key is not None:
            seen[key] = record
        return record

    def parse_afresh(item: object, where: _Where) -> Record:
        return _static_record(item, where, domain, ttl)

    def parse(value: object, where: _Where) -> tuple[Record, ...]:
        global _last_records
        kept = isinstance(value, list) and len(value) <= MAX_KEPT_RECORDS
        # raises unless every item parsed: index i is records[i]
        records = _list_of(parse_record if kept else parse_afresh)(value, where)
        problems = _zone_problems(records, where)
        if problems:
            raise _Invalid(problems)
        _last_records = seen  # replaced whole: what this list holds, no more
        return records

    return parse


def _record_key(item: object, domain: str, ttl: int) -> tuple | None:
    """`item` as a key of `_last_records` when it is a mapping of plain scalars, else None (read it afresh)."""
    if not isinstance(item, dict):
        return None
    values = []
    for key, value in item.items():
        if value.__class__ not in _SCALARS:
            return None
        values.append((key, value.__class__, value))  # the class too: True == 1 == 1.0, yet only 1 is a TTL
    return domain, ttl, tuple(values)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _zone_problems(records: tuple[Record, ...], where: _Where) -> list[str]:
    """What a zone may not hold, one line per later record naming the earlier one it clashes with.

    RFC 2181 section 10.1: a name with a CNAME holds no other data (and one
    CNAME only). RFC 2181 section 5.2: the records of one RRset (name, type)
    share one TTL.
    """
    problems: list[str] = []
    first_at: dict[str, int] = {}  # name -> index of its first record
    cname_at: dict[str, int] = {}  # name -> index of its CNAME
    rrset_at: dict[tuple[str, str], int] = {}  # (name, type) -> index of the RRset's first record
    for index, record in enumerate(records):
        other = cname_at.get(record.name) if record.rtype != "CNAME" else first_at.get(record.name)
        if other is not None:
            here = where.item(index).label
            problems.append(f"{here}: {record.rtype} at {record.name} beside {where.item(other).label} "
                            f"({records[other].rtype}); a CNAME stands alone at its name (RFC 2181 section 10.1)")
        else:
            same = rrset_at.get((record.name, record.rtype))
            if same is not None and records[same].ttl != record.ttl:
                here = where.item(index).label
                problems.append(f"{here}: ttl {record.ttl} of {record.name} {record.rtype} differs from "
                                f"{where.item(same).label} (ttl {records[same].ttl}); one RRset has one TTL "
                                "(RFC 2181 section 5.2)")
        first_at.setdefault(record.name, index)
        rrset_at.setdefault((record.name, record.rtype), index)
        if record.rtype == "CNAME":
            cname_at.setdefault(record.name, index)
    return problems


def _static_record(item: object, where: _Where, domain: str, default_ttl: int) -> Record:
    """One record of `records`: {name, type, value, ttl?}; every bad field is reported."""
    if not isinstance(item, dict):
        raise where.invalid("a mapping with name, type and value", item)
    problems = [f"{where.key(str(key)).label}: unknown key" for key in item if key not in _RECORD_KEYS]
    problems += [f"{where.key(key).label}: missing" for key in ("name", "type", "value") if item.get(key) is None]

    def field(key: str, parse: _Parse[T]) -> T | None:
        value = item.get(key)
        return None if value is None else _collect(parse, value, where.key(key), problems)

    name = field("name", _record_name(domain))
    rtype = field("type", _record_type)
    ttl = field("ttl", _ttl)
    value = field("value", _record_value(rtype, domain)) if rtype else None
    if problems or name is None or rtype is None or value is None:
        raise _Invalid(problems)
    return Record(name, rtype, value, _default(ttl, default_ttl), owner=STATIC, owner_name=STATIC)


def _record_name(domain: str) -> _Parse[str]:
    """A parser of record names: relative names go under `domain`, a trailing dot makes one absolute."""

    def parse(value: object, where: _Where) -> str:
        if isinstance(value, str):
            try:
                return absolute(value, domain, wildcard=True)  # `*.dev`: a wildcard (RFC 4592)
            except InvalidName:
                pass
        raise where.invalid("a DNS name (`*` only as the whole first label)", value)

    return parse


def _record_type(value: object, where: _Where) -> str:
    if not isinstance(value, str) or value.strip().upper() not in STATIC_TYPES:
        raise where.invalid("one of " + ", ".join(STATIC_TYPES), value)
    return value.strip().upper()


def _record_value(rtype: str, domain: str) -> _Parse[str]:
    """A parser of `rtype` values in zone-file syntax; returns them normalised, names absolute."""
    zone = zone_name(domain)

    def parse(value: object, where: _Where) -> str:
        if rtype in _ADDRESS_TYPES and isinstance(value, str):
            try:  # the common case, without dnslib: it would only agree, slowly
                return str(_ADDRESS_TYPES[rtype](value.strip()))
            except ValueError:
                raise where.invalid(_VALUE_SYNTAX[rtype], value) from None
        if not isinstance(value, str) or not _plausible_value(value, rtype):
            raise where.invalid(_VALUE_SYNTAX[rtype], value)
        fields = value.split()
        if rtype in ("CNAME", "PTR"):
            return absolute(fields[0], domain)
        if rtype == "SRV" and not fields[3].endswith("."):
            # dnslib ignores the origin for SRV targets; make a relative one absolute here.
            fields[3] = zone if fields[3] == "@" else f"{fields[3]}.{zone}"
        try:
            rrs = dnslib.RR.fromZone(f"{zone} 0 IN {rtype} {' '.join(fields)}", origin=zone)
        except Exception:  # dnslib's zone parser reports bad input with many exception types
            raise where.invalid(_VALUE_SYNTAX[rtype], value) from None
        if len(rrs) != 1:
            raise where.invalid(_VALUE_SYNTAX[rtype], value)
        # toZone, not str(): str() of a TXT joins its strings with commas, which is not zone syntax.
        return str(rrs[0].rdata.toZone())

    return parse


def _plausible_value(value: str, rtype: str) -> bool:
    """The checks dnslib leaves out: one line, the field count, addresses and target names."""
    fields = value.split()
    if not fields or "\n" in value.strip() or len(fields) != _VALUE_FIELDS.get(rtype, len(fields)):
        return False
    if rtype in _ADDRESS_TYPES:
        try:
            _ADDRESS_TYPES[rtype](fields[0])
        except ValueError:
            return False
        return True
    if rtype in ("CNAME", "PTR"):
        return is_valid_name(fields[-1])
    if rtype in ("MX", "SRV"):
        # "." is the null target: no service here (RFC 2782; RFC 7505 for MX).
        return fields[-1] == "." or is_valid_name(fields[-1])
    return True


# --- Building Settings -------------------------------------------------------


def _build(
    layers: tuple[_Layer, ...],
    records: object,
    environ: Mapping[str, str],
    resolv_conf: str,
    proc_net: str,
    problems: list[str],
) -> Settings:
    """Settings from the layers, defaults filling what no layer sets; problems go to `problems`."""
    listen = _resolve("listen", _listen, layers, problems) or DEFAULT_LISTEN
    domain = _resolve("domain", _domain, layers, problems) or _DEFAULTS.domain
    ttl = _default(_resolve("ttl", _ttl, layers, problems), _DEFAULTS.ttl)
    url = _resolve("docker.url", _string, layers, problems) or environ.get("DOCKER_HOST", "").strip()
    upstreams = _resolve("forward.upstreams", _list_of(_upstream), layers, problems) or nameservers(resolv_conf)
    enabled = _resolve("forward.enabled", _boolean, layers, problems)
    max_ttl = _resolve("forward.max_ttl", _ttl, layers, problems)
    cache_size = _resolve("forward.cache_size", _integer(0, MAX_CACHE_SIZE), layers, problems)
    allow = _resolve("allow", _list_of(_cidr), layers, problems)
    external_names = _resolve("external_names", _boolean, layers, problems)
    http_listen = _resolve("http.listen", _http_listen, layers, problems)
    level = _resolve("log.level", _log_level, layers, problems)
    rate = _resolve("rate_limit.responses_per_second", _integer(0, MAX_RATE), layers, problems)
    slip = _resolve("rate_limit.slip", _integer(0, MAX_SLIP), layers, problems)
    window = _resolve("rate_limit.window", _integer(1, MAX_WINDOW), layers, problems)
    swarm_url = _resolve("swarm.url", _swarm_url, layers, problems)
    swarm_poll = _resolve("swarm.poll", _seconds(MIN_SWARM_POLL, MAX_SWARM_POLL), layers, problems)
    static: tuple[Record, ...] = ()
    if records is not None:
        static = _collect(_static_records(domain, ttl), records, _Where(_RECORDS), problems) or ()
    return Settings(
        listen=listen,
        domain=domain,
        ttl=ttl,
        docker=DockerSettings(url=url or DEFAULT_DOCKER_URL),
        forward=ForwardSettings(
            enabled=_default(enabled, _DEFAULTS.forward.enabled),
            # Forwarding must never reach dockerdns itself (DESIGN.md, "DNS behaviour").
            upstreams=tuple(upstream for upstream in upstreams if not _reaches_self(upstream, listen)),
            max_ttl=_default(max_ttl, _DEFAULTS.forward.max_ttl),
            cache_size=_default(cache_size, _DEFAULTS.forward.cache_size),
        ),
        allow=default_allow(proc_net) if allow is None else allow,
        external_names=_default(external_names, _DEFAULTS.external_names),
        http=HttpSettings(listen=http_listen),
        log=LogSettings(level=level or _DEFAULTS.log.level),
        rate_limit=RateLimitSettings(
            responses_per_second=_default(rate, _DEFAULTS.rate_limit.responses_per_second),
            slip=_default(slip, _DEFAULTS.rate_limit.slip),
            window=_default(window, _DEFAULTS.rate_limit.window),
        ),
        swarm=SwarmSettings(url=swarm_url, poll=_default(swarm_poll, _DEFAULTS.swarm.poll)),
        records=static,
    )


def _default(value: T | None, default: T) -> T:
    return default if value is None else value
