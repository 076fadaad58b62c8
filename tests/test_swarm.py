"""Swarm naming rules (dockerdns/swarm.py), from JSON captured on a real two-node Swarm.

tests/fixtures/swarm/*.json were written by `python3 tests/swarmd.py capture`
(services web, rr, agent, shop_api, idle; see swarmd.capture). Expected
records are zone text ("name ttl IN type value"), compared as sorted lists;
the ids and addresses below are the captured ones: after a new capture,
update them here. Also here: the Swarm keys of the config, and naming's rule
that a task's container is left to the Swarm rules.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from dockerdns import config
from dockerdns.app import App
from dockerdns.naming import records_for_container
from dockerdns.records import Record
from dockerdns.settings import SWARM_OFF, Address, ForwardSettings, Settings, SwarmSettings
from dockerdns.swarm import (
    OWNER_PREFIX, Cluster, ServiceRecords, is_swarm_owner, parse_cluster, records_for_cluster, records_for_service,
    served_tasks)
from dockerdns.table import RecordTable

FIXTURES = Path(__file__).parent / "fixtures" / "swarm"

# Captured ids.
WEB = "m9dt4l3i16ltp323jnj97x6m2"
RR = "ym4wxn0f8cutqoqym6obrpaq0"
AGENT = "wz4vr3gbfuzegqss0gi7r0npe"
SHOP_API = "m8pfpdxivfepzweylecx1j4v5"
IDLE = "bbm7wm2jjog1a2o2nx2seoane"
WEB_SLOT_2 = "vyx1wgf9c4mmog3pn5kylqr40"  # running on the manager; task-container.json is its container
WEB_SLOT_3 = "ylmgtswkemoqam8fctexwnwi7"  # running, desired state "remove" (web scaled from 3 to 2)


def load(name: str) -> Any:
    """A fresh copy of fixture `name` (tests may edit it)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def cluster(services: Any = None, tasks: Any = None, networks: Any = None) -> Cluster:
    return parse_cluster(load("services") if services is None else services,
                         load("tasks") if tasks is None else tasks,
                         load("networks") if networks is None else networks)


def zone(records: tuple[Record, ...] | list[Record]) -> list[str]:
    return sorted(f"{r.name} {r.ttl} IN {r.rtype} {r.value}" for r in records)


def published(service_id: str, tasks: Any = None, **settings: Any) -> list[str]:
    """The zone text service `service_id` publishes from the fixtures (with `tasks` instead, if given)."""
    result = records_for_cluster(cluster(tasks=tasks), Settings(**{"ttl": 1, **settings}))
    found = result.get(OWNER_PREFIX + service_id)
    return zone(found.records) if found else []


