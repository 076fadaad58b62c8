"""Naming rules, from `docker inspect` fixtures captured on a real engine.

Expected records are zone text ("name ttl IN type value"), compared as sorted
lists. The ids and default-bridge addresses below are the captured ones:
after re-running tests/fixtures/capture.sh, update them here.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from dockerdns import naming
from dockerdns.config import Settings
from dockerdns.naming import (MAX_ALIASES, Ignored, NotRunning, Published, State, netns_owner_id,
                              records_for_container, state)
from dockerdns.records import is_valid_name
from dockerdns.table import RecordTable

FIXTURES = Path(__file__).parent / "fixtures" / "inspect"

# Captured ids (Id[:12]) and full ids where a test needs them.
NETNS_OWNER_ID = "bc2ed80b6bd675b3334be52ca868c4410cd2f8281e99a0ef5a4c603e0d6af21b"


def load(name: str) -> dict[str, Any]:
    """A fresh copy of fixture `name` (tests may edit it)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def with_labels(name: str, **labels: str) -> dict[str, Any]:
    """Fixture `name` with labels added (dotted keys spelled with "__" for ".")."""
    data = load(name)
    data["Config"]["Labels"] = dict(data["Config"]["Labels"] or {})
    for key, value in labels.items():
        data["Config"]["Labels"][key.replace("__", ".")] = value
    return data


def zone(published: Published | Ignored | NotRunning) -> list[str]:
    return sorted(f"{r.name} {r.ttl} IN {r.rtype} {r.value}" for r in published.records)


def publish(data: dict[str, Any], owner: dict[str, Any] | None = None,
            **overrides: Any) -> Published | Ignored | NotRunning:
    return records_for_container(data, Settings(**{"ttl": 5, **overrides}), owner)


# --- the captured fixtures --------------------------------------------------------------------

