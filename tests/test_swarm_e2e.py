"""End to end: dockerdns serving a real two-node Swarm (tests/swarmd.py), asked by dnspython on loopback.

The Swarm, its services and two servers are built once for the module:
a manager-side server (docker.url = the manager's engine, swarm.url unset:
auto) and a worker-side one (docker.url = the worker's engine, swarm.url =
the manager's). The test that stops the manager runs last. Marked `swarm`:
`pytest -m 'not swarm'` skips it; the whole suite runs it.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import docker.errors
import docker.types
import pytest

import swarmd
from dockerdns.app import App
from dockerdns.settings import Address, DockerSettings, ForwardSettings, Settings, SwarmSettings

pytestmark = [pytest.mark.swarm, pytest.mark.docker]

#: Seconds within which a task reaching or leaving `running` is served or gone (DESIGN.md, "Docker Swarm").
DEADLINE = 2.0
#: Seconds between two looks while measuring propagation.
LOOK = 0.01
STACK = "shop"


@dataclass
class Server:
    app: App
    address: tuple[str, int]


@dataclass
class Env:
    swarm: swarmd.Swarm
    manager: Any  # docker.APIClient of the manager
    worker: Any  # docker.APIClient of the worker
    services: dict[str, str]  # name -> id
    on_manager: Server  # docker.url = the manager, swarm.url auto
    on_worker: Server  # docker.url = the worker, swarm.url = the manager
    plain: str  # the name of a plain container on the worker, attached to the overlay


def _settings(docker_url: str, swarm_url: str | None = None) -> Settings:
    return Settings(listen=(Address("127.0.0.1", 0),), ttl=1, docker=DockerSettings(docker_url),
                    forward=ForwardSettings(False, ()), swarm=SwarmSettings(url=swarm_url))


def _serve(settings: Settings) -> Server:
    app = App(settings)
    app.start()
    address = app.addresses()[0]
    return Server(app, (address.host, address.port))


def _service(client: Any, name: str, replicas: int | None, **kw: Any) -> str:
    labels = kw.pop("labels", None)
    spec = docker.types.ContainerSpec(swarmd.IMAGE, ["sleep", "3600"], init=True, labels=labels,
                                      stop_grace_period=1_000_000_000)
    mode = docker.types.ServiceMode("global") if replicas is None else docker.types.ServiceMode("replicated",
                                                                                                replicas=replicas)
    result: dict[str, str] = client.create_service(docker.types.TaskTemplate(spec), name=name, mode=mode,
                                                   labels=labels, networks=[swarmd.NETWORK], **kw)
    return result["ID"]


def running_tasks(client: Any, service: str) -> list[dict[str, Any]]:
    """The tasks of `service` that are served: state and desired state running."""
    return [t for t in client.tasks(filters={"service": service, "desired-state": "running"})
            if t["Status"]["State"] == "running"]


def task_ips(tasks: list[dict[str, Any]]) -> list[str]:
    return sorted(a.split("/")[0] for t in tasks for att in t.get("NetworksAttachments") or []
                  if att["Network"]["Spec"]["Name"] == swarmd.NETWORK for a in att["Addresses"])


def vip(client: Any, service: str) -> str:
    net = client.inspect_network(swarmd.NETWORK)["Id"]
    endpoint = client.inspect_service(service)["Endpoint"]
    return str(next(v["Addr"] for v in endpoint["VirtualIPs"] if v["NetworkID"] == net).split("/")[0])


def query(server: Server, name: str, qtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, qtype), server.address[0], port=server.address[1], timeout=3)


def answers(server: Server, name: str, qtype: str = "A") -> list[str]:
    msg = query(server, name, qtype)
    rdtype = dns.rdatatype.from_text(qtype)
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype == rdtype)


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(LOOK)


@pytest.fixture(scope="module")
def env(busybox_image: str) -> Iterator[Env]:
    """The Swarm with services web (vip, 4), rr (dnsrr, 2), agent (global), shop_api (stack) and two servers."""
    try:
        swarm = swarmd.build(busybox_image)
    except swarmd.SwarmError as exc:
        pytest.fail(f"no two-node Swarm for the tests: {exc}", pytrace=False)
    manager, worker = swarm.manager.client(), swarm.worker.client()
    servers: list[Server] = []
    try:
        services = {
            "web": _service(manager, "web", 4),
            "rr": _service(manager, "rr", 2, endpoint_spec=docker.types.EndpointSpec(mode="dnsrr")),
            "agent": _service(manager, "agent", None),
            f"{STACK}_api": _service(manager, f"{STACK}_api", 1, labels={"com.docker.stack.namespace": STACK}),
        }
        plain = f"{swarmd.PREFIX}-plain"
        worker.create_container(swarmd.IMAGE, ["sleep", "3600"], name=plain,
                                host_config=worker.create_host_config(init=True, network_mode=swarmd.NETWORK))
        worker.start(plain)
        counts = {"web": 4, "rr": 2, "agent": 2, f"{STACK}_api": 1}
        _wait(lambda: all(len(running_tasks(manager, services[n])) == c for n, c in counts.items()), 60,
              "every task to run")
        servers.append(_serve(_settings(swarm.manager.url)))
        servers.append(_serve(_settings(swarm.worker.url, swarm.manager.url)))
        for server in servers:
            _wait(lambda: server.app.swarm.in_sync and server.app.source.in_sync, 20, "the servers' first reads")
        yield Env(swarm, manager, worker, services, servers[0], servers[1], plain)
    finally:
        for server in servers:
            server.app.stop()
        manager.close()
        worker.close()
        swarmd.teardown(swarm)


@pytest.fixture(params=["on_manager", "on_worker"])
def server(request: Any, env: Env) -> Server:
    """Each of the two servers in turn."""
    return getattr(env, request.param)  # type: ignore[no-any-return]


def test_vip_service_has_tasks_on_both_nodes(env: Env, server: Server) -> None:
    """tasks.web holds every running task, on both nodes; web holds the virtual IP."""
    tasks = running_tasks(env.manager, env.services["web"])
    assert len({t["NodeID"] for t in tasks}) == 2
    assert answers(server, "tasks.web.docker") == task_ips(tasks)
    assert answers(server, f"tasks.web.{swarmd.NETWORK}.docker") == task_ips(tasks)
    assert answers(server, "web.docker") == [vip(env.manager, env.services["web"])]
    assert answers(server, f"web.{swarmd.NETWORK}.docker") == [vip(env.manager, env.services["web"])]


def test_slot_and_node_names(env: Env, server: Server) -> None:
    """<slot>.web is one replicated task; <node id>.agent one task of the global service."""
    for task in running_tasks(env.manager, env.services["web"]):
        assert answers(server, f"{task['Slot']}.web.docker") == task_ips([task])
    for task in running_tasks(env.manager, env.services["agent"]):
        assert answers(server, f"{task['NodeID'][:12]}.agent.docker") == task_ips([task])


def test_dnsrr_service(env: Env, server: Server) -> None:
    """A dnsrr service's name holds its task addresses (no virtual IP)."""
    tasks = running_tasks(env.manager, env.services["rr"])
    assert answers(server, "rr.docker") == task_ips(tasks) == answers(server, "tasks.rr.docker")
    assert not env.manager.inspect_service(env.services["rr"])["Endpoint"].get("VirtualIPs")


