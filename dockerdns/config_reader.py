"""The config read again (SIGHUP) in a child process, so that a reload never takes the queries' CPU.

A reload of a 200-record file is about 6 ms of Python, most of it PyYAML
building objects. In the server's process that time holds the GIL, and the
queries wait for it (at 5 reloads a second the p99 was 6.6 ms against 0.56
quiet). A thread at a lower priority is worse: preempted while it holds the
GIL, it stalls every query (app._Reloader). A child process has a GIL of its
own, so it can run at the lowest priority, and the server keeps only what
must be its own: the records that changed and the table's diff (about 1 ms,
in steps: table.py Rule 6).

Rule 1: the child is this module run as a program, started on the first
        reload and kept while the server runs. It calls config.load exactly
        as the server would (the same flags, the server's environment at
        the time of the read), at nice CHILD_NICE: a busy host delays a
        reload, never a query. Its standard input closing (the server
        gone) ends it.
Rule 2: what comes back is the Settings without their records, pickled,
        and the records as plain tuples. Settings pickled to the same bytes
        as the last read's are that same object; a record equal to one of
        the last read is that same object (the table compares them by
        identity first), for lists of up to MAX_KEPT_RECORDS.
Rule 3: whatever goes wrong with the child (cannot start, died, answered
        something unreadable) costs nothing but speed: that read is done in
        this process, with one warning, and the next read starts a new
        child. So is a read that failed in the child with anything but
        ConfigError, so that it fails here the way it always did.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import fields, replace
from operator import attrgetter
from typing import IO, Any

from . import __version__, config
from .records import Record

log = logging.getLogger(__name__)

# The child's niceness: the lowest. A query thread that wakes preempts it at once (it has used its share
# within microseconds), and it still gets about 1.5% of a CPU that a busy process holds: a reload then takes
# 0.5 s, where SCHED_IDLE (tried) took 2 to 4 s.
CHILD_NICE = 19
MAX_KEPT_RECORDS = 50_000  # a kept record costs its tuple and a dict slot (about 200 bytes)
_ROW = attrgetter(*(f.name for f in fields(Record)))  # a record as a tuple, in Record's own order
_LENGTH = struct.Struct("!I")  # each message: its length, then a pickle
_SETTINGS, _PROBLEMS, _FAILED = "settings", "problems", "failed"
# What every answer carries and the server checks: the child runs the server's code. It may not, when the
# package was upgraded in place after the server started, or another copy comes first on the child's path.
SIGNATURE = (__version__, tuple(f.name for f in fields(Record)), tuple(f.name for f in fields(config.Settings)))
PR_SET_PDEATHSIG = 1  # prctl(2): a signal for this process when the thread that started it ends


class ConfigReader:
    """`load()` is config.load(flags, os.environ), read in a child process (Rule 1).

    Called from one thread at a time (the reload thread); `close()` from any.
    """

    def __init__(self, flags: Mapping[str, object]):
        self._flags = dict(flags)
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # the child, against close()
        self._closed = False
        self._kept: dict[tuple, Record] = {}
        self._last: tuple[bytes, Any] = (b"", None)  # the settings but their records, pickled and read

    def load(self) -> config.Settings:
        """The settings as config.load reads them now; raises ConfigError like it."""
        try:
            kind, body = self._read()
            if kind == _SETTINGS:
                return self._settings(*body)
        except Exception as err:  # Rule 3: the child failed us, whatever the way
            if self._closed:  # the server is stopping: no read is wanted, least of all one that may hang here
                raise OSError("the config reader is closed") from err
            self._drop_child()
            log.warning("config reader: %s (%s); reading the config in this process",
                        str(err) or "failed", type(err).__name__)
            return config.load(self._flags, os.environ)
        if kind == _PROBLEMS:
            raise config.ConfigError(body[0])
        return config.load(self._flags, os.environ)  # _FAILED: to fail here as it always did (Rule 3)

    def _read(self) -> tuple[str, tuple]:
        reply = self._ask(pickle.dumps((self._flags, dict(os.environ)), pickle.HIGHEST_PROTOCOL))
        signature, kind, *body = pickle.loads(reply)
        if signature != SIGNATURE:
            raise ValueError(f"the child runs other code (dockerdns {signature[0]}, this is {SIGNATURE[0]})")
        return kind, tuple(body)

    def _settings(self, pickled: bytes, rows: tuple[tuple, ...]) -> config.Settings:
        if pickled != self._last[0]:  # the same bytes: the same settings (their networks cost 0.2 ms to build)
            self._last = (pickled, pickle.loads(pickled))
        return replace(self._last[1], records=self._records(rows))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            child, self._child = self._child, None
        if child is not None:
            _end(child)

    def _records(self, rows: tuple[tuple, ...]) -> tuple[Record, ...]:
        kept = self._kept
        get = kept.get
        records = tuple([get(row) or Record(*row) for row in rows])
        self._kept = dict(zip(rows, records)) if len(rows) <= MAX_KEPT_RECORDS else {}
        return records

    def _ask(self, request: bytes) -> bytes:
        with self._lock:
            if self._closed:
                raise OSError("closed")
            if self._child is None or self._child.poll() is not None:
                if self._child is not None:
                    _end(self._child)  # died since the last read (its pipes closed, its status taken)
                self._child = _start()
            child = self._child
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(_LENGTH.pack(len(request)) + request)
        child.stdin.flush()
        (length,) = _LENGTH.unpack(_read_exactly(child.stdout, _LENGTH.size))
        return _read_exactly(child.stdout, length)

    def _drop_child(self) -> None:
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            _end(child)


def _start() -> subprocess.Popen[bytes]:
    """The child, `python -m dockerdns.config_reader PID`, found the way the server was (same environment and
    directory; a child that finds other code is caught by SIGNATURE). It has nothing to say but its answers:
    should it fail, the server's one warning says so (Rule 3), never a traceback of the child's."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True)


