"""The commissioning page in a real browser on the sim board (a real firmware process on vtest.avi):
people appear as boxes within seconds, the zones are the config's, and a zone drawn in the editor is
saved, validated (a bad one shows the error and changes nothing) and names the next vectors."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from firmware.config import load_config
from tests import device
from tests.browser.conftest import screenshot, wait_js

TOKEN = "browser-test-token-0123456789abcdef"


@pytest.fixture
def board(models_dir, vtest, tmp_path):
    (tmp_path / "door-1.key").write_text(bytes(range(32)).hex() + "\n")  # a sign's companion, paired
    path = device.write_config(tmp_path, {"privacy": {"optout": {"companions": [
        {"name": "door-1", "key_file": str(tmp_path / "door-1.key"), "position": "below the sign's text"}]}}})
    proc = device.start(path, TOKEN)
    try:
        url = device.wait_url(proc)
        yield url, path
    finally:
        device.stop(proc)


def _vectors(url: str, since: int) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/v1/vectors?since={since}&limit=1000", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def _click(page: Any, x: float, y: float) -> None:
    box = page.locator("#canvas").bounding_box()
    page.mouse.click(box["x"] + x * box["width"], box["y"] + y * box["height"])


def _green_pixels(page: Any) -> int:
    """How much of the canvas the page drew in the box colour (#00e676): the boxes are on it."""
    return page.evaluate("""() => {
        const c = document.getElementById('canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) if (d[i] === 0 && d[i + 1] === 230 && d[i + 2] === 118) n++;
        return n; }""")


def test_people_appear_as_boxes_and_the_zones_are_the_configs(board, page):
    url, path = board
    page.goto(f"{url}/ui#token={TOKEN}")
    t0 = time.monotonic()
    wait_js(page, "() => window.cuecam.last && window.cuecam.last.people.length > 0", 30)
    seen_s = time.monotonic() - t0
    print(f"people_on_page_s: {seen_s:.2f}")
    assert seen_s < 15, seen_s  # within a few seconds of opening the page (the model loads first)
    wait_js(page, "() => window.cuecam.messages > 5", 10)
    assert _green_pixels(page) > 100
    assert page.evaluate("() => location.hash") == ""  # the token left the address bar
    names = [z.name for z in load_config(path).config.zones]
    assert page.locator("#zone-list li").all_inner_texts() == [f"{z.name} ({z.kind})" for z in load_config(path).config.zones]
    wait_js(page, f"() => document.querySelectorAll('#zone-table tbody tr').length === {len(names)}", 5)
    assert [r.get_attribute("data-zone") for r in page.locator("#zone-table tbody tr").all()] == names
    row = page.locator("#companion-table tbody tr")
    assert row.count() == 1 and row.get_attribute("data-companion") == "door-1"
    assert row.locator("td").all_inner_texts()[:4] == ["door-1", "below the sign's text", "0", "never"]
    assert page.locator("#companion-none").is_hidden()
    page.check("#show-heatmap")
    wait_js(page, "() => window.cuecam.heat && window.cuecam.heat.cells.length > 0", 10)
    time.sleep(1.0)
    shot = screenshot(page, "commissioning-live")
    assert shot.stat().st_size > 10_000
    assert page.errors == []


def test_a_zone_drawn_in_the_editor_is_validated_saved_and_takes_effect(board, page):
    url, path = board
    page.goto(f"{url}/ui#token={TOKEN}")
    wait_js(page, "() => window.cuecam.messages > 2", 30)
    original = path.read_text()

    # a bad edit: a zone renamed to another's name. The error is shown, nothing changes.
    page.locator("#zone-list li", has_text="staff-path").click()
    page.fill("#zone-name", "walkway")
    page.click("#save")
    wait_js(page, "() => document.querySelector('#editor-errors').textContent.length > 0", 10)
    assert "unique" in page.inner_text("#editor-errors")
    assert path.read_text() == original
    screenshot(page, "commissioning-editor-error")
    page.click("#revert")

    # walkway deleted, a new zone drawn over the walked floor: four corners, then Finish
    page.locator("#zone-list li", has_text="walkway").click()
    page.click("#delete-zone")
    page.click("#new-zone")
    for x, y in ((0.02, 0.30), (0.98, 0.25), (0.98, 0.80), (0.02, 0.80)):
        _click(page, x, y)
    page.click("#finish-zone")
    page.fill("#zone-name", "floor")
    page.select_option("#zone-kind", "aisle")
    screenshot(page, "commissioning-editor-draft")
    page.click("#save")
    wait_js(page, "() => document.querySelector('#editor-message').textContent.startsWith('Saved')", 10)
    seq = _vectors(url, 0)["cursor"]  # the vectors made after the zones were applied
    saved = load_config(path).config.zones
    assert [z.name for z in saved] == ["plaza-sign", "staff-path", "floor"]
    floor = saved[-1]
    assert floor.kind == "aisle" and len(floor.polygon) == 4
    for (x, y), (ex, ey) in zip(floor.polygon, ((0.02, 0.30), (0.98, 0.25), (0.98, 0.80), (0.02, 0.80)), strict=True):
        assert abs(x - ex) < 0.01 and abs(y - ey) < 0.01
    before = load_config(path.with_name(path.name + ".prev")).config
    assert load_config(path).config.model_dump(exclude={"zones"}) == before.model_dump(exclude={"zones"})
    wait_js(page, "() => window.cuecam.last.zones.map(z => z.name).join() === 'plaza-sign,staff-path,floor'", 10)
    # the next vectors name the new zone (no restart)
    deadline = time.monotonic() + 60
    zones: set[str | None] = set()
    while time.monotonic() < deadline and "floor" not in zones:  # bounded
        zones |= {v["zone"] for v in _vectors(url, seq)["vectors"]}
        time.sleep(0.5)
    assert "floor" in zones and "walkway" not in zones, zones
    screenshot(page, "commissioning-editor-saved")

    # one undo: the file before the save is back, and its zones are in effect
    assert page.is_enabled("#undo")
    page.click("#undo")
    wait_js(page, "() => document.querySelector('#editor-message').textContent.includes('previous')", 10)
    assert path.read_text() == original
    assert page.is_disabled("#undo")
    assert page.errors == []


def test_a_wrong_token_is_refused_and_asked_again(board, page):
    url, _ = board
    page.goto(f"{url}/ui#token=not-the-token-at-all")
    wait_js(page, "() => !document.getElementById('login').hidden", 10)
    assert "refused" in page.inner_text("#login-error")
    page.fill("#token", TOKEN)
    page.click("#login button")
    wait_js(page, "() => window.cuecam.messages > 0", 20)  # connected with the right token
    assert page.evaluate("() => sessionStorage.getItem('cuecam-token')") == TOKEN
