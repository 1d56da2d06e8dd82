"""Robustness runs: every system on the inputs and on format variants of them (tiny model)."""
import pytest

from core.evaluate.compare import CompareSpec, run_comparison, stored
from core.evaluate.robustness import ORIGINAL, robustness_rows, run_robustness, variant_inputs
from core.generate.variants import SHIFTED, shifted, variants
from core.errors import WorkbenchError
from tests.conftest import soft_compare_setup


@pytest.fixture
def setup(home, tiny_model_dir, toy_data):
    return soft_compare_setup(tiny_model_dir, toy_data)


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
