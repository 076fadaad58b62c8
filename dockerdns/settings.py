"""Settings: the validated, immutable configuration every part of dockerdns receives.

Only the types and their defaults live here; `config` builds them from YAML,
the environment and flags. Pure: importing this module loads no YAML parser,
sockets, threads or clocks, so the pure core (naming, resolver) can take
Settings without them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .records import Record

#: Identical responses per second to one client network before limiting.
#: Generous on purpose: every container on Docker's default bridge sits in
#: one /24 (172.17.0.x), and stub resolvers in containers rarely cache, so a
#: fleet of busy replicas asking for `db` on every request can reach hundreds
#: of identical answers a second. 1000/s, with a 15 s burst, never limits
#: them; a reflection flood runs at tens of thousands.
DEFAULT_RESPONSES_PER_SECOND = 1000
DEFAULT_WINDOW = 15  # seconds of credit an account can hold
DEFAULT_SLIP = 2  # every second over-limit response is a TC answer
#: Seconds: the longest TTL a forwarded answer keeps. An upstream may say a
#: week (or, hostile, 2**31-1); a day bounds how long a bad answer can live
#: in the caches behind us.
DEFAULT_FORWARD_MAX_TTL = 86400

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
    max_ttl: int = DEFAULT_FORWARD_MAX_TTL  # seconds; TTLs of forwarded answers are capped at it


@dataclass(frozen=True)
class HttpSettings:
    listen: Address | None = None


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"


@dataclass(frozen=True)
class RateLimitSettings:
    """Response rate limiting (rrl.RateLimit): identical answers per second to one client network."""

    responses_per_second: int = DEFAULT_RESPONSES_PER_SECOND  # 0: off
    slip: int = DEFAULT_SLIP  # every slip-th limited answer goes out truncated (TC); 0: none
    window: int = DEFAULT_WINDOW  # seconds of credit a client network can save up


#: `swarm.url` that turns Swarm names off.
SWARM_OFF = "off"
#: Seconds: the shortest `swarm.poll`; each poll reads every running task.
MIN_SWARM_POLL = 0.2


@dataclass(frozen=True)
class SwarmSettings:
    """Swarm names (swarm_source): the manager's API and how often its tasks are read."""

    url: str | None = None  # None: the docker.url engine, when it is a manager; SWARM_OFF: no Swarm names
    poll: float = 1.0  # seconds between two reads of the running tasks

    @property
    def enabled(self) -> bool:
        """False only when turned off; None (the default) still depends on the engine."""
        return self.url != SWARM_OFF


DEFAULT_LISTEN = (Address("127.0.0.1", 53), Address(BRIDGE, 53))
# The networks every default `allow` holds; config adds the host's own
# addresses when it loads the settings (reading them is I/O, not for here).
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
    ttl: int = 1  # seconds: bounds how long a caching client keeps an address a restart freed
    docker: DockerSettings = field(default_factory=DockerSettings)
    forward: ForwardSettings = field(default_factory=ForwardSettings)
    allow: tuple[IPNetwork, ...] = DEFAULT_ALLOW
    external_names: bool = False
    http: HttpSettings = field(default_factory=HttpSettings)
    log: LogSettings = field(default_factory=LogSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    swarm: SwarmSettings = field(default_factory=SwarmSettings)
    records: tuple[Record, ...] = ()  # static records: absolute names, owner "static"
    config_file: str | None = None  # the file these came from, read again on SIGHUP
