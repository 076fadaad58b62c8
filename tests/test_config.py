"""Settings from YAML < DOCKERDNS_* < flags, and the exact problem lines of bad input.

Tests write the config file, resolv.conf and the kernel's address lists
(tmp_path/proc-net) into tmp_path and pass a default config path that does
not exist, so the machine's own files never leak in.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from dockerdns import config
from dockerdns.config import DEFAULT_ALLOW, DEFAULT_LISTEN, Address, ConfigError, RateLimitSettings, Settings

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "dockerdns.yaml"
RESOLV = "nameserver 192.0.2.53\n"


def load(
    tmp_path: Path,
    text: str | None = None,
    *,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    resolv: str = RESOLV,
) -> Settings:
    """config.load with `text` as the -c file (None: no file), a private resolv.conf and /proc/net."""
    all_flags = dict(flags or {})
    if text is not None:
        path = tmp_path / "dockerdns.yaml"
        path.write_text(text)
        all_flags["config"] = str(path)
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text(resolv)
    return config.load(
        all_flags, environ or {}, resolv_conf=str(resolv_conf), default_config=str(tmp_path / "absent.yaml"),
        proc_net=str(tmp_path / "proc-net"),
    )


def problems_of(tmp_path: Path, text: str | None = None, **kwargs: object) -> list[str]:
    """The problem lines load() raises; fails the test when it raises none."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def zone_text(settings: Settings) -> list[str]:
    return [f"{r.name} {r.ttl} IN {r.rtype} {r.value}" for r in settings.records]


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


# --- YAML -> settings ----------------------------------------------------------

Field = Callable[[Settings], object]

YAML_SETTINGS: list[tuple[str, str, Field, object]] = [
    ("listen", "listen: [127.0.0.1:5353, '[::1]:5354', bridge:53]", lambda s: s.listen,
     (Address("127.0.0.1", 5353), Address("::1", 5354), Address("bridge", 53))),
    ("listen without port is 53", "listen: [10.0.0.1, '::1', '[::2]', BRIDGE]", lambda s: s.listen,
     (Address("10.0.0.1", 53), Address("::1", 53), Address("::2", 53), Address("bridge", 53))),
    ("listen port 0", "listen: ['127.0.0.1:0']", lambda s: s.listen, (Address("127.0.0.1", 0),)),
    ("listen IPv6 normalised", "listen: ['[2001:DB8:0::1]:53']", lambda s: s.listen, (Address("2001:db8::1", 53),)),
    ("domain lower-case, no dot", "domain: Example.TEST.", lambda s: s.domain, "example.test"),
    ("ttl", "ttl: 60", lambda s: s.ttl, 60),
    ("ttl 0", "ttl: 0", lambda s: s.ttl, 0),
    ("ttl max", "ttl: 2147483647", lambda s: s.ttl, 2147483647),
    ("docker.url", "docker: {url: 'tcp://10.0.0.1:2375'}", lambda s: s.docker.url, "tcp://10.0.0.1:2375"),
    ("forward.enabled", "forward: {enabled: false}", lambda s: s.forward.enabled, False),
    ("forward.max_ttl", "forward: {max_ttl: 300}", lambda s: s.forward.max_ttl, 300),
    ("forward.max_ttl 0: never kept", "forward: {max_ttl: 0}", lambda s: s.forward.max_ttl, 0),
    ("forward.upstreams", "forward: {upstreams: [192.0.2.1, '[2001:db8::1]:5353', '192.0.2.2:5300', '::1']}",
     lambda s: s.forward.upstreams,
     (Address("192.0.2.1", 53), Address("2001:db8::1", 5353), Address("192.0.2.2", 5300), Address("::1", 53))),
    ("empty upstreams: resolv.conf", "forward: {upstreams: []}", lambda s: s.forward.upstreams,
     (Address("192.0.2.53", 53),)),
    ("allow, bare IPs are hosts", "allow: [10.0.0.0/8, 192.0.2.7, '2001:db8::1']", lambda s: s.allow,
     nets("10.0.0.0/8", "192.0.2.7/32", "2001:db8::1/128")),
    ("allow empty", "allow: []", lambda s: s.allow, ()),
    ("external_names", "external_names: true", lambda s: s.external_names, True),
    ("http.listen", "http: {listen: '127.0.0.1:5380'}", lambda s: s.http.listen, Address("127.0.0.1", 5380)),
    ("http.listen IPv6", "http: {listen: '[::1]:8080'}", lambda s: s.http.listen, Address("::1", 8080)),
    ("http.listen empty string is off", "http: {listen: ''}", lambda s: s.http.listen, None),
    ("log.level case-insensitive", "log: {level: WARNING}", lambda s: s.log.level, "warning"),
    ("null key takes its default", "ttl:\ndomain:\nlisten:", lambda s: (s.ttl, s.domain, s.listen),
     (1, "docker", DEFAULT_LISTEN)),
    ("null section takes its defaults", "forward:\nlog:", lambda s: (s.forward.enabled, s.log.level), (True, "info")),
    ("records absent: none", "ttl: 5", lambda s: s.records, ()),
    ("rate_limit", "rate_limit: {responses_per_second: 20, slip: 0, window: 1}", lambda s: s.rate_limit,
     RateLimitSettings(responses_per_second=20, slip=0, window=1)),
    ("rate_limit 0 is off", "rate_limit: {responses_per_second: 0}", lambda s: s.rate_limit.responses_per_second, 0),
    ("rate_limit keys left out keep defaults", "rate_limit: {slip: 1}", lambda s: s.rate_limit,
     RateLimitSettings(slip=1)),
    ("null rate_limit section takes its defaults", "rate_limit:", lambda s: s.rate_limit, RateLimitSettings()),
]


@pytest.mark.parametrize("text, field, expected", [case[1:] for case in YAML_SETTINGS],
                         ids=[case[0] for case in YAML_SETTINGS])