PLAIN = [
    "2.0.17.172.in-addr.arpa. 5 IN PTR dnsfix-plain.docker.",
    "9c4549caa28c.docker. 5 IN A 172.17.0.2",
    "dnsfix-plain.bridge.docker. 5 IN A 172.17.0.2",
    "dnsfix-plain.docker. 5 IN A 172.17.0.2",
]
HOSTNAME = [
    "3.0.17.172.in-addr.arpa. 5 IN PTR dnsfix-hostname.docker.",
    "dnsfix-hostname.bridge.docker. 5 IN A 172.17.0.3",
    "dnsfix-hostname.docker. 5 IN A 172.17.0.3",
    "ef5058910fed.docker. 5 IN A 172.17.0.3",
    "web1.docker. 5 IN A 172.17.0.3",
]
TWO_NETWORKS = [
    "10.10.30.172.in-addr.arpa. 5 IN PTR dnsfix-twonets.docker.",
    "10.20.30.172.in-addr.arpa. 5 IN PTR dnsfix-twonets.docker.",
    "1a53a38709d0.docker. 5 IN A 172.30.10.10",
    "1a53a38709d0.docker. 5 IN A 172.30.20.10",
    "dnsfix-twonets.dnsfix-back.docker. 5 IN A 172.30.20.10",
    "dnsfix-twonets.dnsfix-front.docker. 5 IN A 172.30.10.10",
    "dnsfix-twonets.docker. 5 IN A 172.30.10.10",
    "dnsfix-twonets.docker. 5 IN A 172.30.20.10",
]
ALIASES = [
    "20.10.30.172.in-addr.arpa. 5 IN PTR dnsfix-aliases.docker.",
    "20.20.30.172.in-addr.arpa. 5 IN PTR dnsfix-aliases.docker.",
    "584d8f977813.docker. 5 IN A 172.30.10.20",
    "584d8f977813.docker. 5 IN A 172.30.20.20",
    "api-internal.dnsfix-back.docker. 5 IN A 172.30.20.20",
    "api-internal.docker. 5 IN A 172.30.20.20",
    "api-v2.dnsfix-front.docker. 5 IN A 172.30.10.20",
    "api-v2.docker. 5 IN A 172.30.10.20",
    "api.dnsfix-front.docker. 5 IN A 172.30.10.20",
    "api.docker. 5 IN A 172.30.10.20",
    "dnsfix-aliases.dnsfix-back.docker. 5 IN A 172.30.20.20",
    "dnsfix-aliases.dnsfix-front.docker. 5 IN A 172.30.10.20",
    "dnsfix-aliases.docker. 5 IN A 172.30.10.20",
    "dnsfix-aliases.docker. 5 IN A 172.30.20.20",
]
COMPOSE_DB_1 = [
    "2.40.30.172.in-addr.arpa. 5 IN PTR dnsfix-compose_db_1.docker.",
    "db.dnsfix-compose.docker. 5 IN A 172.30.40.2",
    "db.dnsfix-compose_default.docker. 5 IN A 172.30.40.2",
    "db.docker. 5 IN A 172.30.40.2",
    "dnsfix-compose_db_1.dnsfix-compose_default.docker. 5 IN A 172.30.40.2",
    "dnsfix-compose_db_1.docker. 5 IN A 172.30.40.2",
    "f137cf59be6f.docker. 5 IN A 172.30.40.2",
]
COMPOSE_DB_2 = [
    "3.40.30.172.in-addr.arpa. 5 IN PTR dnsfix-compose_db_2.docker.",
    "ac5977bfd0cb.docker. 5 IN A 172.30.40.3",
    "db.dnsfix-compose.docker. 5 IN A 172.30.40.3",
    "db.dnsfix-compose_default.docker. 5 IN A 172.30.40.3",
    "db.docker. 5 IN A 172.30.40.3",
    "dnsfix-compose_db_2.dnsfix-compose_default.docker. 5 IN A 172.30.40.3",
    "dnsfix-compose_db_2.docker. 5 IN A 172.30.40.3",
]
IPV6 = [
    "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.d.0.0.0.0.d.f.ip6.arpa. 5 IN PTR dnsfix-ipv6.docker.",
    "0f1a6fdfa18f.docker. 5 IN A 172.30.30.10",
    "0f1a6fdfa18f.docker. 5 IN AAAA fd00:dd::10",
    "10.30.30.172.in-addr.arpa. 5 IN PTR dnsfix-ipv6.docker.",
    "dnsfix-ipv6.dnsfix-v6.docker. 5 IN A 172.30.30.10",
    "dnsfix-ipv6.dnsfix-v6.docker. 5 IN AAAA fd00:dd::10",
    "dnsfix-ipv6.docker. 5 IN A 172.30.30.10",
    "dnsfix-ipv6.docker. 5 IN AAAA fd00:dd::10",
]
LABELS = [
    "30.10.30.172.in-addr.arpa. 30 IN PTR web.docker.",
    "93dcbfc0b397.docker. 30 IN A 172.30.10.30",
    "shop.docker. 30 IN A 172.30.10.30",
    "web.dnsfix-front.docker. 30 IN A 172.30.10.30",
    "web.docker. 30 IN A 172.30.10.30",
    "www.docker. 30 IN A 172.30.10.30",
]
NETNS_OWNER = [
    "40.10.30.172.in-addr.arpa. 5 IN PTR dnsfix-netns-owner.docker.",
    "bc2ed80b6bd6.docker. 5 IN A 172.30.10.40",
    "dnsfix-netns-owner.dnsfix-front.docker. 5 IN A 172.30.10.40",
    "dnsfix-netns-owner.docker. 5 IN A 172.30.10.40",
]
NETNS = [
    "7a695839a501.docker. 5 IN A 172.30.10.40",
    "dnsfix-netns.dnsfix-front.docker. 5 IN A 172.30.10.40",
    "dnsfix-netns.docker. 5 IN A 172.30.10.40",
]
PAUSED = [
    "50.10.30.172.in-addr.arpa. 5 IN PTR dnsfix-paused.docker.",
    "dnsfix-paused.dnsfix-front.docker. 5 IN A 172.30.10.50",
    "dnsfix-paused.docker. 5 IN A 172.30.10.50",
    "e6034113e7ec.docker. 5 IN A 172.30.10.50",
]
HOSTNAME_OFF = "hostname.domainname 'web1.example.test.': outside the zone docker.; external_names is off"
STATIC_OFF = "dockerdns.aliases 'static.example.test.': outside the zone docker.; external_names is off"

CASES: list[tuple[str, dict[str, Any], list[str], list[str]]] = [
    # fixture, settings overrides, expected zone text, expected warnings
    ("plain", {}, PLAIN, []),
    ("hostname", {}, HOSTNAME, [HOSTNAME_OFF]),
    ("hostname", {"external_names": True}, HOSTNAME + ["web1.example.test. 5 IN A 172.17.0.3"], []),
    ("two-networks", {}, TWO_NETWORKS, []),
    ("aliases", {}, ALIASES, []),
    ("compose-db-1", {}, COMPOSE_DB_1, []),
    ("compose-db-2", {}, COMPOSE_DB_2, []),
    ("ipv6", {}, IPV6, []),
    ("labels", {}, LABELS, [STATIC_OFF]),
    ("labels", {"external_names": True}, LABELS + ["static.example.test. 30 IN A 172.30.10.30"], []),
    ("netns-owner", {}, NETNS_OWNER, []),
    ("paused", {}, PAUSED, []),
    ("host", {}, [], []),
    ("none", {}, [], []),
    ("plain", {"ttl": 60}, [line.replace(" 5 IN ", " 60 IN ") for line in PLAIN], []),
    ("plain", {"domain": "internal"}, [line.replace(".docker.", ".internal.") for line in PLAIN], []),
]


