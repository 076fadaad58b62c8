"""The config read again in a child process: the same Settings as config.load, and nothing lost when it fails."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockerdns import config, config_reader
from dockerdns.config_reader import CHILD_NICE, ConfigReader

RECORDS = """\
ttl: 42
records:
  - {name: web, type: A, value: 10.0.0.1}
  - {name: web, type: A, value: 10.0.0.2}
  - {name: alias, type: CNAME, value: web}
  - {name: _http._tcp.web, type: SRV, value: "0 5 80 web"}
  - {name: txt, type: TXT, value: '"hello world"', ttl: 7}
"""


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "dockerdns.yaml"
    p.write_text(RECORDS)
    return p


@pytest.fixture
def reader(path: Path) -> Iterator[ConfigReader]:
    r = ConfigReader({"config": str(path), "forward.upstreams": ["127.0.0.1:5353"]})
    yield r
    r.close()


def child_of(reader: ConfigReader) -> int:
    assert reader._child is not None
    return reader._child.pid


def test_reads_what_config_load_reads(reader: ConfigReader, path: Path) -> None:
    """The child's Settings equal config.load's for the same flags and environment, records and all."""
    expected = config.load({"config": str(path), "forward.upstreams": ["127.0.0.1:5353"]}, os.environ)
    got = reader.load()
    assert got == expected
    assert got.records == expected.records and len(got.records) == 5
    assert os.getpid() != child_of(reader)


def test_problems_come_back_as_config_error(reader: ConfigReader, path: Path) -> None:
    """A bad file raises ConfigError with the very lines config.load gives."""
    path.write_text("ttl: soon\nrecords:\n  - {name: web, type: A, value: 10.0.0.300}\n")
    with pytest.raises(config.ConfigError) as expected:
        config.load({"config": str(path)}, os.environ)
    with pytest.raises(config.ConfigError) as got:
        reader.load()
    assert got.value.problems == expected.value.problems and len(got.value.problems) == 2


def test_unchanged_records_are_the_same_objects(reader: ConfigReader, path: Path) -> None:
    """A record equal to one of the last read is that object (the table compares by identity first)."""
    first = reader.load()
    path.write_text(RECORDS.replace("10.0.0.2", "10.0.0.3"))
    second = reader.load()
    assert [a is b for a, b in zip(first.records, second.records)] == [True, False, True, True, True]
    assert second.records[1].value == "10.0.0.3"


def test_the_child_reads_at_the_lowest_priority(reader: ConfigReader) -> None:
    """The child runs at nice 19: any query thread that wakes takes the CPU from it."""
    reader.load()
    assert os.getpriority(os.PRIO_PROCESS, child_of(reader)) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + CHILD_NICE)


def test_the_child_stays_for_the_next_read(reader: ConfigReader) -> None:
    """One child serves every read while it lives: no interpreter starts per reload."""
    reader.load()
    pid = child_of(reader)
    reader.load()
    assert child_of(reader) == pid


def test_a_child_that_died_between_reads_is_replaced(reader: ConfigReader, path: Path) -> None:
    """A child killed while idle (the OOM killer, an admin) costs nothing: the next read starts a new one."""
    reader.load()
    assert reader._child is not None
    old = reader._child
    old.kill()
    old.wait()
    path.write_text(RECORDS.replace("ttl: 42", "ttl: 43"))
    assert reader.load().ttl == 43
    assert child_of(reader) != old.pid and old.stdout is not None and old.stdout.closed


def test_a_child_running_other_code_costs_one_warning(reader: ConfigReader, path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A child whose code is not the server's (an upgrade in place, another copy first on its path) is not
    believed: the read is done here, right, with one warning, and the next read has a new child."""
    reader.load()
    pid = child_of(reader)
    monkeypatch.setattr(config_reader, "SIGNATURE", ("0.0.0", ("name", "shape"), ()))
    path.write_text(RECORDS.replace("ttl: 42", "ttl: 43"))
    with caplog.at_level(logging.WARNING, logger="dockerdns.config_reader"):
        assert reader.load().ttl == 43
    assert [r.getMessage() for r in caplog.records if "other code" in r.getMessage()]
    assert reader._child is None  # dropped (killed): the next read starts another
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_the_child_takes_signals_and_ignores_sighup(reader: ConfigReader) -> None:
    """The server blocks SIGTERM, SIGINT and SIGHUP in every thread; its child does not keep that mask:
    SIGTERM ends it (a stop of the whole group), SIGHUP (a reload sent to the group) does not."""
    blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)  # as the server's threads have them
    try:
        reader.load()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
    pid = child_of(reader)
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"SigBlk:\s*([0-9a-f]+)", status).group(1), 16)  # type: ignore[union-attr]
    assert not mask & (1 << (signal.SIGTERM - 1)) and not mask & (1 << (signal.SIGINT - 1))
    os.kill(pid, signal.SIGHUP)
    assert reader.load().ttl == 42 and child_of(reader) == pid
    os.kill(pid, signal.SIGTERM)
    assert reader._child is not None and reader._child.wait(timeout=10) == -signal.SIGTERM


def test_a_child_that_cannot_start_leaves_the_read_here(path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """No interpreter to start (a frozen build, a removed venv): the read is done in this process."""
    monkeypatch.setattr(sys, "executable", str(path.parent / "no-such-python"))
    reader = ConfigReader({"config": str(path)})
    try:
        with caplog.at_level(logging.WARNING, logger="dockerdns.config_reader"):
            assert len(reader.load().records) == 5
        assert any("reading the config in this process" in r.getMessage() for r in caplog.records)
    finally:
        reader.close()


def test_close_does_not_wait_for_a_read_that_hangs(tmp_path: Path) -> None:
    """A config path that blocks (a FIFO nobody writes) holds the child, never close(); the read then fails."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    reader = ConfigReader({"config": str(fifo)})
    failed: list[BaseException] = []

    def read() -> None:
        try:
            reader.load()
        except BaseException as err:  # noqa: B902 (what the read raised is the point)
            failed.append(err)
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while reader._child is None and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    reader.close()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert failed and isinstance(failed[0], OSError)
