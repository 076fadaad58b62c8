"""What the container benchmarks share: the nginx image, a dockerdns child process, small helpers.

Rule 1: there is no registry; the nginx image is a Debian root file system
        (mmdebstrap with `nginx-light` and `busybox-static`, from the mirrors
        apt on this machine uses) `docker import`ed under NGINX_IMAGE, made
        only when that tag is missing. It carries the label CACHE_LABEL so it
        is recognisable as the benchmarks' cache, and is never removed by them.
Rule 2: everything else a benchmark creates carries LABEL and is removed by
        the benchmark that made it (`Cleanup`), also when it fails.
Rule 3: traffic goes only to loopback and to the benchmark's own containers.

Not thread-safe unless a function says so; call from the benchmark's main thread.
"""

from __future__ import annotations

import glob
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import dockerd  # noqa: E402

BUSYBOX_IMAGE = dockerd.IMAGE
NGINX_IMAGE = "dockerdns-bench/nginx:bookworm"
CACHE_LABEL = {"dockerdns-bench-cache": "1"}
LABEL = {"dockerdns-bench": "1"}

SUITE = "bookworm"
NGINX_PACKAGES = "nginx-light,busybox-static"
APT_SOURCES = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list")),
               *sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))]
PATH_EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*"]
MMDEBSTRAP_TIMEOUT = 900  # seconds; about a minute with a reachable mirror
DOCKERDNS_START = 20  # seconds dockerdns may take to listen and read Docker once


class BenchError(RuntimeError):
    """A benchmark step failed; str() is the one line to print."""


def debian_sources() -> list[str]:
    """The apt source files of this machine that name the Debian suite the image is built from."""
    found = []
    for path in APT_SOURCES:
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            continue
        if re.search(rf"^\s*(Suites:.*\b{SUITE}\b|deb\s.*\s{SUITE}\s)", text, re.MULTILINE) and "debian" in text:
            found.append(path)
    return found


def ensure_nginx_image(client: Any) -> str:
    """Make NGINX_IMAGE unless it exists (Rule 1); return its tag."""
    import docker

    try:
        client.images.get(NGINX_IMAGE)
        return NGINX_IMAGE
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("mmdebstrap") is None:
        raise BenchError("mmdebstrap is missing (apt-get install mmdebstrap); it makes the nginx image")
    sources = debian_sources()
    if not sources:
        raise BenchError(f"no apt source in {', '.join(APT_SOURCES)} names Debian {SUITE}")
    command = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={NGINX_PACKAGES}",
               "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
    command += [f"--dpkgopt=path-exclude={path}" for path in PATH_EXCLUDES]
    command += [SUITE, "-", *sources]  # a MIRROR that is a file is pasted into the chroot's sources
    changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               'CMD ["nginx", "-g", "daemon off;"]',
               *(f"LABEL {key}={value}" for key, value in CACHE_LABEL.items())]
    with tempfile.TemporaryFile() as log:
        strap = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        imported = subprocess.run(["docker", "import", *(a for c in changes for a in ("-c", c)), "-", NGINX_IMAGE],
                                  stdin=strap.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  timeout=MMDEBSTRAP_TIMEOUT)
        assert strap.stdout is not None
        strap.stdout.close()
        status = strap.wait(timeout=60)
        if status != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-10:]
            raise BenchError(f"mmdebstrap failed (exit {status}): " + " | ".join(tail))
    if imported.returncode != 0:
        raise BenchError(f"docker import of {NGINX_IMAGE} failed: {imported.stderr.strip()}")
    return NGINX_IMAGE


def httpd_command(body: str, port: int = 80) -> list[str]:
    """A busybox command that serves `body` at / over HTTP on `port` (httpd in the foreground)."""
    return ["sh", "-c", f"mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p {port} -h /www"]


