"""Records and DNS names: the vocabulary every other module speaks.

Rule 1: a name inside dockerdns is absolute, lower-case and ends with ".".
Rule 2: a record belongs to exactly one owner (a container id, or "static");
        owners are replaced whole, never edited record by record.
Rule 3: a record's value is zone-file text; names inside values are absolute.

Pure: no I/O, no threads, no clocks. Every object here is immutable and so
safe to share between threads.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass

STATIC = "static"
SERVER = "server"  # the owner of `ns.<zone>`'s addresses: where dockerdns listens

#: Record types a static record may have (DESIGN.md, "Static records").
STATIC_TYPES = ("A", "AAAA", "CNAME", "TXT", "SRV", "PTR", "MX")

#: Health states (Docker's State.Health.Status, or "none" without a check).
#: A holder in one of SERVING serves a shared name; the others step aside
#: while one that serves remains (DESIGN.md, "Health").
HEALTH_STATES = ("healthy", "unhealthy", "starting", "none")
SERVING = frozenset({"healthy", "none"})

# RFC 1035 section 2.3.4: 63 octets a label, 255 octets a name on the wire,
# which leaves 253 characters in presentation form without the root dot.
MAX_LABEL = 63
MAX_NAME = 253

# Letters, digits, hyphen (RFC 952/1123 host names) and underscore, which
# SRV owner names (RFC 2782) and Compose network names use. Matched against
# ASCII bytes with fullmatch: `$` would also match before a trailing newline,
# and str.lower() would fold the Kelvin sign into "k".
_LABEL = re.compile(rb"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record and who published it."""

    name: str  # absolute, lower-case, ends with "."
    rtype: str  # "A", "AAAA", "CNAME", "TXT", "SRV", "PTR", "MX"
    value: str  # zone-file syntax
    ttl: int
    owner: str = STATIC  # container id, or "static"
    owner_name: str = STATIC  # container name, for `dockerdns records`
    network: str | None = None  # A/AAAA of a container: the network's name
    subnet: str | None = None  # ... and its subnet, for source-aware answers
    health: str = "none"  # the owner's: "healthy", "unhealthy", "starting", or "none" (no check)


class InvalidName(ValueError):
    """A string that is not a usable DNS name."""


def is_valid_name(name: str, wildcard: bool = False) -> bool:
    """True when `name` (absolute or relative) is a well-formed DNS name.

    Labels of ASCII letters, digits, hyphens and underscores, 1 to 63
    characters, not starting or ending with a hyphen; 253 characters at most.
    Nothing else: no other character, not even one that lower-cases into
    ASCII. With `wildcard`, the first label may be `*` (RFC 4592), and only
    the whole first label.
    """
    if wildcard and name.startswith("*.") and name not in ("*.", "*.."):
        name = "x" + name[1:]  # the rest must be a name; `*` is one character, like "x"
    if len(name) > MAX_NAME + 1:
        return False
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        return False
    text = raw[:-1] if raw.endswith(b".") else raw
    if not text or len(text) > MAX_NAME:
        return False
    return all(
        len(label) <= MAX_LABEL and _LABEL.fullmatch(label) is not None
        for label in text.lower().split(b".")  # bytes.lower(): ASCII only
    )


def is_wildcard(name: str) -> bool:
    """True when `name` is a wildcard's owner: its first label is `*` (RFC 4592)."""
    return name.startswith("*.")


def fold(text: str) -> str:
    """`text` with ASCII letters lower-cased and nothing else changed (DNS case, RFC 4343 section 3)."""
    return text.translate(_ASCII_LOWER)


def absolute(name: str, zone: str, wildcard: bool = False) -> str:
    """`name` made absolute: a trailing dot keeps it as is, else it goes under `zone`.

    Raises InvalidName when the result is not a valid name (with `wildcard`,
    `*` may be the whole first label).
    """
    name = name.strip()
    result = name if name.endswith(".") else f"{name}.{zone_name(zone)}"
    if not is_valid_name(result, wildcard):
        raise InvalidName(f"not a valid DNS name: {name!r}")
    return fold(result)


def zone_name(zone: str) -> str:
    """The zone as an absolute, lower-case name ("docker" -> "docker.")."""
    zone = fold(zone.strip()).rstrip(".")
    return f"{zone}."


def in_zone(name: str, zone: str) -> bool:
    """True when absolute `name` is `zone` (absolute) or below it."""
    return name == zone or name.endswith("." + zone)


def reverse_name(address: str) -> str:
    """The PTR owner name of an IPv4 or IPv6 address."""
    return ipaddress.ip_address(address).reverse_pointer.lower() + "."
