"""The store's privacy sign, printable: an A5 portrait HTML page or an A5 SVG.

Both are rendered from ``firmware.privacy.notice.privacy_notice`` (the same data as the device's
``GET /v1/privacy``), self-contained: inline CSS, no scripts, no fonts, images or links to load.
Every piece of config text is escaped (``html.escape`` for HTML; ElementTree for SVG).
"""

from __future__ import annotations

import html
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TITLE = "Camera in use"
LEAD = "It measures how people move around the shop, not who they are. No faces. No images are kept."


@dataclass
class Section:
    heading: str
    lines: list[str] = field(default_factory=list)
    bullets: bool = False
    boxed: bool = False


def _days(days: list[str]) -> str:
    if len(days) == 7:
        return "every day"
    return "on " + ", ".join(d.capitalize() for d in DAYS if d in days)


def sections(notice: dict[str, Any]) -> list[Section]:
    """The sign's content, in order; shared by the HTML and SVG renderers."""
    out = [
        Section("Who and why", [f"Responsible: {notice['controller']}", f"Purpose: {notice['purpose']}"]),
        Section("What is measured", list(notice["measured"]), bullets=True),
        Section("What is never measured", list(notice["not_measured"]), bullets=True),
        Section("How long it is kept", [f"The numbers are deleted after {notice['retention']['text']}."]),
        Section("Do not want to be measured?", list(notice["opt_out"]["how"]), boxed=True),
    ]
    if notice["closed_hours"]:
        tz = f" ({notice['timezone']} time)" if notice["timezone"] else ""
        out.append(Section("Closed hours", [
            f"Nothing is measured {_days(c['days'])} from {c['start']} to {c['end']}{tz}." for c in notice["closed_hours"]
        ]))
    out.append(Section("Staff", [notice["staff"]["text"]]))
    out.append(Section("Questions", [f"Contact: {notice['contact']}", f"Camera: {notice['camera']}"]))
    return out


_CSS = """
@page { size: A5 portrait; margin: 10mm; }
html { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; font-size: 9.5pt; line-height: 1.3; color: #000; }
body { margin: 0; }
h1 { font-size: 22pt; margin: 0 0 1mm; }
.lead { font-size: 12pt; font-weight: bold; margin: 0 0 3mm; }
h2 { font-size: 11pt; margin: 3mm 0 1mm; border-bottom: 0.3mm solid #000; }
p, ul { margin: 0 0 1mm; }
ul { padding-left: 5mm; }
.box { border: 0.8mm solid #000; padding: 1mm 3mm 2mm; margin-top: 3mm; font-size: 11pt; }
.box h2 { border: none; }
@media screen { body { width: 128mm; margin: 10mm auto; } }
""".strip()


def render_html(notice: dict[str, Any]) -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{e(notice["language"])}">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(TITLE)}: {e(notice['controller'])}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{e(TITLE)}</h1>",
        f'<p class="lead">{e(LEAD)}</p>',
    ]
    for s in sections(notice):
        parts.append('<section class="box">' if s.boxed else "<section>")
        parts.append(f"<h2>{e(s.heading)}</h2>")
        if s.bullets:
            parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in s.lines) + "</ul>")
        else:
            parts.extend(f"<p>{e(line)}</p>" for line in s.lines)
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# -- SVG: A5 in millimetres (1 user unit = 1 mm) -----------------------------------------------
PAGE_W, PAGE_H, MARGIN = 148.0, 210.0, 10.0
SVG_NS = "http://www.w3.org/2000/svg"


Line = tuple[float, float, str, float, bool]  # x, y (baseline), text, font size, bold


def _layout(notice: dict[str, Any], body: float) -> tuple[list[Line], list[tuple[float, float]], float]:
    """Every line at this body font size, the boxes (top, bottom) to frame, and the bottom y."""
    width = PAGE_W - 2 * MARGIN
    lines: list[Line] = []
    boxes: list[tuple[float, float]] = []
    y = MARGIN

    def add(text: str, size: float, bold: bool = False, bullet: bool = False, pad: float = 0.0) -> None:
        nonlocal y
        indent = pad + (size * 1.2 if bullet else 0.0)
        # Average glyph width of a wide sans font (DejaVu) relative to its size; bold is wider.
        glyph = size * (0.64 if bold else 0.56)
        for i, part in enumerate(textwrap.wrap(text, width=max(20, int((width - indent - pad) / glyph)))):
            y += size * 1.25
            if bullet and i == 0:
                lines.append((MARGIN + pad, y, "\u2022", size, False))
            lines.append((MARGIN + indent, y, part, size, bold))

    add(TITLE, body * 2.2, bold=True)
    add(LEAD, body * 1.2, bold=True)
    for s in sections(notice):
        y += body * 0.8
        top = y
        pad = 3.0 if s.boxed else 0.0
        add(s.heading, body * 1.25, bold=True, pad=pad)
        for line in s.lines:
            add(line, body * (1.1 if s.boxed else 1.0), bullet=s.bullets, pad=pad)
        if s.boxed:
            y += body * 0.6
            boxes.append((top, y))
    return lines, boxes, y


def render_svg(notice: dict[str, Any]) -> str:
    body = 3.4
    lines, boxes, bottom = _layout(notice, body)
    while bottom > PAGE_H - MARGIN and body > 2.0:  # shrink until it fits the page
        body -= 0.1
        lines, boxes, bottom = _layout(notice, body)
    ET.register_namespace("", SVG_NS)
    svg = ET.Element(f"{{{SVG_NS}}}svg", {
        "width": f"{PAGE_W:g}mm", "height": f"{PAGE_H:g}mm", "viewBox": f"0 0 {PAGE_W:g} {PAGE_H:g}",
        "font-family": "DejaVu Sans, Arial, Helvetica, sans-serif",
    })
    ET.SubElement(svg, f"{{{SVG_NS}}}title").text = f"{TITLE}: {notice['controller']}"
    ET.SubElement(svg, f"{{{SVG_NS}}}rect", {"width": "100%", "height": "100%", "fill": "#fff"})
    for top, bot in boxes:
        ET.SubElement(svg, f"{{{SVG_NS}}}rect", {
            "x": f"{MARGIN:g}", "y": f"{top:.2f}", "width": f"{PAGE_W - 2 * MARGIN:g}", "height": f"{bot - top:.2f}",
            "fill": "none", "stroke": "#000", "stroke-width": "0.8"})
    for x, y, text, size, bold in lines:
        attrs = {"x": f"{x:.2f}", "y": f"{y:.2f}", "font-size": f"{size:.2f}"}
        if bold:
            attrs["font-weight"] = "bold"
        ET.SubElement(svg, f"{{{SVG_NS}}}text", attrs).text = text
    ET.indent(svg)
    return ET.tostring(svg, encoding="unicode", xml_declaration=True) + "\n"
