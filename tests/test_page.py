"""The status page (GET /) in a real browser: Debian's chromium, headless, driven over the DevTools protocol.

Playwright's Python package speaks the protocol; the browser is the one
tests/run installs with apt (`executable_path`), never a download of
Playwright's own.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dockerdns.app import App
from dockerdns.config import Address, ForwardSettings, HttpSettings, Settings
from dockerdns.records import Record, reverse_name
from dockerdns.stats import Stats
from dockerdns.status import StatusServer, View
from dockerdns.table import RecordTable

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}
WAIT_MS = 15_000  # how long the page may take to show a change (it polls every second)
MANY = 1000  # containers for the scale test (the issue: usable with 1,000)


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("no chromium: tests/run installs it (apt-get install chromium)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A headless chromium with a fresh --user-data-dir, as a Playwright browser context."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="tests/run installs playwright ('.[test]')")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium_path(), headless=True,
            args=CHROMIUM_FLAGS, viewport=VIEWPORT)
        try:
            yield context
        finally:
            context.close()


def serve(docker: bool) -> App:
    app = App(Settings(listen=(Address("127.0.0.1", 0),), http=HttpSettings(Address("127.0.0.1", 0)),
                       forward=ForwardSettings(False, ())), docker=docker)
    app.start()
    return app


def base_url(app: App) -> str:
    assert app.status is not None
    return f"http://{app.status.address}"


def open_page(browser: Any, app: App) -> tuple[Any, list[str]]:
    """A new tab on the page; the list fills with every URL the tab requests."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(base_url(app) + "/")
    return page, requested


def row(kind: str, name: str) -> str:
    """The CSS selector of a container's row (kind "containers") or of its changes (kind "changes")."""
    if kind == "containers":
        return f'#containers .rows .row[data-owner="{name}"]'
    return f'#changes tbody tr[data-container="{name}"]'


def ip_of(container: Any) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"])


def png_variety(png: bytes) -> int:
    """How many distinct byte values a PNG's decompressed image data holds (blank: a handful)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, size = 8, b"", (0, 0, 0)
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        data = png[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[:10])
            size = (width, height, {2: 3, 6: 4}[colour] * depth // 8)
        elif kind == b"IDAT":
            idat += data
    width, height, pixel = size
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + width * pixel), "image data does not fill the picture"
    return len(set(raw))


@pytest.fixture
def docker_app(docker_client: Any, wait_for: Callable[..., Any]) -> Iterator[App]:
    """A dockerdns App with a real Docker source and the HTTP listener on 127.0.0.1:0, in sync."""
    app = serve(docker=True)
    try:
        wait_for(lambda: app.source.in_sync, what="in sync with Docker")
        yield app
    finally:
        app.stop()


@pytest.mark.docker
def test_page_follows_docker_live(browser: Any, docker_app: App, make_container: Callable[..., Any],
                                  wait_for: Callable[..., Any], tmp_path: Path) -> None:
    """The page shows a running container, then one started after it loaded (no reload), and filters both tables."""
    first = make_container("paged")
    wait_for(lambda: any(r.owner_name == first.name for r in docker_app.table.snapshot.records()),
             what=f"{first.name} in the table")
    page, requested = open_page(browser, docker_app)
    try:
        page.wait_for_selector(row("containers", first.name), timeout=WAIT_MS)
        text = page.inner_text(row("containers", first.name))
        assert f"{first.name}.docker" in text and ip_of(first) in text and "bridge" in text and "none" in text
        page.evaluate("window.sameDocument = true")

        second = make_container("later")
        page.wait_for_selector(row("containers", second.name), timeout=WAIT_MS)
        assert ip_of(second) in page.inner_text(row("containers", second.name))
        page.wait_for_selector(row("changes", second.name), timeout=WAIT_MS)
        assert page.evaluate("window.sameDocument") is True, "the page reloaded"
        # The change that added it carries the delay from its Docker event, in the JSON and on the page.
        with urllib.request.urlopen(base_url(docker_app) + "/changes", timeout=5) as answer:
            added = [c for c in json.load(answer) if c["container"] == second.name and c["added"]]
        assert added and isinstance(added[-1]["delay_ms"], float) and 0 <= added[-1]["delay_ms"] < 5000
        # The page may show the change a moment before the source's hook dated it: wait for the next poll.
        page.wait_for_function("sel => document.querySelector(sel).innerText.endsWith(' ms')",
                               arg=row("changes", second.name) + " td.delay", timeout=WAIT_MS)

        page.fill("#filter", first.name)
        page.wait_for_selector(row("containers", second.name), state="hidden", timeout=WAIT_MS)
        assert page.is_visible(row("containers", first.name))
        assert page.is_hidden(row("changes", second.name)) and page.is_visible(row("changes", first.name))
        page.fill("#filter", "")
        page.wait_for_selector(row("containers", second.name), state="visible", timeout=WAIT_MS)

        shot = page.screenshot(path=str(tmp_path / "status-page.png"))
        assert (tmp_path / "status-page.png").read_bytes() == shot
        assert png_variety(shot) > 64, "the screenshot is blank"
        assert not [url for url in requested if not url.startswith(base_url(docker_app) + "/")], \
            "the page fetched something from elsewhere"
    finally:
        page.close()


def test_blank_screenshot_is_told_apart(browser: Any, tmp_path: Path) -> None:
    """The blank check can fail: an empty page's screenshot has next to no variety."""
    page = browser.new_page()
    try:
        page.goto("about:blank")
        assert png_variety(page.screenshot(path=str(tmp_path / "blank.png"))) < 16
    finally:
        page.close()