def address_of(container: Any, network: str) -> str:
    """The container's IPv4 address on `network` (reloads it)."""
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def free_udp_port(host: str) -> int:
    """A UDP port free on `host` now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def query_a(server: str, port: int, name: str, timeout: float = 1.0) -> tuple[str, list[str]]:
    """(rcode text, sorted addresses) of one A query over UDP."""
    msg = dns.query.udp(dns.message.make_query(name, "A"), server, port=port, timeout=timeout)
    addresses = sorted(rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype == 1)
    return dns.rcode.to_text(msg.rcode()), addresses


def start_dockerdns(listen: str, extra: list[str], path: str = ROOT,
                    log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Run `python3 -m dockerdns --listen LISTEN ... --no-forward` from the source tree at `path`.

    Returns once it answers a query on LISTEN; its log goes to `log_path` (or nowhere).
    """
    host, port = listen.rsplit(":", 1)
    env = dict(os.environ, PYTHONPATH=path)
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "dockerdns", "--listen", listen, "--docker-url",
                             "unix:///var/run/docker.sock", "--no-forward", *extra],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    if log_path:
        log.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + DOCKERDNS_START
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"dockerdns exited with status {proc.returncode} (log: {log_path})")
        try:
            query_a(host, int(port), "dockerdns-bench-probe.docker", timeout=0.3)
            return proc
        except Exception:
            time.sleep(0.1)
    proc.kill()
    raise BenchError(f"dockerdns does not answer on {listen} after {DOCKERDNS_START} s")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Cleanup:
    """Removes what a benchmark made, newest first (Rule 2): `with Cleanup(client) as made: made.add(...)`.

    When the engine is away (restarted by another user), the removals it failed are tried again once it
    answers (up to ENGINE_WAIT seconds).
    """

    def __init__(self, client: Any = None) -> None:
        self._client = client
        self._undo: list[tuple[str, Callable[[], Any]]] = []

    def add(self, what: str, undo: Callable[[], Any]) -> None:
        self._undo.append((what, undo))

    def container(self, container: Any) -> Any:
        self.add(f"container {container.name}", lambda: container.remove(force=True))
        return container

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, *exc: object) -> None:
        failed = self._run(reversed(self._undo), report=self._client is None)
        if failed and self._client is not None:
            try:
                wait_until(lambda: _pings(self._client), ENGINE_WAIT, "the Docker engine, to clean up", 1.0)
            except BenchError as error:
                print(f"cleanup: {error}", file=sys.stderr)
            self._run(failed, report=True)
        self._undo.clear()

    @staticmethod
    def _run(undo: Any, report: bool) -> list[tuple[str, Callable[[], Any]]]:
        import docker

        failed = []
        for what, step in undo:
            try:
                step()
            except docker.errors.NotFound:
                pass
            except Exception as error:  # keep removing the rest
                failed.append((what, step))
                if report:
                    print(f"cleanup: {what}: {str(error).splitlines()[0][:200]}", file=sys.stderr)
        return failed


def load_note() -> str:
    """The machine's load, to print beside figures measured on a shared machine."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def wait_until(condition: Callable[[], bool], seconds: float, what: str, poll: float = 0.02) -> None:
    """Return once `condition()` is true; BenchError naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(poll)


