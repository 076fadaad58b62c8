"""A two-node Docker Swarm on this machine, for the Swarm tests: build it, tear it down, sweep leftovers.

Rule 1: the machine's own dockerd is never put into Swarm mode. It is used
        for one thing, `docker save` of the test image; everything else goes
        to the two engines made here, by their own sockets.
Rule 2: each node is a dockerd in a network namespace of its own (NETNS),
        on a bridge (BRIDGE) with an address of its own, no route beyond
        the bridge, and its own data-root, exec-root, pidfile, socket,
        cgroup parent and hostname (`unshare --uts`). It is started with
        `nsenter --net=...`: `ip netns exec` remounts /sys, and dockerd then
        fails with "Devices cgroup isn't mounted". `--bridge none
        --iptables=false` keeps it off the host's firewall, except for one
        rule: the main dockerd sets the FORWARD policy to DROP, so traffic
        between the nodes over BRIDGE is accepted in DOCKER-USER.
Rule 3: everything made here has a name or path starting with PREFIX (or
        under ROOT_DATA / ROOT_EXEC), so that `sweep` can remove what an
        aborted run left behind: processes, mounts, directories, network
        namespaces, links and the firewall rule. `build` sweeps first.
Rule 4: one Swarm on the machine at a time: `build` takes an exclusive lock
        (LOCK) that `teardown` releases, so concurrent test sessions queue.
Rule 5: every wait has a deadline; nothing sleeps without checking the
        condition it waits for.

Run as root. `python3 tests/swarmd.py up|down|sweep|capture`; `capture`
writes tests/fixtures/swarm/*.json from a fresh Swarm. Not thread-safe.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dockerd  # noqa: E402  (tests/dockerd.py: the main engine and the test image)

T = TypeVar("T")

PREFIX = "dnsw"  # network namespaces, links, hostnames
MARK = dockerd.SWARM_MARK  # in every path: how sweep and tests/dockerd.py know our dockerd
ROOT_DATA = f"/var/lib/{MARK}"
ROOT_EXEC = f"/run/{MARK}"
LOCK = f"/run/{MARK}.lock"
BRIDGE = f"{PREFIX}-br0"
SUBNET = "198.18.213"  # the bridge's /24 (RFC 2544 benchmarking space: on no real network)
ADDRESS_POOL = "10.213.0.0/16"  # the Swarm's overlay networks
NETWORK = f"{PREFIX}-net"  # an attachable overlay network made with the Swarm
IMAGE = dockerd.IMAGE
NODES = 2

START_TIMEOUT = 60  # seconds for a dockerd to answer
STOP_TIMEOUT = 20  # seconds for a dockerd to stop its containers and exit
JOIN_TIMEOUT = 60  # seconds for both nodes to be Ready
LOCK_TIMEOUT = 600  # seconds to wait for another session's Swarm
POLL = 0.05  # seconds between checks while waiting


class SwarmError(RuntimeError):
    """The Swarm could not be built or torn down; str() says why."""


@dataclass
class Node:
    """One engine of the Swarm."""

    index: int  # 1, 2, ...

    @property
    def name(self) -> str:
        return f"{PREFIX}-n{self.index}"  # hostname and network namespace

    @property
    def netns(self) -> str:
        return f"/var/run/netns/{self.name}"

    @property
    def address(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def data_root(self) -> str:
        return f"{ROOT_DATA}/n{self.index}"

    @property
    def exec_root(self) -> str:
        return f"{ROOT_EXEC}/n{self.index}"

    @property
    def socket(self) -> str:
        return f"{ROOT_EXEC}/n{self.index}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> str:
        return f"{ROOT_EXEC}/n{self.index}.pid"

    @property
    def log(self) -> str:
        return f"/tmp/{MARK}-n{self.index}.log"  # kept after teardown, for the next look

    def client(self) -> Any:
        """A low-level docker.APIClient for this engine."""
        import docker

        return docker.APIClient(base_url=self.url, version="auto", timeout=30)


@dataclass
class Swarm:
    """A running Swarm: nodes[0] is the manager, the rest are workers."""

    nodes: list[Node] = field(default_factory=list)
    network_id: str = ""
    _lock_fd: int | None = None

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def worker(self) -> Node:
        return self.nodes[1]


# --- building and tearing down ---------------------------------------------------------


def build(image: str = IMAGE) -> Swarm:
    """A fresh two-node Swarm with `image` loaded on both nodes and the overlay NETWORK; see the module docstring."""
    if os.geteuid() != 0:
        raise SwarmError("a Swarm of network namespaces needs root")
    for tool in ("ip", "iptables", "nsenter", "unshare", "dockerd", "docker", "hostname"):
        if shutil.which(tool) is None:
            raise SwarmError(f"{tool} is not installed (tests/run installs it)")
    swarm = Swarm([Node(i) for i in range(1, NODES + 1)])
    swarm._lock_fd = _lock()
    try:
        sweep()
        _network(swarm.nodes)
        for node in swarm.nodes:
            start(node)
        for node in swarm.nodes:
            wait_answers(node)
        _init_and_join(swarm)
        _load_image(swarm.nodes, image)
        manager = swarm.manager.client()
        try:
            swarm.network_id = manager.create_network(NETWORK, driver="overlay", attachable=True)["Id"]
        finally:
            manager.close()
    except BaseException:
        teardown(swarm)
        raise
    return swarm


def teardown(swarm: Swarm) -> None:
    """Stop the nodes and remove everything `build` made; releases the lock."""
    try:
        sweep()
    finally:
        if swarm._lock_fd is not None:
            os.close(swarm._lock_fd)  # releases the flock
            swarm._lock_fd = None


def sweep() -> None:
    """Remove whatever a Swarm of ours left: processes, mounts, directories, namespaces, links, firewall rule."""
    pids = _our_dockerds()
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    _wait(lambda: not any(_alive(p) for p in pids), STOP_TIMEOUT, "our dockerd to exit", fail=False)
    # What survives (a dockerd that would not stop, containerd, shims, task processes) is killed.
    for _ in range(3):
        left = _our_processes()
        if not left:
            break
        for pid in left:
            _signal(pid, signal.SIGKILL)
        _wait(lambda: not any(_alive(p) for p in left), 5, "our processes to die", fail=False)
    _unmount_under(ROOT_EXEC, ROOT_DATA)
    for root in (ROOT_EXEC, ROOT_DATA):
        shutil.rmtree(root, ignore_errors=True)
    _remove_cgroups()
    for node in [Node(i) for i in range(1, NODES + 1)]:
        _run(["ip", "netns", "delete", node.name], check=False)
        _run(["ip", "link", "delete", f"{PREFIX}-v{node.index}"], check=False)
    _run(["ip", "link", "delete", BRIDGE], check=False)
    while _run(["iptables", "-D", *_forward_rule()], check=False) == 0:
        pass


def start(node: Node) -> None:
    """Start the node's dockerd (detached, log in node.log); does not wait (wait_answers)."""
    os.makedirs(node.exec_root, exist_ok=True)
    os.makedirs(node.data_root, exist_ok=True)
    command = " ".join([
        "hostname", node.name, "&&", "exec", "dockerd",
        "--data-root", node.data_root,
        "--exec-root", node.exec_root,
        "--pidfile", node.pidfile,
        "-H", node.url,
        "--bridge", "none",
        "--iptables=false",
        "--cgroup-parent", f"/{node.name}",
    ])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    with open(node.log, "ab") as log:
        subprocess.Popen(
            ["nsenter", f"--net={node.netns}", "unshare", "--uts", "sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not killed with the test session's process group; sweep removes it
            close_fds=True,
            env=env,
        )


def stop(node: Node, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the node's dockerd and wait until it has exited (its containers stop with it)."""
    pid = _pid(node)
    if pid is None:
        return
    _signal(pid, signal.SIGTERM)
    _wait(lambda: not _alive(pid), timeout, f"{node.name}'s dockerd to exit")


def wait_answers(node: Node, timeout: float = START_TIMEOUT) -> None:
    """Wait until the node's engine answers `GET /_ping`."""

    def answers() -> bool:
        done = subprocess.run(["docker", "-H", node.url, "version", "--format", "{{.Server.Version}}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
        return done.returncode == 0

    _wait(answers, timeout, f"{node.name}'s dockerd to answer", log=node.log)


def wait_ready(swarm: Swarm, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait until the manager sees every node Ready and answers /services and /tasks."""
    client = swarm.manager.client()
    try:
        def ready() -> bool:
            try:
                nodes = client.nodes()
                client.services()
                client.tasks()
            except Exception:  # the manager is still starting (503: not a manager yet)
                return False
            return len(nodes) == len(swarm.nodes) and all(n["Status"]["State"] == "ready" for n in nodes)

        _wait(ready, timeout, "every node to be Ready and the manager to answer", log=swarm.manager.log)
    finally:
        client.close()


def _init_and_join(swarm: Swarm) -> None:
    manager = swarm.manager.client()
    try:
        manager.init_swarm(advertise_addr=swarm.manager.address, listen_addr=f"{swarm.manager.address}:2377",
                           default_addr_pool=[ADDRESS_POOL], subnet_size=24)
        token = manager.inspect_swarm()["JoinTokens"]["Worker"]
    finally:
        manager.close()
    for node in swarm.nodes[1:]:
        client = node.client()
        try:
            client.join_swarm([f"{swarm.manager.address}:2377"], token, listen_addr=f"{node.address}:2377",
                              advertise_addr=node.address)
        finally:
            client.close()
    wait_ready(swarm)


def _load_image(nodes: list[Node], image: str) -> None:
    """`docker save` from the main engine (its only use here, Rule 1), `docker load` into each node."""
    # Other test sessions may be restarting the main engine: wait for it, never start it.
    _wait(dockerd._info_ok, START_TIMEOUT, "the main dockerd to answer (for docker save)", interval=0.5)
    saved = subprocess.run(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if saved.returncode != 0:
        raise SwarmError(f"docker save {image} failed: {saved.stderr.decode(errors='replace').strip()}")
    for node in nodes:
        done = subprocess.run(["docker", "-H", node.url, "load"], input=saved.stdout, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            raise SwarmError(f"docker load into {node.name} failed: {done.stderr.decode(errors='replace').strip()}")


def _network(nodes: list[Node]) -> None:
    """The bridge, one namespace per node with a veth on the bridge, and the DOCKER-USER rule."""
    _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    for node in nodes:
        veth = f"{PREFIX}-v{node.index}"
        _run(["ip", "netns", "add", node.name])
        _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node.name])
        _run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        _run(["ip", "-n", node.name, "addr", "add", f"{node.address}/24", "dev", "eth0"])
        _run(["ip", "-n", node.name, "link", "set", "eth0", "up"])
        _run(["ip", "-n", node.name, "link", "set", "lo", "up"])
    _run(["iptables", "-I", *_forward_rule()])


def _forward_rule() -> list[str]:
    """The chain and match of the rule that lets the nodes talk over BRIDGE (Rule 2)."""
    chain = "DOCKER-USER" if _run(["iptables", "-n", "-L", "DOCKER-USER"], check=False) == 0 else "FORWARD"
    return [chain, "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]


def _lock() -> int:
    """Take LOCK (Rule 4), waiting up to LOCK_TIMEOUT for another session's Swarm."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o644)

    def taken() -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    try:
        _wait(taken, LOCK_TIMEOUT, f"the Swarm of another test session ({LOCK})", interval=0.5)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- processes, mounts, cgroups --------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def _our_dockerds() -> list[int]:
    return [pid for pid in _all_pids() if MARK in _cmdline(pid) and _cmdline(pid).split(" ")[0].endswith("dockerd")]


def _our_processes() -> list[int]:
    """Our dockerd, containerd and shims (by the paths on their command line) and every task process (by cgroup)."""
    found = {pid for pid in _all_pids() if MARK in _cmdline(pid) and pid != os.getpid()}
    for node in [Node(i) for i in range(1, NODES + 1)]:
        tops = [*Path("/sys/fs/cgroup").glob(f"*/{node.name}"), Path("/sys/fs/cgroup") / node.name]
        for procs in (p for top in tops if top.is_dir() for p in top.rglob("cgroup.procs")):
            try:
                found.update(int(p) for p in procs.read_text().split())
            except (OSError, ValueError):
                continue
    return sorted(found)


def _remove_cgroups() -> None:
    """The cgroups of our nodes' containers (--cgroup-parent), deepest first; empty ones only."""
    for node in [Node(i) for i in range(1, NODES + 1)]:
        for top in [*Path("/sys/fs/cgroup").glob(f"*/{node.name}"), Path("/sys/fs/cgroup") / node.name]:
            if not top.is_dir():
                continue
            for path in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                try:
                    path.rmdir()
                except OSError:
                    pass


def _unmount_under(*roots: str) -> None:
    """Lazily unmount every mount point under `roots`, deepest first."""
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return
    ours = [p for p in points if any(p == r or p.startswith(r + "/") for r in roots)]
    for point in sorted(set(ours), key=lambda p: -p.count("/")):
        _run(["umount", "-l", point], check=False)


def _pid(node: Node) -> int | None:
    for pid in _our_dockerds():
        if f"--exec-root {node.exec_root} " in _cmdline(pid) + " ":
            return pid
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _run(argv: list[str], check: bool = True) -> int:
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if check and done.returncode != 0:
        raise SwarmError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")
    return done.returncode


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait(predicate: Callable[[], Any], timeout: float, what: str, *, fail: bool = True, log: str | None = None,
          interval: float = POLL) -> bool:
    """Poll `predicate` until it is truthy (True) or `timeout` seconds pass (SwarmError, or False when not `fail`)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            if not fail:
                return False
            tail = f"; last lines of {log}:\n{_tail(log)}" if log else ""
            raise SwarmError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")
        time.sleep(interval)
    return True


# --- fixtures for tests/test_swarm.py ----------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "swarm"


def capture(swarm: Swarm, out: Path = FIXTURES) -> None:
    """Create the services the naming tests use, wait until they run, and write the manager's JSON to `out`.

    web: replicated vip, 3 tasks, on NETWORK and an IPv6 overlay, then scaled
    to 2 (a task left running with desired state "remove"); rr: dnsrr, 2 tasks; agent: global; shop_api: a
    stack's service with a published port (ingress); idle: 0 replicas.
    """
    import docker.types

    client = swarm.manager.client()
    try:
        v6 = client.create_network(f"{PREFIX}-net6", driver="overlay", attachable=True, enable_ipv6=True,
                                   ipam=docker.types.IPAMConfig(pool_configs=[
                                       docker.types.IPAMPool(subnet="10.213.99.0/24"),
                                       docker.types.IPAMPool(subnet="fd00:213:99::/64")]))["Id"]

        def service(name: str, replicas: int | None = 1, networks: tuple[str, ...] = (NETWORK,),
                    labels: dict[str, str] | None = None, **endpoint: Any) -> str:
            spec = docker.types.ContainerSpec(IMAGE, ["sleep", "3600"], init=True, labels=labels)
            mode = docker.types.ServiceMode("global") if replicas is None else \
                docker.types.ServiceMode("replicated", replicas=replicas)
            result: dict[str, str] = client.create_service(
                docker.types.TaskTemplate(spec), name=name, mode=mode, labels=labels, networks=list(networks),
                endpoint_spec=docker.types.EndpointSpec(**endpoint) if endpoint else None)
            return result["ID"]

        web = service("web", 3, (NETWORK, v6))
        service("rr", 2, mode="dnsrr")
        service("agent", None)
        service("shop_api", 1, labels={"com.docker.stack.namespace": "shop"}, ports={8080: 80})
        service("idle", 0)

        def served(count: int) -> bool:
            tasks = client.tasks(filters={"desired-state": "running"})
            return sum(t["Status"]["State"] == "running" for t in tasks) == count

        _wait(lambda: served(3 + 2 + 2 + 1), 60, "every task to run")
        scale(client, web, 2)  # one task of web is left with desired state "remove" while it stops
        _wait(lambda: served(2 + 2 + 2 + 1), 60, "web to scale to 2")
        out.mkdir(parents=True, exist_ok=True)
        # A task's container on the manager, as the docker source sees it (for naming's Swarm rule).
        container = next(c for c in client.containers() if c["Labels"].get("com.docker.swarm.service.name") == "web")
        for name, value in (("services", client.services()), ("tasks", client.tasks()),
                            ("networks", client.networks(filters={"scope": "swarm"})), ("nodes", client.nodes()),
                            ("task-container", client.inspect_container(container["Id"]))):
            (out / f"{name}.json").write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    finally:
        client.close()


def scale(client: Any, service: str, replicas: int) -> None:
    """Set the replicas of `service`, its spec otherwise sent back as read (as `docker service scale` does).

    The SDK's update_service rebuilds the task template and so restarts every task.
    """
    info = client.inspect_service(service)
    spec = dict(info["Spec"], Mode={"Replicated": {"Replicas": replicas}})
    response = client._post_json(client._url("/services/{0}/update", service), data=spec,
                                 params={"version": info["Version"]["Index"]})
    client._raise_for_status(response)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down", "sweep", "capture"):
        print("usage: python3 tests/swarmd.py {up,down,sweep,capture}", file=sys.stderr)
        return 2
    try:
        if argv[0] == "up":
            swarm = build()
            swarm._lock_fd = None  # the Swarm outlives this process; `down` removes it
            print(f"swarm: manager {swarm.manager.url}, worker {swarm.worker.url}, network {NETWORK}")
        elif argv[0] == "capture":
            swarm = build()
            try:
                capture(swarm)
                print(f"swarm: fixtures written to {FIXTURES}")
            finally:
                teardown(swarm)
        else:
            sweep()
    except (SwarmError, dockerd.DockerdError) as exc:
        print(f"swarmd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