@pytest.mark.parametrize(
    "fixture, overrides, expected, warnings",
    CASES,
    ids=[f"{c[0]}{'-' + '-'.join(f'{k}={v}' for k, v in c[1].items()) if c[1] else ''}" for c in CASES],
)
def test_fixture(fixture: str, overrides: dict[str, Any], expected: list[str], warnings: list[str]) -> None:
    """A captured container publishes exactly the expected zone text and warnings."""
    published = publish(load(fixture), **overrides)
    assert zone(published) == sorted(expected)
    assert list(published.warnings) == warnings
    assert isinstance(published, Published)


def test_stopped_and_ignored_publish_nothing_for_different_reasons() -> None:
    """A stopped container is NotRunning, one labelled dockerdns.ignore=true is Ignored: two outcomes, two types."""
    assert publish(load("stopped")) == NotRunning(State.STOPPED)
    assert publish(load("ignored")) == Ignored("true")


def state_of(fixture: str, **fields: Any) -> dict[str, Any]:
    data = load(fixture)
    data["State"] = {**data["State"], **fields}
    return data


@pytest.mark.parametrize(
    "data, expected",
    [
        (load("plain"), State.RUNNING),
        (load("paused"), State.PAUSED),
        (load("stopped"), State.STOPPED),
        (state_of("plain", Restarting=True), State.RESTARTING),
        (state_of("plain", Running="true"), State.STOPPED),
        ({"State": None}, State.STOPPED),
        ({}, State.STOPPED),
    ],
)
def test_state(data: dict[str, Any], expected: State) -> None:
    """One reading of State: paused publishes, restarting is listed by Docker but does not publish."""
    assert state(data) is expected
    assert expected.publishes == (expected in (State.RUNNING, State.PAUSED))
    assert expected.listed == (expected is not State.STOPPED)


def test_netns_child_uses_owner_addresses_without_ptr() -> None:
    """`--network container:<other>` publishes its own names with the owner's addresses, and no PTR."""
    published = publish(load("netns"), load("netns-owner"))
    assert zone(published) == sorted(NETNS)
    assert published.warnings == ()
    assert {r.owner_name for r in published.records} == {"dnsfix-netns"}


def test_netns_child_skips_inherited_hostname() -> None:
    """Docker copies the owner's hostname (its short id) into the child; it is not published for the child."""
    data = load("netns")
    assert data["Config"]["Hostname"] == "bc2ed80b6bd6"
    names = {r.name for r in publish(data, load("netns-owner")).records}
    assert "bc2ed80b6bd6.docker." not in names


def test_netns_child_without_owner_publishes_nothing() -> None:
    """Without the owner's inspect data a namespace child has no addresses: no records, no warnings."""
    assert publish(load("netns")) == Published(())


def test_netns_child_of_stopped_owner_publishes_nothing() -> None:
    """A namespace owner that is not running lends no addresses."""
    owner = load("netns-owner")
    owner["State"]["Running"] = False
    assert publish(load("netns"), owner) == Published(())


@pytest.mark.parametrize(
    "mode, expected",
    [
        (f"container:{NETNS_OWNER_ID}", NETNS_OWNER_ID),
        ("container:db", "db"),
        ("container:", None),
        ("default", None),
        ("host", None),
        ("none", None),
        ("dnsfix-front", None),
    ],
)
def test_netns_owner_id(mode: str, expected: str | None) -> None:
    """netns_owner_id returns what follows "container:" in NetworkMode (an id or a name), else None."""
    data = load("plain")
    data["HostConfig"]["NetworkMode"] = mode
    assert netns_owner_id(data) == expected


def test_netns_owner_id_of_captured_child() -> None:
    """Docker stores the owner's full id in the child's NetworkMode even when a name was given."""
    assert netns_owner_id(load("netns")) == NETNS_OWNER_ID
    assert netns_owner_id(load("netns-owner")) is None


def test_compose_replicas_share_service_name() -> None:
    """Both replicas claim <service>.<project>.docker; the table answers with both addresses."""
    table = RecordTable()
    for fixture in ("compose-db-1", "compose-db-2"):
        data = load(fixture)
        table.replace(data["Id"], publish(data).records)
    rrsets = table.snapshot.names["db.dnsfix-compose.docker."]
    assert sorted(r.value for r in rrsets["A"]) == ["172.30.40.2", "172.30.40.3"]


def test_records_carry_owner_network_and_subnet() -> None:
    """A/AAAA records carry the network name and its subnet; every record carries the owner id and name."""
    data = load("ipv6")
    published = publish(data)
    for rec in published.records:
        assert (rec.owner, rec.owner_name) == (data["Id"], "dnsfix-ipv6")
    tags = {(r.rtype, r.value, r.network, r.subnet) for r in published.records if r.rtype != "PTR"}
    assert tags == {
        ("A", "172.30.30.10", "dnsfix-v6", "172.30.30.0/24"),
        ("AAAA", "fd00:dd::10", "dnsfix-v6", "fd00:dd::/64"),
    }
    ptr = [r for r in published.records if r.rtype == "PTR"]
    assert all(r.network is None and r.subnet is None for r in ptr)


