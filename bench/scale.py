#!/usr/bin/env python3
"""Scale: syncing many containers, loading many static records, memory, and the cost of one event.

Synthetic but realistic: the container inspect data are copies of a real
`docker inspect` (tests/fixtures/inspect/two-networks.json) with their ids,
names and addresses changed, pushed through the same code the docker source
runs on a sync (naming rules, then one `replace_all`). Docker's own share of
a real sync (HTTP round trips for list and inspect) is measured separately by
`--real N`, which starts N busybox containers on the local engine.

    python3 bench/scale.py [--containers 1000] [--static 50000] [--real 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from dockerdns import config  # noqa: E402
from dockerdns.config import Settings  # noqa: E402
from dockerdns.naming import records_for_container  # noqa: E402
from dockerdns.records import Record  # noqa: E402
from dockerdns.table import RecordTable  # noqa: E402

FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "inspect", "two-networks.json")


def synthetic(base: dict[str, Any], i: int) -> dict[str, Any]:
    inspect = copy.deepcopy(base)
    inspect["Id"] = f"{i:012x}" + "0" * 52
    inspect["Name"] = f"/svc-{i}"
    inspect["Config"]["Hostname"] = inspect["Id"][:12]
    for n, net in enumerate(inspect["NetworkSettings"]["Networks"].values()):
        net["IPAddress"] = f"10.{100 + n}.{i // 250}.{i % 250 + 2}"
        net["IPPrefixLen"] = 16
        net["Aliases"] = [f"alias-{i}"]
    return inspect


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=1000)
    parser.add_argument("--static", type=int, default=50000)
    parser.add_argument("--real", type=int, default=0, help="also time a real sync of N busybox containers")
    args = parser.parse_args()
    settings = Settings()
    with open(FIXTURE) as f:
        base = json.load(f)

    inspects = [synthetic(base, i) for i in range(args.containers)]
    table = RecordTable()
    started = time.perf_counter()
    by_owner = {i["Id"]: records_for_container(i, settings).records for i in inspects}
    table.replace_all(by_owner)
    sync = time.perf_counter() - started
    total = sum(len(r) for r in by_owner.values())
    print(f"sync of {args.containers} containers ({total} records), naming + table: {sync * 1000:.0f} ms")
    print(f"resident memory after it: {rss_mb():.0f} MB (peak)")

    for size in (1000, 10000, 50000):
        t = RecordTable()
        t.replace("static", [Record(f"h{i}.docker.", "A", f"10.9.{i // 250 % 250}.{i % 250}", 5)
                             for i in range(size)])
        one = records_for_container(inspects[0], settings).records
        times = []
        for round_ in range(200):
            started = time.perf_counter()
            t.replace(inspects[0]["Id"], one if round_ % 2 == 0 else ())
            times.append(time.perf_counter() - started)
        print(f"one container's update ({len(one)} records) in a table of {size} records: "
              f"median {statistics.median(times) * 1e6:.0f} us")

    records = [{"name": f"s{i}", "type": "A", "value": f"10.{i // 62500}.{i // 250 % 250}.{i % 250}"}
               for i in range(args.static)]
    for form in ("yaml", "json"):
        with tempfile.NamedTemporaryFile("w", suffix=f".{form}", delete=False) as f:
            if form == "json":
                json.dump({"records": records}, f)
            else:
                f.write("records:\n")
                f.writelines(f"  - {{name: {r['name']}, type: A, value: {r['value']}}}\n" for r in records)
            path = f.name
        started = time.perf_counter()
        loaded = config.load({"config": path}, {})
        static_table = RecordTable()
        static_table.replace("static", loaded.records)
        load = time.perf_counter() - started
        os.unlink(path)
        print(f"{args.static} static records, config in {form.upper()}: load + table {load * 1000:.0f} ms")
    print(f"resident memory at the end: {rss_mb():.0f} MB (peak)")

    if args.real:
        real_sync(args.real, settings)
    return 0


def real_sync(count: int, settings: Settings) -> None:
    import docker

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    import dockerd

    from dockerdns.docker_source import DockerSource

    dockerd.ensure_running()
    dockerd.ensure_image()
    client = docker.from_env(version="auto")
    made = []
    try:
        for i in range(count):
            made.append(client.containers.run(dockerd.IMAGE, ["sleep", "3600"], detach=True, init=True,
                                              labels={"dockerdns-bench": "1"}))
        table = RecordTable()
        source = DockerSource(settings, table)
        started = time.perf_counter()
        source.start()
        while not source.in_sync:
            time.sleep(0.001)
        print(f"real sync of {count} running containers (connect, subscribe, list, inspect, table): "
              f"{(time.perf_counter() - started) * 1000:.0f} ms")
        source.stop()
    finally:
        for c in made:
            c.remove(force=True)


if __name__ == "__main__":
    sys.exit(main())