def test_yaml_sets_field(tmp_path: Path, text: str, field: Field, expected: object) -> None:
    """Each YAML key sets its field, normalised."""
    assert field(load(tmp_path, text)) == expected


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file is the built-in defaults; config_file still names it."""
    settings = load(tmp_path, "")
    assert settings.listen == DEFAULT_LISTEN
    assert (settings.domain, settings.ttl, settings.external_names) == ("docker", 1, False)
    assert settings.allow == DEFAULT_ALLOW
    assert settings.docker.url == "unix:///var/run/docker.sock"
    assert settings.forward.enabled is True
    assert settings.forward.upstreams == (Address("192.0.2.53", 53),)
    assert (settings.http.listen, settings.log.level, settings.records) == (None, "info", ())
    assert settings.rate_limit == RateLimitSettings(responses_per_second=1000, slip=2, window=15)
    assert settings.config_file == str(tmp_path / "dockerdns.yaml")


# --- Static records ------------------------------------------------------------

RECORDS: list[tuple[str, str, list[str]]] = [
    ("relative name under the zone", "{name: gateway, type: A, value: 172.17.0.1}",
     ["gateway.docker. 1 IN A 172.17.0.1"]),
    ("a wildcard (RFC 4592)", "{name: '*.dev', type: A, value: 10.0.0.9}", ["*.dev.docker. 1 IN A 10.0.0.9"]),
    ("absolute name kept, CNAME target absolute", "{name: api.example.test., type: CNAME, value: web.docker.}",
     ["api.example.test. 1 IN CNAME web.docker."]),
    ("SRV with its own ttl", "{name: _http._tcp.web, type: SRV, value: '0 0 80 web.docker.', ttl: 60}",
     ["_http._tcp.web.docker. 60 IN SRV 0 0 80 web.docker."]),
    ("relative SRV target under the zone", "{name: _x._udp, type: SRV, value: '1 2 53 ns'}",
     ["_x._udp.docker. 1 IN SRV 1 2 53 ns.docker."]),
    ("TXT keeps its strings", """{name: Info, type: txt, value: '"hello world" "b"'}""",
     ['info.docker. 1 IN TXT "hello world" "b"']),
    ("AAAA normalised", "{name: v6, type: AAAA, value: '2001:DB8:0::1'}", ["v6.docker. 1 IN AAAA 2001:db8::1"]),
    ("MX relative exchange", "{name: example.test., type: MX, value: 10 mail}",
     ["example.test. 1 IN MX 10 mail.docker."]),
    ("PTR", "{name: 1.0.17.172.in-addr.arpa., type: PTR, value: gateway.docker.}",
     ["1.0.17.172.in-addr.arpa. 1 IN PTR gateway.docker."]),
    ("null ttl is the default", "{name: n, type: A, value: 10.0.0.1, ttl: null}", ["n.docker. 1 IN A 10.0.0.1"]),
]


@pytest.mark.parametrize("record, expected", [case[1:] for case in RECORDS], ids=[case[0] for case in RECORDS])
def test_static_record(tmp_path: Path, record: str, expected: list[str]) -> None:
    """A static record is stored with an absolute name, upper-case type and normalised zone-text value."""
    settings = load(tmp_path, f"records:\n  - {record}\n")
    assert zone_text(settings) == expected
    assert all(r.owner == "static" and r.owner_name == "static" for r in settings.records)


def test_static_records_follow_domain_and_ttl_from_flags(tmp_path: Path) -> None:
    """Relative record names go under the final domain, and take the final ttl, whichever layer set them."""
    settings = load(tmp_path, "records:\n  - {name: gw, type: A, value: 10.0.0.1}\n",
                    flags={"domain": "Lan", "ttl": "30"})
    assert zone_text(settings) == ["gw.lan. 30 IN A 10.0.0.1"]


def test_reading_again_gives_what_a_first_read_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records read before are not validated again (config._last_records), yet each read says what its own
    text, domain and ttl say: a changed record, a new default, a now-bad entry and the zone rules included."""
    text = "records:\n  - {name: gw, type: A, value: 10.0.0.1}\n  - {name: web, type: A, value: 10.0.0.2}\n"
    assert zone_text(load(tmp_path, text)) == ["gw.docker. 1 IN A 10.0.0.1", "web.docker. 1 IN A 10.0.0.2"]
    assert zone_text(load(tmp_path, text, flags={"domain": "lan", "ttl": "30"})) == [
        "gw.lan. 30 IN A 10.0.0.1", "web.lan. 30 IN A 10.0.0.2"]
    changed = text.replace("10.0.0.2", "10.0.0.3")
    assert zone_text(load(tmp_path, changed)) == ["gw.docker. 1 IN A 10.0.0.1", "web.docker. 1 IN A 10.0.0.3"]
    with pytest.raises(ConfigError) as bad:
        load(tmp_path, changed + "  - {name: gw, type: CNAME, value: web}\n")
    assert bad.value.problems[0].startswith("records[2]: CNAME at gw.docker. beside records[0] (A)")
    with pytest.raises(ConfigError) as bad:
        load(tmp_path, changed.replace("10.0.0.1", "10.0.0.999"))
    assert bad.value.problems[0].startswith("records[0].value:")
    with_ttl = changed.replace("10.0.0.1}", "10.0.0.1, ttl: 1}")
    assert zone_text(load(tmp_path, with_ttl))[0] == "gw.docker. 1 IN A 10.0.0.1"
    with pytest.raises(ConfigError) as bad:  # equal to 1 in Python, yet no TTL
        load(tmp_path, changed.replace("10.0.0.1}", "10.0.0.1, ttl: true}"))
    assert bad.value.problems[0].startswith("records[0].ttl:")
    assert zone_text(load(tmp_path, changed)) == ["gw.docker. 1 IN A 10.0.0.1", "web.docker. 1 IN A 10.0.0.3"]
    # What is remembered is the last good read's records, no more; nothing for a long list.
    assert set(config._last_records.values()) == set(load(tmp_path, changed).records)
    monkeypatch.setattr(config, "MAX_KEPT_RECORDS", 1)
    assert zone_text(load(tmp_path, changed)) == ["gw.docker. 1 IN A 10.0.0.1", "web.docker. 1 IN A 10.0.0.3"]
    assert config._last_records == {}


