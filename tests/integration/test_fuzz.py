"""A short schemathesis run against the real firmware process (`make fuzz` runs >= 10,000 cases)."""

from __future__ import annotations

from tests.fuzz.fuzz_api import fuzz


def test_schemathesis_finds_no_server_error_and_no_schema_violation(models_dir, vtest, tmp_path):
    r = fuzz(400, seed=11, work=tmp_path)
    assert r["cases"] >= 400 and r["operations"] >= 11, r
    assert r["server_errors"] == 0 and r["schema_violations"] == 0 and r["errors"] == 0, (r["failures"], r["stdout"])
    assert r["st_exit"] == 0 and r["firmware_exit"] == 0
