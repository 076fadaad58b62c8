"""End to end for health, SRV and wildcards: a real dockerdns fed by the real engine, asked by dnspython and dig.

Docker runs each health check inside its container (`test -f /tmp/ok`);
`touch` or `rm` of that file flips the container between healthy and
unhealthy. Every wait is a deadline on a condition (DESIGN.md, "Health",
"Ports (SRV)", "Wildcards"; issues 11 and 12, section Tests).
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from dockerdns.app import App
from dockerdns.config import Address, ForwardSettings, Settings
from tests.conftest import LABEL, PID_LABEL, unique_name

pytestmark = pytest.mark.docker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OK_FILE = "/tmp/ok"
CHECK_INTERVAL_NS = 500_000_000  # Docker's health check interval: 0.5 s
STUCK_NS = 600_000_000_000  # 600 s interval and start period: the container stays `starting`
HEALTH_DEADLINE = 20.0  # seconds for Docker to reach a health state on a loaded machine
ANSWER_DEADLINE = 5.0  # seconds for dockerdns to show a state Docker already reports
EVENT_TO_ANSWER = 3.0  # seconds from `health_status` to the answer (DESIGN: 100 ms; up to 1 s seen at load 11)


def checked(*, stuck: bool = False) -> dict[str, Any]:
    """A Docker health check `test -f /tmp/ok`: every 0.5 s, or (stuck) never within the test."""
    check: dict[str, Any] = {"test": ["CMD-SHELL", f"test -f {OK_FILE}"], "retries": 1}
    if stuck:
        check.update(interval=STUCK_NS, start_period=STUCK_NS)
    else:
        check.update(interval=CHECK_INTERVAL_NS, timeout=5_000_000_000)
    return check


def sleeper(ok: bool) -> list[str]:
    """The command of a checked container: with the check's file from the start (ok) or without."""
    return ["sh", "-c", f"touch {OK_FILE} && exec sleep 3600"] if ok else ["sleep", "3600"]


def compose(service: str, project: str, **extra: str) -> dict[str, str]:
    """The labels Compose gives a replica of `service` in `project`, plus `extra`."""
    return {"com.docker.compose.service": service, "com.docker.compose.project": project, **extra}


def health_of(container: Any) -> str:
    """Docker's State.Health.Status of `container`, or "none" without a check."""
    container.reload()
    return str((container.attrs["State"].get("Health") or {}).get("Status", "none"))


def ip_of(container: Any) -> str:
    """The container's address on the default bridge."""
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"])


def await_health(wait_for: Callable[..., Any], **expected: Any) -> None:
    """Wait until Docker reports each container (keyword = any tag) in its expected state."""
    pairs = list(expected.values())
    wait_for(lambda: all(health_of(c) == state for c, state in pairs), timeout=HEALTH_DEADLINE, interval=0.1,
             what="health " + ", ".join(f"{tag}={state}" for tag, (_, state) in expected.items()))


def query(server: tuple[str, int], name: str, qtype: str = "A") -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, qtype), server[0], port=server[1], timeout=3)


def addresses(server: tuple[str, int], name: str) -> list[str]:
    """The sorted A records the answer to `name A` holds."""
    msg = query(server, name)
    return sorted(rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def srv(server: tuple[str, int], name: str) -> tuple[list[tuple[int, str]], dict[str, list[str]]]:
    """(sorted (port, target) of the SRV answer, {target: sorted A} of the additional section)."""
    msg = query(server, name, "SRV")
    records = sorted((rd.port, rd.target.to_text()) for rrset in msg.answer
                     if rrset.rdtype == dns.rdatatype.SRV for rd in rrset)
    extra = {rrset.name.to_text(): sorted(rd.to_text() for rd in rrset) for rrset in msg.additional
             if rrset.rdtype == dns.rdatatype.A}
    return records, extra


def records_json() -> list[dict[str, Any]]:
    """The rows of `python3 -m dockerdns records --json`, run from this worktree."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "dockerdns", "records", "--json"], capture_output=True, text=True,
                         timeout=60, check=True, env=env).stdout
    return list(json.loads(out))


def health_column(rows: list[dict[str, Any]], container: Any) -> set[str]:
    """The `health` values of `container`'s rows."""
    return {row["health"] for row in rows if row["owner"] == container.name}


def connect_and_read(host: str, port: int, send: bytes = b"", deadline: float = 10.0) -> bytes:
    """Connect to host:port (retrying until the listener is up, within `deadline`), send, read to EOF."""
    end = time.monotonic() + deadline
    while True:
        try:
            with socket.create_connection((host, port), timeout=3) as sock:
                sock.sendall(send)
                chunks = []
                while chunk := sock.recv(4096):
                    chunks.append(chunk)
                data = b"".join(chunks)
            if data:
                return data
        except OSError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"nothing read from {host}:{port} within {deadline} s")
        time.sleep(0.05)  # a connect retry's pace, not a synchronisation


