"""`dockerdns serve` as a process: signals, reload, start failures, Docker unreachable.

A client that is neither loopback nor an address of this machine lives in a
network namespace the test creates (`Outside`), joined to the host by a veth
pair on a documentation network (RFC 5737); nothing leaves the machine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from dockerdns import app as app_module
from dockerdns import servers
from dockerdns.config import Address
from tests.dnsstub import StubUpstream

NO_DOCKER = "unix:///nonexistent/docker.sock"
RELOAD_DONE = r"reloaded|kept the previous settings"


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

    def port_on(self, host: str) -> int:
        """The port bound on `host` (each `--listen HOST:0` gets its own)."""
        line = self.wait_line(r"listening on .*" + re.escape(host) + r":\d+")
        return int(re.search(re.escape(host) + r":(\d+)", line).group(1))  # type: ignore[union-attr]

    def reload(self) -> None:
        """SIGHUP, then wait until the server says it reloaded or kept its settings."""
        done = len([line for line in self.lines if re.search(RELOAD_DONE, line)])
        self.proc.send_signal(signal.SIGHUP)
        self.wait_count(RELOAD_DONE, done + 1)

    def wait_count(self, pattern: str, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        with self._seen:
            while len([line for line in self.lines if re.search(pattern, line)]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"fewer than {count} lines matching {pattern!r} in {self.lines}")
                self._seen.wait(min(remaining, 0.1))

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


def test_every_thread_runs_at_the_process_priority(server: Server) -> None:
    """No thread is niced below the others, the reload's included: a thread that holds the GIL must not wait
    for the CPU behind other processes while the queries wait for it."""
    server.reload()

    def nice_of(task: str) -> int:
        stat = Path(f"/proc/{server.proc.pid}/task/{task}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice

    niceness = [nice_of(task) for task in os.listdir(f"/proc/{server.proc.pid}/task")]
    assert len(niceness) > 1 and set(niceness) == {nice_of(str(server.proc.pid))}, niceness


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += [int(child) for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its new parent counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_sighup_reads_in_a_niced_child_that_ends_with_the_server(server: Server, config: Path) -> None:
    """The reload's read runs in one child process at nice 19, and the child ends when the server dies, even by
    SIGKILL (its pipe closes): no process is left behind."""
    assert children_of(server.proc.pid) == []  # none until the first reload
    config.write_text("records:\n  - {name: second, type: A, value: 10.0.0.2}\n")
    server.reload()
    assert addresses(server.ask("second.docker")) == ["10.0.0.2"]
    server.reload()
    (child,) = children_of(server.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, child) == min(19, os.getpriority(os.PRIO_PROCESS, server.proc.pid) + 19)
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 10
    while not gone(child):
        assert time.monotonic() < deadline, f"the config reader {child} outlived the server"
        time.sleep(0.05)


def test_a_child_stuck_in_a_read_ends_with_the_server(server: Server, config: Path) -> None:
    """The config path becomes a FIFO nobody writes: the child's read hangs, and still the child ends when
    the server is SIGKILLed (its pipe's EOF never comes while it hangs: the parent-death signal does it)."""
    config.unlink()
    os.mkfifo(config)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not children_of(server.proc.pid):
        assert time.monotonic() < deadline, "no config reader was started"
        time.sleep(0.02)
    (child,) = children_of(server.proc.pid)
    assert addresses(server.ask("first.docker")) == ["10.0.0.1"]  # still serving while the read hangs
    server.proc.kill()
    server.proc.wait()
    deadline = time.monotonic() + 10
    while not gone(child):
        assert time.monotonic() < deadline, f"the config reader {child} outlived the server"
        time.sleep(0.05)


def test_sigterm_during_a_hung_reload_still_exits_quickly(server: Server, config: Path) -> None:
    """A reload whose read hangs (a FIFO) does not hold up SIGTERM: exit 0 within 2 s, the child gone too."""
    config.unlink()
    os.mkfifo(config)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not children_of(server.proc.pid):
        assert time.monotonic() < deadline, "no config reader was started"
        time.sleep(0.02)
    (child,) = children_of(server.proc.pid)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=5) == 0
    assert time.monotonic() - started < 2.0
    deadline = time.monotonic() + 10
    while not gone(child):
        assert time.monotonic() < deadline, f"the config reader {child} outlived the server"
        time.sleep(0.05)


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


