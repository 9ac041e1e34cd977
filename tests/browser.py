"""Real headless Chromium for the console's tests: Debian's ``/usr/bin/chromium`` driven by Playwright for Python.

Playwright's own browser download (``playwright install``) is never used. Without ``/usr/bin/chromium`` the tests
skip, saying so (``.ci/run`` installs it; CI fails on any skip). Each :class:`Tab` records its console errors,
uncaught exceptions and every request it makes, so a test can assert that none failed and none left the api's origin.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from tests.support import ROOT

CHROMIUM = Path("/usr/bin/chromium")
#: The api's address under a host name (:data:`ARGS` maps it to 127.0.0.1): ``http://conveyor.test:<port>``.
NAME = "conveyor.test"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A name that is not localhost for the api, so pages behave as they would on a real host (Swagger UI, say,
    # treats localhost apart); nothing else resolves differently.
    f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
]
#: Set to a directory (``docs/screenshots``) to also write there the screenshots the README shows.
SCREENSHOTS_VARIABLE = "CONVEYOR_SCREENSHOTS"


def require_chromium() -> None:
    """Skip the calling test when Debian's chromium is not installed."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: apt-get install chromium chromium-driver (.ci/run does it as root)")


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium (Debian's), closed on exit."""
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page of its own browser context, with what it logged and requested."""

    page: Page
    origin: str
    shots: Path
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def foreign(self) -> list[str]:
        """Requests that went anywhere but the api's origin (``data:`` and this origin's ``blob:`` URLs stay in the
        page)."""
        local = ("data:", f"blob:{self.origin}/")
        return [url for url in self.requests if not url.startswith(local) and _origin(url) != self.origin]

    def screenshot(self, name: str, readme: bool = False) -> Path:
        """Save the page as ``NAME.png`` in the test's directory; one the README shows (``readme``) also under
        ``$CONVEYOR_SCREENSHOTS`` when that is set."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path))
        target = os.environ.get(SCREENSHOTS_VARIABLE)
        if target and readme:
            where = Path(target) if Path(target).is_absolute() else ROOT / target
            where.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, where / path.name)
        return path


def by_name(base_url: str) -> str:
    """``base_url`` (``http://127.0.0.1:<port>``) under :data:`NAME`."""
    return base_url.replace("127.0.0.1", NAME)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@contextlib.contextmanager
def tab(browser: Browser, base_url: str, shots: Path, width: int = 1280, height: int = 860) -> Iterator[Tab]:
    """A new page on ``base_url``'s origin, recording console errors, page errors and requests."""
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(30_000)
    opened = Tab(page, _origin(base_url), shots)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            opened.errors.append(f"{message.text} ({message.location.get('url', '')})")

    def on_request(request: Request) -> None:
        opened.requests.append(request.url)

    def on_failed(request: Request) -> None:
        opened.failed.append(f"{request.url}: {request.failure}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: opened.errors.append(f"uncaught: {error}"))
    page.on("request", on_request)
    page.on("requestfailed", on_failed)
    try:
        yield opened
    finally:
        context.close()
