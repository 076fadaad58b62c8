"""Response rate limiting: the idea of BIND's RRL, so dockerdns is useless as an amplifier.

A reflection attack sends small queries with a forged source address and
lets the server send its (larger) answers to the victim. The answers such a
flood draws are many *identical* responses to one address or network, which
a real client never needs: it caches, or asks for different things.

Rule 1: an account is kept per (client network, response key): the client's
        /24 (IPv4) or /56 (IPv6), because a forger can vary the low bits at
        will, and a key that names the response (`response_key`): its name
        (for NXDOMAIN and NODATA the zone that says so, the owner of the SOA
        in authority), its type and the kind of its rcode, as in BIND's RRL.
        So varying the query (EDNS size, letter case, random names) buys no
        new credit.
Rule 2: each account is a token bucket. It earns `responses_per_second`
        credits a second, holds at most `window` seconds' worth, and starts
        with one second's worth; each response spends one. So bursts of
        legitimate traffic pass and only a sustained flood of identical
        responses is limited.
Rule 3: over the limit, every `slip`-th response is SLIP: the caller answers
        with TC set and no records, so a real client (whose address was not
        forged) retries over TCP, which cannot be forged; the others are
        DROP. `slip` 0 never slips, 1 always slips.
Rule 4: memory is bounded: past `max_entries` accounts the least recently
        used one is forgotten. A forgotten account restarts with one second
        of credit, not a full window, so churning accounts buys a forger
        little.
Rule 5: local clients are never limited: loopback and the host's own
        addresses (`exempt`), whom nobody off this machine can forge, and
        the addresses of running containers (`local`), so that a busy
        container never waits for an answer.

Pure: no sockets, threads or clocks; `now` (seconds, any monotonic origin) is
passed in. Thread-safety: `check` may be called from any number of threads at
once; a lock guards the accounts (held for a few dict operations).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import threading
from collections.abc import Callable, Sequence

from .settings import DEFAULT_RESPONSES_PER_SECOND, DEFAULT_SLIP, DEFAULT_WINDOW  # noqa: F401
from .wire import read_name

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_IPV4_PREFIX = 24
DEFAULT_IPV6_PREFIX = 56
DEFAULT_MAX_ENTRIES = 10000
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))

HEADER_LEN = 12
TC = 0x0200  # in the 16-bit flags word


class Verdict(enum.Enum):
    """What to do with one response."""

    SEND = "send"  # as it is
    DROP = "drop"  # not at all
    SLIP = "slip"  # as a truncated answer: TC set, no records (see `truncated`)


class RateLimit:
    """Token buckets per (client network, response key); see the module rules."""

    def __init__(
        self,
        responses_per_second: int,
        window: int = DEFAULT_WINDOW,
        slip: int = DEFAULT_SLIP,
        ipv4_prefix: int = DEFAULT_IPV4_PREFIX,
        ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        exempt: Sequence[IPNetwork] = LOOPBACK,
        local: Callable[[str], bool] = lambda client: False,
    ):
        if responses_per_second < 0 or window < 1 or slip < 0 or max_entries < 1:
            raise ValueError("responses_per_second >= 0, window >= 1, slip >= 0, max_entries >= 1")
        if not (0 <= ipv4_prefix <= 32 and 0 <= ipv6_prefix <= 128):
            raise ValueError("ipv4_prefix 0..32, ipv6_prefix 0..128")
        self.rate = float(responses_per_second)
        self.window = window
        self.slip = slip
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        self.max_entries = max_entries
        self.exempt = tuple(exempt)
        self.local = local
        self._cap = self.rate * window
        self._lock = threading.Lock()
        # (network, key) -> [credit, time of last update, over-limit responses so far]; in LRU order.
        self._accounts: dict[tuple[str, bytes], list[float]] = {}
        self._networks: dict[str, str | None] = {}  # client -> its network, None when exempt
        self.dropped = 0
        self.slipped = 0

    def exempt_client(self, client: str) -> bool:
        """True when `client` is never limited (Rule 5): callers skip building a key."""
        network = self._networks.get(client, "")
        if network == "":
            network = self._network_of(client)
        return network is None or self.local(client)

    def check(self, client: str, key: bytes, now: float) -> Verdict:
        """The verdict on sending the response `key` to `client` at time `now`; counts it."""
        if not self.rate:
            return Verdict.SEND
        network = self._networks.get(client, "")
        if network == "":
            network = self._network_of(client)
        if network is None:
            return Verdict.SEND
        account_key = (network, key)
        with self._lock:
            accounts = self._accounts
            account = accounts.pop(account_key, None)  # re-inserted below: the most recently used goes last
            if account is None:
                account = [self.rate, now, 0.0]
                if len(accounts) >= self.max_entries:
                    del accounts[next(iter(accounts))]
            else:
                elapsed = now - account[1]
                if elapsed > 0:  # a clock that steps back earns nothing, and costs nothing
                    account[0] = min(self._cap, account[0] + elapsed * self.rate)
                    account[1] = now
            accounts[account_key] = account
            if account[0] >= 1.0:
                account[0] -= 1.0
                return Verdict.SEND
            account[2] += 1
            if self.slip and account[2] % self.slip == 0:
                self.slipped += 1
                return Verdict.SLIP
            self.dropped += 1
            return Verdict.DROP

    def __len__(self) -> int:
        return len(self._accounts)

    def _network_of(self, client: str) -> str | None:
        """The account network of `client` ("192.0.2.0/24"), None when exempt; remembered."""
        try:
            ip = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            network: str | None = client  # not an address: its own account
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if any(ip in net for net in self.exempt):
                network = None
            else:
                prefix = self.ipv4_prefix if ip.version == 4 else self.ipv6_prefix
                network = str(ipaddress.ip_network((ip, prefix), strict=False))
        networks = self._networks
        if len(networks) >= self.max_entries:
            self._networks = networks = {}  # replaced whole: readers in other threads keep the old one
        networks[client] = network
        return network


def truncated(answer: bytes) -> bytes:
    """The SLIP form of `answer`: its header with TC set and no records, and its question.

    RFC 1035 section 4.1.1 / RFC 2181 section 9: TC tells the client to ask
    again over TCP. Only the first question is kept; an answer whose question
    cannot be read keeps none. Never raises.
    """
    if len(answer) < HEADER_LEN:
        return answer
    ident, flags, qdcount = struct.unpack_from("!HHH", answer)
    end = _question_end(answer) if qdcount else None
    question = answer[HEADER_LEN:end] if end is not None else b""
    return struct.pack("!HHHHHH", ident, flags | TC, 1 if question else 0, 0, 0, 0) + question


def _question_end(message: bytes) -> int | None:
    """The offset after the first question (an uncompressed name, type and class), or None."""
    offset = HEADER_LEN
    while offset < len(message):
        length = message[offset]
        if length == 0:
            end = offset + 1 + 4
            return end if end <= len(message) else None
        if length & 0xC0:  # a pointer: the first name of a message has nothing before it to point at
            return None
        offset += 1 + length
    return None


NXDOMAIN = 3


def response_key(answer: bytes) -> bytes:
    """The account key of a response (Rule 1): kind of rcode, type, and the name it speaks of. Never raises."""
    if len(answer) < HEADER_LEN:
        return answer
    rcode = answer[3] & 0x0F
    qname = read_name(answer, HEADER_LEN) if answer[4:6] != b"\x00\x00" else None
    if qname is None:
        return b"?" + bytes((rcode,))
    name, end = qname
    qtype = answer[end:end + 2]
    negative = rcode == NXDOMAIN or (rcode == 0 and answer[6:8] == b"\x00\x00")
    if not negative:
        return (b"+" if rcode == 0 else b"!" + bytes((rcode,))) + qtype + name
    # NXDOMAIN and NODATA count against the zone that says so: the owner of
    # the SOA in authority, right after the question when the answer is empty.
    zone = read_name(answer, end + 4) if answer[6:8] == b"\x00\x00" and answer[8:10] != b"\x00\x00" else None
    return (b"N" if rcode == NXDOMAIN else b"D") + qtype + (zone[0] if zone is not None else name)
