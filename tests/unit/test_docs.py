"""The docs name the tests that prove their claims: every named test file and test must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["docs/privacy.md", "docs/ota.md", "docs/signals.md", "docs/gateway.md", "docs/board.md", "docs/security.md",
        "docs/companion.md"]
# `tests/x.py`, `tests/x.py::name`, or `::name` (a test in the file named last before it)
REF = re.compile(r"(tests/[\w/]+\.py)(?:::(\w+))?|`::(\w+)`")


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_a_doc_names_exists(doc):
    text = (ROOT / doc).read_text()
    refs: list[tuple[str, str | None]] = []
    last: str | None = None
    for m in REF.finditer(text):
        if m.group(1):
            last = m.group(1)
            refs.append((last, m.group(2)))
        else:
            assert last is not None, f"{doc}: `::{m.group(3)}` before any test file"
            refs.append((last, m.group(3)))
    assert refs, f"{doc} names no tests"
    for path, name in refs:
        src = ROOT / path
        assert src.is_file(), f"{doc} names {path}, which does not exist"
        if name is not None:
            assert re.search(rf"^(async )?def {name}\(", src.read_text(), re.M), f"{doc} names {path}::{name}, not found"
