"""The privacy notice (GET /v1/privacy, `cuecam sign`) says what the config says."""

from __future__ import annotations

import re

import jsonschema
import pytest

from firmware.privacy.notice import INDICES, PRIVACY_SCHEMA, duration_text, privacy_notice
from tests.conftest import ROOT, sim_config


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10, "10 seconds"), (1, "1 second"), (90, "90 seconds"), (120, "2 minutes"), (600, "10 minutes"),
     (60.0 * 1.5 + 60, "2.5 minutes"), (3600, "1 hour"), (1830, "30.5 minutes")],
)
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_the_sim_notice() -> None:
    n = privacy_notice(sim_config().config)
    jsonschema.validate(n, PRIVACY_SCHEMA)
    assert (n["controller"], n["contact"], n["camera"]) == ("cuecam demo store", "privacy@example.invalid", "sim-1")
    assert n["retention"] == {"seconds": 600.0, "text": "10 minutes"}
    assert n["token_rotation_s"] == 600.0 and n["k_anonymity"] == 5
    assert n["opt_out"]["button"] is True and n["opt_out"]["pause_minutes"] == 10
    assert "Press the button on this sign" in n["opt_out"]["how"][0] and "10 minutes" in n["opt_out"]["how"][0]
    assert "deletes everything it holds" in n["opt_out"]["how"][0]
    assert any("staff" in s for s in n["opt_out"]["how"])
    assert n["staff"]["excluded_zones"] == ["staff-path"] and "staff-path" in n["staff"]["text"]
    assert n["closed_hours"] == [] and n["timezone"] is None
    measured = " ".join(n["measured"])
    for words in ("2-second window", "Engagement intensity:", "Dwell satisfaction:", "Approach/avoid:",
                  "turned toward a display", "How long people spend"):
        assert words in measured
    not_measured = " ".join(n["not_measured"]).lower()
    for words in ("faces", "identity", "age", "gender", "ethnicity", "emotions", "re-identification", "no pixels"):
        assert words in not_measured


def test_the_index_names_are_the_documented_ones() -> None:
    headings = {re.sub(r"\W", "", h).lower() for h in re.findall(r"^## (.+?)(?:,|$)", (ROOT / "docs" / "signals.md")
                                                                      .read_text(encoding="utf-8"), re.M)}
    measured = privacy_notice(sim_config().config)["measured"]
    assert len(INDICES) == 3
    for name, definition in INDICES:
        assert re.sub(r"\W", "", name).lower() in headings
        assert f"{name}: {definition}" in measured


def test_overrides_reach_the_notice() -> None:
    cfg = sim_config({
        "signals": {"window_s": 5.0},
        "privacy": {
            "retention_s": 1800.0, "token_rotation_s": 300.0, "k_anonymity": 8, "timezone": "Europe/Berlin",
            "closed_hours": [{"start": "21:00", "end": "08:00", "days": ["sat", "sun"]}],
            "optout": {"pause_s": 300.0, "lookback_s": 120.0},
            "notice": {"controller": "Shop & Co <GmbH>", "contact": "dpo@shop.example", "purpose": "to count visitors"},
        },
    }).config
    n = privacy_notice(cfg)
    jsonschema.validate(n, PRIVACY_SCHEMA)
    assert (n["controller"], n["contact"], n["purpose"]) == ("Shop & Co <GmbH>", "dpo@shop.example", "to count visitors")
    assert n["retention"] == {"seconds": 1800.0, "text": "30 minutes"}
    assert n["token_rotation_s"] == 300.0 and n["k_anonymity"] == 8
    assert n["opt_out"]["pause_s"] == 300.0 and n["opt_out"]["pause_minutes"] == 5
    assert "for 5 minutes and deletes what it recorded in the last 2 minutes" in n["opt_out"]["how"][0]
    assert n["closed_hours"] == [{"start": "21:00", "end": "08:00", "days": ["sat", "sun"]}]
    assert n["timezone"] == "Europe/Berlin"
    assert any("5-second window" in s and "every 5 minutes" in s for s in n["measured"])
    assert any("fewer than 8 people" in s for s in n["measured"])


def test_without_a_button_the_notice_says_ask_staff() -> None:
    n = privacy_notice(sim_config({"zones": [], "privacy": {"optout": {"pins": "none"}}}).config)
    assert n["opt_out"]["button"] is False
    assert not any("button" in s for s in n["opt_out"]["how"])
    assert n["opt_out"]["how"][0].startswith("Ask a member of staff")
    assert n["staff"] == {"text": "Staff areas are never measured.", "excluded_zones": []}
