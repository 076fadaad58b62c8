"""Wires Settings into the parts: start, reload, stop. (Being written.)"""

from __future__ import annotations

from collections.abc import Callable

from .config import Settings


class StartError(Exception):
    """The server cannot start; the message names the address and what to try."""


def serve(load: Callable[[], Settings]) -> int:
    """Run the server until SIGTERM/SIGINT; `load` reads the config again on SIGHUP.

    Returns 0 on a clean stop; raises StartError when a socket cannot be bound.
    """
    raise NotImplementedError


def print_records(settings: Settings, as_json: bool) -> int:
    """Print the table that would be served; raise DockerUnavailable when Docker is not reachable."""
    raise NotImplementedError
