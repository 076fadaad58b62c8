"""Naming fuzzed: random and mutated inspect dicts give records, never an exception (issue 15, item 2).

The mutations start from the captured fixtures (tests/fixtures/inspect) and
replace, delete or retype any field, and set the labels dockerdns reads to
hostile values. Set FUZZ_NAMING_EXAMPLES for a longer run.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockerdns.config import Settings
from dockerdns.naming import (LABEL_ALIASES, LABEL_IGNORE, LABEL_NAME, LABEL_TTL, MAX_TTL, Ignored, NotRunning,
                              Published, records_for_container)
from dockerdns.records import is_valid_name

FIXTURES = {p.stem: json.loads(p.read_text()) for p in (Path(__file__).parent / "fixtures" / "inspect").glob("*.json")}
EXAMPLES = int(os.environ.get("FUZZ_NAMING_EXAMPLES", "300"))
LABELS = [LABEL_NAME, LABEL_ALIASES, LABEL_IGNORE, LABEL_TTL, "com.docker.compose.service",
          "com.docker.compose.project", "dockerdns.health", "dockerdns.srv"]

HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abAB09.-_*, \n\t\r%:/\u212a\u0130\u00e9\x00", max_size=80),
    st.integers(min_value=1, max_value=20_000).map(lambda n: "9" * n),  # int() refuses past 4300 digits
    st.integers().map(str),
    st.sampled_from(["", ".", "..", "*", "-1", "+5", "1e9", "0x10", "\u0663", "true", "TRUE", "fe80::1%eth0",
                     "300.1.2.3", "::ffff:1.2.3.4", "1.2.3.4/8", "db\n", "\u212aafka", ",,,", "a." * 200]),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, prefix + (index,))
    return found


def mutate(data: dict[str, Any], path: tuple[Any, ...], new: Any, delete: bool) -> None:
    """Replace (or delete) the value at `path` in place; the root is never deleted."""
    if not path:
        return
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = new


@st.composite
def mutated_inspect(draw: st.DrawFn) -> dict[str, Any]:
    """A captured fixture with a few fields replaced, deleted or retyped and hostile labels set."""
    data = copy.deepcopy(FIXTURES[draw(st.sampled_from(sorted(FIXTURES)))])
    for _ in range(draw(st.integers(0, 4))):
        where = paths(data)
        mutate(data, draw(st.sampled_from(where)), draw(JSON), draw(st.booleans()))
    if draw(st.booleans()) and isinstance(data.get("Config"), dict):
        labels = data["Config"].get("Labels")
        if not isinstance(labels, dict):
            labels = data["Config"]["Labels"] = {}
        labels.update(draw(st.dictionaries(st.sampled_from(LABELS), HOSTILE_TEXT, max_size=4)))
    return data


RANDOM_INSPECT = st.fixed_dictionaries(
    {},
    optional={key: JSON for key in ("Id", "Name", "State", "Config", "NetworkSettings", "HostConfig")},
)
RUNNING_SHAPE = st.fixed_dictionaries({
    "Id": HOSTILE_TEXT,
    "Name": HOSTILE_TEXT,
    "State": st.fixed_dictionaries({"Running": st.just(True)}, optional={"Paused": JSON, "Restarting": JSON}),
    "Config": st.fixed_dictionaries({"Labels": st.dictionaries(st.sampled_from(LABELS), HOSTILE_TEXT, max_size=5)},
                                    optional={"Hostname": HOSTILE_TEXT, "Domainname": HOSTILE_TEXT}),
    "NetworkSettings": st.fixed_dictionaries({"Networks": st.dictionaries(
        HOSTILE_TEXT,
        st.fixed_dictionaries({}, optional={"IPAddress": HOSTILE_TEXT, "GlobalIPv6Address": HOSTILE_TEXT,
                                            "IPPrefixLen": JSON, "GlobalIPv6PrefixLen": JSON,
                                            "Aliases": st.lists(HOSTILE_TEXT, max_size=5) | JSON}),
        max_size=3)}),
    "HostConfig": st.fixed_dictionaries({}, optional={"NetworkMode": HOSTILE_TEXT | JSON}),
})
INSPECT = st.one_of(mutated_inspect(), RANDOM_INSPECT, RUNNING_SHAPE)
SETTINGS = st.builds(Settings, external_names=st.booleans(), ttl=st.sampled_from([0, 1, 300]))


def check(outcome: object) -> None:
    """An outcome of the three kinds, whose records are well-formed and whose warnings are one line each."""
    assert isinstance(outcome, (Published, Ignored, NotRunning))
    for rec in outcome.records:
        assert is_valid_name(rec.name, wildcard=True) and rec.name.isascii() and rec.name == rec.name.lower()
        assert 0 <= rec.ttl <= MAX_TTL
        if rec.rtype == "A":
            assert ipaddress.ip_address(rec.value).version == 4
        elif rec.rtype == "AAAA":
            assert ipaddress.ip_address(rec.value).version == 6 and "%" not in rec.value
        elif rec.rtype == "SRV":
            priority, weight, port, target = rec.value.split()
            assert (priority, weight) == ("0", "0") and 0 < int(port) < 65536 and is_valid_name(target)
            assert rec.name.startswith("_") and rec.name.split(".")[1] in ("_tcp", "_udp", "_sctp")
        else:
            assert rec.rtype == "PTR" and is_valid_name(rec.value)
    for warning in outcome.warnings:
        assert isinstance(warning, str) and "\n" not in warning and len(warning) < 1000


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(INSPECT, st.none() | INSPECT, SETTINGS)
def test_naming_never_raises(inspect: dict[str, Any], owner: dict[str, Any] | None, settings: Settings) -> None:
    """Any inspect dict, with any namespace owner, gives a well-formed outcome and never an exception."""
    check(records_for_container(inspect, settings, owner))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(sorted(FIXTURES)), st.sampled_from(LABELS), HOSTILE_TEXT)
def test_one_bad_label_costs_only_itself(fixture: str, label: str, value: str) -> None:
    """One hostile label on a running container never takes its container name from it."""
    data = copy.deepcopy(FIXTURES[fixture])
    data["Config"]["Labels"] = {label: value}
    outcome = records_for_container(data, Settings())
    check(outcome)
    plain = records_for_container(FIXTURES[fixture], Settings())
    if isinstance(plain, Published) and plain.records and label not in (LABEL_IGNORE, LABEL_NAME):
        name = data["Name"].lstrip("/") + ".docker."
        assert name in {r.name for r in outcome.records}