def test_zone_rules_accept_what_a_zone_may_hold(tmp_path: Path) -> None:
    """One RRset with equal TTLs (given or default), other types with their own TTLs, a CNAME to a name with data."""
    settings = load(tmp_path, "ttl: 5\nrecords:\n"
                              "  - {name: web, type: A, value: 10.0.0.1}\n"
                              "  - {name: web, type: A, value: 10.0.0.2, ttl: 5}\n"
                              "  - {name: web, type: TXT, value: '\"x\"', ttl: 60}\n"
                              "  - {name: www, type: CNAME, value: web}\n"
                              "  - {name: www.web, type: A, value: 10.0.0.3, ttl: 1}\n")
    assert len(settings.records) == 5


def test_zone_problem_stops_check_config_and_serve(tmp_path: Path) -> None:
    """A CNAME beside other data: check_file reports one line naming both records (check-config and serve exit 2)."""
    path = tmp_path / "zone.yaml"
    path.write_text("records:\n" + RECORDS_API + "  - {name: api, type: CNAME, value: web.docker.}\n")
    assert config.check_file(str(path)) == [f"records[3]: CNAME at api.docker. beside records[1] (A); {CNAME_ALONE}"]


# --- YAML -> problems ----------------------------------------------------------

CNAME_ALONE = "a CNAME stands alone at its name (RFC 2181 section 10.1)"
RECORDS_API = ("  - {name: gateway, type: A, value: 172.17.0.1}\n  - {name: api, type: A, value: 10.0.0.1}\n"
               "  - {name: api, type: AAAA, value: 'fd00::1', ttl: 30}\n")

