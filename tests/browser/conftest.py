"""A real browser for the page tests: Debian's chromium (headless) driven by Playwright, pointed at the
system's browser (no browser download). Screenshots go to build/test-artifacts/ (CUECAM_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

ARTIFACTS = Path(os.environ.get("CUECAM_ARTIFACTS", ROOT / "build" / "test-artifacts"))


def chromium_path() -> str | None:
    for c in (os.environ.get("CUECAM_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"):
        if c and (found := shutil.which(c)):
            return found
    return None


def _missing(why: str) -> None:
    if os.environ.get("CUECAM_REQUIRE_BROWSER"):  # CI: a missing browser is a failure, not a skip
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")  # Playwright's sync API holds an event loop while it runs: gone before the
def browser() -> Iterator[Any]:  # next module's asyncio tests start
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is missing: `make setup` installs it (pyproject's dev extra)")
    exe = chromium_path()
    if exe is None:
        _missing("no chromium: apt-get install chromium (Debian's browser; .ci/run installs it)")
        return
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1500, "height": 900})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # script errors; a refused request (the 422 of a bad zone) is the page working, not an error
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None)
    pg.errors = errors
    yield pg
    ctx.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(out))
    return out


def wait_js(page: Any, expr: str, seconds: float = 20.0) -> Any:
    """Poll a JS expression (evaluated by the browser's devtools, which the page's CSP does not block)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # bounded
        v = page.evaluate(expr)
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"{expr} not true within {seconds} s")