def test_network_name_gets_only_that_networks_address() -> None:
    """<name>.<network>.docker holds only the address on that network, tagged with it."""
    published = publish(load("two-networks"))
    front = [r for r in published.records if r.name == "dnsfix-twonets.dnsfix-front.docker."]
    assert [(r.value, r.network, r.subnet) for r in front] == [("172.30.10.10", "dnsfix-front", "172.30.10.0/24")]


def test_output_is_sorted_and_deterministic() -> None:
    """Records come out sorted by (name, type, value), the same however the networks are ordered."""
    data = load("aliases")
    nets = data["NetworkSettings"]["Networks"]
    data["NetworkSettings"]["Networks"] = dict(reversed(list(nets.items())))
    records = publish(data).records
    assert records == publish(load("aliases")).records
    assert list(records) == sorted(records, key=lambda r: (r.name, r.rtype, r.value))


# --- names: primary, hostname, aliases -------------------------------------------------------


def test_dockerdns_name_replaces_container_name_everywhere() -> None:
    """dockerdns.name replaces the container name in <name>.docker, <name>.<network>.docker and PTR."""
    published = publish(with_labels("aliases", dockerdns__name="svc"))
    names = {r.name for r in published.records}
    assert "svc.docker." in names and "svc.dnsfix-front.docker." in names
    # The container name Docker repeats among the network aliases does not bring it back.
    assert not any(n.startswith("dnsfix-aliases.") for n in names)
    assert {r.value for r in published.records if r.rtype == "PTR"} == {"svc.docker."}
    assert {r.owner_name for r in published.records} == {"dnsfix-aliases"}


def test_docker_added_aliases_are_not_published_per_network() -> None:
    """The short id Docker adds to every network's aliases gives no <short id>.<network>.docker name."""
    names = {r.name for r in publish(load("aliases")).records}
    assert "584d8f977813.dnsfix-front.docker." not in names
    assert "584d8f977813.docker." in names


@pytest.mark.parametrize(
    "label, warning",
    [
        ("bad name", "dockerdns.name 'bad name': not a valid relative DNS name; using 'dnsfix-plain'"),
        ("web.", "dockerdns.name 'web.': not a valid relative DNS name; using 'dnsfix-plain'"),
        ("a..b", "dockerdns.name 'a..b': not a valid relative DNS name; using 'dnsfix-plain'"),
        ("x" * 64, f"dockerdns.name '{'x' * 64}': not a valid relative DNS name; using 'dnsfix-plain'"),
    ],
)
def test_invalid_dockerdns_name_falls_back_to_container_name(label: str, warning: str) -> None:
    """An invalid dockerdns.name is skipped with one warning and the container name is used."""
    published = publish(with_labels("plain", dockerdns__name=label))
    assert zone(published) == PLAIN
    assert published.warnings == (warning,)


def test_empty_dockerdns_name_is_unset() -> None:
    """An empty dockerdns.name label means the container name, silently."""
    assert publish(with_labels("plain", dockerdns__name="  ")) == publish(load("plain"))


def test_dockerdns_name_is_lower_cased() -> None:
    """Names are absolute and lower-case whatever case the label uses."""
    published = publish(with_labels("plain", dockerdns__name="Web"))
    assert "web.docker. 5 IN A 172.17.0.2" in zone(published)
    assert "2.0.17.172.in-addr.arpa. 5 IN PTR web.docker." in zone(published)


def test_invalid_container_name_points_ptr_at_short_id() -> None:
    """A container name that is no DNS name is skipped with one warning; PTR then names <short id>.docker."""
    data = load("plain")
    data["Name"] = "/db-"
    published = publish(data)
    assert zone(published) == [
        "2.0.17.172.in-addr.arpa. 5 IN PTR 9c4549caa28c.docker.",
        "9c4549caa28c.docker. 5 IN A 172.17.0.2",
    ]
    assert published.warnings == ("container name 'db-': not a valid DNS name",)


def test_hostname_inside_zone_needs_no_external_names() -> None:
    """--domainname equal to the zone gives <hostname>.docker., which is inside the zone: no warning."""
    data = load("hostname")
    data["Config"]["Domainname"] = "docker"
    published = publish(data)
    assert zone(published) == HOSTNAME
    assert published.warnings == ()


def test_domainname_with_default_hostname() -> None:
    """--domainname alone publishes <short id>.<domainname>. with external_names, not <short id> as a hostname."""
    data = load("plain")
    data["Config"]["Domainname"] = "example.test"
    published = publish(data, external_names=True)
    assert zone(published) == sorted(PLAIN + ["9c4549caa28c.example.test. 5 IN A 172.17.0.2"])