# --- A client from outside this machine -----------------------------------------------


class Outside:
    """A network namespace behind a veth pair: a client that is not loopback and not an address of this host."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.netns, self._host_if, ns_if = f"dnst-{tag}", f"dnst{tag}h", f"dnst{tag}n"
        block = 4 * random.randrange(32, 63)  # a /30 in 198.51.100.128/25; concurrent runs rarely collide
        self.gateway, self.address = f"198.51.100.{block + 1}", f"198.51.100.{block + 2}"
        self._ip("netns", "add", self.netns)
        try:
            self._ip("link", "add", self._host_if, "type", "veth", "peer", "name", ns_if, "netns", self.netns)
            self._ip("addr", "add", f"{self.gateway}/30", "dev", self._host_if)
            self._ip("link", "set", self._host_if, "up")
            self._ip("-n", self.netns, "addr", "add", f"{self.address}/30", "dev", ns_if)
            self._ip("-n", self.netns, "link", "set", ns_if, "up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _ip(*args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"ip {' '.join(args)}: {done.stderr.strip()} (needs root and iproute2)", pytrace=False)

    def udp_socket(self) -> socket.socket:
        """A UDP socket that lives in the namespace: made there by a helper process and handed over (SCM_RIGHTS)."""
        parent, child = socket.socketpair()
        code = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "socket.send_fds(socket.socket(fileno=int(sys.argv[1])), [b'x'], [s.fileno()])")
        with parent, child:
            subprocess.run(["nsenter", f"--net=/var/run/netns/{self.netns}", sys.executable, "-c", code,
                            str(child.fileno())], pass_fds=(child.fileno(),), check=True, timeout=10)
            _, fds, _, _ = socket.recv_fds(parent, 1, 1)
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, fileno=fds[0])

    def close(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self._host_if], capture_output=True)  # gone with the netns, normally


@pytest.fixture
def outside() -> Iterator[Outside]:
    client = Outside()
    yield client
    client.close()


def flood(sock: socket.socket, server: tuple[str, int], name: str, count: int) -> list[dns.message.Message]:
    """`count` identical queries (ids aside) at once; the replies that come back within a quiet second."""
    for ident in range(count):
        sock.sendto(dns.message.make_query(name, "A", id=ident).to_wire(), server)
    replies = []
    sock.settimeout(1.0)
    with contextlib.suppress(socket.timeout):
        while True:
            replies.append(dns.message.from_wire(sock.recv(65535)))
    return replies


def ask_from(sock: socket.socket, server: tuple[str, int], name: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), server[0], port=server[1], timeout=3, sock=sock)


@contextlib.contextmanager
def local_address(ip: str) -> Iterator[str]:
    """`ip`/32 on lo while the block runs: one more address of this host, not loopback."""
    added = subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True, text=True)
    if added.returncode != 0:
        pytest.fail(f"cannot add {ip} to lo (needs root and iproute2): {added.stderr.strip()}", pytrace=False)
    try:
        yield ip
    finally:
        subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True)


# --- The default allow ---------------------------------------------------------------


def test_default_allow_answers_the_hosts_own_addresses(config: Path) -> None:
    """Default allow: a query from any address of this host is answered; an allow list given is used as written.

    Docker's MASQUERADE rule makes `dig @172.17.0.1` on the host arrive from the
    host's primary address, which may be public; the default must answer it.
    """
    with local_address(f"198.51.100.{random.randrange(64, 128)}") as own:
        for args, expected in (((), dns.rcode.NOERROR), (("--allow", "127.0.0.0/8"), dns.rcode.REFUSED)):
            srv = Server("-c", str(config), "--no-forward", *args)
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.bind((own, 0))
                    msg = ask_from(sock, ("127.0.0.1", srv.port), "first.docker")
                assert msg.rcode() == expected, args
                assert addresses(msg) == (["10.0.0.1"] if expected == dns.rcode.NOERROR else [])
            finally:
                srv.stop()


# --- SIGHUP reloads every setting it names ---------------------------------------------

RECORD = "records:\n  - {name: first, type: A, value: 10.0.0.1}\n"


def test_sighup_reloads_allow(tmp_path: Path, outside: Outside) -> None:
    """SIGHUP applies a new allow list: a client outside it is refused, then answered, then refused again."""
    path = tmp_path / "dockerdns.yaml"
    path.write_text(RECORD + "allow: [127.0.0.0/8]\n")
    srv = Server("-c", str(path), "--no-forward", "--listen", f"{outside.gateway}:0")
    try:
        server = (outside.gateway, srv.port_on(outside.gateway))
        with outside.udp_socket() as sock:
            assert ask_from(sock, server, "first.docker").rcode() == dns.rcode.REFUSED
            path.write_text(RECORD + f"allow: [127.0.0.0/8, {outside.address}]\n")
            srv.reload()
            assert addresses(ask_from(sock, server, "first.docker")) == ["10.0.0.1"]
            path.write_text(RECORD + "allow: [127.0.0.0/8]\n")
            srv.reload()
            assert ask_from(sock, server, "first.docker").rcode() == dns.rcode.REFUSED
    finally:
        srv.stop()


def test_sighup_reloads_upstreams(tmp_path: Path) -> None:
    """SIGHUP applies new upstreams: the same outside name is then answered by the new upstream, not a cache."""
    first = StubUpstream("www.example.org. 300 IN A 192.0.2.1\n")
    second = StubUpstream("www.example.org. 300 IN A 192.0.2.2\n")
    path = tmp_path / "dockerdns.yaml"
    path.write_text(RECORD + f"forward: {{upstreams: ['{first.address}']}}\n")
    srv = Server("-c", str(path))
    try:
        assert addresses(srv.ask("www.example.org")) == ["192.0.2.1"]
        path.write_text(RECORD + f"forward: {{upstreams: ['{second.address}']}}\n")
        srv.reload()
        assert addresses(srv.ask("www.example.org")) == ["192.0.2.2"]
        assert [seen.qname for seen in second.seen] == ["www.example.org."]
    finally:
        srv.stop()
        first.close()
        second.close()


def test_sighup_turns_forwarding_off_and_on(tmp_path: Path) -> None:
    """SIGHUP applies forward.enabled: an outside name is forwarded, then REFUSED, then forwarded again."""
    upstream = StubUpstream("www.example.org. 300 IN A 192.0.2.1\n")
    path = tmp_path / "dockerdns.yaml"
    forward = RECORD + f"forward: {{enabled: %s, upstreams: ['{upstream.address}']}}\n"
    path.write_text(forward % "true")
    srv = Server("-c", str(path))
    try:
        assert addresses(srv.ask("www.example.org")) == ["192.0.2.1"]
        path.write_text(forward % "false")
        srv.reload()
        assert srv.ask("www.example.org").rcode() == dns.rcode.REFUSED
        assert addresses(srv.ask("first.docker")) == ["10.0.0.1"]  # the zone is still served
        path.write_text(forward % "true")
        srv.reload()
        assert addresses(srv.ask("www.example.org")) == ["192.0.2.1"]
    finally:
        srv.stop()
        upstream.close()


def test_sighup_reloads_rate_limits(tmp_path: Path, outside: Outside) -> None:
    """SIGHUP applies rate limits: a burst from a client off this machine is answered whole, limited, then whole."""
    path = tmp_path / "dockerdns.yaml"
    base = RECORD + f"allow: [127.0.0.0/8, {outside.address}]\n"
    path.write_text(base + "rate_limit: {responses_per_second: 0}\n")
    srv = Server("-c", str(path), "--no-forward", "--listen", f"{outside.gateway}:0")
    try:
        server = (outside.gateway, srv.port_on(outside.gateway))
        with outside.udp_socket() as sock:
            assert len(flood(sock, server, "first.docker", 40)) == 40
            path.write_text(base + "rate_limit: {responses_per_second: 1, slip: 0, window: 1}\n")
            srv.reload()
            assert len(flood(sock, server, "first.docker", 40)) <= 3  # a second's credit, and what the burst earns
            path.write_text(base + "rate_limit: {responses_per_second: 0}\n")
            srv.reload()
            assert len(flood(sock, server, "first.docker", 40)) == 40
    finally:
        srv.stop()


def test_sighup_broken_file_keeps_old_config_one_line(tmp_path: Path) -> None:
    """A file that no longer parses: one line names it, and records, forwarding and allow all stay as they were."""
    upstream = StubUpstream("www.example.org. 300 IN A 192.0.2.1\n")
    path = tmp_path / "dockerdns.yaml"
    path.write_text(RECORD + f"forward: {{upstreams: ['{upstream.address}']}}\nallow: [127.0.0.0/8]\n")
    srv = Server("-c", str(path))
    try:
        before = len(srv.lines)
        path.write_text("records: [\n  - {name: second, type: A, value: 10.0.0.2}\n"
                        "allow: []\nforward: {enabled: false\n")
        srv.reload()
        new = srv.lines[before:]
        assert len([line for line in new if str(path) in line]) == 1, new
        assert not any("Traceback" in line or line[:1].isspace() for line in new), new
        assert addresses(srv.ask("first.docker")) == ["10.0.0.1"]
        assert srv.ask("second.docker").rcode() == dns.rcode.NXDOMAIN
        assert addresses(srv.ask("www.example.org")) == ["192.0.2.1"]
        assert srv.proc.poll() is None
    finally:
        srv.stop()
        upstream.close()


class _SlowApp:
    """An App whose reload blocks until the test lets it go."""

    def __init__(self) -> None:
        self.entered, self.release, self.reloads = threading.Event(), threading.Event(), 0

    def reload(self, settings: object) -> None:
        self.entered.set()
        self.release.wait(30)
        self.reloads += 1


def test_stop_waits_for_a_reload_being_applied_only_so_long(caplog: pytest.LogCaptureFixture) -> None:
    """A reload being applied holds a stop up to RELOAD_STOP_WAIT, not for its whole length (a very large
    table's), so the process still exits within 2 s; a read that returns after the stop is never applied."""
    slow = _SlowApp()
    reloader = app_module._Reloader(slow, lambda: object())  # type: ignore[arg-type]
    reloader.start()
    reloader.request()
    assert slow.entered.wait(10)
    stopping = threading.Thread(target=reloader.stop)
    with caplog.at_level("WARNING", logger="dockerdns"):
        stopping.start()
        stopping.join(app_module.RELOAD_STOP_WAIT + 5)
        assert not stopping.is_alive(), "stop waited for the whole reload"
    assert any("still being applied" in r.getMessage() for r in caplog.records)
    slow.entered.clear()
    slow.release.set()
    reloader.request()  # after the stop: nothing more is applied
    assert not slow.entered.wait(0.5) and slow.reloads == 1


def test_server_threads_have_a_tight_timer_slack(server: Server) -> None:
    """The server's timers are precise to 1 µs (a writer's 50 µs pause takes 85 µs, not 140)."""
    assert Path(f"/proc/{server.proc.pid}/timerslack_ns").read_text().strip() == str(app_module.TIMER_SLACK_NS)