@pytest.fixture
def server(docker_client: Any, wait_for: Callable[..., Any]) -> Iterator[tuple[str, int]]:
    """A dockerdns App against the real engine on 127.0.0.1 (port chosen by the kernel), in sync."""
    app = App(Settings(listen=(Address("127.0.0.1", 0),), forward=ForwardSettings(False, ())))
    app.start()
    try:
        wait_for(lambda: app.source.in_sync, what="the first sync")
        host = [a for a in app.addresses() if a.host == "127.0.0.1"][0]
        yield host.host, host.port
    finally:
        app.stop()


@pytest.fixture
def make_exposed(docker_client: Any, busybox_image: str) -> Iterator[Callable[..., Any]]:
    """Factory: make_exposed(name, port, command, **kw) -> a started container with `--expose port` only.

    The high-level SDK cannot expose without publishing, so this creates
    through the low-level API (conftest's labels and names; removed at teardown).
    """
    made: list[str] = []

    def make(name: str, port: int, command: list[str], labels: dict[str, str] | None = None, **kw: Any) -> Any:
        host_config = docker_client.api.create_host_config(init=True)
        created = docker_client.api.create_container(
            busybox_image, command, name=unique_name(name), ports=[port], host_config=host_config,
            labels={LABEL: "1", PID_LABEL: str(os.getpid()), **(labels or {})}, **kw)
        made.append(created["Id"])
        docker_client.api.start(created["Id"])
        return docker_client.containers.get(created["Id"])

    yield make
    for cid in reversed(made):
        try:
            docker_client.api.remove_container(cid, force=True, v=True)
        except Exception:  # the test removed it already
            pass


# --- Health (DESIGN.md "Health", issue 11) ---------------------------------------------------------------------


def test_unhealthy_replica_left_out_of_the_service(server: tuple[str, int], make_container: Callable[..., Any],
                                                   wait_for: Callable[..., Any]) -> None:
    """One of two replicas unhealthy: the service answers the healthy one, the other's own name still answers."""
    project = unique_name("proj")
    good = make_container("good", command=sleeper(True), healthcheck=checked(), labels=compose("web", project))
    bad = make_container("bad", command=sleeper(False), healthcheck=checked(), labels=compose("web", project))
    good_ip, bad_ip = ip_of(good), ip_of(bad)
    await_health(wait_for, good=(good, "healthy"), bad=(bad, "unhealthy"))
    wait_for(lambda: addresses(server, f"web.{project}.docker") == [good_ip], timeout=ANSWER_DEADLINE,
             what="only the healthy replica")
    assert addresses(server, f"{bad.name}.docker") == [bad_ip]
    rows = records_json()
    assert health_column(rows, good) == {"healthy"} and health_column(rows, bad) == {"unhealthy"}
    assert {r["value"] for r in rows if r["name"] == f"web.{project}.docker." and r["type"] == "A"} \
        == {good_ip, bad_ip}  # the table lists both holders; the answer leaves one out