def test_invalid_hostname_is_skipped_with_a_warning() -> None:
    """A hostname that is no DNS name is skipped with one warning."""
    data = load("plain")
    data["Config"]["Hostname"] = "web_1-"
    published = publish(data, external_names=True)
    assert zone(published) == PLAIN
    assert published.warnings == ("hostname 'web_1-': not a valid DNS name",)


def test_dockerdns_aliases_parsing() -> None:
    """dockerdns.aliases: commas split, spaces around items and empty items ignored, repeats merged."""
    published = publish(with_labels("plain", dockerdns__aliases=" a ,b,, ,A,  c.d  ,"))
    names = {r.name for r in published.records if r.rtype == "A"}
    assert {"a.docker.", "b.docker.", "c.d.docker."} <= names
    assert published.warnings == ()
    assert len([r for r in published.records if r.name == "a.docker."]) == 1


def test_alias_equal_to_primary_is_deduplicated() -> None:
    """A label alias repeating a name already published adds no duplicate record."""
    published = publish(with_labels("plain", dockerdns__aliases="dnsfix-plain,9c4549caa28c"))
    assert zone(published) == PLAIN


def test_absolute_alias_inside_zone_is_allowed() -> None:
    """An absolute alias inside the zone needs no external_names."""
    published = publish(with_labels("plain", dockerdns__aliases="x.docker."))
    assert "x.docker. 5 IN A 172.17.0.2" in zone(published)
    assert published.warnings == ()


@pytest.mark.parametrize(
    "aliases, warnings",
    [
        ("bad name", ["dockerdns.aliases 'bad name': not a valid DNS name"]),
        (".web", ["dockerdns.aliases '.web': not a valid DNS name"]),
        ("a..b", ["dockerdns.aliases 'a..b': not a valid DNS name"]),
        (".", ["dockerdns.aliases '.': not a valid DNS name"]),
        ("-web", ["dockerdns.aliases '-web': not a valid DNS name"]),
        ("*", ["dockerdns.aliases '*': a wildcard for the whole zone cannot be claimed; skipped"]),
        ("x" * 64, [f"dockerdns.aliases '{'x' * 64}': not a valid DNS name"]),
        (".".join(["x"] * 125), [f"dockerdns.aliases {'x.x.x.x.' * 10!r}...: not a valid DNS name"]),
        ("docker.", ["dockerdns.aliases 'docker.': the zone apex cannot be claimed"]),
        ("github.com.", ["dockerdns.aliases 'github.com.': outside the zone docker.; external_names is off"]),
        ("a.com., b.com.", [
            "dockerdns.aliases 'a.com.': outside the zone docker.; external_names is off",
            "dockerdns.aliases 'b.com.': outside the zone docker.; external_names is off",
        ]),
        ("ok\nbad", ["dockerdns.aliases 'ok\\nbad': not a valid DNS name"]),
    ],
)
def test_invalid_label_aliases_are_skipped_with_one_warning_each(aliases: str, warnings: list[str]) -> None:
    """Each unusable dockerdns.aliases item is skipped with one one-line warning; the rest still publish."""
    published = publish(with_labels("plain", dockerdns__aliases=aliases))
    assert zone(published) == PLAIN
    assert list(published.warnings) == warnings


def test_name_too_long_with_zone_is_invalid() -> None:
    """A relative alias that fits alone but not with the zone appended (253 characters) is skipped."""
    alias = ".".join(["x" * 63] * 3) + "." + "x" * 58  # 249 characters, + ".docker" = 256
    published = publish(with_labels("plain", dockerdns__aliases=alias))
    assert zone(published) == PLAIN
    assert len(published.warnings) == 1


def test_absolute_alias_published_with_external_names() -> None:
    """With external_names on, an absolute alias outside the zone is published with all addresses."""
    published = publish(with_labels("two-networks", dockerdns__aliases="api.example.test."), external_names=True)
    values = sorted(r.value for r in published.records if r.name == "api.example.test.")
    assert values == ["172.30.10.10", "172.30.20.10"]


def test_a_thousand_aliases_are_capped() -> None:
    """A thousand label aliases: the first MAX_ALIASES publish, one warning says so."""
    aliases = ",".join(f"a{i}" for i in range(1000))
    published = publish(with_labels("plain", dockerdns__aliases=aliases))
    names = {r.name for r in published.records}
    assert {f"a{i}.docker." for i in range(MAX_ALIASES)} <= names
    assert f"a{MAX_ALIASES}.docker." not in names
    assert published.warnings == (f"dockerdns.aliases: 1000 names, only the first {MAX_ALIASES} are used",)


