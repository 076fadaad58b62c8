"""End to end: a real dockerdns fed by the real engine, asked by dnspython and by containers."""

from __future__ import annotations

import ipaddress
import json
import queue
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dns.message
import docker.types
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from dockerdns.app import App
from dockerdns.config import Address, ForwardSettings, Settings

pytestmark = pytest.mark.docker


@dataclass
class Running:
    app: App
    host: tuple[str, int]  # loopback address, for queries from the host
    bridge: tuple[str, int]  # the bridge gateway address, for queries from containers


@pytest.fixture
def dockerdns(docker_client: Any, wait_for: Callable[..., Any]) -> Iterator[Running]:
    settings = Settings(
        listen=(Address("127.0.0.1", 0), Address("bridge", 0)),
        forward=ForwardSettings(False, ()),
    )
    app = App(settings)
    app.start()
    try:
        wait_for(lambda: app.source.in_sync, what="the first sync")
        bridge = wait_for(lambda: [a for a in app.addresses() if a.host != "127.0.0.1"], what="the bridge address")
        host = [a for a in app.addresses() if a.host == "127.0.0.1"][0]
        yield Running(app, (host.host, host.port), (bridge[0].host, bridge[0].port))
    finally:
        app.stop()


def query(server: tuple[str, int], name: str, qtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, qtype), server[0], port=server[1], timeout=3)


def addresses(server: tuple[str, int], name: str, qtype: str = "A") -> list[str]:
    msg = query(server, name, qtype)
    rdtype = dns.rdatatype.from_text(qtype)
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype == rdtype)


def ip_on(container: Any, network: str) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def name_of(container: Any) -> str:
    return str(container.name)


def nslookup(container: Any, name: str, server: tuple[str, int]) -> list[str]:
    """The addresses busybox's nslookup inside `container` gets for `name` from `server`."""
    code, out = container.exec_run(["nslookup", "-type=a", name, f"{server[0]}:{server[1]}"])
    text = out.decode()
    answers = text.split("Name:", 1)[1] if "Name:" in text else ""
    return sorted(re.findall(r"Address:\s*([0-9.]+)", answers))


def test_every_name_form(dockerdns: Running, make_network: Callable[..., Any],
                         make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """Container name, hostname, short id, name.network, aliases, compose service, PTR and single label."""
    net = make_network("front")
    web = make_container("web", hostname="webhost", network=net.name,
                         labels={"com.docker.compose.service": "api", "com.docker.compose.project": "shop"})
    other = make_network("back")
    other.connect(web, aliases=["svc"])
    ip = ip_on(web, net.name)
    back_ip = ip_on(web, other.name)
    name = name_of(web)
    both = sorted([ip, back_ip])
    wait_for(lambda: addresses(dockerdns.host, f"{name}.docker") == both, what="the container's name")
    assert addresses(dockerdns.host, "webhost.docker") == both
    assert addresses(dockerdns.host, f"{web.id[:12]}.docker") == both
    assert addresses(dockerdns.host, f"{name}.{net.name}.docker") == [ip]
    assert addresses(dockerdns.host, f"{name}.{other.name}.docker") == [back_ip]
    assert addresses(dockerdns.host, "svc.docker") == [back_ip]
    assert addresses(dockerdns.host, f"svc.{other.name}.docker") == [back_ip]
    assert addresses(dockerdns.host, "api.shop.docker") == both
    assert addresses(dockerdns.host, name) == both  # a single label, as in the zone
    ptr = query(dockerdns.host, dns.reversename.from_address(ip).to_text(), "PTR")
    assert [rd.to_text() for rrset in ptr.answer for rd in rrset] == [f"{name}.docker."]


def test_restart_gets_new_address(dockerdns: Running, make_network: Callable[..., Any],
                                  make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """The database restarts with a new address; the next answers carry it, the gap is NXDOMAIN with TTL <= 1."""
    # A subnet of our own, so that the squatter may take the old address by --ip.
    subnet = f"10.231.{random.randrange(256)}.0/24"
    net = make_network("app", ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]))
    db = make_container("db", network=net.name)
    app = make_container("app", network=net.name)
    old = ip_on(db, net.name)
    db_name = name_of(db)
    wait_for(lambda: nslookup(app, f"{db_name}.docker", dockerdns.bridge) == [old], what="db from the app")

    db.stop(timeout=0)
    gap = wait_for(lambda: (m := query(dockerdns.host, f"{db_name}.docker")).rcode() == dns.rcode.NXDOMAIN and m,
                   what="NXDOMAIN after the stop")
    assert gap.authority and all(rrset.ttl <= 1 for rrset in gap.authority)

    squatter = make_container("squatter", start=False)
    net.connect(squatter, ipv4_address=old)
    squatter.start()
    db.start()
    new = ip_on(db, net.name)
    assert new != old
    found = wait_for(lambda: addresses(dockerdns.host, f"{db_name}.docker") == [new], timeout=5,
                     what="the new address")
    assert found
    assert nslookup(app, db_name, dockerdns.bridge) == [new]


def test_stop_and_remove(dockerdns: Running, make_container: Callable[..., Any],
                         wait_for: Callable[..., Any]) -> None:
    """A stopped container's names answer NXDOMAIN; so do a removed one's."""
    c = make_container("gone")
    name = name_of(c)
    wait_for(lambda: addresses(dockerdns.host, f"{name}.docker"), what="the name")
    c.stop(timeout=0)
    wait_for(lambda: query(dockerdns.host, f"{name}.docker").rcode() == dns.rcode.NXDOMAIN, what="NXDOMAIN")
    c.start()
    wait_for(lambda: addresses(dockerdns.host, f"{name}.docker"), what="the name again")
    c.remove(force=True)
    wait_for(lambda: query(dockerdns.host, f"{name}.docker").rcode() == dns.rcode.NXDOMAIN, what="NXDOMAIN")