def _end(child: subprocess.Popen[bytes]) -> None:
    """Kill first: a read stuck in the child (a FIFO) must not hold up closing its pipes."""
    child.kill()
    child.wait()
    for stream in (child.stdin, child.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError("the config reader ended")
    return data


# --- The child ------------------------------------------------------------------


def _answer(flags: Mapping[str, object], environ: Mapping[str, str]) -> tuple[Any, ...]:
    try:
        settings = config.load(flags, environ)
    except config.ConfigError as err:
        return (SIGNATURE, _PROBLEMS, err.problems)
    except Exception:  # read again in the server, to fail there as it always did (Rule 3)
        return (SIGNATURE, _FAILED)
    bare = pickle.dumps(replace(settings, records=()), pickle.HIGHEST_PROTOCOL)
    return (SIGNATURE, _SETTINGS, bare, tuple(map(_ROW, settings.records)))


def _child_main(server: int) -> int:
    # The server blocks its signals in every thread and takes them with sigwait; this process inherited the
    # mask. Take them again: SIGTERM and SIGINT end it quietly, SIGHUP (the server's reload, perhaps sent
    # to the whole group) is not for it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    _end_with(server)
    os.nice(CHILD_NICE)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # the pipe carries answers only (stderr goes nowhere: _start)
    while True:
        header = source.read(_LENGTH.size)
        if len(header) != _LENGTH.size:
            return 0  # the server closed the pipe: it is gone or stopping
        (length,) = _LENGTH.unpack(header)
        flags, environ = pickle.loads(_read_exactly(source, length))
        reply = pickle.dumps(_answer(flags, environ), pickle.HIGHEST_PROTOCOL)
        sink.write(_LENGTH.pack(len(reply)) + reply)
        sink.flush()


def _end_with(server: int) -> None:
    """SIGKILL this process when the server ends, even while a read hangs (a FIFO never written): Linux's
    parent-death signal. Elsewhere the pipe's end (EOF) is what ends it, once a read returns."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (AttributeError, OSError):
        return
    if os.getppid() != server:  # the server was gone before the signal was asked for
        os._exit(0)


if __name__ == "__main__":
    sys.exit(_child_main(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()))
