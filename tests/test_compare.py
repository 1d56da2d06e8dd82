"""Comparisons: systems, stored results, filters and exports (tiny model)."""
import csv
import io
import json

import pytest

from core.evaluate.compare import (CompareSpec, cache_key, disagreeing, hard_systems, run_comparison, soft_loses,
                          soft_system, to_csv, to_json)
from core.generate.generator import Decoding
from core.errors import WorkbenchError
from core.tasks import load_task
from tests.conftest import soft_compare_setup


@pytest.fixture
def setup(home, tiny_model_dir, toy_data):
    return soft_compare_setup(tiny_model_dir, toy_data, max_new_tokens=4, batch_size=4, shots=2,
                              template="Echo: {input}")


def test_comparison_scores_every_system_and_is_stored(setup, monkeypatch):
    gen, spec, model = setup
    names = ["soft: soft-run", "hard: default", "hard: edited", "hard: 2-shot", "bare model"]
    assert [s.name for s in spec.systems] == names
    calls = []
    result = run_comparison(gen, spec, model, progress=lambda f, m: calls.append(f))
    assert calls[-1] == 1.0
    assert set(result["outputs"]) == set(names) and all(len(v) == 4 for v in result["outputs"].values())
    # the outputs are the generator's own
    assert result["outputs"]["bare model"] == gen.generate([(spec.systems[-1], x["input"]) for x in spec.inputs],
                                                           spec.decoding)
    metrics = {(r["system"], r["metric"]) for r in result["summary"]}
    for n in names:
        assert {(n, "token_f1"), (n, "rougeL"), (n, "chrf"), (n, "ref_loglik")} <= metrics
    assert all(r["low"] <= r["mean"] <= r["high"] for r in result["summary"] if r["metric"] != "chrf")
    # a second call with the same systems, inputs and settings is read back, not recomputed
    monkeypatch.setattr(gen, "generate", lambda *a, **k: pytest.fail("a stored comparison was recomputed"))
    assert run_comparison(gen, spec, model) == result
    assert cache_key(spec, model) != cache_key(CompareSpec(spec.inputs, spec.systems, Decoding(max_new_tokens=5)), model)


def test_filters_and_exports(setup):
    gen, spec, model = setup
    result = run_comparison(gen, spec, model)
    for i in disagreeing(result):
        assert len({result["outputs"][n][i].strip().lower() for n in result["outputs"]}) > 1
    for i in soft_loses(result):
        s = result["scores"]
        assert s["soft: soft-run"]["token_f1"][i] < max(s[n]["token_f1"][i] for n in s if n != "soft: soft-run")
    rows = list(csv.DictReader(io.StringIO(to_csv(result))))
    assert len(rows) == 4 and rows[0]["input"] == spec.inputs[0]["input"] and "bare model | token_f1" in rows[0]
    assert json.loads(to_json(result))["decoding"]["max_new_tokens"] == 4


def test_clear_errors(setup):
    gen, spec, model = setup
    with pytest.raises(WorkbenchError, match="trained on"):
        soft_system("soft-run", "smollm2-135m-instruct")
    with pytest.raises(WorkbenchError, match="no inputs"):
        run_comparison(gen, CompareSpec([], spec.systems, spec.decoding), model)
    with pytest.raises(WorkbenchError, match="placeholder"):
        hard_systems(load_task("sentiment"), "chat", template="no slot")
