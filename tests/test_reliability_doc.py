"""docs/reliability.md lists every bad input with the test that checks it: each named test must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_row_of_the_reliability_table_names_an_existing_test():
    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = [
        line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| bad input")
    ]
    rows = [r for r in rows if not set(r) <= set("|- ")]
    assert len(rows) >= 40
    for row in rows:
        tests = re.findall(r"`([\w/]+\.py)::(\w+)`", row.rsplit("|", 2)[-2])
        assert tests, f"row without a test: {row[:120]}"
        for file, name in tests:
            source = (REPO / "tests" / file).read_text(encoding="utf-8")
            assert re.search(rf"^def {name}\(", source, flags=re.M), f"{file}::{name} does not exist"
