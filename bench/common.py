"""What the benchmarks share: a free loopback port, waiting for a server, the cores they pin to."""

from __future__ import annotations

import socket
import time

import dns.message
import dns.query

CLIENT_CORE, SERVER_CORE = "0", "1"  # dnsperf on one core, the server under test on the other


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_answering(port: int, name: str) -> None:
    """Return once something on 127.0.0.1:`port` answers a query for `name`; exit after 20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.5)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"nothing answers on 127.0.0.1:{port}")
