"""Settings: one validated, immutable object built from YAML < DOCKERDNS_* < flags.

Rule: configuration is validated once, here, at the edge. Every problem is
reported as one line naming the key path and the bad value, and all problems
are reported together (ConfigError.problems). Nothing else in dockerdns
validates configuration again.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .records import Record

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BRIDGE = "bridge"  # listen host keyword: the default bridge's gateway address


@dataclass(frozen=True)
class Address:
    """A host and port: an IP literal, or the keyword "bridge" for listen."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class DockerSettings:
    url: str = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class ForwardSettings:
    enabled: bool = True
    upstreams: tuple[Address, ...] = ()


@dataclass(frozen=True)
class HttpSettings:
    listen: Address | None = None


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"


DEFAULT_LISTEN = (Address("127.0.0.1", 53), Address(BRIDGE, 53))
DEFAULT_ALLOW = tuple(
    ipaddress.ip_network(cidr)
    for cidr in (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True)
class Settings:
    listen: tuple[Address, ...] = DEFAULT_LISTEN
    domain: str = "docker"  # without a trailing dot, lower-case
    ttl: int = 5
    docker: DockerSettings = field(default_factory=DockerSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    allow: tuple[IPNetwork, ...] = DEFAULT_ALLOW
    external_names: bool = False
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    records: tuple[Record, ...] = ()  # static records: absolute names, owner "static"
    config_file: str | None = None  # the file these came from, read again on SIGHUP


class ConfigError(Exception):
    """Bad configuration; `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems
