"""The container image, the compose example and the systemd unit, run for real.

The image is built offline from the repository's Dockerfile (tests/image/offline.py:
a local Debian base and wheels fetched on the host), tagged per run and removed
at the end; the base image and the wheels are cached between runs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import grp
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml

from dockerdns import __version__
from tests.conftest import LABEL, PID_LABEL, unique_name
from tests.image import offline

pytestmark = pytest.mark.docker

ROOT = offline.ROOT
COMPOSE_FILE = os.path.join(ROOT, "examples", "compose.yml")
UNIT = os.path.join(ROOT, "conf", "dockerdns.service")
TEST_SUBNETS = ipaddress.IPv4Network("10.213.0.0/16")  # /24s drawn at random, so that concurrent runs rarely meet
COMPOSE_TIMEOUT = 120  # seconds for one docker-compose command
STOP_WITHIN = 2.0  # seconds: `serve` exits cleanly this soon after SIGTERM (DESIGN)
NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: root's pyenv Python sits in /root, which nobody may enter


@pytest.fixture(scope="module")
def image(docker_client: Any) -> Iterator[str]:
    """The dockerdns image built offline for this run; removed afterwards (the cached base stays)."""
    tag = f"dockerdns-test/dockerdns:{unique_name()}"
    try:
        offline.build(docker_client, tag, labels={LABEL: "1"})
    except offline.ImageError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield tag
    try:
        docker_client.images.remove(tag)
    except Exception:  # still used by a leftover container: the next sweep and rebuild deal with it
        pass


def _fixed_network(make_network: Callable[..., Any], name: str) -> tuple[Any, ipaddress.IPv4Network]:
    """A user network with a subnet of our choosing (Docker hands out fixed addresses only on such)."""
    import docker

    subnets = list(TEST_SUBNETS.subnets(new_prefix=24))
    for subnet in random.sample(subnets, 5):
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
        try:
            return make_network(name, ipam=ipam), subnet
        except docker.errors.APIError as exc:  # "Pool overlaps with other one on this address space"
            if "overlap" not in str(exc):
                raise
    raise AssertionError(f"no free /24 in {TEST_SUBNETS} after 5 tries")


def _address(container: Any, network: str) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def _a(server: str, name: str) -> list[str]:
    """The A records dockerdns at `server`:53 answers for `name` (dnspython over UDP)."""
    answer = dns.query.udp(dns.message.make_query(name, "A"), server, port=53, timeout=2)
    return sorted(rd.to_text() for rrset in answer.answer for rd in rrset if rrset.rdtype == dns.rdatatype.A)


def test_image_labels_and_version(docker_client: Any, image: str) -> None:
    """The image carries the OCI labels, its version label is the package's, and it runs `serve` by default."""
    config = docker_client.images.get(image).attrs["Config"]
    labels = config["Labels"]
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}" in labels
    assert labels["org.opencontainers.image.version"] == __version__
    assert config["Entrypoint"] == ["dockerdns"] and config["Cmd"] == ["serve"]
    assert set(config["ExposedPorts"]) == {"53/udp", "53/tcp", "5380/tcp"}
    printed = docker_client.containers.run(image, ["--version"], remove=True).decode()
    assert printed.split() == ["dockerdns", __version__]


def test_image_records_json(docker_client: Any, image: str, make_container: Callable[..., Any]) -> None:
    """`docker run --rm IMAGE records --json` reads Docker through the mounted socket and prints the table."""
    target = make_container("target")
    out = docker_client.containers.run(
        image, ["records", "--json"], remove=True, labels={LABEL: "1", PID_LABEL: str(os.getpid())},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "ro"}},
    )
    records = json.loads(out)
    ip = _address(target, "bridge")
    assert {"name": f"{target.name}.docker.", "type": "A", "value": ip, "ttl": 1, "owner": target.name,
            "health": "none"} in records


def test_image_serves_turns_healthy_and_stops(docker_client: Any, image: str, make_network: Callable[..., Any],
                                              make_container: Callable[..., Any],
                                              wait_for: Callable[..., Any]) -> None:
    """On a fixed address the container answers names over DNS and HTTP (the page too), turns healthy, stops at once."""
    network, subnet = _fixed_network(make_network, "image")
    address = str(subnet.network_address + 53)
    endpoint = docker_client.api.create_endpoint_config(ipv4_address=address)
    server = make_container(
        "dockerdns", image=image, command=None, init=False, network=network.name,
        networking_config={network.name: endpoint},
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "ro"}},
        healthcheck={"interval": 300_000_000, "start_period": 10_000_000_000},  # ns; the test comes from the image
    )
    db = make_container("db", network=network.name)
    db_ip = _address(db, network.name)

    def resolves() -> bool:
        try:
            return _a(address, f"{db.name}.docker") == [db_ip]
        except dns.exception.Timeout:  # not listening yet
            return False

    wait_for(resolves, timeout=20, interval=0.1, what=f"{db.name}.docker from the image at {address}")
    assert _a(address, f"{db.name}.{network.name}.docker") == [db_ip]

    def health() -> str:
        server.reload()
        return str(server.attrs["State"]["Health"]["Status"])

    wait_for(lambda: health() == "healthy", timeout=20, interval=0.1, what="State.Health.Status == healthy")
    with urllib.request.urlopen(f"http://{address}:5380/records", timeout=5) as answer:
        names = {record["name"] for record in json.load(answer)}
    assert f"{db.name}.docker." in names
    with urllib.request.urlopen(f"http://{address}:5380/", timeout=5) as answer:  # the page is package data
        assert answer.headers["Content-Type"].startswith("text/html") and b"<title>dockerdns" in answer.read()

    started = time.monotonic()
    server.stop(timeout=10)
    took = time.monotonic() - started
    server.reload()
    assert server.attrs["State"]["ExitCode"] == 0, server.logs()[-2000:].decode(errors="replace")
    assert took < STOP_WITHIN + 1, f"stop took {took:.1f} s: SIGTERM to PID 1 was not handled"


# --- compose ------------------------------------------------------------------------------------------------


def _compose(project: str, override: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = ["docker-compose", "--ansi", "never", "-p", project, "-f", COMPOSE_FILE, "-f", override, *args]
    return subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=COMPOSE_TIMEOUT)


def _nslookup(container: Any, name: str) -> list[str]:
    """The addresses busybox nslookup inside `container` prints for `name` (empty when it fails)."""
    code, out = container.exec_run(["nslookup", name])
    text = out.decode(errors="replace")
    if code != 0 or "Name:" not in text:
        return []
    return sorted(re.findall(r"^Address:\s*([0-9.]+)\s*$", text.split("Name:", 1)[1], re.M))


def _compose_env(image: str, busybox: str, subnet: ipaddress.IPv4Network, address: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}  # compose is Debian's
    env.update(DOCKERDNS_IMAGE=image, DB_IMAGE=busybox, APP_IMAGE=busybox, DNS_SUBNET=str(subnet), DNS_ADDRESS=address)
    return env


def test_compose_stack_follows_db_restart(docker_client: Any, image: str, busybox_image: str, tmp_path: Any,
                                          make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """examples/compose.yml: the app resolves and reaches db through dockerdns, also at db's new address."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing (apt-get install docker-compose)", pytrace=False)
    project = unique_name("compose")
    subnet = random.choice(list(TEST_SUBNETS.subnets(new_prefix=24)))
    address = str(subnet.network_address + 53)
    labels = {LABEL: "1", PID_LABEL: str(os.getpid())}
    # Only what the busybox stand-ins need, and test labels so that leftover containers get swept. (Not
    # the network: compose 1.29 replaces a network's whole definition, ipam and all, with the override's.)
    override = {
        "services": {
            "dockerdns": {"labels": labels, "healthcheck": {"interval": "500ms"}},
            "db": {"labels": labels, "command": ["sleep", "3600"]},
            "app": {"labels": labels},
        },
    }
    override_file = tmp_path / "override.yml"
    override_file.write_text(yaml.safe_dump(override))
    env = _compose_env(image, busybox_image, subnet, address)
    network = f"{project}_default"
    holder = None
    try:
        up = _compose(project, str(override_file), env, "up", "-d", "--no-build")
        assert up.returncode == 0, up.stdout

        def service(name: str) -> Any:
            found = docker_client.containers.list(filters={"label": [f"com.docker.compose.project={project}",
                                                                     f"com.docker.compose.service={name}"]})
            assert len(found) == 1, f"{name}: {found}"
            return found[0]

        app, db = service("app"), service("db")
        assert _address(service("dockerdns"), network) == address
        name = f"db.{project}.docker"
        old_ip = _address(db, network)
        wait_for(lambda: _nslookup(app, name) == [old_ip], timeout=20, interval=0.2, what=f"app resolving {name}")
        assert _nslookup(app, "db.docker") == [old_ip]  # the name the example's app uses

        # A new address for db: hold its old one with another container while it is down.
        db.stop(timeout=5)
        holder = make_container("holder", network=network,
                                networking_config={network: docker_client.api.create_endpoint_config(
                                    ipv4_address=old_ip)})
        db.start()
        new_ip = _address(db, network)
        assert new_ip != old_ip
        wait_for(lambda: _nslookup(app, name) == [new_ip], timeout=20, interval=0.1, what=f"{name} -> {new_ip}")
        code, out = app.exec_run(["ping", "-c", "1", "-W", "3", name])
        assert code == 0 and f"({new_ip})" in out.decode(), out.decode(errors="replace")
    finally:
        if holder is not None:
            holder.remove(force=True)  # before `down`, which cannot remove a network still in use
        down = _compose(project, str(override_file), env, "down", "-v", "--timeout", "2")
    assert down.returncode == 0, down.stdout


# --- systemd unit ---------------------------------------------------------------------------------------------


def test_systemd_unit_verifies(tmp_path: Any) -> None:
    """conf/dockerdns.service passes `systemd-analyze verify` (ExecStart pointed at an existing file)."""
    with open(UNIT) as f:
        unit = f.read()
    for needed in ("After=docker.service", "Wants=docker.service", "Restart=on-failure",
                   "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                   "NoNewPrivileges=yes", "SupplementaryGroups=docker", "ExecReload=/bin/kill -HUP $MAINPID",
                   "ExecStart=/usr/local/bin/dockerdns serve"):
        assert needed in unit.splitlines(), needed
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (package systemd); the unit was only read, not verified")
    # verify insists that ExecStart exists; this machine's dockerdns is wherever pip put it.
    copy = tmp_path / "dockerdns.service"
    copy.write_text(unit.replace("/usr/local/bin/dockerdns", shutil.which("dockerdns") or "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout


@pytest.fixture
def unprivileged_dockerdns() -> Iterator[str]:
    """A dockerdns command installed where an unprivileged user can run it (a venv of Debian's python3)."""
    for tool in ("setpriv", SYSTEM_PYTHON):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing; the unit's privileges cannot be tried without it")
    home = tempfile.mkdtemp(prefix="dockerdns-unit-")
    try:
        os.chmod(home, 0o755)
        source = os.path.join(home, "src")
        shutil.copytree(os.path.join(ROOT, "dockerdns"), os.path.join(source, "dockerdns"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("setup.py", "setup.cfg", "README.md"):
            shutil.copy(os.path.join(ROOT, name), source)
        venv = os.path.join(home, "venv")
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
        done = subprocess.run([sys.executable, "-m", "pip", "--python", os.path.join(venv, "bin", "python"),
                               "install", "--quiet", "--disable-pip-version-check", "--no-index",
                               "--find-links", offline.ensure_wheels(), source],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert done.returncode == 0, done.stdout
        yield os.path.join(venv, "bin", "dockerdns")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _as_unit(command: list[str], *, bind_capability: bool) -> list[str]:
    """`command` with what conf/dockerdns.service grants: nobody, the docker group, CAP_NET_BIND_SERVICE only."""
    caps = "-all,+net_bind_service" if bind_capability else "-all"
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={grp.getgrnam('docker').gr_gid}",
            f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={caps}", "--no-new-privs",
            "--", *command]


def test_unit_privileges_suffice(unprivileged_dockerdns: str, make_container: Callable[..., Any],
                                 wait_for: Callable[..., Any]) -> None:
    """With only the unit's grants dockerdns binds port 53 and reads Docker; without the capability it exits 1."""
    try:
        grp.getgrnam("docker")
    except KeyError:
        pytest.skip("no docker group here; the unit's SupplementaryGroups=docker cannot be tried")
    address = f"127.{random.randrange(1, 255)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    command = [unprivileged_dockerdns, "serve", "--listen", f"{address}:53", "--no-forward"]
    env = {"PATH": "/usr/bin:/bin", "DOCKERDNS_CONFIG": os.devnull}

    refused = subprocess.run(_as_unit(command, bind_capability=False), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, timeout=30)
    assert refused.returncode == 1 and f"{address}:53" in refused.stderr, refused.stderr

    target = make_container("target")
    ip = _address(target, "bridge")
    server = subprocess.Popen(_as_unit(command, bind_capability=True), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        def resolves() -> bool:
            if server.poll() is not None:
                assert server.stdout is not None
                pytest.fail(f"dockerdns exited {server.returncode}: {server.stdout.read()[-2000:]}", pytrace=False)
            try:
                return _a(address, f"{target.name}.docker") == [ip]
            except dns.exception.Timeout:  # not listening yet
                return False

        wait_for(resolves, timeout=20, interval=0.1, what=f"{target.name}.docker from the unprivileged server")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=STOP_WITHIN + 3) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