def test_stack_service_name(env: Env, server: Server) -> None:
    """A stack's service answers <service>.<stack> without the <stack>_ prefix, like its full name."""
    expected = [vip(env.manager, env.services[f"{STACK}_api"])]
    assert answers(server, f"api.{STACK}.docker") == expected == answers(server, f"{STACK}_api.docker")


def test_ptr_of_task_and_vip(env: Env, server: Server) -> None:
    """A task address points at <slot>.<service>, a virtual IP at <service>."""
    for task in running_tasks(env.manager, env.services["web"]):
        [ip] = task_ips([task])
        assert answers(server, dns.reversename.from_address(ip).to_text(), "PTR") == [f"{task['Slot']}.web.docker."]
    ip = vip(env.manager, env.services["web"])
    assert answers(server, dns.reversename.from_address(ip).to_text(), "PTR") == ["web.docker."]


def test_task_containers_only_by_swarm_rules(env: Env) -> None:
    """A local task's container is not published by its container name; its address has one PTR, the task's."""
    for node, server in ((env.manager, env.on_manager), (env.worker, env.on_worker)):
        local = [c for c in node.containers() if c["Labels"].get("com.docker.swarm.service.name") == "web"]
        assert local, "a web task runs on each node"
        for container in local:
            name = container["Names"][0].lstrip("/")
            assert query(server, f"{name}.docker").rcode() == dns.rcode.NXDOMAIN
            ip = container["NetworkSettings"]["Networks"][swarmd.NETWORK]["IPAddress"]
            slot = container["Labels"]["com.docker.swarm.task.name"].split(".")[1]
            assert answers(server, dns.reversename.from_address(ip).to_text(), "PTR") == [f"{slot}.web.docker."]


def test_worker_side_server_keeps_local_containers(env: Env) -> None:
    """The worker-side server serves the worker's own plain container beside the Swarm's names."""
    ip = env.worker.inspect_container(env.plain)["NetworkSettings"]["Networks"][swarmd.NETWORK]["IPAddress"]
    assert answers(env.on_worker, f"{env.plain}.docker") == [ip]
    assert query(env.on_manager, f"{env.plain}.docker").rcode() == dns.rcode.NXDOMAIN  # not the manager's container


def test_overlay_subnet_known(env: Env, server: Server) -> None:
    """The table knows the overlay's subnet from the Swarm, so a client on it gets answers source-aware."""
    assert server.app.table.snapshot.networks_of(vip(env.manager, env.services["web"])) == {swarmd.NETWORK}


