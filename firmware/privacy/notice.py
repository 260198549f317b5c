"""The privacy notice a store prints on its sign, filled from the board config.

``privacy_notice(cfg)`` is served as ``GET /v1/privacy`` (no token: it is public) and rendered by
``cuecam sign`` as a printable A5 page. The sentences follow docs/signals.md: the three numbers
are behavioural indices (how people move and which way they face), not feelings.
"""

from __future__ import annotations

from typing import Any

from ..config import Config


def _num(x: float) -> str:
    """600.0 -> '600', 1.5 -> '1.5'."""
    return f"{x:.1f}".removesuffix(".0")


def duration_text(seconds: float) -> str:
    """A human phrase for a duration: '45 seconds', '10 minutes', '1.5 minutes', '1 hour'."""
    if seconds < 120:
        n, unit = _num(seconds), "second"
    elif seconds >= 3600 and seconds % 3600 == 0:
        n, unit = _num(seconds / 3600), "hour"
    else:
        n, unit = _num(seconds / 60), "minute"
    return f"{n} {unit}{'' if n == '1' else 's'}"


# The three behavioural indices (docs/signals.md), each in one line: what they are, not feelings.
INDICES = (
    ("Engagement intensity",
     "how still, close and turned toward a display someone is, and for how long (not whether they liked it)."),
    ("Dwell satisfaction",
     "whether a stay in an area was longer or shorter than usual there and whether it ended calmly or abruptly "
     "(not how anyone felt)."),
    ("Approach/avoid", "whether someone walks toward a display or turns away from it."),
)

_STR_LIST = {"type": "array", "items": {"type": "string"}}
_DURATION = {
    "type": "object",
    "required": ["seconds", "text"],
    "properties": {"seconds": {"type": "number"}, "text": {"type": "string"}},
}
PRIVACY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["camera", "controller", "contact", "purpose", "language", "measured", "not_measured", "retention",
                 "token_rotation_s", "k_anonymity", "opt_out", "closed_hours", "timezone", "staff"],
    "properties": {
        "camera": {"type": "string", "description": "the board's name"},
        "controller": {"type": "string", "description": "who is responsible for the measuring"},
        "contact": {"type": "string"},
        "purpose": {"type": "string"},
        "language": {"type": "string", "description": "the language of the sentences"},
        "measured": _STR_LIST,
        "not_measured": _STR_LIST,
        "retention": _DURATION,
        "token_rotation_s": {"type": "number"},
        "k_anonymity": {"type": "integer"},
        "opt_out": {
            "type": "object",
            "required": ["how", "button", "pause_s", "pause_minutes"],
            "properties": {"how": _STR_LIST, "button": {"type": "boolean"}, "pause_s": {"type": "number"},
                           "pause_minutes": {"type": "number"}},
        },
        "closed_hours": {
            "type": "array",
            "items": {"type": "object", "required": ["start", "end", "days"],
                      "properties": {"start": {"type": "string"}, "end": {"type": "string"}, "days": _STR_LIST}},
        },
        "timezone": {"type": ["string", "null"]},
        "staff": {
            "type": "object",
            "required": ["text", "excluded_zones"],
            "properties": {"text": {"type": "string"}, "excluded_zones": _STR_LIST},
        },
    },
}


def privacy_notice(cfg: Config, companion: str | None = None) -> dict[str, Any]:
    """Everything the sign says, as data. The sentences are English (language "en"). With
    ``companion`` (one of privacy.optout.companions), the sign hangs by that companion's button
    and says where the button is (its ``position``); ValueError for a companion not listed."""
    p = cfg.privacy
    window = _num(cfg.signals.window_s)
    retention = duration_text(p.retention_s)
    pause = duration_text(p.optout.pause_s)
    button = p.optout.pins != "none" or bool(p.optout.companions)
    comp = None
    if companion is not None:
        comp = next((c for c in p.optout.companions if c.name == companion), None)
        if comp is None:
            listed = ", ".join(c.name for c in p.optout.companions) or "none"
            raise ValueError(f"companion {companion!r} is not in privacy.optout.companions (listed: {listed})")
    if p.optout.lookback_s is None:
        deletes = "deletes everything it holds"
    else:
        deletes = f"deletes what it recorded in the last {duration_text(p.optout.lookback_s)}"
    how = []
    if comp is not None:
        how.append(f"Press the button {comp.position or 'on this sign'}: the cameras here stop measuring for {pause} "
                   f"and each {deletes}.")
        how.append("The light by the button stays on once every camera has stopped; if it blinks, ask a member of staff.")
        how.append("Or ask a member of staff to do it for you.")
    elif button:
        how.append(f"Press the button on this sign: the camera stops measuring for {pause} and {deletes}.")
        how.append("Or ask a member of staff to do it for you.")
    else:
        how.append(f"Ask a member of staff: the camera then stops measuring for {pause} and {deletes}.")
    excluded = [z.name for z in cfg.zones if z.kind == "excluded"]
    return {
        "camera": cfg.board.name,
        "controller": p.notice.controller,
        "contact": p.notice.contact,
        "purpose": p.notice.purpose,
        "language": "en",
        "measured": [
            "Where people are in the camera's view and how they move (speed and direction).",
            "Which way a person's body is turned: toward a display or away from it.",
            "How long people spend in each area of the shop.",
            f"All of it as anonymous numbers, one set per person per {window}-second window, "
            f"tied to a random code that is replaced at least every {duration_text(p.token_rotation_s)}.",
            *(f"{name}: {definition}" for name, definition in INDICES),
            f"Summaries per area are withheld when fewer than {p.k_anonymity} people were measured there.",
        ],
        "not_measured": [
            "Faces: no face detection, no face recognition.",
            "Who you are: no identity, no names, no recognition of any kind.",
            "Age, gender or ethnicity.",
            "Emotions or feelings.",
            "No re-identification: you are not recognised later, on a return visit or by another camera.",
            "No images: no pixels are stored or sent anywhere; each frame is analysed in memory and discarded.",
        ],
        "retention": {"seconds": p.retention_s, "text": retention},
        "token_rotation_s": p.token_rotation_s,
        "k_anonymity": p.k_anonymity,
        "opt_out": {"how": how, "button": button, "pause_s": p.optout.pause_s,
                    "pause_minutes": round(p.optout.pause_s / 60, 1)},
        "closed_hours": [{"start": c.start, "end": c.end, "days": list(c.days)} for c in p.closed_hours],
        "timezone": p.timezone,
        "staff": {
            "text": "Staff areas are never measured" + (f": {', '.join(excluded)}." if excluded else "."),
            "excluded_zones": excluded,
        },
    }