def test_rename(dockerdns: Running, make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """After a rename the new name answers and the old one does not."""
    c = make_container("before")
    old = name_of(c)
    wait_for(lambda: addresses(dockerdns.host, f"{old}.docker"), what="the old name")
    new = old.replace("before", "after")
    c.rename(new)
    wait_for(lambda: addresses(dockerdns.host, f"{new}.docker"), what="the new name")
    assert query(dockerdns.host, f"{old}.docker").rcode() == dns.rcode.NXDOMAIN


def test_network_connect_disconnect(dockerdns: Running, make_network: Callable[..., Any],
                                    make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """Connecting a network adds name.network; disconnecting removes it."""
    c = make_container("roam")
    net = make_network("extra")
    name = name_of(c)
    wait_for(lambda: addresses(dockerdns.host, f"{name}.docker"), what="the name")
    net.connect(c)
    ip = ip_on(c, net.name)
    wait_for(lambda: addresses(dockerdns.host, f"{name}.{net.name}.docker") == [ip], what="name.network")
    net.disconnect(c)
    wait_for(lambda: query(dockerdns.host, f"{name}.{net.name}.docker").rcode() == dns.rcode.NXDOMAIN,
             what="name.network gone")
    assert ip not in addresses(dockerdns.host, f"{name}.docker")


def test_source_aware_from_a_container(dockerdns: Running, make_network: Callable[..., Any],
                                       make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """A client on one of two networks gets only the address on its own network."""
    n1, n2 = make_network("one"), make_network("two")
    web = make_container("multi", network=n1.name)
    n2.connect(web)
    client = make_container("client", network=n2.name)
    ip1, ip2 = ip_on(web, n1.name), ip_on(web, n2.name)
    name = name_of(web)
    wait_for(lambda: addresses(dockerdns.host, f"{name}.docker") == sorted([ip1, ip2]), what="both addresses")
    assert nslookup(client, f"{name}.docker", dockerdns.bridge) == [ip2]


def test_ignored_label(dockerdns: Running, make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """dockerdns.ignore=true publishes nothing; its neighbour still does."""
    hidden = make_container("hidden", labels={"dockerdns.ignore": "true"})
    shown = make_container("shown")
    wait_for(lambda: addresses(dockerdns.host, f"{name_of(shown)}.docker"), what="the neighbour")
    assert query(dockerdns.host, f"{name_of(hidden)}.docker").rcode() == dns.rcode.NXDOMAIN


def test_container_uses_it_through_dns_option(docker_client: Any, make_container: Callable[..., Any],
                                              wait_for: Callable[..., Any]) -> None:
    """A container started with --dns <bridge gateway> resolves other containers by name on port 53."""
    app = App(Settings(listen=(Address("bridge", 53),), forward=ForwardSettings(False, ())))
    app.start()
    try:
        gateway = wait_for(lambda: app.addresses(), what="the bridge address on port 53")[0].host
        db = make_container("dnsdb")
        client = make_container("dnsapp", dns=[gateway])
        ip = ip_on(db, "bridge")

        def resolves() -> bool:
            code, out = client.exec_run(["nslookup", "-type=a", f"{name_of(db)}.docker"])
            return ip in out.decode()

        wait_for(resolves, what="nslookup through --dns")
        assert ipaddress.ip_address(gateway) in ipaddress.ip_network("172.16.0.0/12")
    finally:
        app.stop()


def test_records_command(make_container: Callable[..., Any]) -> None:
    """`dockerdns records --json` lists a running container's name with its owner."""
    c = make_container("listed")
    out = subprocess.run([sys.executable, "-m", "dockerdns", "records", "--json"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    rows = json.loads(out)
    mine = [r for r in rows if r["owner"] == name_of(c)]
    assert {"name": f"{name_of(c)}.docker.", "type": "A", "value": ip_on(c, "bridge"), "ttl": 1,
            "owner": name_of(c), "health": "none"} in mine
    text = subprocess.run([sys.executable, "-m", "dockerdns", "records"], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert text.splitlines()[0].split() == ["NAME", "TYPE", "VALUE", "TTL", "CONTAINER", "HEALTH"]


def test_records_command_without_docker() -> None:
    """`dockerdns records` with Docker unreachable: exit 1 and one clear line."""
    proc = subprocess.run([sys.executable, "-m", "dockerdns", "records", "--docker-url", "unix:///nonexistent.sock"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_records_watch_shows_changes(make_container: Callable[..., Any]) -> None:
    """`dockerdns records --watch --json` prints a container's records as it starts, and again as it goes."""
    proc = subprocess.Popen([sys.executable, "-m", "dockerdns", "records", "--watch", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        stdout = proc.stdout
        assert stdout is not None
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

        def next_change(name: str, sign: str) -> dict[str, Any]:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    row = json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
                if row["name"] == name and row["type"] == "A" and row["change"] == sign:
                    return dict(row)
            raise AssertionError(f"no {sign} line for {name}")

        c = make_container("watched")
        added = next_change(f"{name_of(c)}.docker.", "+")
        assert added["value"] == ip_on(c, "bridge") and added["owner"] == name_of(c)
        c.stop(timeout=0)
        assert next_change(f"{name_of(c)}.docker.", "-")["owner"] == name_of(c)
    finally:
        proc.kill()
        proc.wait()
