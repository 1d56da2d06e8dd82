"""Robustness runs: every system on the inputs and on format variants of them (tiny model)."""
import pytest

from core.evaluate.compare import CompareSpec, hard_systems, run_comparison, soft_system, stored
from core.evaluate.robustness import ORIGINAL, robustness_rows, run_robustness, variant_inputs
from core.generate.variants import SHIFTED, shifted, variants
from core.generate.generator import Decoding, Generator
from core.model.loading import load_model
from core.errors import WorkbenchError
from core.store.runs import new_run
from core.tasks import load_task
from core.train import training
from tests.conftest import tiny_config


@pytest.fixture
def setup(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=2), run_id="soft-run")
    assert training.train(run)["state"] == "completed"
    lm = load_model(tiny_model_dir)
    task = load_task("toy", toy_data)
    systems = [soft_system("soft-run", tiny_model_dir)] + hard_systems(task, "plain")
    spec = CompareSpec(task.test + task.validation, systems, Decoding(max_new_tokens=3), "generation",
                       main_metric="token_f1")
    return Generator(lm.model, lm.tokenizer, batch_size=8), spec, tiny_model_dir


def test_variant_inputs_pick_the_transforms_that_apply():
    inputs = [{"input": "Say apple", "target": "apple"}, {"input": "Say river", "target": "river"}]
    sets = variant_inputs(inputs, k=2)
    assert list(sets) == [ORIGINAL, SHIFTED, "casing", "whitespace"]  # no punctuation, no fields: skipped
    assert sets[ORIGINAL] == inputs and sets[SHIFTED] == shifted(inputs)
    assert sets["casing"] == [{"input": "say apple", "target": "apple"}, {"input": "say river", "target": "river"}]
    assert list(variant_inputs(inputs, names=["preface"], with_shifted=False)) == [ORIGINAL, "preface"]


def test_robustness_scores_every_system_on_every_variant(setup, monkeypatch):
    gen, spec, model = setup
    fractions = []
    result = run_robustness(gen, spec, model, k=2, progress=lambda f, m: fractions.append(f))
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert result["metric"] == "token_f1"
    assert result["variants"] == [ORIGINAL, SHIFTED, "casing", "whitespace"]
    assert set(result["descriptions"]) == set(result["variants"])
    assert set(result["systems"]) == {"soft: soft-run", "hard: default", "bare model"}
    for name, key in result["keys"].items():  # each variant is a stored comparison of the variant inputs
        comparison = stored(key)
        want = spec.inputs if name == ORIGINAL else shifted(spec.inputs) if name == SHIFTED \
            else variants(spec.inputs, [name])[name]
        assert comparison["inputs"] == want
        for s, r in result["systems"].items():
            per = comparison["scores"][s]["token_f1"]
            assert r["scores"][name] == pytest.approx(sum(per) / len(per))
    for s, r in result["systems"].items():
        others = {v: x for v, x in r["scores"].items() if v != ORIGINAL}
        assert r["min"] == min(others.values()) == others[r["worst"]] and r["max"] == max(others.values())
        assert r["min"] <= r["mean"] <= r["max"]
        assert r["drop"] == pytest.approx(r["scores"][ORIGINAL] - r["min"])
    rows = robustness_rows(result)
    assert [r["system"] for r in rows] == list(result["systems"])
    assert list(rows[0]) == ["system", *result["variants"], "min", "mean", "max", "worst", "drop"]
    # the original inputs are the plain comparison, and everything is read back, not recomputed
    assert result["keys"][ORIGINAL] == run_comparison(gen, spec, model)["key"]
    monkeypatch.setattr(gen, "generate", lambda *a, **k: pytest.fail("a stored comparison was recomputed"))
    assert run_robustness(gen, spec, model, k=2) == result


def test_robustness_needs_references(setup):
    gen, spec, model = setup
    unlabeled = CompareSpec([{"input": "Say apple", "target": ""}], spec.systems, spec.decoding)
    with pytest.raises(WorkbenchError, match="reference"):
        run_robustness(gen, unlabeled, model)
