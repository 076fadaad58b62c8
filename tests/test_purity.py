"""The pure core stays pure: importing a pure module loads no sockets, threads, clocks, docker or yaml.

STYLE.md habit 17. dnslib, the wire-format library, itself imports socket,
threading and time (for its own client and server helpers); the modules that
use it are checked for what they add beyond dnslib, and their own imports are
read from their source.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FORBIDDEN = {"socket", "threading", "time", "docker", "yaml", "requests", "logging", "select", "selectors"}
# Modules that must not even load dnslib (so nothing of the above at all), and those built on it.
WITHOUT_DNSLIB = ["records", "settings", "naming", "snapshot", "swarm", "fairqueue"]
WITH_DNSLIB = ["resolver", "wire", "answers"]


PURE = {"dockerdns", *(f"dockerdns.{m}" for m in WITHOUT_DNSLIB + WITH_DNSLIB)}


def loaded_by(module: str, first: str = "") -> set[str]:
    code = (f"import sys; {first}; before = set(sys.modules); import dockerdns.{module}; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    loaded = set(out.stdout.split())
    ours = {name for name in loaded if name.split(".")[0] == "dockerdns"}
    assert ours <= PURE, ours - PURE  # a pure module imports only pure modules
    return loaded


@pytest.mark.parametrize("module", WITHOUT_DNSLIB)
def test_pure_modules_load_no_io(module: str) -> None:
    """Importing the module in a fresh interpreter loads none of the I/O, thread or clock modules."""
    loaded = loaded_by(module, "pass")
    assert f"dockerdns.{module}" in loaded
    assert not loaded & (FORBIDDEN | {"dnslib"}), loaded & (FORBIDDEN | {"dnslib"})


@pytest.mark.parametrize("module", WITH_DNSLIB)
def test_pure_modules_add_nothing_to_dnslib(module: str) -> None:
    """Beyond what dnslib loads itself, the module loads none of the I/O, thread or clock modules."""
    loaded = loaded_by(module, "import dnslib")
    assert f"dockerdns.{module}" in loaded
    assert not loaded & FORBIDDEN, loaded & FORBIDDEN


@pytest.mark.parametrize("module", WITHOUT_DNSLIB + WITH_DNSLIB)
def test_pure_modules_import_no_io_themselves(module: str) -> None:
    """The module's own source imports none of the I/O, thread or clock modules."""
    tree = ast.parse((ROOT / "dockerdns" / f"{module}.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and not node.level}
    assert not imported & FORBIDDEN, imported & FORBIDDEN
