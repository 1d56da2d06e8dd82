"""Sanity checks for the built-in paraphrase and summarisation task files."""
import json
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parent.parent / "core" / "data" / "tasks"

MIN_ROWS = {"paraphrase": 320, "summarisation": 170}


def _rows(name):
    path = TASKS / f"{name}.jsonl"
    assert path.is_file(), f"missing task file {path}"
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            assert line.strip(), f"{path.name}:{lineno} is blank"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:  # pragma: no cover - failure message only
                pytest.fail(f"{path.name}:{lineno} is not valid JSON: {exc}")
            rows.append((lineno, row))
    return rows


@pytest.mark.parametrize("name", sorted(MIN_ROWS))
def test_line_count(name):
    rows = _rows(name)
    assert len(rows) >= MIN_ROWS[name], f"{name}: {len(rows)} rows < {MIN_ROWS[name]}"


@pytest.mark.parametrize("name", sorted(MIN_ROWS))
def test_rows_have_exactly_input_and_target(name):
    for lineno, row in _rows(name):
        assert isinstance(row, dict), f"{name}:{lineno} is not an object"
        assert set(row) == {"input", "target"}, f"{name}:{lineno} keys {sorted(row)}"
        for key in ("input", "target"):
            value = row[key]
            assert isinstance(value, str), f"{name}:{lineno} {key} is {type(value).__name__}"
            assert value.strip(), f"{name}:{lineno} {key} is empty"


@pytest.mark.parametrize("name", sorted(MIN_ROWS))
def test_inputs_unique(name):
    seen = {}
    for lineno, row in _rows(name):
        key = row["input"].strip().lower()
        assert key not in seen, f"{name}:{lineno} duplicates line {seen[key]}"
        seen[key] = lineno


@pytest.mark.parametrize("name", sorted(MIN_ROWS))
def test_targets_differ_from_inputs(name):
    for lineno, row in _rows(name):
        assert row["target"].strip().lower() != row["input"].strip().lower(), (
            f"{name}:{lineno} target equals input"
        )


def test_summaries_shorter_than_paragraphs():
    for lineno, row in _rows("summarisation"):
        assert len(row["target"].split()) < len(row["input"].split()), (
            f"summarisation:{lineno} summary is not shorter than its paragraph"
        )