def test_a_thousand_invalid_aliases_give_bounded_warnings() -> None:
    """A thousand invalid aliases cost at most MAX_ALIASES + 1 warnings, each one line."""
    published = publish(with_labels("plain", dockerdns__aliases=",".join(f"bad {i}" for i in range(1000))))
    assert zone(published) == PLAIN
    assert len(published.warnings) == MAX_ALIASES + 1
    assert all("\n" not in w for w in published.warnings)


def test_network_aliases_are_capped_per_network() -> None:
    """A network with a thousand aliases publishes the first MAX_ALIASES, with one warning."""
    data = load("two-networks")
    data["NetworkSettings"]["Networks"]["dnsfix-front"]["Aliases"] = [f"n{i}" for i in range(1000)]
    published = publish(data)
    names = {r.name for r in published.records}
    assert f"n{MAX_ALIASES - 1}.dnsfix-front.docker." in names
    assert f"n{MAX_ALIASES}.docker." not in names
    assert published.warnings == (
        f"network aliases on 'dnsfix-front': 1000 names, only the first {MAX_ALIASES} are used",
    )


@pytest.mark.parametrize(
    "alias, warning",
    [
        ("github.com.", "network alias 'github.com.': not a valid DNS name"),
        ("bad name", "network alias 'bad name': not a valid DNS name"),
        ("a..b", "network alias 'a..b': not a valid DNS name"),
    ],
)
def test_network_alias_cannot_escape_the_zone(alias: str, warning: str) -> None:
    """A network alias is always relative: a trailing dot or a bad label skips it with one warning."""
    data = load("two-networks")
    data["NetworkSettings"]["Networks"]["dnsfix-front"]["Aliases"] = [alias]
    published = publish(data, external_names=True)
    assert zone(published) == TWO_NETWORKS
    assert published.warnings == (warning,)


def test_compose_labels_cannot_escape_the_zone() -> None:
    """Crafted compose labels ending in "." do not publish a name outside the zone."""
    published = publish(
        with_labels("plain", com__docker__compose__service="www", com__docker__compose__project="github.com."),
        external_names=True,
    )
    assert zone(published) == PLAIN
    assert published.warnings == ("compose service 'www.github.com.': not a valid DNS name",)


@pytest.mark.parametrize(
    "labels, warning",
    [
        ({"dockerdns__aliases": "\u212aafka"}, "dockerdns.aliases '\u212aafka': not a valid DNS name"),
        ({"dockerdns__aliases": "db\n.x"}, "dockerdns.aliases 'db\\n.x': not a valid DNS name"),
        ({"com__docker__compose__service": "db\n", "com__docker__compose__project": "shop"},
         "compose service 'db\\n.shop': not a valid DNS name"),
        ({"com__docker__compose__service": "\u212aafka", "com__docker__compose__project": "shop"},
         "compose service '\u212aafka.shop': not a valid DNS name"),
        ({"dockerdns__name": "\u212aafka"},
         "dockerdns.name '\u212aafka': not a valid relative DNS name; using 'dnsfix-plain'"),
        ({"dockerdns__name": "db\n.x"},
         "dockerdns.name 'db\\n.x': not a valid relative DNS name; using 'dnsfix-plain'"),
    ],
)
def test_names_are_ascii_and_whole(labels: dict[str, str], warning: str) -> None:
    """A label holding a newline or a character that lower-cases into ASCII (the Kelvin sign) is skipped, not mended."""
    published = publish(with_labels("plain", **labels))
    assert zone(published) == PLAIN
    assert published.warnings == (warning,)


def test_network_alias_with_kelvin_sign_is_not_kafka() -> None:
    """A network alias `\u212aafka` neither publishes `kafka` nor hides a real alias `kafka`."""
    data = load("two-networks")
    data["NetworkSettings"]["Networks"]["dnsfix-front"]["Aliases"] = ["\u212aafka", "KAFKA"]
    published = publish(data)
    names = [r.name for r in published.records if "kafka" in r.name]
    assert sorted(names) == ["kafka.dnsfix-front.docker.", "kafka.docker."]
    assert published.warnings == ("network alias '\u212aafka': not a valid DNS name",)


def test_compose_needs_both_labels() -> None:
    """A compose service label without a project label publishes no <service>.<project> name."""
    assert zone(publish(with_labels("plain", com__docker__compose__service="db"))) == PLAIN


# --- ttl and ignore labels -------------------------------------------------------------------


@pytest.mark.parametrize("value, ttl", [("0", 0), (" 7 ", 7), ("2147483647", 2147483647)])
def test_ttl_label_overrides_default(value: str, ttl: int) -> None:
    """dockerdns.ttl, an integer from 0 to 2^31-1, sets the ttl of every record of the container."""
    published = publish(with_labels("plain", dockerdns__ttl=value))
    assert {r.ttl for r in published.records} == {ttl}
    assert published.warnings == ()


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "+5", "1_0", "2147483648", "5s", "0x10", "\u0663",
                                   "\uff11\uff12", "5\n6", "99999999999999999999", "-" + "9" * 30])
