#!/usr/bin/env python3
"""Coverage-guided fuzzing of the packet decoder and of naming (issue 15), with atheris.

Two targets; each input must return, never raise:

  packets  the same bytes through every reader of packets from outside:
           wire.decode, wire.sections, wire.without_opt and wire.cacheable
           (the short run in the tests leaves these two out),
           answers.question, answers.answer (against a small table, over UDP
           and TCP, from a client inside and one outside the table's
           networks), rrl.response_key, rrl.truncated and the forwarder's
           reply parser. Seeds: every family of bench/hostile.py. Inputs
           whose decode or reply parse takes more than SLOW_MS are written
           to the slow/ directory next to the corpus (work, not a crash).
  naming   naming.records_for_container on the inspect dicts of
           tests/fixtures/inspect/*.json (a real engine's), each changed by a
           few mutations drawn from the input (`mutate_inspect`): a label
           set to an odd value, a field anywhere replaced by another JSON
           value, or removed. Sometimes with a mutated network-namespace
           owner, and with external_names on. Records must be Records;
           names that are not ASCII DNS names are counted (issue 15 item 7)
           and printed at the end, not treated as crashes.

    pip install atheris          # 3.0.0 has wheels for CPython 3.11
    python3 bench/fuzz.py packets -runs=1000000 -max_len=2048 CORPUS_DIR
    python3 bench/fuzz.py naming -runs=1000000 -max_len=4096 CORPUS_DIR

Further arguments go to libFuzzer (-seed=N, -jobs, -max_total_time=S, ...).
FUZZ_ROOT=DIR fuzzes the dockerdns package in DIR instead of this checkout's
(another branch, unpacked with `git archive`); FUZZ_KNOWN=1 counts inputs
that hit the wire.cacheable bug pinned in tests/test_hostile.py instead of
stopping on the first.
A crash stops the run and leaves crash-<sha1> (the input) in the working
directory; run it again with `python3 bench/fuzz.py TARGET crash-<sha1>`.
`--replay FILE|DIR...` runs the target over inputs without instrumentation,
for line coverage of the corpus the fuzzer built:

    python3 -m coverage run --include='dockerdns/*' bench/fuzz.py packets --replay CORPUS_DIR
    python3 -m coverage report
libFuzzer prints its coverage as it goes ("cov: N ft: M": edges and
features of the instrumented code: dockerdns and dnslib).

`mutate_packet` and `mutate_inspect` take a `Draw`, so tests/test_hostile.py
runs a short version of both targets with hypothesis instead of atheris.
"""

from __future__ import annotations

import copy
import glob
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "inspect")
KNOWN = os.environ.get("FUZZ_KNOWN") == "1"  # count the known wire.cacheable bug instead of stopping on it
REPORT_EVERY = 100_000  # inputs between two progress lines of our own (libFuzzer skips atexit)
SLOW_MS = 5.0  # an input whose decode takes longer is written down (under instrumentation: several times slower)
VALID_NAME = re.compile(r"(?:[a-z0-9_*](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)+")  # ASCII only, lower-case, absolute


class Draw(Protocol):
    """Where a mutation gets its choices: atheris' FuzzedDataProvider, or hypothesis' data()."""

    def int(self, lo: int, hi: int) -> int: ...

    def bytes(self, most: int) -> bytes: ...


class AtherisDraw:
    def __init__(self, fdp: Any):
        self.fdp = fdp

    def int(self, lo: int, hi: int) -> int:
        return int(self.fdp.ConsumeIntInRange(lo, hi))

    def bytes(self, most: int) -> bytes:
        return bytes(self.fdp.ConsumeBytes(self.fdp.ConsumeIntInRange(0, most)))