YAML_PROBLEMS: list[tuple[str, str, list[str]]] = [
    ("unknown key", "foo: 1", ["foo: unknown key"]),
    ("unknown null key", "foo:", ["foo: unknown key"]),
    ("unknown nested key", "forward: {foo: 1}", ["forward.foo: unknown key"]),
    ("config is not a YAML key", "config: x.yaml", ["config: unknown key"]),
    ("section not a mapping", "forward: [1]", ["forward: expected a mapping, got [1]"]),
    ("ttl not an integer", "ttl: abc", ["ttl: expected an integer, got 'abc'"]),
    ("ttl boolean", "ttl: true", ["ttl: expected an integer, got true"]),
    ("ttl float", "ttl: 1.5", ["ttl: expected an integer, got 1.5"]),
    ("ttl negative", "ttl: -1", ["ttl: expected an integer from 0 to 2147483647, got -1"]),
    ("ttl too large", "ttl: 2147483648", ["ttl: expected an integer from 0 to 2147483647, got 2147483648"]),
    ("listen not a list", "listen: 127.0.0.1:53", ["listen: expected a list, got '127.0.0.1:53'"]),
    ("listen empty", "listen: []", ["listen: expected at least one HOST:PORT, got []"]),
    ("listen host a name", "listen: [localhost:53]", ["listen[0]: expected HOST:PORT, got 'localhost:53'"]),
    ("listen port range", "listen: ['127.0.0.1:53', '127.0.0.1:65536']",
     ["listen[1]: expected HOST:PORT with a port from 0 to 65535, got '127.0.0.1:65536'"]),
    ("listen port not a number", "listen: ['127.0.0.1:dns']",
     ["listen[0]: expected HOST:PORT with a port from 0 to 65535, got '127.0.0.1:dns'"]),
    ("listen unclosed bracket", "listen: ['[::1:53']", ["listen[0]: expected HOST:PORT, got '[::1:53'"]),
    ("listen item not a string", "listen: [53]", ["listen[0]: expected HOST:PORT, got 53"]),
    ("domain invalid", "domain: 'a..b'", ["domain: expected a DNS name, got 'a..b'"]),
    ("domain root", "domain: '.'", ["domain: expected a DNS name, got '.'"]),
    ("docker.url empty", "docker: {url: ' '}", ["docker.url: expected a non-empty string, got ' '"]),
    ("forward.enabled not a bool", "forward: {enabled: 'no way'}",
     ["forward.enabled: expected true or false, got 'no way'"]),
    ("upstream not an IP", "forward: {upstreams: [192.0.2.1, x]}",
     ["forward.upstreams[1]: expected HOST[:PORT], got 'x'"]),
    ("upstream port 0", "forward: {upstreams: ['192.0.2.1:0']}",
     ["forward.upstreams[0]: expected HOST[:PORT] with a port from 1 to 65535, got '192.0.2.1:0'"]),
    ("allow bad prefix", "allow: [10.0.0.0/8, 10.0.0.0/33]", ["allow[1]: expected a CIDR, got '10.0.0.0/33'"]),
    ("external_names not a bool", "external_names: 1", ["external_names: expected true or false, got 1"]),
    ("http.listen needs a port", "http: {listen: 127.0.0.1}", ["http.listen: expected HOST:PORT, got '127.0.0.1'"]),
    ("log.level unknown", "log: {level: verbose}",
     ["log.level: expected one of debug, info, warning, error, got 'verbose'"]),
    ("rate_limit negative", "rate_limit: {responses_per_second: -1}",
     ["rate_limit.responses_per_second: expected an integer from 0 to 1000000, got -1"]),
    ("rate_limit not an integer", "rate_limit: {responses_per_second: lots}",
     ["rate_limit.responses_per_second: expected an integer, got 'lots'"]),
    ("rate_limit boolean", "rate_limit: {responses_per_second: true}",
     ["rate_limit.responses_per_second: expected an integer, got true"]),
    ("rate_limit.slip too large", "rate_limit: {slip: 11}",
     ["rate_limit.slip: expected an integer from 0 to 10, got 11"]),
    ("rate_limit.window 0", "rate_limit: {window: 0}",
     ["rate_limit.window: expected an integer from 1 to 3600, got 0"]),
    ("rate_limit unknown key", "rate_limit: {burst: 5}", ["rate_limit.burst: unknown key"]),
    ("rate_limit not a mapping", "rate_limit: 100", ["rate_limit: expected a mapping, got 100"]),
    ("records not a list", "records: {name: a}", ["records: expected a list, got {'name': 'a'}"]),
    ("record not a mapping", "records: [x]", ["records[0]: expected a mapping with name, type and value, got 'x'"]),
    ("record missing keys", "records: [{ttl: 5}]",
     ["records[0].name: missing", "records[0].type: missing", "records[0].value: missing"]),
    ("record unknown key", "records: [{name: a, type: A, value: 10.0.0.1, class: IN}]",
     ["records[0].class: unknown key"]),
    ("record bad name", "records: [{name: 'a..b', type: A, value: 10.0.0.1}]",
     ["records[0].name: expected a DNS name (`*` only as the whole first label), got 'a..b'"]),
    ("record * inside a name", "records: [{name: 'a.*.b', type: A, value: 10.0.0.1}]",
     ["records[0].name: expected a DNS name (`*` only as the whole first label), got 'a.*.b'"]),
    ("record bad type", "records: [{name: a, type: NS, value: ns.}]",
     ["records[0].type: expected one of A, AAAA, CNAME, TXT, SRV, PTR, MX, got 'NS'"]),
    ("record bad ttl", "records: [{name: a, type: A, value: 10.0.0.1, ttl: x}]",
     ["records[0].ttl: expected an integer, got 'x'"]),
    ("A value", "records: [{name: a, type: A, value: 1.2.3}]",
     ["records[0].value: expected an IPv4 address, got '1.2.3'"]),
    ("A value with extra field", "records: [{name: a, type: A, value: 1.2.3.4 5.6.7.8}]",
     ["records[0].value: expected an IPv4 address, got '1.2.3.4 5.6.7.8'"]),
    ("AAAA value", "records: [{name: a, type: AAAA, value: 10.0.0.1}]",
     ["records[0].value: expected an IPv6 address, got '10.0.0.1'"]),
    ("CNAME value", "records: [{name: a, type: CNAME, value: '-x'}]",
     ["records[0].value: expected a DNS name, got '-x'"]),
    ("MX value", "records: [{name: a, type: MX, value: mail}]",
     ["records[0].value: expected PREFERENCE NAME, got 'mail'"]),
    ("SRV value", "records: [{name: a, type: SRV, value: '0 0 80'}]",
     ["records[0].value: expected PRIORITY WEIGHT PORT TARGET, got '0 0 80'"]),
    ("SRV port range", "records: [{name: a, type: SRV, value: '0 0 99999 web.'}]",
     ["records[0].value: expected PRIORITY WEIGHT PORT TARGET, got '0 0 99999 web.'"]),
    ("value not a string", "records: [{name: a, type: TXT, value: [x]}]",
     ["records[0].value: expected quoted text (\"...\"), got ['x']"]),
    ("every field of a record", "records: [{name: 'a..b', type: NS, value: x, ttl: -1, foo: 1}]",
     ["records[0].foo: unknown key",
      "records[0].name: expected a DNS name (`*` only as the whole first label), got 'a..b'",
      "records[0].type: expected one of A, AAAA, CNAME, TXT, SRV, PTR, MX, got 'NS'",
      "records[0].ttl: expected an integer from 0 to 2147483647, got -1"]),
    ("forward.max_ttl negative", "forward: {max_ttl: -1}",
     ["forward.max_ttl: expected an integer from 0 to 2147483647, got -1"]),
    # RFC 2181 section 10.1: a CNAME stands alone at its name.
    ("CNAME beside an A", "records:\n" + RECORDS_API + "  - {name: API, type: CNAME, value: web.docker.}\n",
     [f"records[3]: CNAME at api.docker. beside records[1] (A); {CNAME_ALONE}"]),
    ("A beside a CNAME, absolute and relative", "records:\n  - {name: api, type: CNAME, value: web.docker.}\n"
     "  - {name: api.docker., type: TXT, value: '\"x\"'}\n",
     [f"records[1]: TXT at api.docker. beside records[0] (CNAME); {CNAME_ALONE}"]),
    ("two CNAMEs at one name", "records:\n  - {name: a, type: CNAME, value: b.docker.}\n"
     "  - {name: a, type: CNAME, value: c.docker.}\n",
     [f"records[1]: CNAME at a.docker. beside records[0] (CNAME); {CNAME_ALONE}"]),
    # RFC 2181 section 5.2: one RRset, one TTL; a record without ttl has the global one.
    ("TTLs differ in one RRset",
     "ttl: 5\nrecords:\n" + RECORDS_API + "  - {name: api, type: A, value: 10.0.0.3, ttl: 60}\n",
     ["records[3]: ttl 60 of api.docker. A differs from records[1] (ttl 5); one RRset has one TTL "
      "(RFC 2181 section 5.2)"]),
]


@pytest.mark.parametrize("text, expected", [case[1:] for case in YAML_PROBLEMS],
                         ids=[case[0] for case in YAML_PROBLEMS])
def test_yaml_problem(tmp_path: Path, text: str, expected: list[str]) -> None:
    """A bad YAML value gives exactly these problem lines, naming the key path and the value."""
    assert problems_of(tmp_path, text) == expected