def test_bad_ttl_label_warns_and_uses_default(value: str) -> None:
    """A dockerdns.ttl that is not an integer from 0 to 2^31-1 gives one warning and the default ttl."""
    published = publish(with_labels("plain", dockerdns__ttl=value), ttl=9)
    assert {r.ttl for r in published.records} == {9}
    assert published.warnings == (f"dockerdns.ttl {value!r}: expected an integer from 0 to 2147483647; using 9",)


@pytest.mark.parametrize("digits", [4300, 4301, 5000, 100_000])
def test_huge_ttl_label_warns_and_uses_default(digits: int) -> None:
    """dockerdns.ttl with thousands of digits (int() refuses past 4300) is one warning, cut short; never an error."""
    published = publish(with_labels("plain", dockerdns__ttl="9" * digits), ttl=9)
    assert zone(published) == [line.replace(" 5 IN ", " 9 IN ") for line in PLAIN]
    assert published.warnings == ("dockerdns.ttl '" + "9" * 80 + "'...: expected an integer from 0 to 2147483647; "
                                  "using 9",)


@pytest.mark.parametrize("value", ["true", "TRUE", " yes ", "1", "on"])
def test_ignore_label_true(value: str) -> None:
    """dockerdns.ignore=true (or yes/1/on, any case) publishes nothing."""
    assert publish(with_labels("plain", dockerdns__ignore=value)) == Ignored(value.strip())


@pytest.mark.parametrize("value", ["false", "no", "0", "off", ""])
def test_ignore_label_false(value: str) -> None:
    """dockerdns.ignore=false (or no/0/off/empty) publishes as usual."""
    published = publish(with_labels("plain", dockerdns__ignore=value))
    assert zone(published) == PLAIN and isinstance(published, Published) and published.warnings == ()


def test_ignore_label_unknown_value_warns() -> None:
    """An unknown dockerdns.ignore value warns and does not ignore the container."""
    published = publish(with_labels("plain", dockerdns__ignore="maybe"))
    assert zone(published) == PLAIN
    assert published.warnings == ("dockerdns.ignore 'maybe': expected true or false; not ignored",)


# --- state and odd inspect data --------------------------------------------------------------


def test_paused_container_keeps_its_names() -> None:
    """A paused container is running (State.Running true) and keeps publishing its names."""
    data = load("paused")
    assert data["State"]["Paused"] is True
    assert zone(publish(data)) == sorted(PAUSED)


def test_restarting_container_publishes_nothing() -> None:
    """A restarting container (Running and Restarting both true) is NotRunning, never Ignored."""
    data = load("plain")
    data["State"]["Restarting"] = True
    assert publish(data) == NotRunning(State.RESTARTING)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"State": None},
        {"State": {"Running": True}},
        {"State": {"Running": True}, "NetworkSettings": {"Networks": None}, "Config": None},
        {"State": {"Running": True}, "NetworkSettings": {"Networks": {"x": None}}, "Config": {"Labels": None}},
    ],
)
def test_sparse_inspect_data_does_not_crash(data: dict[str, Any]) -> None:
    """Missing or null inspect fields give no records and no exception."""
    assert publish(data).records == ()


def test_bad_address_is_skipped_with_a_warning() -> None:
    """An address that does not parse is skipped with one warning; the other addresses still publish."""
    data = load("two-networks")
    data["NetworkSettings"]["Networks"]["dnsfix-back"]["IPAddress"] = "300.1.2.3"
    published = publish(data)
    assert "dnsfix-twonets.dnsfix-front.docker. 5 IN A 172.30.10.10" in zone(published)
    assert not any("172.30.20.10" in line or "300.1.2.3" in line for line in zone(published))
    assert published.warnings == ("network 'dnsfix-back': IPAddress '300.1.2.3' is not an IPv4 address",)


def test_missing_prefix_length_gives_no_subnet() -> None:
    """An address without a prefix length is published without a subnet (never 0.0.0.0/0)."""
    data = load("plain")
    data["NetworkSettings"]["Networks"]["bridge"]["IPPrefixLen"] = 0
    published = publish(data)
    assert zone(published) == PLAIN
    assert {r.subnet for r in published.records} == {None}