def test_health_event_reaches_the_answer(server: tuple[str, int], docker_client: Any,
                                         make_container: Callable[..., Any], wait_for: Callable[..., Any]) -> None:
    """`rm /tmp/ok` in the last healthy replica: after Docker's health_status event both are answered (fail open)."""
    project = unique_name("proj")
    good = make_container("good", command=sleeper(True), healthcheck=checked(), labels=compose("web", project))
    bad = make_container("bad", command=sleeper(False), healthcheck=checked(), labels=compose("web", project))
    good_ip, bad_ip = ip_of(good), ip_of(bad)
    both = sorted([good_ip, bad_ip])
    await_health(wait_for, good=(good, "healthy"), bad=(bad, "unhealthy"))
    wait_for(lambda: addresses(server, f"web.{project}.docker") == [good_ip], timeout=ANSWER_DEADLINE,
             what="only the healthy replica")

    events: queue.Queue[dict[str, Any]] = queue.Queue()
    stream = docker_client.events(decode=True, filters={"container": good.id, "type": "container"})

    def pump() -> None:
        try:
            for event in stream:
                events.put(event)
        except Exception:  # the stream was closed below
            pass

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert good.exec_run(["rm", OK_FILE]).exit_code == 0
        end = time.monotonic() + HEALTH_DEADLINE
        while True:
            try:
                event = events.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no health_status: unhealthy event within {HEALTH_DEADLINE} s") from None
            if event.get("status", event.get("Action")) == "health_status: unhealthy":
                break
    finally:
        stream.close()
    wait_for(lambda: addresses(server, f"web.{project}.docker") == both, timeout=EVENT_TO_ANSWER,
             what="both replicas after the event")

    assert bad.exec_run(["touch", OK_FILE]).exit_code == 0  # and back: the other replica alone is healthy
    wait_for(lambda: addresses(server, f"web.{project}.docker") == [bad_ip], timeout=HEALTH_DEADLINE,
             what="only the replica that became healthy")


def test_all_unhealthy_are_all_answered(server: tuple[str, int], make_container: Callable[..., Any],
                                        wait_for: Callable[..., Any]) -> None:
    """Both replicas unhealthy: the service answers both (fail open)."""
    project = unique_name("proj")
    one = make_container("one", command=sleeper(False), healthcheck=checked(), labels=compose("web", project))
    two = make_container("two", command=sleeper(False), healthcheck=checked(), labels=compose("web", project))
    await_health(wait_for, one=(one, "unhealthy"), two=(two, "unhealthy"))
    both = sorted([ip_of(one), ip_of(two)])
    wait_for(lambda: addresses(server, f"web.{project}.docker") == both, timeout=ANSWER_DEADLINE, what="both")
    assert health_of(one) == health_of(two) == "unhealthy"  # still, so the answer was given in that state


def test_starting_replica_steps_aside(server: tuple[str, int], make_container: Callable[..., Any],
                                      wait_for: Callable[..., Any]) -> None:
    """A `starting` replica steps aside for a replica without a health check; its own name answers."""
    project = unique_name("proj")
    starting = make_container("starting", healthcheck=checked(stuck=True), labels=compose("web", project))
    plain = make_container("plain", labels=compose("web", project))
    assert health_of(starting) == "starting" and health_of(plain) == "none"
    plain_ip = ip_of(plain)
    wait_for(lambda: addresses(server, f"web.{project}.docker") == [plain_ip], timeout=ANSWER_DEADLINE,
             what="only the replica without a check")
    assert addresses(server, f"{starting.name}.docker") == [ip_of(starting)]
    rows = records_json()
    assert health_column(rows, starting) == {"starting"} and health_column(rows, plain) == {"none"}
    assert health_of(starting) == "starting"  # still: the answers above saw it starting


def test_health_ignore_label(server: tuple[str, int], make_container: Callable[..., Any],
                             wait_for: Callable[..., Any]) -> None:
    """dockerdns.health=ignore: an unhealthy replica counts as one without a check and stays in the service."""
    project = unique_name("proj")
    good = make_container("good", command=sleeper(True), healthcheck=checked(), labels=compose("web", project))
    ignored = make_container("ignored", command=sleeper(False), healthcheck=checked(),
                             labels=compose("web", project, **{"dockerdns.health": "ignore"}))
    control = make_container("control", command=sleeper(False), healthcheck=checked(), labels=compose("web", project))
    await_health(wait_for, good=(good, "healthy"), ignored=(ignored, "unhealthy"), control=(control, "unhealthy"))
    # The unlabelled unhealthy control is left out only once dockerdns sees the healthy replica,
    # so this answer cannot be a fail-open moment that happens to include the ignored one.
    pair = sorted([ip_of(good), ip_of(ignored)])
    wait_for(lambda: addresses(server, f"web.{project}.docker") == pair,
             timeout=ANSWER_DEADLINE, what="the healthy and the ignored replica")
    rows = records_json()
    assert health_column(rows, ignored) == {"none"} and health_column(rows, control) == {"unhealthy"}