def task(task_id: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    return next(t for t in tasks if t["ID"] == task_id)


# --- the captured Swarm ------------------------------------------------------------------

WEB_ZONE = [  # vip mode, two overlays; slot 1 on the worker, slot 2 on the manager
    "1.web.docker. 1 IN A 10.213.1.3",
    "1.web.docker. 1 IN A 10.213.99.3",
    "2.1.213.10.in-addr.arpa. 1 IN PTR web.docker.",
    "2.99.213.10.in-addr.arpa. 1 IN PTR web.docker.",
    "2.web.docker. 1 IN A 10.213.1.4",
    "2.web.docker. 1 IN A 10.213.99.4",
    "3.1.213.10.in-addr.arpa. 1 IN PTR 1.web.docker.",
    "3.99.213.10.in-addr.arpa. 1 IN PTR 1.web.docker.",
    "4.1.213.10.in-addr.arpa. 1 IN PTR 2.web.docker.",
    "4.99.213.10.in-addr.arpa. 1 IN PTR 2.web.docker.",
    "tasks.web.dnsw-net.docker. 1 IN A 10.213.1.3",
    "tasks.web.dnsw-net.docker. 1 IN A 10.213.1.4",
    "tasks.web.dnsw-net6.docker. 1 IN A 10.213.99.3",
    "tasks.web.dnsw-net6.docker. 1 IN A 10.213.99.4",
    "tasks.web.docker. 1 IN A 10.213.1.3",
    "tasks.web.docker. 1 IN A 10.213.1.4",
    "tasks.web.docker. 1 IN A 10.213.99.3",
    "tasks.web.docker. 1 IN A 10.213.99.4",
    "web.dnsw-net.docker. 1 IN A 10.213.1.2",
    "web.dnsw-net6.docker. 1 IN A 10.213.99.2",
    "web.docker. 1 IN A 10.213.1.2",
    "web.docker. 1 IN A 10.213.99.2",
]

RR_ZONE = [  # dnsrr: the service name holds the task addresses, no virtual IP
    "1.rr.docker. 1 IN A 10.213.1.6",
    "2.rr.docker. 1 IN A 10.213.1.7",
    "6.1.213.10.in-addr.arpa. 1 IN PTR 1.rr.docker.",
    "7.1.213.10.in-addr.arpa. 1 IN PTR 2.rr.docker.",
    "rr.dnsw-net.docker. 1 IN A 10.213.1.6",
    "rr.dnsw-net.docker. 1 IN A 10.213.1.7",
    "rr.docker. 1 IN A 10.213.1.6",
    "rr.docker. 1 IN A 10.213.1.7",
    "tasks.rr.dnsw-net.docker. 1 IN A 10.213.1.6",
    "tasks.rr.dnsw-net.docker. 1 IN A 10.213.1.7",
    "tasks.rr.docker. 1 IN A 10.213.1.6",
    "tasks.rr.docker. 1 IN A 10.213.1.7",
]

AGENT_ZONE = [  # global: one task per node, named by the node id's first 12 characters
    "10.1.213.10.in-addr.arpa. 1 IN PTR zcoxbymenmd2.agent.docker.",
    "2ld1nr7uhib0.agent.docker. 1 IN A 10.213.1.9",
    "8.1.213.10.in-addr.arpa. 1 IN PTR agent.docker.",
    "9.1.213.10.in-addr.arpa. 1 IN PTR 2ld1nr7uhib0.agent.docker.",
    "agent.dnsw-net.docker. 1 IN A 10.213.1.8",
    "agent.docker. 1 IN A 10.213.1.8",
    "tasks.agent.dnsw-net.docker. 1 IN A 10.213.1.10",
    "tasks.agent.dnsw-net.docker. 1 IN A 10.213.1.9",
    "tasks.agent.docker. 1 IN A 10.213.1.10",
    "tasks.agent.docker. 1 IN A 10.213.1.9",
    "zcoxbymenmd2.agent.docker. 1 IN A 10.213.1.10",
]

SHOP_API_ZONE = [  # a stack's service with a published port: api.shop, and nothing on ingress
    "1.shop_api.docker. 1 IN A 10.213.1.14",
    "13.1.213.10.in-addr.arpa. 1 IN PTR shop_api.docker.",
    "14.1.213.10.in-addr.arpa. 1 IN PTR 1.shop_api.docker.",
    "api.shop.docker. 1 IN A 10.213.1.13",
    "shop_api.dnsw-net.docker. 1 IN A 10.213.1.13",
    "shop_api.docker. 1 IN A 10.213.1.13",
    "tasks.shop_api.dnsw-net.docker. 1 IN A 10.213.1.14",
    "tasks.shop_api.docker. 1 IN A 10.213.1.14",
]


@pytest.mark.parametrize("service_id, expected", [
    pytest.param(WEB, WEB_ZONE, id="replicated-vip"),
    pytest.param(RR, RR_ZONE, id="dnsrr"),
    pytest.param(AGENT, AGENT_ZONE, id="global"),
    pytest.param(SHOP_API, SHOP_API_ZONE, id="stack"),
    pytest.param(IDLE, [], id="no-replicas"),
])
def test_captured_service(service_id: str, expected: list[str]) -> None:
    """Each captured service publishes exactly the names of DESIGN.md's Swarm table."""
    assert published(service_id) == expected


def test_every_owner_is_its_service() -> None:
    """Every record is owned by `swarm:<service id>`; task records name the task, VIP records the service."""
    result = records_for_cluster(cluster(), Settings())
    assert set(result) == {OWNER_PREFIX + s for s in (WEB, RR, AGENT, SHOP_API)}
    for owner, service in result.items():
        assert all(r.owner == owner for r in service.records)
    web = result[OWNER_PREFIX + WEB].records
    assert {r.owner_name for r in web if r.name == "web.docker."} == {"web"}
    assert {r.owner_name for r in web if r.name == "tasks.web.docker."} == {"web.1", "web.2"}
    agent = result[OWNER_PREFIX + AGENT].records
    assert {r.owner_name for r in agent if r.name == "tasks.agent.docker."} == {
        "agent.2ld1nr7uhib0", "agent.zcoxbymenmd2"}


def test_addresses_carry_network_and_subnet() -> None:
    """A and AAAA records carry their overlay's name and subnet, for source-aware answers; PTRs none."""
    web = records_for_cluster(cluster(), Settings())[OWNER_PREFIX + WEB].records
    tagged = {(r.value, r.network, r.subnet) for r in web if r.rtype == "A"}
    assert ("10.213.1.2", "dnsw-net", "10.213.1.0/24") in tagged
    assert ("10.213.99.3", "dnsw-net6", "10.213.99.0/24") in tagged
    assert all(r.network is None and r.subnet is None for r in web if r.rtype == "PTR")


# --- Rule 1: which tasks are served ------------------------------------------------------


@pytest.mark.parametrize("state, desired, served", [
    ("running", "running", True),
    ("running", "shutdown", False),  # being shut down: leaves DNS first
    ("running", "remove", False),  # scaled away
    ("starting", "running", False),  # not running yet
    ("preparing", "running", False),
    ("failed", "running", False),
    ("shutdown", "shutdown", False),
    ("complete", "shutdown", False),
])
def test_task_served_only_while_running_and_meant_to(state: str, desired: str, served: bool) -> None:
    """A task is served while both its state and its desired state are running."""
    tasks = load("tasks")
    task(WEB_SLOT_2, tasks)["Status"]["State"] = state
    task(WEB_SLOT_2, tasks)["DesiredState"] = desired
    assert ("2.web.docker. 1 IN A 10.213.1.4" in published(WEB, tasks)) is served


def test_scaled_away_task_is_not_served() -> None:
    """The captured task of slot 3, still running but desired "remove", has no name and no PTR."""
    names = "\n".join(published(WEB))
    assert "3.web.docker." not in names and "10.213.1.5" not in names and "5.1.213.10" not in names


def test_service_without_served_tasks_publishes_nothing() -> None:
    """No running task: no VIP either (NXDOMAIN, like a stopped container)."""
    tasks = [t for t in load("tasks") if t["ServiceID"] != WEB]
    assert published(WEB, tasks) == []


# --- addresses, names, zones -------------------------------------------------------------


def test_ipv6_task_address_answers_aaaa() -> None:
    """An IPv6 address on a task's attachment gives AAAA and an ip6.arpa PTR.

    Synthetic: the captured manager (Engine 20.10) allocates IPv4 only on
    the IPv6 overlay, so the address is added to the captured JSON here.
    """
    tasks = load("tasks")
    attachment = next(a for a in task(WEB_SLOT_2, tasks)["NetworksAttachments"]
                      if a["Network"]["Spec"]["Name"] == "dnsw-net6")
    attachment["Addresses"].append("fd00:213:99::4/64")
    names = published(WEB, tasks)
    assert "2.web.docker. 1 IN AAAA fd00:213:99::4" in names
    assert "tasks.web.dnsw-net6.docker. 1 IN AAAA fd00:213:99::4" in names
    ptr = "4.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.9.9.0.0.3.1.2.0.0.0.d.f.ip6.arpa."
    assert f"{ptr} 1 IN PTR 2.web.docker." in names


def test_other_zone() -> None:
    """Names go under the configured domain."""
    names = published(RR, domain="swarm.internal")
    assert "rr.swarm.internal. 1 IN A 10.213.1.6" in names
    assert "6.1.213.10.in-addr.arpa. 1 IN PTR 1.rr.swarm.internal." in names


@pytest.mark.parametrize("name, stack, expected", [
    ("shop_api", "shop", "api.shop.docker."),
    ("api", "shop", "api.shop.docker."),  # no prefix to strip
    ("shop_", "shop", "shop_.shop.docker."),  # nothing left after the prefix: the whole name
])
def test_stack_name(name: str, stack: str, expected: str) -> None:
    """`<service>.<stack>` strips the `<stack>_` prefix and answers what the service name answers."""
    services = load("services")
    spec = next(s for s in services if s["ID"] == SHOP_API)["Spec"]
    spec["Name"] = name
    spec["Labels"]["com.docker.stack.namespace"] = stack
    result = records_for_cluster(cluster(services=services), Settings())[OWNER_PREFIX + SHOP_API]
    by_name = {r.name: r.value for r in result.records if r.rtype == "A"}
    assert by_name[expected] == by_name[f"{name}.docker."] == "10.213.1.13"


def test_invalid_service_name_is_a_warning() -> None:
    """A service name that is no DNS name publishes nothing and says why, without an exception."""
    services = load("services")
    next(s for s in services if s["ID"] == RR)["Spec"]["Name"] = "bad name"
    result = records_for_cluster(cluster(services=services), Settings())[OWNER_PREFIX + RR]
    assert result.records == ()
    assert result.warnings == ("service name 'bad name': not a valid DNS name",)


def test_unknown_network_keeps_the_vip_without_a_network() -> None:
    """A virtual IP on a network /networks does not list is still the service's address."""
    names = zone(records_for_cluster(cluster(networks=[]), Settings(ttl=1))[OWNER_PREFIX + WEB].records)
    assert "web.docker. 1 IN A 10.213.1.2" in names
    assert not any(n.startswith("web.dnsw-net.") for n in names)
    assert "tasks.web.dnsw-net.docker. 1 IN A 10.213.1.3" in names  # tasks name their networks themselves


@pytest.mark.parametrize("services, tasks, networks", [
    pytest.param(None, None, None, id="nulls"),
    pytest.param({}, "x", 3, id="wrong-types"),
    pytest.param([{"ID": 1}], [{"ID": "t", "Status": "running"}], [{"Id": None}], id="wrong-fields"),
    pytest.param([{"ID": "s", "Spec": {"Name": "x"}, "Endpoint": {"VirtualIPs": [{"Addr": "nope"}]}}],
                 [{"ID": "t", "ServiceID": "s", "Status": {"State": "running"}, "DesiredState": "running",
                   "NetworksAttachments": [{"Addresses": ["1.2.3.4/40", None]}]}], [], id="bad-addresses"),
])
def test_malformed_json_never_raises(services: Any, tasks: Any, networks: Any) -> None:
    """Input that is not what the API returns is skipped, never an exception."""
    result = records_for_cluster(parse_cluster(services, tasks, networks), Settings())
    assert all(isinstance(p, ServiceRecords) for p in result.values())


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


@hsettings(max_examples=100, deadline=None)
@given(JSON, JSON, JSON)
def test_any_json_never_raises(services: Any, tasks: Any, networks: Any) -> None:
    """parse_cluster and records_for_cluster take any JSON value without an exception."""
    records_for_cluster(parse_cluster(services, tasks, networks), Settings())


def test_served_tasks_sorted_and_filtered() -> None:
    """served_tasks keeps running tasks only, in a stable order."""
    tasks = served_tasks(load("tasks"))
    assert len(tasks) == 7 and WEB_SLOT_3 not in {t.id for t in tasks}
    assert list(tasks) == sorted(tasks, key=lambda t: (t.service_id, t.slot or 0, t.node_id, t.id))
    assert records_for_service(cluster().services[WEB], tasks, Settings()).records  # other services' tasks ignored


# --- the table: owners replaced whole ------------------------------------------------------


def test_service_and_container_share_a_name() -> None:
    """A service's records are replaced whole without disturbing a container holding the same name."""
    table = RecordTable()
    container = Record("web.docker.", "A", "172.17.0.9", 1, "c" * 64, "web")
    table.replace(container.owner, [container])
    web = records_for_cluster(cluster(), Settings(ttl=1))[OWNER_PREFIX + WEB].records
    table.replace(OWNER_PREFIX + WEB, web)
    values = {r.value for r in table.snapshot.names["web.docker."]["A"]}
    assert values == {"172.17.0.9", "10.213.1.2", "10.213.99.2"}
    table.remove(OWNER_PREFIX + WEB)
    assert {r.value for r in table.snapshot.names["web.docker."]["A"]} == {"172.17.0.9"}
    assert is_swarm_owner(OWNER_PREFIX + WEB) and not is_swarm_owner(container.owner)


# --- naming: a task's container ------------------------------------------------------------


@pytest.mark.parametrize("url, published_as_container", [
    (None, False),  # auto: the engine decides; until it says "no manager", the Swarm rules name tasks
    ("unix:///run/manager.sock", False),
    (SWARM_OFF, True),
])
def test_task_container_left_to_swarm_rules(url: str | None, published_as_container: bool) -> None:
    """While Swarm names are on, a task's container publishes nothing of its own (not web.2.<task id>)."""
    inspect = load("task-container")
    records = records_for_container(inspect, Settings(swarm=SwarmSettings(url=url))).records
    assert bool(records) is published_as_container
    if published_as_container:
        assert f"web.2.{WEB_SLOT_2}.docker." in {r.name for r in records}


def test_task_container_fixture_is_a_served_task() -> None:
    """The captured container is the task of web's slot 2 (its addresses are the task's)."""
    inspect = load("task-container")
    assert inspect["Config"]["Labels"]["com.docker.swarm.task.id"] == WEB_SLOT_2
    assert inspect["NetworkSettings"]["Networks"]["dnsw-net"]["IPAddress"] == "10.213.1.4"


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, environ, expected", [
    ({}, {}, SwarmSettings(None, 1.0)),
    ({"swarm.url": "Off"}, {}, SwarmSettings(SWARM_OFF, 1.0)),
    ({"swarm.url": "tcp://10.0.0.1:2375", "swarm.poll": "0.2"}, {}, SwarmSettings("tcp://10.0.0.1:2375", 0.2)),
    ({}, {"DOCKERDNS_SWARM_URL": "unix:///m.sock", "DOCKERDNS_SWARM_POLL": "2.5"},
     SwarmSettings("unix:///m.sock", 2.5)),
    ({"swarm.poll": "3"}, {"DOCKERDNS_SWARM_POLL": "2"}, SwarmSettings(None, 3.0)),
])
def test_swarm_config(flags: dict[str, str], environ: dict[str, str], expected: SwarmSettings) -> None:
    """swarm.url and swarm.poll from flags and environment; flags win."""
    assert config.load(flags, environ, default_config="/nonexistent").swarm == expected


