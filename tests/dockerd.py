"""The Docker engine the tests run against: start it, restart it, build the test image.

Rule 1: every wait has a deadline; nothing here sleeps to synchronise
        without checking the condition it waits for.
Rule 2: the daemon is started detached (its own session, log in LOG), so it
        outlives the test process that started it.
Rule 3: there is no image registry; the test image is `docker import`ed from
        Debian's busybox-static.

Used by tests/conftest.py and tests/run (`python3 tests/dockerd.py ensure`).
Not thread-safe; call it from one thread (the test process's main thread).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

LOG = "/tmp/dockerdns-test-dockerd.log"
IMAGE = "dockerdns-test/busybox:latest"
BUSYBOX = "/bin/busybox"
SWARM_MARK = "dockerdns-test-swarm"  # in the paths of tests/swarmd.py's engines (swarmd.MARK)

POLL = 0.05  # seconds between checks while waiting for the daemon
INFO_TIMEOUT = 10  # seconds one `docker info` may take


class DockerdError(RuntimeError):
    """The daemon could not be started, stopped or used; str() says why."""


def _info_ok() -> bool:
    try:
        done = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=INFO_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pids() -> list[int]:
    """The process ids of the running dockerd processes (pidof), not counting the Swarm nodes of tests/swarmd.py."""
    done = subprocess.run(["pidof", "dockerd"], stdout=subprocess.PIPE, text=True)
    return [int(p) for p in done.stdout.split() if not _swarm_node(int(p))]


def _swarm_node(pid: int) -> bool:
    """True for a dockerd of tests/swarmd.py (its paths hold SWARM_MARK): never the engine the tests restart."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return SWARM_MARK.encode() in f.read()
    except OSError:
        return False


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def start(timeout: float = 60) -> None:
    """Start dockerd in the background (log in LOG) and wait until `docker info` works."""
    if shutil.which("dockerd") is None:
        raise DockerdError("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        raise DockerdError("dockerd must be started as root")
    if not pids():
        with open(LOG, "ab") as log:
            subprocess.Popen(
                ["dockerd"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Rule 2: outlives us
                close_fds=True,
            )
    deadline = time.monotonic() + timeout
    while not _info_ok():
        if time.monotonic() > deadline:
            raise DockerdError(f"dockerd did not answer within {timeout:.0f} s; last lines of {LOG}:\n{_tail(LOG)}")
        if not pids():
            raise DockerdError(f"dockerd exited; last lines of {LOG}:\n{_tail(LOG)}")
        time.sleep(POLL)


def ensure_running(timeout: float = 60) -> None:
    """Make sure an engine answers `docker info`, starting dockerd when none does."""
    if _info_ok():
        return
    start(timeout)


def stop(timeout: float = 60) -> None:
    """SIGTERM every dockerd and wait until they have exited.

    dockerd stops its containers first (up to each one's stop timeout), so
    the deadline is generous.
    """
    running = pids()
    for pid in running:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in running):
        if time.monotonic() > deadline:
            raise DockerdError(f"dockerd (pid {running}) did not exit within {timeout:.0f} s after SIGTERM")
        time.sleep(POLL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own child not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def restart(timeout: float = 60) -> None:
    """stop(), then start(): the containers die with the daemon."""
    stop(timeout)
    start(timeout)


def image_exists(image: str = IMAGE) -> bool:
    done = subprocess.run(["docker", "image", "inspect", image], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return done.returncode == 0


def ensure_image(image: str = IMAGE) -> str:
    """Build the busybox test image with `docker import` unless it exists; return its tag."""
    if image_exists(image):
        return image
    if not os.path.exists(BUSYBOX):
        raise DockerdError(f"{BUSYBOX} is missing (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory(prefix="dockerdns-image-") as tmp:
        root = os.path.join(tmp, "root")
        for sub in ("bin", "etc", "tmp"):
            os.makedirs(os.path.join(root, sub))
        shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
        applets = subprocess.run([BUSYBOX, "--list"], stdout=subprocess.PIPE, text=True, check=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                os.symlink("busybox", os.path.join(root, "bin", applet))
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        done = subprocess.run(
            ["docker", "import", "-c", "ENV PATH=/bin", "-", image],
            stdin=tar.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or done.returncode != 0:
            raise DockerdError(f"docker import of {image} failed: {done.stderr.strip()}")
    return image


def main(argv: list[str]) -> int:
    commands = {
        "ensure": lambda: (ensure_running(), ensure_image()),
        "start": start,
        "stop": stop,
        "restart": restart,
        "image": ensure_image,
    }
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python3 tests/dockerd.py {{{','.join(commands)}}}", file=sys.stderr)
        return 2
    try:
        commands[argv[0]]()
    except DockerdError as exc:
        print(f"dockerd: {exc}", file=sys.stderr)
        return 1
    if argv[0] == "ensure":
        print(f"dockerd: engine answers; image {IMAGE} present")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