def test_worker_without_swarm_url(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """docker.url a worker and no swarm.url: no Swarm names, one info line, task containers served as containers."""
    caplog.set_level(logging.INFO, logger="dockerdns")
    server = _serve(_settings(env.swarm.worker.url))
    try:
        _wait(lambda: server.app.swarm.active is False and server.app.source.in_sync, 20, "the role check")
        local = [c for c in env.worker.containers() if c["Labels"].get("com.docker.swarm.service.name") == "web"]
        name = local[0]["Names"][0].lstrip("/")
        _wait(lambda: answers(server, f"{name}.docker"), DEADLINE, "the task container by its container name")
        assert query(server, "web.docker").rcode() == dns.rcode.NXDOMAIN
        assert query(server, "tasks.web.docker").rcode() == dns.rcode.NXDOMAIN
    finally:
        server.app.stop()
    lines = [r.getMessage() for r in caplog.records if "Swarm worker" in r.getMessage()]
    assert len(lines) == 1 and "--swarm-url" in lines[0] and lines[0].startswith("swarm: unix://")


def _measure_scale(env: Env, replicas: int) -> list[float]:
    """Scale web to `replicas`; seconds from the tasks API to DNS for each task that starts or stops being served."""
    service = env.services["web"]
    before = {t["ID"]: task_ips([t]) for t in running_tasks(env.manager, service)}
    swarmd.scale(env.manager, service, replicas)
    seen_api: dict[str, float] = {}  # task id -> when the tasks API first showed the change
    seen_dns: dict[tuple[str, str], float] = {}  # (task id, server) -> when DNS first showed it
    ips: dict[str, list[str]] = dict(before)
    servers = {"manager": env.on_manager, "worker": env.on_worker}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = time.monotonic()
        current = {t["ID"]: task_ips([t]) for t in running_tasks(env.manager, service)}
        for task_id in set(current) ^ set(before):
            seen_api.setdefault(task_id, now)
            ips.setdefault(task_id, current.get(task_id, []))
        for label, server in servers.items():
            served = set(answers(server, "tasks.web.docker"))
            for task_id in seen_api:
                if (task_id, label) in seen_dns:
                    continue
                shown = all(ip in served for ip in ips[task_id])
                if shown == (task_id not in before):
                    seen_dns[(task_id, label)] = time.monotonic()
        changed = abs(replicas - len(before))
        if len(seen_api) == changed and len(seen_dns) == 2 * changed:
            break
        time.sleep(LOOK)
    delays = [seen_dns[(t, label)] - seen_api[t] for t in seen_api for label in servers if (t, label) in seen_dns]
    assert len(delays) == 2 * abs(replicas - len(before)), f"changes seen in DNS: {len(delays)}"
    return delays


def test_scale_up_and_down_within_deadline(env: Env) -> None:
    """A task reaching or leaving running is served or gone within 2 s on both servers (median under 1 s)."""
    delays = _measure_scale(env, 6) + _measure_scale(env, 4)
    print(f"\nswarm propagation (s): {sorted(round(d, 3) for d in delays)}; median {statistics.median(delays):.3f}")
    assert max(delays) < DEADLINE
    assert statistics.median(delays) < 1.0


def test_manager_goes_away(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Manager stopped: both servers keep the last known names, warn once; back: everything is read again."""
    web = answers(env.on_manager, "tasks.web.docker")
    plain = answers(env.on_worker, f"{env.plain}.docker")
    swarmd.stop(env.swarm.manager)
    try:
        for server in (env.on_manager, env.on_worker):
            _wait(lambda: not server.app.swarm.in_sync, 10, "the servers to notice")
            assert answers(server, "tasks.web.docker") == web
            assert answers(server, "api.shop.docker")
        assert answers(env.on_worker, f"{env.plain}.docker") == plain  # the worker's own containers stay
        lost = [r for r in caplog.records if r.name == "dockerdns.swarm" and "lost the manager" in r.getMessage()]
        assert len(lost) == 2 and all(r.levelno == logging.WARNING for r in lost)  # once per server
    finally:
        swarmd.start(env.swarm.manager)
        swarmd.wait_answers(env.swarm.manager)
    swarmd.wait_ready(env.swarm)
    _wait(lambda: len(_tasks_now(env, "web")) == 4, 60, "web to run again")
    for server in (env.on_manager, env.on_worker):
        _wait(lambda: server.app.swarm.in_sync, 30, "the servers to read the manager again")
        _wait(lambda: answers(server, "tasks.web.docker") == task_ips(_tasks_now(env, "web")), 10,
              "the names of the tasks after the restart")


def _tasks_now(env: Env, service: str) -> list[dict[str, Any]]:
    """running_tasks, or none while a restarted manager still answers 503."""
    try:
        return running_tasks(env.manager, env.services[service])
    except docker.errors.APIError:
        return []