def many_records(count: int) -> dict[str, list[Record]]:
    """`count` containers as the naming rules publish them: name, name.network, short id, PTR."""
    owners = {}
    for i in range(count):
        name, ip, cid = f"svc-{i:04d}", f"10.{i // 250}.{i % 250}.2", f"{i:064x}"
        owners[cid] = [Record(f"{name}.docker.", "A", ip, 1, cid, name, "net", "10.0.0.0/8"),
                       Record(f"{name}.net.docker.", "A", ip, 1, cid, name, "net", "10.0.0.0/8"),
                       Record(f"{cid[:12]}.docker.", "A", ip, 1, cid, name, "net", "10.0.0.0/8"),
                       Record(reverse_name(ip), "PTR", f"{name}.docker.", 1, cid, name)]
    return owners


def test_page_usable_with_a_thousand_containers(browser: Any) -> None:
    """With 1,000 containers the page renders them all, and the filter narrows them at once."""
    app = serve(docker=False)
    page = None
    try:
        app.table.replace_all(many_records(MANY))
        page, _ = open_page(browser, app)
        started = time.monotonic()
        page.wait_for_function(f"() => document.querySelectorAll('#containers .rows .row').length === {MANY}",
                               timeout=WAIT_MS)
        shown_after = time.monotonic() - started
        # Rows off screen are not rendered (content-visibility): scrolled to, the last one is.
        page.locator(row("containers", "svc-0999")).scroll_into_view_if_needed()
        page.wait_for_function("sel => document.querySelector(sel).innerText.includes('10.3.249.2 net')",
                               arg=row("containers", "svc-0999"), timeout=WAIT_MS)
        started = time.monotonic()
        page.fill("#filter", "svc-0999")
        page.wait_for_function("() => document.getElementById('containers-count').textContent === '1 of 1000'",
                               timeout=WAIT_MS)
        filtered_after = time.monotonic() - started
        assert page.is_hidden(row("containers", "svc-0998"))
        # The filter runs in the input handler, so it is done when fill returns; a poll is not needed.
        assert filtered_after < 1.0, f"filtering 1,000 rows took {filtered_after:.2f} s"
        assert shown_after < 5.0, f"showing 1,000 containers took {shown_after:.2f} s"
    finally:
        if page is not None:
            page.close()
        app.stop()


HEALTHY = [{"name": "db.docker.", "type": "A", "value": "10.0.0.2", "ttl": 1, "owner": "db", "health": "healthy"},
           {"name": "api.docker.", "type": "A", "value": "10.0.0.3", "ttl": 1, "owner": "api",
            "health": "unhealthy"}]


def test_page_shows_health_queries_and_upstreams(browser: Any) -> None:
    """Health from the rows' `health` key, queries per second and a failing upstream, from the listener's JSON."""
    stats, forwarder = Stats(), SimpleNamespace(forwarded=0, failures=0)
    view = View(snapshot=lambda: RecordTable().snapshot, rows=lambda snapshot: HEALTHY,
                health=lambda: (True, {"status": "ok", "docker": "in sync", "records": 2, "forwarding": True,
                                       "upstreams": ["127.0.0.1:5353"]}),
                stats=stats, source=lambda: None, forwarder=lambda: forwarder, rate_limit=lambda: None)
    server = StatusServer(Address("127.0.0.1", 0), view)
    server.start()
    page = browser.new_page()
    try:
        page.goto(f"http://{server.address}/")
        page.wait_for_selector(row("containers", "db"), timeout=WAIT_MS)
        assert page.inner_text(row("containers", "db") + " .h") == "healthy"
        assert page.inner_text(row("containers", "api") + " .h") == "unhealthy"
        page.wait_for_function("() => document.getElementById('docker').innerText.includes('in sync')",
                               timeout=WAIT_MS)
        counter = stats.counter("A", "udp", "NOERROR")
        for _ in range(5000):
            next(counter)
        forwarder.forwarded = forwarder.failures = 7
        page.wait_for_function("() => document.getElementById('upstream').innerText.startsWith('failing')",
                               timeout=WAIT_MS)
        page.wait_for_function("() => parseFloat(document.getElementById('qps').innerText.replace(/,/g, '')) > 0",
                               timeout=WAIT_MS)
        assert page.inner_text("#upstreams") == "127.0.0.1:5353"
    finally:
        page.close()
        server.stop()