def test_all_problems_reported_together(tmp_path: Path) -> None:
    """Problems from the file, the environment and the flags are all reported, not just the first."""
    text = "foo: 1\nttl: x\nallow: [nope, 10.0.0.0/8, also-nope]\nrecords: [{name: a, type: A, value: x}]\n"
    problems = problems_of(tmp_path, text, environ={"DOCKERDNS_LOG_LEVEL": "loud"}, flags={"listen": ["x"]})
    assert sorted(problems) == sorted([
        "foo: unknown key",
        "ttl: expected an integer, got 'x'",
        "allow[0]: expected a CIDR, got 'nope'",
        "allow[2]: expected a CIDR, got 'also-nope'",
        "records[0].value: expected an IPv4 address, got 'x'",
        "DOCKERDNS_LOG_LEVEL: expected one of debug, info, warning, error, got 'loud'",
        "--listen: expected HOST:PORT, got 'x'",
    ])


# --- The config file -----------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A file that does not parse is one problem: file:line: message."""
    path = tmp_path / "dockerdns.yaml"
    problems = problems_of(tmp_path, "ttl: 5\nlisten: a: b\n")
    # libyaml says "... in this context", pure-Python PyYAML "... here".
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: mapping values are not allowed")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    """A file whose top level is not a mapping is one problem naming the file."""
    path = tmp_path / "dockerdns.yaml"
    assert problems_of(tmp_path, "- ttl\n") == [f"{path}: expected a mapping of keys at the top level, got a list"]


def test_missing_explicit_file_is_a_problem(tmp_path: Path) -> None:
    """-c naming a file that does not exist is a problem, not a silent fall back to defaults."""
    missing = tmp_path / "nope.yaml"
    assert problems_of(tmp_path, flags={"config": str(missing)}) == [f"{missing}: no such file"]


def test_config_file_from_environment(tmp_path: Path) -> None:
    """DOCKERDNS_CONFIG names the file when -c is not given."""
    path = tmp_path / "env.yaml"
    path.write_text("ttl: 42\n")
    settings = load(tmp_path, environ={"DOCKERDNS_CONFIG": str(path)})
    assert (settings.ttl, settings.config_file) == (42, str(path))


def test_flag_config_beats_environment_config(tmp_path: Path) -> None:
    """-c wins over DOCKERDNS_CONFIG."""
    other = tmp_path / "env.yaml"
    other.write_text("ttl: 42\n")
    settings = load(tmp_path, "ttl: 7\n", environ={"DOCKERDNS_CONFIG": str(other)})
    assert settings.ttl == 7


def test_default_config_file_read_when_present(tmp_path: Path) -> None:
    """Without -c or DOCKERDNS_CONFIG, the default file is read if it exists."""
    default = tmp_path / "default.yaml"
    default.write_text("ttl: 9\n")
    settings = config.load({}, {}, resolv_conf=str(tmp_path / "none"), default_config=str(default))
    assert (settings.ttl, settings.config_file) == (9, str(default))


def test_no_file_gives_defaults(tmp_path: Path) -> None:
    """Without any file, built-in defaults apply and config_file is None."""
    settings = load(tmp_path)
    assert (settings.ttl, settings.config_file) == (1, None)


def test_check_file(tmp_path: Path) -> None:
    """check_file returns the problems of a file, and none for a good one."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("ttl: 1\n")
    bad.write_text("ttl: x\nfoo: 1\n")
    assert config.check_file(str(good)) == []
    assert config.check_file(str(bad)) == ["foo: unknown key", "ttl: expected an integer, got 'x'"]
    assert config.check_file(str(tmp_path / "nope.yaml")) == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_sample_config_passes_check() -> None:
    """conf/dockerdns.yaml, the shipped sample, is a valid config."""
    assert config.check_file(str(SAMPLE)) == []


def test_sample_config_serves_design_records(tmp_path: Path) -> None:
    """The sample holds DESIGN.md's example records, plus a TXT record."""
    settings = load(tmp_path, SAMPLE.read_text(), flags={"listen": ["127.0.0.1:5353"]})
    lines = zone_text(settings)
    assert lines[:3] == [
        "gateway.docker. 1 IN A 172.17.0.1",
        "api.example.test. 1 IN CNAME web.docker.",
        "_http._tcp.web.docker. 60 IN SRV 0 0 80 web.docker.",
    ]
    assert [r.rtype for r in settings.records[3:]] == ["TXT"]


def test_sample_config_shows_defaults(tmp_path: Path) -> None:
    """Loading the sample gives the same settings as no file at all, records aside."""
    sample = load(tmp_path, SAMPLE.read_text())
    defaults = load(tmp_path)
    assert sample.listen == defaults.listen and sample.allow == defaults.allow
    assert (sample.domain, sample.ttl, sample.docker, sample.forward, sample.external_names, sample.http,
            sample.log) == (defaults.domain, defaults.ttl, defaults.docker, defaults.forward, defaults.external_names,
                            defaults.http, defaults.log)
    assert sample.rate_limit == defaults.rate_limit == RateLimitSettings()


def test_sample_config_names_every_key() -> None:
    """Every key dockerdns knows appears in the sample file, so none is undocumented."""
    text = SAMPLE.read_text()
    for key in config.FLAGS:
        assert f"{key.rsplit('.', 1)[-1]}:" in text, key


# --- Environment and flags -----------------------------------------------------

