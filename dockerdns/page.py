"""The status page served at GET /: one HTML file, its script and style inline.

Rule 1: nothing external. The page loads no script, style, font or image
        from anywhere; its Content-Security-Policy (a meta tag) allows only
        inline code and requests to the listener that served it.
Rule 2: the page reads what anyone can read: it polls GET /records,
        /changes, /healthz and /metrics, so it shows nothing the JSON and
        the metrics do not, and computes queries per second and the
        upstream state from the counters in /metrics.

The HTML is package data (dockerdns/status.html, shipped by setup.cfg),
read once. Thread-safety: `html` may be called from any thread.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

HTML = "text/html; charset=utf-8"


@cache
def html() -> bytes:
    """The page's bytes."""
    return resources.files(__package__).joinpath("status.html").read_bytes()