@pytest.mark.parametrize("flags, problem", [
    ({"swarm.poll": "0.1"}, "--swarm-poll: expected seconds from 0.2 to 3600, got '0.1'"),
    ({"swarm.poll": "nan"}, "--swarm-poll: expected seconds from 0.2 to 3600, got 'nan'"),
    ({"swarm.poll": "often"}, "--swarm-poll: expected seconds from 0.2 to 3600, got 'often'"),
    ({"swarm.url": " "}, "--swarm-url: expected a non-empty string, got ' '"),
])
def test_swarm_config_problems(flags: dict[str, str], problem: str) -> None:
    """A bad Swarm setting is one line naming the flag and the value."""
    with pytest.raises(config.ConfigError) as raised:
        config.load(flags, {}, default_config="/nonexistent")
    assert raised.value.problems == [problem]


def test_swarm_yaml(tmp_path: Path) -> None:
    """The YAML section `swarm` takes url and poll (fractions allowed), and names bad keys."""
    good = tmp_path / "good.yaml"
    good.write_text("swarm:\n  url: tcp://127.0.0.1:2375\n  poll: 0.5\n")
    assert config.load({"config": str(good)}, {}).swarm == SwarmSettings("tcp://127.0.0.1:2375", 0.5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("swarm:\n  poll: true\n  pol: 1\n")
    assert config.check_file(str(bad)) == ["swarm.pol: unknown key",
                                           "swarm.poll: expected seconds from 0.2 to 3600, got true"]


# --- purity ------------------------------------------------------------------------------


def test_swarm_rules_are_pure() -> None:
    """Importing dockerdns.swarm loads no sockets, threads, clocks, docker, yaml or logging."""
    code = ("import sys; before = set(sys.modules); import dockerdns.swarm; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                cwd=Path(__file__).parent.parent).stdout.split())
    assert "dockerdns.swarm" in loaded
    assert not loaded & {"socket", "threading", "time", "docker", "yaml", "logging", "requests"}


# --- the source, without a manager ---------------------------------------------------------


def _app(url: str) -> App:
    return App(Settings(listen=(Address("127.0.0.1", 0),), forward=ForwardSettings(False, ()),
                        swarm=SwarmSettings(url=url)), docker=True)


def test_unreachable_manager_warns_once(caplog: pytest.LogCaptureFixture, wait_for: Callable[..., Any]) -> None:
    """A manager that cannot be reached is one warning however often it is retried; health says so."""
    caplog.set_level(logging.DEBUG, logger="dockerdns.swarm")
    app = _app("unix:///nonexistent/manager.sock")
    app.start()
    try:
        wait_for(lambda: app.swarm.attempts >= 4, timeout=5, what="four attempts")
        assert app.health()[1]["swarm"] == "not in sync"
    finally:
        app.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "dockerdns.swarm" and r.levelno >= logging.WARNING]
    assert warnings == ["swarm: cannot read the manager at unix:///nonexistent/manager.sock "
                        "(No such file or directory); retrying"]


def test_reload_turns_swarm_names_off() -> None:
    """A reload with swarm.url off stops the Swarm source; the docker source then publishes task containers."""
    app = _app("unix:///nonexistent/manager.sock")
    app.start()
    try:
        assert app.swarm is not None
        app.reload(replace(app.settings, swarm=SwarmSettings(url=SWARM_OFF)))
        assert app.swarm is None
        assert app.health()[1]["swarm"] == "off"
        assert not app.source._settings.swarm.enabled  # task containers are the docker source's again
    finally:
        app.stop()