@hsettings(max_examples=200, deadline=None)
@given(
    labels=st.dictionaries(
        st.sampled_from(["dockerdns.name", "dockerdns.aliases", "dockerdns.ttl", "dockerdns.ignore",
                         "com.docker.compose.service", "com.docker.compose.project"]),
        st.text(alphabet=st.sampled_from("ab.-_, \n\t.Z9*\u00e9"), max_size=300),
    ),
    aliases=st.lists(st.text(alphabet=st.sampled_from("ab.-_ .Z9"), max_size=20), max_size=100),
    external=st.booleans(),
)
def test_hostile_labels_never_crash(labels: dict[str, str], aliases: list[str], external: bool) -> None:
    """Any labels and network aliases give valid, absolute, lower-case names and one-line warnings."""
    data = load("two-networks")
    data["Config"]["Labels"] = labels
    data["NetworkSettings"]["Networks"]["dnsfix-front"]["Aliases"] = aliases
    published = publish(data, external_names=external)
    for rec in published.records:
        assert is_valid_name(rec.name, wildcard=True) and rec.name.endswith(".") and rec.name == rec.name.lower()
        if not external and rec.rtype != "PTR":
            assert rec.name.endswith(".docker.")
    assert all("\n" not in w for w in published.warnings)
    assert len(published.warnings) <= 2 * MAX_ALIASES + 10


def test_settings_are_not_mutated_and_records_are_frozen() -> None:
    """records_for_container returns immutable records and leaves the inspect dict unchanged."""
    data = load("labels")
    before = json.dumps(data, sort_keys=True)
    published = publish(data)
    assert json.dumps(data, sort_keys=True) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        published.records[0].ttl = 1  # type: ignore[misc]


def test_naming_is_pure() -> None:
    """naming.py imports no I/O, docker, logging, threads or clocks."""
    tree = ast.parse(Path(naming.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "enum", "ipaddress", "re", "collections", "dataclasses", "typing"}


PORTS = [
    "*.web.docker. 5 IN A 172.29.60.10",  # a wildcard alias (RFC 4592)
    "10.60.29.172.in-addr.arpa. 5 IN PTR dnsfix-ports.docker.",
    "api.docker. 5 IN A 172.29.60.10",
    "c1590380d6e5.docker. 5 IN A 172.29.60.10",
    "dnsfix-ports.dnsfix-ports.docker. 5 IN A 172.29.60.10",
    "dnsfix-ports.docker. 5 IN A 172.29.60.10",
    "shop.dnsfix-ports.docker. 5 IN A 172.29.60.10",
    "shop.docker. 5 IN A 172.29.60.10",
] + [
    # --expose 5432, -p 127.0.0.1::8080/udp (the container's port), dockerdns.srv=http:80, metrics:9100/tcp;
    # under the primary name, the network alias and the label alias, never under the wildcard.
    f"_{service}._{proto}.{holder}.docker. 5 IN SRV 0 0 {port} dnsfix-ports.docker."
    for service, proto, port in (("5432", "tcp", 5432), ("8080", "udp", 8080), ("http", "tcp", 80),
                                 ("metrics", "tcp", 9100))
    for holder in ("api", "dnsfix-ports", "shop")
]


def test_ports_give_srv_records() -> None:
    """Exposed and published ports and dockerdns.srv items give SRV records for each of the container's names."""
    published = publish(load("ports"))
    assert isinstance(published, Published)
    assert zone(published) == sorted(PORTS)
    assert list(published.warnings) == ["dockerdns.srv item 'bad:port': expected NAME:PORT[/PROTO]; skipped"]


@pytest.mark.parametrize("fixture,health", [("health-healthy", "healthy"), ("health-unhealthy", "unhealthy"),
                                            ("health-starting", "starting"), ("health-ignore", "none"),
                                            ("plain", "none")])
def test_health_from_a_real_engine(fixture: str, health: str) -> None:
    """Every record carries State.Health.Status, or none without a check or with dockerdns.health=ignore."""
    published = publish(load(fixture))
    assert isinstance(published, Published) and published.records
    assert {r.health for r in published.records} == {health}


def test_other_health_label_values_are_skipped_with_a_warning() -> None:
    """dockerdns.health with a value other than ignore is skipped: the check counts, one warning."""
    published = publish(with_labels("health-unhealthy", dockerdns__health="yes"))
    assert isinstance(published, Published)
    assert {r.health for r in published.records} == {"unhealthy"}
    assert list(published.warnings) == ["dockerdns.health 'yes': expected 'ignore'; label skipped"]


@pytest.mark.parametrize("aliases,warning", [
    ("a.*.web", "dockerdns.aliases 'a.*.web': not a valid DNS name"),
    ("*web", "dockerdns.aliases '*web': not a valid DNS name"),
    ("*.com.", "dockerdns.aliases '*.com.': outside the zone docker.; external_names is off"),
    ("*.docker.", "dockerdns.aliases '*.docker.': the zone apex cannot be claimed"),
])
def test_wildcards_only_as_the_whole_first_label_inside_the_zone(aliases: str, warning: str) -> None:
    """A `*` elsewhere is skipped with one warning, and no container claims `*.com.` or the whole zone."""
    published = publish(with_labels("plain", dockerdns__aliases=aliases))
    assert isinstance(published, Published)
    assert list(published.warnings) == [warning] and not [r for r in published.records if "*" in r.name]
