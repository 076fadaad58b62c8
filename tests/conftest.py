"""Fixtures shared by the tests that talk to the real Docker engine.

Rule 1: everything a test creates in Docker carries the label
        `dockerdns-test=1` and a `dnst-` name, and is removed at teardown even
        when the test failed.
Rule 2: leftovers of earlier sessions are swept at session start; a
        container or network still owned by another live test process (label
        `dockerdns-test.pid`) is left alone, so concurrent sessions coexist.
Rule 3: synchronise with `wait_for` (deadline polling), never a bare sleep.

No engine is a failure, not a skip: the suite exists to run against Docker.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any, TypeVar

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dockerd  # noqa: E402  (tests/dockerd.py, found through the path above)

T = TypeVar("T")

LABEL = "dockerdns-test"
PID_LABEL = "dockerdns-test.pid"
PREFIX = "dnst-"
STALE_AFTER = 3600  # seconds: a leftover this old is swept whoever made it


def _labels(extra: dict[str, str] | None = None) -> dict[str, str]:
    labels = {LABEL: "1", PID_LABEL: str(os.getpid())}
    labels.update(extra or {})
    return labels


def unique_name(name: str = "") -> str:
    """A fresh `dnst-` name, valid as a DNS label: dnst-<6 hex>[-name]."""
    tag = uuid.uuid4().hex[:6]
    return f"{PREFIX}{tag}-{name}" if name else f"{PREFIX}{tag}"


def _owner_alive(labels: dict[str, str] | None) -> bool:
    try:
        pid = int((labels or {}).get(PID_LABEL, ""))
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _created_at(value: Any) -> float:
    """A Docker `Created` field (epoch int, or RFC 3339 text) as epoch seconds; 0 when unknown."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)[:19]).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


def sweep(client: Any) -> None:
    """Remove leftover test containers and networks (Rule 2)."""
    now = time.time()
    for c in client.api.containers(all=True, filters={"label": f"{LABEL}=1"}):
        if _owner_alive(c.get("Labels")) and now - _created_at(c.get("Created")) < STALE_AFTER:
            continue
        try:
            client.api.remove_container(c["Id"], force=True, v=True)
        except Exception:  # already gone, or being removed by the daemon
            pass
    for n in client.api.networks(filters={"label": f"{LABEL}=1"}):
        if _owner_alive(n.get("Labels")) and now - _created_at(n.get("Created")) < STALE_AFTER:
            continue
        try:
            client.api.remove_network(n["Id"])
        except Exception:  # still in use by another leftover, or gone
            pass


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker.DockerClient for the local engine (started if needed); `.api` is the low-level client."""
    import docker

    try:
        dockerd.ensure_running()
        dockerd.ensure_image()
    except dockerd.DockerdError as exc:
        pytest.fail(f"no Docker engine for the tests: {exc}", pytrace=False)
    client = docker.from_env(version="auto")
    sweep(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    """The tag of the busybox test image (built by `docker import`)."""
    return dockerd.IMAGE


@pytest.fixture
def make_network(docker_client: Any) -> Iterator[Callable[..., Any]]:
    """Factory: make_network(name="", **kw) -> docker Network (bridge driver unless given).

    The name becomes `dnst-<hex>-<name>`; removed at teardown.
    """
    made: list[Any] = []

    def make(name: str = "", **kw: Any) -> Any:
        kw.setdefault("driver", "bridge")
        kw["labels"] = _labels(kw.get("labels"))
        network = docker_client.networks.create(unique_name(name), **kw)
        made.append(network)
        return network

    yield make
    for network in reversed(made):
        _remove_network(docker_client, network.id)


@pytest.fixture
def make_container(docker_client: Any, busybox_image: str) -> Iterator[Callable[..., Any]]:
    """Factory: make_container(name="", start=True, **kw) -> docker Container.

    Runs `sleep 3600` from the busybox image under docker-init (so that stop
    is instant) unless `image`/`command`/`init` are given; `kw` goes to
    `containers.run` (or `containers.create` with start=False). The name
    becomes `dnst-<hex>-<name>`; force-removed at teardown.
    """
    made: list[str] = []

    def make(name: str = "", start: bool = True, **kw: Any) -> Any:
        image = kw.pop("image", busybox_image)
        command = kw.pop("command", ["sleep", "3600"])
        kw.setdefault("init", True)
        kw["labels"] = _labels(kw.get("labels"))
        kw["name"] = unique_name(name)
        if start:
            container = docker_client.containers.run(image, command, detach=True, **kw)
        else:
            container = docker_client.containers.create(image, command, **kw)
        made.append(container.id)
        return container

    yield make
    for cid in reversed(made):
        try:
            docker_client.api.remove_container(cid, force=True, v=True)
        except Exception:  # the test removed it already
            pass


def _remove_network(client: Any, network_id: str) -> None:
    """Remove a network, disconnecting whatever still uses it first."""
    try:
        info = client.api.inspect_network(network_id)
    except Exception:  # already gone
        return
    for cid in info.get("Containers") or {}:
        try:
            client.api.disconnect_container_from_network(cid, network_id, force=True)
        except Exception:
            pass
    try:
        client.api.remove_network(network_id)
    except Exception:
        pass


def _wait_for(predicate: Callable[[], T], timeout: float = 10, interval: float = 0.005, what: str = "") -> T:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = what or getattr(predicate, "__name__", "it")
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """wait_for(predicate, timeout=10, interval=0.005, what="") -> the predicate's truthy value."""
    return _wait_for
