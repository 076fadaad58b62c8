"""`dockerdns serve` as a process: signals, reload, start failures, Docker unreachable."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from dockerdns import servers
from dockerdns.config import Address
from tests.dnsstub import StubUpstream

NO_DOCKER = "unix:///nonexistent/docker.sock"


class Server:
    """A dockerdns process on a free loopback port, its stderr collected."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dockerdns", "--listen", "127.0.0.1:0", "--docker-url", NO_DOCKER, *args],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "DOCKERDNS_CONFIG": ""},
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        line = self.wait_line(r"listening on 127\.0\.0\.1:(\d+)")
        self.port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()

    def wait_line(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    if re.search(pattern, line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no line matching {pattern!r} in {self.lines}")
                self._seen.wait(min(remaining, 0.1))

    def ask(self, name: str, qtype: str = "A", timeout: float = 3) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, qtype), "127.0.0.1", port=self.port, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "dockerdns.yaml"
    path.write_text("records:\n  - {name: first, type: A, value: 10.0.0.1}\n")
    return path


@pytest.fixture
def server(config: Path) -> Iterator[Server]:
    srv = Server("-c", str(config), "--no-forward")
    yield srv
    srv.stop()


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_exits_zero_quickly_with_queries_in_flight(config: Path, signum: int) -> None:
    """SIGTERM and SIGINT stop the server with exit 0 within 2 s, while forwarded queries hang."""
    dead = StubUpstream("", mode="silent")
    srv = Server("-c", str(config), "--upstream", f"127.0.0.1:{dead.port}")
    try:
        assert addresses(srv.ask("first.docker")) == ["10.0.0.1"]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(20):
            sock.sendto(dns.message.make_query(f"n{i}.example.org", "A").to_wire(), ("127.0.0.1", srv.port))
        deadline = time.monotonic() + 5
        while len(dead.seen) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dead.seen, "the queries never reached the upstream"
        started = time.monotonic()
        srv.proc.send_signal(signum)
        assert srv.proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
        sock.close()
    finally:
        srv.stop()
        dead.close()


def test_sighup_reloads_records(server: Server, config: Path) -> None:
    """SIGHUP reads the config again: new static records are served, old ones are gone."""
    assert addresses(server.ask("first.docker")) == ["10.0.0.1"]
    config.write_text("ttl: 9\nrecords:\n  - {name: second, type: A, value: 10.0.0.2}\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_line(r"reloaded")
    msg = server.ask("second.docker")
    assert addresses(msg) == ["10.0.0.2"] and msg.answer[0].ttl == 9
    assert server.ask("first.docker").rcode() == dns.rcode.NXDOMAIN


def test_sighup_with_bad_config_keeps_old_settings(server: Server, config: Path) -> None:
    """A bad file on SIGHUP is reported by key, and the old settings stay in force."""
    config.write_text("ttl: soon\nrecords:\n  - {name: second, type: A, value: 10.0.0.2}\n")
    server.proc.send_signal(signal.SIGHUP)
    server.wait_line(r"kept the previous settings")
    assert any("ttl" in line for line in server.lines)
    assert addresses(server.ask("first.docker")) == ["10.0.0.1"]
    assert server.proc.poll() is None


def test_docker_unreachable_one_warning(server: Server) -> None:
    """Without Docker the server serves its static records and warns once, not once per retry."""
    server.wait_line(r"cannot reach")
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert addresses(server.ask("first.docker")) == ["10.0.0.1"]
        time.sleep(0.1)
    assert len([line for line in server.lines if "cannot reach" in line]) == 1


def test_address_in_use_exit_1() -> None:
    """A listen address that is taken: exit 1 and one line naming the address and what to try."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "dockerdns", "--listen", f"127.0.0.1:{port}", "--docker-url", NO_DOCKER],
            capture_output=True, text=True, timeout=20,
        )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--listen" in lines[0]
    assert "Traceback" not in proc.stderr


def test_privileged_port_hint_names_the_fix() -> None:
    """A port that needs root is reported with the address and the two ways out."""
    err = PermissionError(errno.EACCES, "Permission denied")
    hint = servers._hint(err, Address("127.0.0.1", 53))
    assert "root" in hint and "CAP_NET_BIND_SERVICE" in hint and "--listen 127.0.0.1:5353" in hint