def _hostile() -> Any:
    """bench/hostile.py, loaded by path (its families are the seeds)."""
    module = sys.modules.get("bench_hostile")
    if module is None:
        spec = importlib.util.spec_from_file_location("bench_hostile", os.path.join(ROOT, "bench", "hostile.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_hostile"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return module


# --- Packets ----------------------------------------------------------------------


def seeds(limit: int = 512) -> list[bytes]:
    """A packet of every hostile family, query and reply, at most `limit` bytes."""
    hostile = _hostile()
    out = [family.build(limit) for family in hostile.FAMILIES]
    q = hostile.question()
    out += [family.build(min(limit, 1232), q) for family in hostile.REPLY_FAMILIES]
    return out


def mutate_packet(seed: bytes, draw: Draw) -> bytes:
    """`seed` changed a few times: bytes overwritten, inserted or cut, a count or pointer set, a tail cut off."""
    data = bytearray(seed)
    for _ in range(draw.int(0, 6)):
        op = draw.int(0, 5)
        at = draw.int(0, max(len(data) - 1, 0))
        if op == 0:
            data[at:at + 1] = draw.bytes(4)
        elif op == 1:
            data[at:at] = draw.bytes(16)
        elif op == 2:
            del data[at:at + draw.int(1, 16)]
        elif op == 3 and len(data) >= 12:
            field = 4 + 2 * draw.int(0, 3)  # QDCOUNT .. ARCOUNT
            data[field:field + 2] = draw.int(0, 0xFFFF).to_bytes(2, "big")
        elif op == 4:
            data[at:at + 2] = (0xC000 | draw.int(0, min(len(data) + 2, 0x3FFF))).to_bytes(2, "big")
        else:
            del data[draw.int(0, len(data)):]
    return bytes(data)


class PacketTarget:
    """Every reader of outside bytes on one input; records the slowest inputs."""

    def __init__(self, slow_dir: str | None = None, extra: bool = True):
        from dnslib import DNSRecord

        from dockerdns import answers, forwarder, rrl, wire
        from dockerdns.records import Record
        from dockerdns.table import RecordTable

        self.wire, self.answers, self.rrl, self.forwarder, self.DNSRecord = wire, answers, rrl, forwarder, DNSRecord
        table = RecordTable()
        table.replace("static", [
            Record("host.docker.", "A", "10.0.0.1", 5),
            Record("host.docker.", "AAAA", "fd00::1", 5),
            Record("www.docker.", "CNAME", "host.docker.", 5),
            Record("txt.docker.", "TXT", '"hello"', 5),
            Record("1.0.0.10.in-addr.arpa.", "PTR", "host.docker.", 5),
        ])
        table.replace("c1", [Record("web.docker.", "A", "10.1.0.5", 5, "c1", "web", "net1", "10.1.0.0/24"),
                             Record("web.docker.", "A", "10.2.0.5", 5, "c1", "web", "net2", "10.2.0.0/24")])
        self.snapshot = table.snapshot
        self.slow_dir = slow_dir
        self.slowest = 0.0
        self.extra = extra  # also the readers of upstream replies kept in the cache
        self.count = 0
        self.known = 0  # inputs that hit the known bug, with FUZZ_KNOWN=1

    def __call__(self, data: bytes) -> None:
        wire, answers = self.wire, self.answers
        self.count += 1
        if self.count % REPORT_EVERY == 0:
            print(f"packets: {self.count} inputs, {self.known} hit the known wire.cacheable bug, slowest decode + "
                  f"reply parse {self.slowest * 1e3:.1f} ms (instrumented)", file=sys.stderr, flush=True)
        started = time.perf_counter()
        query = wire.decode(data)
        reply = self.forwarder._parse_reply(data)
        spent = time.perf_counter() - started
        assert query is None or isinstance(query, (self.DNSRecord, wire.Malformed))
        if isinstance(query, wire.Malformed):
            assert query.reply[:2] == data[:2]
        assert reply is None or isinstance(reply, self.DNSRecord)
        layout = wire.sections(data)
        if layout is not None:
            assert layout.question_end >= wire.HEADER_LEN
        if self.extra:
            wire.without_opt(data)
            try:
                wire.cacheable(data)
            except ValueError:  # min() of no TTLs: an answer section of OPTs only (pinned in tests/test_hostile.py)
                if not KNOWN:
                    raise
                self.known += 1
        answers.question(data)
        for client in ("127.0.0.1", "10.1.0.9"):
            for limit in (None, wire.TCP_LIMIT):
                out = answers.answer(data, self.snapshot, True, client, limit)
                assert out is None or out[:2] == data[:2]
        self.rrl.response_key(data)
        self.rrl.truncated(data)
        if spent * 1e3 > SLOW_MS and spent > self.slowest * 0.5:
            self.slowest = max(self.slowest, spent)
            self._keep_slow(data, spent)

    def _keep_slow(self, data: bytes, spent: float) -> None:
        if self.slow_dir is None:
            return
        os.makedirs(self.slow_dir, exist_ok=True)
        name = f"slow-{spent * 1e3:09.3f}ms-{len(data)}B-{abs(hash(data)):x}"
        with open(os.path.join(self.slow_dir, name), "wb") as f:
            f.write(data)


# --- Naming -------------------------------------------------------------------------

LABEL_KEYS = ("dockerdns.name", "dockerdns.aliases", "dockerdns.ttl", "dockerdns.ignore",
              "com.docker.compose.service", "com.docker.compose.project")
ODD_TEXT = (
    "", " ", "0", "-1", "1" * 4301, "9" * 20, "2147483648", "fe80::1%eth0", "fd00::1", "::ffff:10.0.0.1",
    "10.0.0.1", "300.1.1.1", "10.0.0.1/24", "db\n", "\u212aafka", "\u0130stanbul", "a" * 64, "a" * 300, ".", "..",
    "*", "*.x", "a..b", "x.", "-a", "a-", "_srv", "true", "yes", "off", "xn--", "\x00", "a,b,,c",
    ",".join(["n"] * 100), "container:", "container:abc", "host", "none", "a.b.c.d.e.f", "DOCKER.", "docker",
    "\ud800", "é", "a b", "a\tb", "64", "/name", "//", "docker.docker.",
)


def odd_value(draw: Draw, depth: int = 0) -> Any:
    """A JSON value, often an odd one."""
    kind = draw.int(0, 9 if depth < 2 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return draw.int(0, 1) == 1
    if kind == 2:
        return draw.int(-(2**31), 2**31) * (10 ** draw.int(0, 3))
    if kind == 3:
        return float(draw.int(-1000, 1000)) / 7
    if kind in (4, 5):
        return ODD_TEXT[draw.int(0, len(ODD_TEXT) - 1)]
    if kind == 6:
        return draw.bytes(40).decode("utf-8", "surrogateescape")
    if kind == 7:
        return [odd_value(draw, depth + 1) for _ in range(draw.int(0, 4))]
    text = ODD_TEXT[draw.int(0, len(ODD_TEXT) - 1)]
    return {text or "k": odd_value(draw, depth + 1) for _ in range(draw.int(0, 3))}


def mutate_inspect(inspect: dict[str, Any], draw: Draw) -> dict[str, Any]:
    """`inspect` (changed in place, and returned) after a few mutations drawn from `draw`."""
    for _ in range(draw.int(1, 6)):
        op = draw.int(0, 3)
        if op == 0:  # a label of ours, or of Compose
            config = inspect.setdefault("Config", {})
            if not isinstance(config, dict):
                continue
            labels = config.get("Labels")
            if not isinstance(labels, dict):
                labels = config["Labels"] = {}
            key = LABEL_KEYS[draw.int(0, len(LABEL_KEYS) - 1)]
            labels[key] = odd_value(draw) if draw.int(0, 3) == 0 else ODD_TEXT[draw.int(0, len(ODD_TEXT) - 1)]
            continue
        # A field anywhere: walk down a few levels, then replace or remove what is there.
        node: Any = inspect
        for _ in range(draw.int(1, 5)):
            if isinstance(node, dict) and node:
                child = node[sorted(node, key=str)[draw.int(0, len(node) - 1)]]
            elif isinstance(node, list) and node:
                child = node[draw.int(0, len(node) - 1)]
            else:
                break
            if not isinstance(child, (dict, list)) or not child:
                break
            node = child
        if isinstance(node, dict) and node:
            key = sorted(node, key=str)[draw.int(0, len(node) - 1)]
            if op == 3:
                del node[key]
            else:
                node[key] = odd_value(draw)
        elif isinstance(node, list) and node:
            node[draw.int(0, len(node) - 1)] = odd_value(draw)
    return inspect


def fixtures() -> list[dict[str, Any]]:
    out = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


class NamingTarget:
    """records_for_container on a mutated fixture; counts names that are not ASCII DNS names."""

    def __init__(self) -> None:
        from dockerdns import naming
        from dockerdns.config import Settings
        from dockerdns.records import Record

        self.naming, self.Record = naming, Record
        self.settings = (Settings(), Settings(external_names=True))
        self.fixtures = fixtures()
        self.odd_names: dict[str, int] = {}
        self.count = 0

    def report(self) -> None:
        print(f"naming: {self.count} inputs, {len(self.odd_names)} distinct record names that are not ASCII DNS "
              "names", file=sys.stderr, flush=True)
        for name, count in sorted(self.odd_names.items(), key=lambda item: -item[1])[:10]:
            print(f"  {count:>7}  {name!r}", file=sys.stderr, flush=True)

    def __call__(self, draw: Draw) -> None:
        self.count += 1
        if self.count % REPORT_EVERY == 0:
            self.report()
        inspect = mutate_inspect(copy.deepcopy(self.fixtures[draw.int(0, len(self.fixtures) - 1)]), draw)
        owner = None
        if draw.int(0, 3) == 0:
            owner = mutate_inspect(copy.deepcopy(self.fixtures[draw.int(0, len(self.fixtures) - 1)]), draw)
        published = self.naming.records_for_container(inspect, self.settings[draw.int(0, 1)], owner)
        records = getattr(published, "records", ())  # a Published; other outcomes (not running, ...) hold none
        assert isinstance(records, tuple)
        for record in records:
            assert isinstance(record, self.Record) and isinstance(record.name, str)
            if not record.name.isascii() or VALID_NAME.fullmatch(record.name) is None:
                self.odd_names[record.name] = self.odd_names.get(record.name, 0) + 1


# --- Running ----------------------------------------------------------------------


def replay(target_name: str, paths: list[str]) -> int:
    """Run the target once on every input in `paths` (files, or directories of them), without instrumentation."""
    import atheris

    files = [os.path.join(p, f) for p in paths if os.path.isdir(p) for f in sorted(os.listdir(p))]
    files += [p for p in paths if os.path.isfile(p)]
    if target_name == "packets":
        from dockerdns import forwarder, wire

        packets = PacketTarget()
        slowest: dict[str, tuple[float, str]] = {"wire.decode": (0.0, ""), "forwarder._parse_reply": (0.0, "")}
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            packets(data)
            for name, read in (("wire.decode", wire.decode), ("forwarder._parse_reply", forwarder._parse_reply)):
                started = time.process_time()
                read(data)
                spent = time.process_time() - started
                if spent > slowest[name][0]:
                    slowest[name] = (spent, f"{os.path.basename(path)} ({len(data)} B)")
        print(f"replayed {len(files)} inputs, {packets.known} hit the known wire.cacheable bug")
        for name, (spent, where) in slowest.items():
            print(f"slowest {name}: {spent * 1e3:.2f} ms CPU, {where}")
    else:
        naming = NamingTarget()
        for path in files:
            with open(path, "rb") as f:
                naming(AtherisDraw(atheris.FuzzedDataProvider(f.read())))
        naming.report()
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("packets", "naming"):
        print(__doc__)
        return 2
    import atexit

    import atheris

    target_name = sys.argv.pop(1)
    sys.path.insert(0, os.environ.get("FUZZ_ROOT", ROOT))  # the dockerdns to fuzz: this checkout's by default
    if sys.argv[1:2] == ["--replay"]:
        return replay(target_name, sys.argv[2:])
    with atheris.instrument_imports(include=["dockerdns", "dnslib"]):
        if target_name == "packets":
            import dnslib  # noqa: F401
            import dockerdns.answers  # noqa: F401
            import dockerdns.forwarder  # noqa: F401
            import dockerdns.rrl  # noqa: F401
            import dockerdns.wire  # noqa: F401
        else:
            import dockerdns.naming  # noqa: F401
    import dockerdns

    print(f"fuzzing {target_name} of {os.path.dirname(dockerdns.__file__)}", file=sys.stderr, flush=True)
    corpus = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    one_input: Callable[[bytes], None]
    if target_name == "packets":
        packets = PacketTarget(os.path.join(os.path.dirname(os.path.abspath(corpus)), "slow") if corpus else None)
        if corpus and os.path.isdir(corpus) and not os.listdir(corpus):
            for i, seed in enumerate(seeds()):
                with open(os.path.join(corpus, f"seed-{i:02d}"), "wb") as f:
                    f.write(seed)
        one_input = packets
    else:
        naming = NamingTarget()

        def one_input(data: bytes) -> None:
            naming(AtherisDraw(atheris.FuzzedDataProvider(data)))

        atexit.register(naming.report)
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