class AnswerWatch:
    """Asks one DNS server for one name's A records in a loop on a thread; keeps every change of the answer.

    `changes` holds (time.time_ns(), rcode text, addresses) each time the answer differs from the one
    before (wall clock, so it compares with the engine's event timeNano). One UDP socket, PAUSE between
    queries so the watch does not take a core from the server it watches.
    Thread-safe: the watch thread appends; readers take copies (list() of an appended-only list).
    """

    PAUSE = 0.0005  # seconds between queries: the watch resolves a change to about this plus one round trip
    TIMEOUT = 0.5  # seconds one query may take

    def __init__(self, server: str, port: int, name: str) -> None:
        self.name = name
        self.changes: list[tuple[int, str, tuple[str, ...]]] = []
        self.queries = 0
        self.lost = 0
        self._addr = (server, port)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AnswerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        query = dns.message.make_query(self.name, "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(self._addr)
            sock.settimeout(self.TIMEOUT)
            last: tuple[str, tuple[str, ...]] | None = None
            while not self._stop.is_set():
                query.id = (query.id + 1) & 0xFFFF
                sock.send(query.to_wire())
                try:
                    while True:
                        reply = dns.message.from_wire(sock.recv(4096))
                        if reply.id == query.id:
                            break
                except (socket.timeout, dns.exception.DNSException):
                    self.lost += 1
                    continue
                seen = time.time_ns()
                self.queries += 1
                now = (dns.rcode.to_text(reply.rcode()),
                       tuple(sorted(rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype == 1)))
                if now != last:
                    self.changes.append((seen, *now))
                    last = now
                time.sleep(self.PAUSE)

    def current(self) -> tuple[str, ...] | None:
        """The addresses of the latest answer, None before the first."""
        changes = list(self.changes)
        return changes[-1][2] if changes else None

    def first_change(self, since_ns: int, test: Callable[[tuple[str, ...]], bool]) -> int | None:
        """time_ns of the first answer from `since_ns` on whose addresses pass `test`.

        When the answer standing at `since_ns` passes already, the time it began (before `since_ns`).
        """
        changes = list(self.changes)
        standing = [c for c in changes if c[0] <= since_ns]
        if standing and test(standing[-1][2]):
            return standing[-1][0]
        for seen, _rcode, addresses in changes:
            if seen > since_ns and test(addresses):
                return seen
        return None


#: Retries of a measurement whose containers the engine lost: other users of a shared engine restart it.
ENGINE_RETRIES = 2
ENGINE_WAIT = 120  # seconds to wait for the engine to answer again


def engine_errors() -> tuple[type[BaseException], ...]:
    """What the SDK raises when the engine goes away or refuses a call mid-run."""
    import docker
    import requests.exceptions

    return (docker.errors.APIError, requests.exceptions.ConnectionError)


def with_engine_retries(client: Any, what: str, measure: Callable[[], Any]) -> Any:
    """measure(), again (up to ENGINE_RETRIES times) when the engine fails under it; BenchError at the end.

    The engine is waited for, never started: whoever restarted it starts it.
    """
    for attempt in range(ENGINE_RETRIES + 1):
        try:
            return measure()
        except engine_errors() as error:
            reason = str(error).splitlines()[0][:200]
            if attempt == ENGINE_RETRIES:
                raise BenchError(f"{what}: the Docker engine failed under the run {attempt + 1} times ({reason})")
            print(f"{what}: the Docker engine failed under the run ({reason}); waiting for it, then again",
                  file=sys.stderr)
            wait_until(lambda: _pings(client), ENGINE_WAIT, "the Docker engine to answer again", 1.0)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


class EventStream:
    """The engine's events matching `filters`, read on a thread onto `queue` as (id, action, timeNano).

    Call close() when done (Cleanup.add("events", stream.close)). Thread-safe: queue.Queue.
    """

    def __init__(self, client: Any, filters: dict[str, Any]) -> None:
        self.queue: queue.Queue[tuple[str, str, int]] = queue.Queue()
        self._stream = client.events(decode=True, since=int(time.time()), filters=filters)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._stream:
                action = str(event.get("Action") or event.get("status") or "")
                actor = str((event.get("Actor") or {}).get("ID") or event.get("id") or "")
                self.queue.put((actor, action, int(event.get("timeNano") or 0)))
        except Exception:  # the stream was closed, or the engine went away
            pass

    def next(self, actor: str, action: str, seconds: float) -> int:
        """timeNano of the next event of `actor` whose action is `action`; BenchError after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no {action!r} event for {actor[:12]} within {seconds:.0f} s")
            try:
                got = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if got[0] == actor and got[1] == action:
                return got[2]

    def close(self) -> None:
        self._stream.close()