# --- Ports (SRV) (DESIGN.md "Ports (SRV)", issue 12) -----------------------------------------------------------


def greeter(make_container: Callable[..., Any]) -> Any:
    """A container publishing 5432/tcp (to a random host port) where busybox nc greets every client."""
    return make_container("pg", command=["nc", "-ll", "-p", "5432", "-e", "echo", "hello"], ports={"5432/tcp": None})


def dig(server: tuple[str, int], name: str, qtype: str) -> dict[str, list[list[str]]]:
    """dig's answer as {section: [fields of each record]}, plus "status" from the header."""
    out = subprocess.run(["dig", f"@{server[0]}", "-p", str(server[1]), name, qtype, "+time=3", "+tries=1"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    sections: dict[str, list[list[str]]] = {"status": [re.findall(r"status: (\w+)", out)]}
    current = ""
    for line in out.splitlines():
        header = re.fullmatch(r";; (\w+) SECTION:", line.strip())
        if header:
            current = header.group(1)
            sections[current] = []
        elif not line.strip():
            current = ""
        elif current and not line.startswith(";"):
            sections[current].append(line.split())
    return sections


def test_dig_srv_for_a_published_port(server: tuple[str, int], make_container: Callable[..., Any],
                                      wait_for: Callable[..., Any]) -> None:
    """dig SRV for a published port: the container's port (not the host's), the target's A in ADDITIONAL."""
    pg = greeter(make_container)
    name, ip = pg.name, ip_of(pg)
    owner, target = f"_5432._tcp.{name}.docker.", f"{name}.docker."
    got = wait_for(lambda: (d := dig(server, owner, "SRV"))["status"] == [["NOERROR"]] and d,
                   timeout=ANSWER_DEADLINE, what="the SRV answer")
    assert [(f[0], f[3], f[4:]) for f in got["ANSWER"]] == [(owner, "SRV", ["0", "0", "5432", target])]
    assert [(f[0], f[3], f[4]) for f in got.get("ADDITIONAL", []) if f[3] == "A"] == [(target, "A", ip)]
    host_port = pg.attrs["NetworkSettings"]["Ports"]["5432/tcp"][0]["HostPort"]
    if host_port != "5432":  # the host's port names nothing
        assert query(server, f"_{host_port}._tcp.{name}.docker", "SRV").rcode() == dns.rcode.NXDOMAIN
    rows = records_json()
    assert {"name": owner, "type": "SRV", "value": f"0 0 5432 {target}"} in \
        [{k: r[k] for k in ("name", "type", "value")} for r in rows if r["owner"] == name]


def test_python_client_connects_through_srv(server: tuple[str, int], make_container: Callable[..., Any],
                                            wait_for: Callable[..., Any]) -> None:
    """A client resolves the SRV record, then its target's A, and reads the listener's greeting on that port."""
    pg = greeter(make_container)
    owner = f"_5432._tcp.{pg.name}.docker"
    records, extra = wait_for(lambda: (s := srv(server, owner))[0] and s, timeout=ANSWER_DEADLINE, what="the SRV")
    [(port, target)] = records
    [address] = addresses(server, target)
    assert extra == {target: [address]}  # the additional section saved the client that second query
    assert connect_and_read(address, port) == b"hello\n"


def test_srv_label_names_the_service(server: tuple[str, int], make_container: Callable[..., Any],
                                     wait_for: Callable[..., Any]) -> None:
    """dockerdns.srv=web:8080 gives _web._tcp.<name>.docker on port 8080, where httpd answers; no _8080 name."""
    web = make_container("httpd", command=["httpd", "-f", "-p", "8080", "-h", "/"],
                         labels={"dockerdns.srv": "web:8080"})
    name = web.name
    records, _ = wait_for(lambda: (s := srv(server, f"_web._tcp.{name}.docker"))[0] and s, timeout=ANSWER_DEADLINE,
                          what="the labelled SRV")
    assert records == [(8080, f"{name}.docker.")]
    assert query(server, f"_8080._tcp.{name}.docker", "SRV").rcode() == dns.rcode.NXDOMAIN  # nothing exposed
    [address] = addresses(server, records[0][1])
    reply = connect_and_read(address, records[0][0], b"GET / HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.")


def test_srv_per_replica_follows_health(server: tuple[str, int], make_exposed: Callable[..., Any],
                                        wait_for: Callable[..., Any]) -> None:
    """Two replicas exposing 5432: one SRV each, pointing at its own name; an unhealthy one's SRV is left out."""
    project = unique_name("proj")
    one, two = (make_exposed(tag, 5432, sleeper(True), labels=compose("db", project), healthcheck=checked())
                for tag in ("one", "two"))
    assert one.attrs["Config"]["ExposedPorts"] == {"5432/tcp": {}} and not one.attrs["HostConfig"]["PortBindings"]
    await_health(wait_for, one=(one, "healthy"), two=(two, "healthy"))
    owner = f"_5432._tcp.db.{project}.docker"
    both = sorted([(5432, f"{one.name}.docker."), (5432, f"{two.name}.docker.")])
    records, extra = wait_for(lambda: (s := srv(server, owner))[0] == both and s, timeout=ANSWER_DEADLINE,
                              what="one SRV per replica")
    one_ip = ip_of(one)
    assert extra == {f"{one.name}.docker.": [one_ip], f"{two.name}.docker.": [ip_of(two)]}

    assert two.exec_run(["rm", OK_FILE]).exit_code == 0
    wait_for(lambda: srv(server, owner) == ([(5432, f"{one.name}.docker.")], {f"{one.name}.docker.": [one_ip]}),
             timeout=HEALTH_DEADLINE, what="only the healthy replica's SRV")
    assert srv(server, f"_5432._tcp.{two.name}.docker")[0] == [(5432, f"{two.name}.docker.")]  # its own name


# --- Wildcards (DESIGN.md "Wildcards", RFC 4592) ---------------------------------------------------------------


def test_wildcard_alias(server: tuple[str, int], make_container: Callable[..., Any],
                        wait_for: Callable[..., Any]) -> None:
    """*.<u> answers any depth below <u>.docker with the query name as owner; <u> is NODATA; api.<u> blocks."""
    zone = unique_name("wild")
    proxy = make_container("proxy", labels={"dockerdns.aliases": f"*.{zone}"})
    ip = ip_of(proxy)
    wait_for(lambda: addresses(server, f"x.{zone}.docker") == [ip], timeout=ANSWER_DEADLINE, what="the wildcard")
    for qname in (f"x.{zone}.docker.", f"a.b.{zone}.docker."):
        msg = query(server, qname)
        assert msg.rcode() == dns.rcode.NOERROR
        assert [(rrset.name, rrset.rdtype, [rd.to_text() for rd in rrset]) for rrset in msg.answer] \
            == [(dns.name.from_text(qname), dns.rdatatype.A, [ip])]
    for qname, qtype in ((f"{zone}.docker", "A"), (f"x.{zone}.docker", "AAAA")):
        msg = query(server, qname, qtype)  # the parent is an empty non-terminal; the wildcard holds no AAAA
        assert (msg.rcode(), msg.answer) == (dns.rcode.NOERROR, [])
        assert [rrset.rdtype for rrset in msg.authority] == [dns.rdatatype.SOA]

    api = make_container("api", labels={"dockerdns.aliases": f"api.{zone}"})
    api_ip = ip_of(api)
    wait_for(lambda: addresses(server, f"api.{zone}.docker") == [api_ip], timeout=ANSWER_DEADLINE,
             what="the existing name")
    assert query(server, f"x.api.{zone}.docker").rcode() == dns.rcode.NXDOMAIN  # the closest encloser is api.<u>
    assert addresses(server, f"other.{zone}.docker") == [ip]
    rows = records_json()
    assert {(r["name"], r["type"], r["value"]) for r in rows if r["owner"] == proxy.name} \
        >= {(f"*.{zone}.docker.", "A", ip)}
