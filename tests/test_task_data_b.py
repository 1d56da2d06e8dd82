"""Checks on the built-in QA, translation and sentiment task files."""
import json
from pathlib import Path

import pytest

TASKS = Path(__file__).resolve().parents[1] / "core" / "data" / "tasks"
MINIMUM = {"qa": 220, "translation": 220, "sentiment": 200}


def rows(name):
    out = []
    with open(TASKS / f"{name}.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


@pytest.mark.parametrize("name", list(MINIMUM))
def test_shape_and_uniqueness(name):
    data = rows(name)
    assert len(data) >= MINIMUM[name]
    for r in data:
        assert set(r) == {"input", "target"}, r
        assert all(isinstance(r[k], str) and r[k].strip() for k in ("input", "target")), r
    inputs = [r["input"] for r in data]
    assert len(set(inputs)) == len(inputs)


def test_qa_answer_is_a_span_of_the_context():
    for r in rows("qa"):
        assert r["input"].startswith("Context: ") and "\nQuestion: " in r["input"], r
        context, question = r["input"][len("Context: "):].split("\nQuestion: ", 1)
        assert question.strip()
        assert r["target"] in context, r
        assert 1 <= len(r["target"].split()) <= 5, r


def test_sentiment_labels_and_balance():
    data = rows("sentiment")
    labels = [r["target"] for r in data]
    assert set(labels) <= {"positive", "negative"}
    for lab in ("positive", "negative"):
        assert labels.count(lab) >= 0.4 * len(labels)
    assert not any(r["input"].startswith("__label__") for r in data)


def test_translation_targets_differ_from_inputs():
    data = rows("translation")
    for r in data:
        assert r["target"] != r["input"], r
    assert any(ch in r["target"] for r in data for ch in "éèàçêô")