ENV_SETTINGS: list[tuple[str, str, Field, object]] = [
    ("DOCKERDNS_LISTEN", "127.0.0.1:5353, [::1]:5353", lambda s: s.listen,
     (Address("127.0.0.1", 5353), Address("::1", 5353))),
    ("DOCKERDNS_DOMAIN", "Lan.", lambda s: s.domain, "lan"),
    ("DOCKERDNS_TTL", "30", lambda s: s.ttl, 30),
    ("DOCKERDNS_DOCKER_URL", "tcp://10.0.0.1:2375", lambda s: s.docker.url, "tcp://10.0.0.1:2375"),
    ("DOCKERDNS_FORWARD_UPSTREAMS", "192.0.2.1,192.0.2.2:5300", lambda s: s.forward.upstreams,
     (Address("192.0.2.1", 53), Address("192.0.2.2", 5300))),
    ("DOCKERDNS_FORWARD_ENABLED", "false", lambda s: s.forward.enabled, False),
    ("DOCKERDNS_FORWARD_MAX_TTL", "600", lambda s: s.forward.max_ttl, 600),
    ("DOCKERDNS_FORWARD_CACHE_SIZE", "1048576", lambda s: s.forward.cache_size, 1048576),
    ("DOCKERDNS_ALLOW", "10.0.0.0/8,::1", lambda s: s.allow, nets("10.0.0.0/8", "::1/128")),
    ("DOCKERDNS_EXTERNAL_NAMES", "TRUE", lambda s: s.external_names, True),
    ("DOCKERDNS_HTTP_LISTEN", "0.0.0.0:5380", lambda s: s.http.listen, Address("0.0.0.0", 5380)),
    ("DOCKERDNS_LOG_LEVEL", "Debug", lambda s: s.log.level, "debug"),
    ("DOCKERDNS_RATE_LIMIT_RESPONSES_PER_SECOND", " 50 ", lambda s: s.rate_limit.responses_per_second, 50),
    ("DOCKERDNS_RATE_LIMIT_SLIP", "0", lambda s: s.rate_limit.slip, 0),
    ("DOCKERDNS_RATE_LIMIT_WINDOW", "30", lambda s: s.rate_limit.window, 30),
]


@pytest.mark.parametrize("name, value, field, expected", ENV_SETTINGS, ids=[case[0] for case in ENV_SETTINGS])
def test_environment_sets_field(tmp_path: Path, name: str, value: str, field: Field, expected: object) -> None:
    """Each DOCKERDNS_* variable sets its key; lists are comma-separated, booleans true/false."""
    assert field(load(tmp_path, environ={name: value})) == expected


def test_empty_environment_variable_is_unset(tmp_path: Path) -> None:
    """A DOCKERDNS_* variable set to the empty string leaves the key to the lower layers."""
    assert load(tmp_path, "ttl: 7\n", environ={"DOCKERDNS_TTL": ""}).ttl == 7


FLAG_SETTINGS: list[tuple[str, object, Field, object]] = [
    ("listen", ["127.0.0.1:5353", "[::1]:5353"], lambda s: s.listen,
     (Address("127.0.0.1", 5353), Address("::1", 5353))),
    ("domain", "lan", lambda s: s.domain, "lan"),
    ("ttl", "30", lambda s: s.ttl, 30),
    ("docker.url", "tcp://10.0.0.1:2375", lambda s: s.docker.url, "tcp://10.0.0.1:2375"),
    ("forward.upstreams", ["192.0.2.1"], lambda s: s.forward.upstreams, (Address("192.0.2.1", 53),)),
    ("forward.enabled", False, lambda s: s.forward.enabled, False),
    ("forward.max_ttl", "60", lambda s: s.forward.max_ttl, 60),
    ("allow", ["10.0.0.0/8"], lambda s: s.allow, nets("10.0.0.0/8")),
    ("external_names", True, lambda s: s.external_names, True),
    ("http.listen", "127.0.0.1:5380", lambda s: s.http.listen, Address("127.0.0.1", 5380)),
    ("log.level", "error", lambda s: s.log.level, "error"),
    ("rate_limit.responses_per_second", "0", lambda s: s.rate_limit.responses_per_second, 0),
    ("rate_limit.slip", "1", lambda s: s.rate_limit.slip, 1),
    ("rate_limit.window", "5", lambda s: s.rate_limit.window, 5),
]


@pytest.mark.parametrize("key, value, field, expected", FLAG_SETTINGS, ids=[case[0] for case in FLAG_SETTINGS])
def test_flag_sets_field(tmp_path: Path, key: str, value: object, field: Field, expected: object) -> None:
    """Each flag, keyed by YAML key path as cli passes it, sets its key."""
    assert field(load(tmp_path, flags={key: value})) == expected


SOURCE_PROBLEMS: list[tuple[str, dict[str, object], dict[str, str], list[str]]] = [
    ("env ttl", {}, {"DOCKERDNS_TTL": "x"}, ["DOCKERDNS_TTL: expected an integer, got 'x'"]),
    ("env boolean", {}, {"DOCKERDNS_FORWARD_ENABLED": "yes"},
     ["DOCKERDNS_FORWARD_ENABLED: expected true or false, got 'yes'"]),
    ("env list item", {}, {"DOCKERDNS_FORWARD_UPSTREAMS": "192.0.2.1,x"},
     ["DOCKERDNS_FORWARD_UPSTREAMS: expected HOST[:PORT], got 'x'"]),
    ("env listen only commas", {}, {"DOCKERDNS_LISTEN": ","},
     ["DOCKERDNS_LISTEN: expected at least one HOST:PORT, got ','"]),
    ("flag ttl", {"ttl": "x"}, {}, ["--ttl: expected an integer, got 'x'"]),
    ("flag upstream", {"forward.upstreams": ["x"]}, {}, ["--upstream: expected HOST[:PORT], got 'x'"]),
    ("flag http", {"http.listen": "nope"}, {}, ["--http: expected HOST:PORT, got 'nope'"]),
    ("flag domain", {"domain": "a b"}, {}, ["--domain: expected a DNS name, got 'a b'"]),
    ("flag rate limit", {"rate_limit.responses_per_second": "fast"}, {},
     ["--rate-limit: expected an integer, got 'fast'"]),
    ("env rate limit slip", {}, {"DOCKERDNS_RATE_LIMIT_SLIP": "-1"},
     ["DOCKERDNS_RATE_LIMIT_SLIP: expected an integer from 0 to 10, got '-1'"]),
    ("flag rate limit window", {"rate_limit.window": "0"}, {},
     ["--rate-limit-window: expected an integer from 1 to 3600, got '0'"]),
]


