"""The `dockerdns` command line, run as `python -m dockerdns` in a subprocess.

serve and most of records need app.py and Docker; they are tested elsewhere
(only the end of `records` output through a closed pipe is here). Every run
gets the environment without its DOCKERDNS_* variables, so the caller's
configuration never leaks in.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dockerdns import __version__

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conf" / "dockerdns.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith("DOCKERDNS_")}
    return subprocess.run(
        [sys.executable, "-m", "dockerdns", *args],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env=environ,
    )


def test_version() -> None:
    """--version prints `dockerdns <version>` and exits 0."""
    result = run("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"dockerdns {__version__}\n", "")


def test_help() -> None:
    """--help prints the usage with the commands and exits 0."""
    result = run("--help")
    assert result.returncode == 0
    assert "check-config" in result.stdout and "--listen" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "dockerdns: error: unrecognized arguments: --bogus"),
    (["serve", "--bogus"], "dockerdns: error: unrecognized arguments: --bogus"),
    (["records", "--ttl"], "dockerdns: error: argument --ttl: expected one argument"),
    (["check-config", "--listen", "127.0.0.1:53"], "dockerdns: error: unrecognized arguments: --listen 127.0.0.1:53"),
    (["bogus"], "dockerdns: error: argument COMMAND: invalid choice: 'bogus' "
                "(choose from 'serve', 'records', 'check-config')"),
])
def test_bad_usage(args: list[str], message: str) -> None:
    """Bad usage is exit 2 with exactly one line on stderr and no traceback."""
    result = run(*args)
    assert (result.returncode, result.stderr, result.stdout) == (2, message + "\n", "")


def test_bad_flag_values_reported_per_flag() -> None:
    """Bad option values are exit 2, one line per problem naming the flag; nothing is started."""
    result = run("--ttl", "x", "--listen", "nowhere", "-c", str(SAMPLE))
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == [
        "dockerdns: --listen: expected HOST:PORT, got 'nowhere'",
        "dockerdns: --ttl: expected an integer, got 'x'",
    ]


def test_bad_config_file(tmp_path: Path) -> None:
    """A bad config file is exit 2 with one stderr line per problem, each naming its key."""
    path = tmp_path / "bad.yaml"
    path.write_text("ttl: abc\nforward:\n  upstreams: [192.0.2.1, x]\n  foo: 1\n")
    for args in (["-c", str(path)], ["check-config", "-c", str(path)]):
        result = run(*args)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        assert result.stderr.splitlines() == [
            "dockerdns: forward.foo: unknown key",
            "dockerdns: ttl: expected an integer, got 'abc'",
            "dockerdns: forward.upstreams[1]: expected HOST[:PORT], got 'x'",
        ]


def test_zone_problem_exit_2_naming_both_records(tmp_path: Path) -> None:
    """A CNAME beside other data: check-config and serve exit 2 with one line naming both records, nothing started."""
    path = tmp_path / "zone.yaml"
    path.write_text("records:\n  - {name: gateway, type: A, value: 172.17.0.1}\n"
                    "  - {name: api, type: A, value: 10.0.0.1}\n  - {name: api, type: CNAME, value: web.docker.}\n")
    line = ("dockerdns: records[2]: CNAME at api.docker. beside records[1] (A); "
            "a CNAME stands alone at its name (RFC 2181 section 10.1)\n")
    for args in (["check-config", "-c", str(path)], ["-c", str(path), "--listen", "127.0.0.1:0"]):
        result = run(*args)
        assert (result.returncode, result.stderr, result.stdout) == (2, line, ""), args


def test_check_config_ok() -> None:
    """check-config of a good file prints `<file>: ok` and exits 0."""
    result = run("check-config", "-c", str(SAMPLE))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{SAMPLE}: ok\n", "")


def test_check_config_missing_file(tmp_path: Path) -> None:
    """check-config of a missing file is exit 2 with one line naming the file."""
    missing = tmp_path / "nope.yaml"
    result = run("check-config", "-c", str(missing))
    assert (result.returncode, result.stderr, result.stdout) == (2, f"dockerdns: {missing}: no such file\n", "")


def test_check_config_yaml_error(tmp_path: Path) -> None:
    """check-config of a file that does not parse names the file and line."""
    path = tmp_path / "broken.yaml"
    path.write_text("ttl: 5\nlisten: a: b\n")
    result = run("check-config", "-c", str(path))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"dockerdns: {path}:2: mapping values are not allowed")


@pytest.mark.parametrize("args", [[], ["--json"], ["--watch"], ["--watch", "--json"]])
def test_records_into_a_closed_pipe_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    """`dockerdns records | head -c 20`: the reader going away is a normal end, exit 0 and no traceback."""
    path = tmp_path / "big.yaml"
    # Far more than a pipe holds (64 KiB), so the writer is still writing when the reader goes.
    path.write_text("records:\n" + "".join(
        f"  - {{name: host{i}, type: A, value: 10.0.{i // 250}.{i % 250 + 1}}}\n" for i in range(3000)))
    environ = {key: value for key, value in os.environ.items() if not key.startswith("DOCKERDNS_")}
    proc = subprocess.Popen([sys.executable, "-m", "dockerdns", "records", *args, "-c", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=environ)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert len(proc.stdout.read(20)) == 20
        proc.stdout.close()  # what `head -c 20` does once it has its bytes
        assert proc.wait(timeout=20) == 0
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
