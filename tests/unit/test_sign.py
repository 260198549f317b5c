"""`cuecam sign`: the store's A5 privacy sign as self-contained HTML or SVG, config text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from host_tools.cli import main
from tests.conftest import SIM_CONFIG

SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script> Bob & Co"
VOID = {"meta", "br", "img", "hr", "link", "input"}


def write_config(tmp_path: Path, old: str = "", new: str = "") -> Path:
    text = SIM_CONFIG.read_text(encoding="utf-8")
    if old:
        assert text.count(old) == 1
        text = text.replace(old, new)
    p = tmp_path / "board.yaml"
    p.write_text(text, encoding="utf-8")
    return p


class Page(HTMLParser):
    """Collects tags and text and checks that elements nest properly."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.stack: list[str] = []
        self.text: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"</{tag}> does not close the open element"

    def handle_data(self, data):
        self.text.append(data)


def parse_html(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == []
    return page


def test_html_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sign.html"
    assert main(["sign", "--config", str(write_config(tmp_path)), "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    raw = out.read_text(encoding="utf-8")
    page = parse_html(out)
    assert page.tags[:3] == ["html", "head", "meta"]
    text = " ".join(page.text)
    for words in ("cuecam demo store", "privacy@example.invalid", "deleted after 10 minutes", "Press the button",
                  "10 minutes", "Engagement intensity", "Staff areas are never measured"):
        assert words in text
    assert "@page { size: A5 portrait" in raw
    # Self-contained: nothing to fetch, nothing to run.
    assert "script" not in page.tags and not {"link", "img", "iframe", "object"} & set(page.tags)
    assert not [a for a in page.attrs if a[0] in ("src", "href") or a[0].startswith("on")]
    for needle in ("url(", "@import", "http://", "https://"):
        assert needle not in raw


def test_config_text_is_escaped(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "controller: cuecam demo store", f'controller: "{EVIL}"')
    out = tmp_path / "sign.html"
    assert main(["sign", "--config", str(cfg), "--out", str(out)]) == 0
    raw = out.read_text(encoding="utf-8")
    assert "<script" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt; Bob &amp; Co" in raw
    page = parse_html(out)
    assert "script" not in page.tags and EVIL in " ".join(page.text)

    svg = tmp_path / "sign.svg"
    assert main(["sign", "--config", str(cfg), "--out", str(svg), "--format", "svg"]) == 0
    raw = svg.read_text(encoding="utf-8")
    assert "<script" not in raw
    root = ET.fromstring(raw)
    assert not list(root.iter(f"{SVG}script")) and EVIL in "".join(root.itertext())


def test_svg_sign_is_a5(tmp_path: Path) -> None:
    out = tmp_path / "sign.svg"
    assert main(["sign", "--config", str(write_config(tmp_path)), "--out", str(out)]) == 0  # format from the suffix
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"
    assert (root.get("width"), root.get("height"), root.get("viewBox")) == ("148mm", "210mm", "0 0 148 210")
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    for words in ("cuecam demo store", "privacy@example.invalid", "deleted after 10 minutes", "Press the button"):
        assert words in text
    assert not [e for e in root.iter() if e.tag not in (f"{SVG}svg", f"{SVG}title", f"{SVG}rect", f"{SVG}text")]


def test_a_crowded_svg_still_fits_the_page(tmp_path: Path) -> None:
    hours = ", ".join(f'{{start: "0{i}:00", end: "0{i}:30", days: [mon]}}' for i in range(10))
    cfg = write_config(tmp_path, "controller: cuecam demo store",
                       f"controller: {'Very Long Company Name ' * 8}\n    purpose: {'to count things ' * 24}")
    cfg.write_text(cfg.read_text().replace("closed_hours: []", f"closed_hours: [{hours}]"))
    out = tmp_path / "sign.svg"
    assert main(["sign", "--config", str(cfg), "--out", str(out), "--format", "svg"]) == 0
    texts = list(ET.parse(out).getroot().iter(f"{SVG}text"))
    assert "05:00 to 05:30" in " ".join(t.text or "" for t in texts)
    assert max(float(t.get("y", 0)) for t in texts) <= 200


def test_errors_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_config(tmp_path, "k_anonymity: 5", "k_anonymity: 1")
    assert main(["sign", "--config", str(bad), "--out", str(tmp_path / "x.html")]) == 2
    assert "privacy.k_anonymity" in capsys.readouterr().err and not (tmp_path / "x.html").exists()
    de = write_config(tmp_path, "contact: privacy@example.invalid", "contact: privacy@example.invalid\n    language: de")
    assert main(["sign", "--config", str(de), "--out", str(tmp_path / "de.html")]) == 0
    assert "only in English" in capsys.readouterr().err
    assert main(["sign", "--config", str(de), "--out", str(tmp_path / "missing" / "x.html")]) == 1
    assert "cannot write" in capsys.readouterr().err