@pytest.mark.parametrize("flags, environ, expected", [case[1:] for case in SOURCE_PROBLEMS],
                         ids=[case[0] for case in SOURCE_PROBLEMS])
def test_source_problem(tmp_path: Path, flags: dict[str, object], environ: dict[str, str],
                        expected: list[str]) -> None:
    """Problems from the environment name the variable; from flags, the flag."""
    assert problems_of(tmp_path, flags=flags, environ=environ) == expected


def test_unknown_flag_key_is_a_programming_error(tmp_path: Path) -> None:
    """load() refuses flag keys it does not know instead of ignoring them."""
    with pytest.raises(ValueError):
        load(tmp_path, flags={"tll": "5"})


# --- Precedence: flags > environment > file > defaults ------------------------

PRECEDENCE: list[tuple[str, str | None, dict[str, str], dict[str, object], int]] = [
    ("file over defaults", "ttl: 60", {}, {}, 60),
    ("environment over defaults", None, {"DOCKERDNS_TTL": "30"}, {}, 30),
    ("flag over defaults", None, {}, {"ttl": "10"}, 10),
    ("environment over file", "ttl: 60", {"DOCKERDNS_TTL": "30"}, {}, 30),
    ("flag over file", "ttl: 60", {}, {"ttl": "10"}, 10),
    ("flag over environment", None, {"DOCKERDNS_TTL": "30"}, {"ttl": "10"}, 10),
    ("flag over environment over file", "ttl: 60", {"DOCKERDNS_TTL": "30"}, {"ttl": "10"}, 10),
]


@pytest.mark.parametrize("text, environ, flags, expected", [case[1:] for case in PRECEDENCE],
                         ids=[case[0] for case in PRECEDENCE])
def test_precedence(tmp_path: Path, text: str | None, environ: dict[str, str], flags: dict[str, object],
                    expected: int) -> None:
    """The highest layer that sets a key wins: flags > DOCKERDNS_* > YAML > defaults."""
    assert load(tmp_path, text, environ=environ, flags=flags).ttl == expected


def test_lists_are_replaced_not_merged(tmp_path: Path) -> None:
    """A list from a higher layer replaces the lower layer's list whole."""
    settings = load(tmp_path, "allow: [10.0.0.0/8]\n", environ={"DOCKERDNS_ALLOW": "192.168.0.0/16"})
    assert settings.allow == nets("192.168.0.0/16")


def test_flag_turns_http_off(tmp_path: Path) -> None:
    """--http '' turns off an HTTP listener the file turned on."""
    settings = load(tmp_path, "http: {listen: '127.0.0.1:5380'}\n", flags={"http.listen": ""})
    assert settings.http.listen is None


def test_docker_url_defaults_to_docker_host(tmp_path: Path) -> None:
    """Without docker.url, DOCKER_HOST from the environment is used; the key beats it."""
    environ = {"DOCKER_HOST": "tcp://192.0.2.9:2375"}
    assert load(tmp_path, environ=environ).docker.url == "tcp://192.0.2.9:2375"
    assert load(tmp_path, "docker: {url: 'unix:///x.sock'}", environ=environ).docker.url == "unix:///x.sock"


# --- The default allow holds the host's own addresses -----------------------------

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 172.17.0.0/16 2 0 2
        +-- 172.17.0.0/31 1 0 0
           |-- 172.17.0.0
              /16 link UNICAST
           |-- 172.17.0.1
              /32 host LOCAL
     +-- 203.0.113.0/24 2 0 2
           |-- 203.0.113.0
              /24 link UNICAST
           |-- 203.0.113.5
              /32 host LOCAL
           |-- 203.0.113.255
              /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 203.0.113.5
              /32 host LOCAL
"""
IF_INET6 = """\
20010db8000000000000000000000005 04 40 00 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
"""


def write_proc_net(tmp_path: Path) -> None:
    (tmp_path / "proc-net").mkdir()
    (tmp_path / "proc-net" / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "proc-net" / "if_inet6").write_text(IF_INET6)


def test_default_allow_holds_the_hosts_addresses(tmp_path: Path) -> None:
    """No allow given: DEFAULT_ALLOW plus every address of the host it does not already hold, IPv4 and IPv6."""
    write_proc_net(tmp_path)
    assert load(tmp_path).allow == DEFAULT_ALLOW + nets("203.0.113.5/32", "2001:db8::5/128")
    assert load(tmp_path, "allow:\n").allow == load(tmp_path).allow  # null: the default


@pytest.mark.parametrize("where", ["yaml", "env", "flag"])
def test_allow_given_is_used_exactly_as_written(tmp_path: Path, where: str) -> None:
    """An allow list the operator gives, in any layer, gets no host addresses added."""
    write_proc_net(tmp_path)
    if where == "yaml":
        settings = load(tmp_path, "allow: [10.0.0.0/8]")
    elif where == "env":
        settings = load(tmp_path, environ={"DOCKERDNS_ALLOW": "10.0.0.0/8"})
    else:
        settings = load(tmp_path, flags={"allow": ["10.0.0.0/8"]})
    assert settings.allow == nets("10.0.0.0/8")


def test_host_networks_are_this_machines_addresses() -> None:
    """The addresses read from /proc/net are exactly those `ip address` lists (iproute2 as the reference)."""
    def both() -> tuple[set[object], set[object]]:
        listed = subprocess.run(["ip", "-o", "address", "show", "up"], capture_output=True, text=True,
                                check=True).stdout
        expected = {ipaddress.ip_interface(line.split()[3]).ip for line in listed.splitlines()
                    if line.split()[2] in ("inet", "inet6")}
        read = {net.network_address for net in config.host_networks() if net.prefixlen == net.max_prefixlen}
        return expected, read

    # Other tests on this machine may add an address to lo between the two reads: look again until they agree.
    deadline = time.monotonic() + 5
    expected, read = both()
    while expected != read and time.monotonic() < deadline:
        expected, read = both()
    assert read == expected
    assert all(any(ip in net for net in config.default_allow()) for ip in expected)


# --- Upstreams from resolv.conf, never dockerdns itself -----------------------

RESOLV_CONF = """\
# generated by something
; also a comment
search example.test
options edns0 ndots:2
nameserver 192.0.2.1
nameserver 192.0.2.1
nameserver fe80::1%eth0   # link-local, scoped
nameserver 2001:DB8::53
nameserver not-an-address
#nameserver 192.0.2.99
nameserver
"""


def test_nameservers_parsed_from_resolv_conf(tmp_path: Path) -> None:
    """nameserver lines give upstreams on port 53: comments skipped, %scope stripped, duplicates and junk dropped."""
    path = tmp_path / "resolv.conf"
    path.write_text(RESOLV_CONF)
    assert config.nameservers(str(path)) == (
        Address("192.0.2.1", 53), Address("fe80::1", 53), Address("2001:db8::53", 53))


def test_missing_resolv_conf_gives_no_upstreams(tmp_path: Path) -> None:
    """An unreadable resolv.conf means no default upstreams, not an error."""
    assert config.nameservers(str(tmp_path / "none")) == ()


UPSTREAM_FILTER: list[tuple[str, list[str], str, list[str], tuple[Address, ...]]] = [
    ("own listen address removed", ["127.0.0.1:53"], "nameserver 127.0.0.1\nnameserver 192.0.2.1\n", [],
     (Address("192.0.2.1", 53),)),
    ("other port kept", ["127.0.0.1:5353"], "nameserver 127.0.0.1\n", [], (Address("127.0.0.1", 53),)),
    ("IPv6 listen removed", ["[::1]:53"], "nameserver ::1\nnameserver 127.0.0.1\n", [],
     (Address("127.0.0.1", 53),)),
    ("wildcard removes loopback", ["0.0.0.0:53"], "nameserver 127.0.0.53\nnameserver ::1\nnameserver 192.0.2.1\n",
     [], (Address("192.0.2.1", 53),)),
    ("IPv6 wildcard removes loopback", ["[::]:53"], "nameserver 127.0.0.1\nnameserver 192.0.2.1\n", [],
     (Address("192.0.2.1", 53),)),
    ("wildcard keeps Docker's embedded DNS", ["0.0.0.0:53"], "nameserver 127.0.0.11\n", [],
     (Address("127.0.0.11", 53),)),
    ("explicit upstream equal to listen removed", ["127.0.0.1:5353"], "",
     ["127.0.0.1:5353", "192.0.2.1"], (Address("192.0.2.1", 53),)),
    ("explicit loopback under wildcard removed", ["0.0.0.0:5353"], "", ["127.0.0.1:5353", "127.0.0.1"],
     (Address("127.0.0.1", 53),)),
]


@pytest.mark.parametrize("listen, resolv, upstreams, expected", [case[1:] for case in UPSTREAM_FILTER],
                         ids=[case[0] for case in UPSTREAM_FILTER])
def test_upstreams_never_reach_dockerdns(tmp_path: Path, listen: list[str], resolv: str, upstreams: list[str],
                                         expected: tuple[Address, ...]) -> None:
    """Upstreams (default or explicit) that are dockerdns's own listen addresses are removed."""
    flags: dict[str, object] = {"listen": listen}
    if upstreams:
        flags["forward.upstreams"] = upstreams
    assert load(tmp_path, flags=flags, resolv=resolv).forward.upstreams == expected


def test_env_name() -> None:
    """The variable of a key path: upper-case, dots to underscores, DOCKERDNS_ prefix."""
    assert config.env_name("forward.upstreams") == "DOCKERDNS_FORWARD_UPSTREAMS"
    assert [config.env_name(key) for key in config.FLAGS] == [
        "DOCKERDNS_LISTEN", "DOCKERDNS_DOMAIN", "DOCKERDNS_TTL", "DOCKERDNS_DOCKER_URL",
        "DOCKERDNS_FORWARD_UPSTREAMS", "DOCKERDNS_FORWARD_ENABLED", "DOCKERDNS_FORWARD_MAX_TTL",
        "DOCKERDNS_FORWARD_CACHE_SIZE", "DOCKERDNS_ALLOW",
        "DOCKERDNS_EXTERNAL_NAMES", "DOCKERDNS_HTTP_LISTEN", "DOCKERDNS_LOG_LEVEL",
        "DOCKERDNS_RATE_LIMIT_RESPONSES_PER_SECOND", "DOCKERDNS_RATE_LIMIT_SLIP", "DOCKERDNS_RATE_LIMIT_WINDOW",
        "DOCKERDNS_SWARM_URL", "DOCKERDNS_SWARM_POLL",
    ]


def test_json_config_reads_like_yaml(tmp_path: Path) -> None:
    """A config written as JSON (a subset of YAML, read by the json module) gives the same settings."""
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("ttl: 9\nrecords:\n  - {name: gw, type: A, value: 172.17.0.1}\n")
    json_file = tmp_path / "c.json"
    json_file.write_text('{"ttl": 9, "records": [{"name": "gw", "type": "A", "value": "172.17.0.1"}]}')
    from_yaml = config.load({"config": str(yaml_file)}, {})
    from_json = config.load({"config": str(json_file)}, {})
    assert from_json.ttl == from_yaml.ttl == 9 and from_json.records == from_yaml.records
