"""core.evaluate.paired and the Compare page's paired-test table: hand-checked cases, no model."""
from math import comb

import numpy as np
import pytest

from core.errors import WorkbenchError
from core.evaluate import paired as P
from workbench.compare_view import pair_table, paired_summary


def fake_result(scores: dict[str, dict[str, list[float]]], main_metric: str = "token_f1") -> dict:
    """The parts of a stored comparison the paired tests read."""
    return {"systems": [{"name": n} for n in scores], "scores": scores, "main_metric": main_metric}


def improvement(n: int = 30, gain: float = 0.2, seed: int = 1) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.6, n)
    return list(base + gain + rng.normal(0, 0.05, n)), list(base)


# ---- the tests themselves ----

def test_mcnemar_exact_on_a_known_table():
    # discordant pairs: A right / B wrong once, A wrong / B right 9 times; 5 concordant pairs of each kind
    a = [1] * 1 + [0] * 9 + [1] * 5 + [0] * 5
    b = [0] * 1 + [1] * 9 + [1] * 5 + [0] * 5
    expected = 2 * sum(comb(10, k) for k in (0, 1)) / 2 ** 10
    assert expected == 0.021484375
    assert P.mcnemar_p(a, b) == pytest.approx(expected)
    row = P.paired_test(a, b, "exact_match")
    assert row["test"] == P.MCNEMAR and row["p"] == pytest.approx(expected)
    assert (row["wins"], row["ties"], row["losses"], row["n"]) == (1, 10, 9, 20)
    assert row["diff"] == pytest.approx((1 - 9) / 20)
    assert P.paired_test(b, a, "exact_match")["p"] == pytest.approx(expected)  # two-sided: symmetric


@pytest.mark.parametrize("metric", ["exact_match", "token_f1", "ref_loglik"])
def test_identical_systems_tie_everywhere(metric):
    x = [0.0, 1.0, 1.0, 0.0, 1.0] * 4 if metric == "exact_match" else list(np.linspace(-2, 1, 20))
    row = P.paired_test(x, x, metric)
    assert (row["diff"], row["low"], row["high"], row["p"]) == (0.0, 0.0, 0.0, 1.0)
    assert (row["wins"], row["ties"], row["losses"]) == (0, 20, 0)
    assert P.pair_sentence({"a": "A", "b": "B", "metric": metric, **row}).startswith("A ties with B:")


def test_a_clear_improvement_on_30_examples():
    a, b = improvement()
    row = P.paired_test(a, b, "token_f1")
    assert row["test"] == P.RANDOMISATION
    assert row["p"] < 0.01 and 0 < row["low"] <= row["diff"] <= row["high"]
    assert row["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert row["wins"] + row["ties"] + row["losses"] == 30
    back = P.paired_test(b, a, "token_f1")  # the other way round: the mirror image
    assert back["p"] == pytest.approx(row["p"]) and back["high"] < 0
    assert (back["wins"], back["losses"]) == (row["losses"], row["wins"])


def test_randomisation_is_exact_for_few_examples():
    # 4 differences, all +1: of the 16 sign patterns only all-plus and all-minus reach |mean| = 1 -> p = 2/16
    assert P.randomisation_p([1.0, 1.0, 1.0, 1.0]) == pytest.approx(2 / 16)


def test_seeds_make_results_repeatable():
    a, b = improvement(n=25, gain=0.02, seed=3)
    assert P.paired_test(a, b, "rougeL", seed=7) == P.paired_test(a, b, "rougeL", seed=7)
    result = fake_result({"soft: s": {"rougeL": a}, "hard: default": {"rougeL": b}})
    assert P.pair_matrix(result, "rougeL", seed=4) == P.pair_matrix(result, "rougeL", seed=4)
    one, other = P.paired_test(a, b, "rougeL", seed=1), P.paired_test(a, b, "rougeL", seed=2)
    assert one["diff"] == other["diff"] and (one["low"], one["p"]) != (other["low"], other["p"])


def test_bad_input_names_the_problem():
    with pytest.raises(WorkbenchError, match="3 scores for one and 2"):
        P.paired_test([1, 0, 1], [1, 0], "exact_match")
    with pytest.raises(WorkbenchError, match="Unknown metric 'meteor'"):
        P.paired_test([1, 0], [1, 0], "meteor")
    with pytest.raises(WorkbenchError, match="0 or 1"):
        P.paired_test([0.5, 1], [1, 0], "accuracy")
    with pytest.raises(WorkbenchError, match="no token_f1 scores"):
        P.paired_test([], [], "token_f1")
    with pytest.raises(WorkbenchError, match="missing"):
        P.paired_test([0.1, float("nan")], [0.2, 0.3], "token_f1")
    result = fake_result({"A": {"token_f1": [0.1, 0.2]}, "B": {"token_f1": [0.3, 0.4]}})
    with pytest.raises(WorkbenchError, match="Unknown metric 'bleu' for this comparison: use one of token_f1"):
        P.pair_matrix(result, "bleu")
    with pytest.raises(WorkbenchError, match="no references"):
        P.pair_matrix({"systems": [{"name": "A"}], "scores": {}}, "token_f1")


# ---- matrix, focus pair, sentences ----

def three_systems(n: int = 23) -> dict:
    a, b = improvement(n=n)
    c = list(np.asarray(b) - 0.1)
    em = lambda v: [float(x > 0.5) for x in v]  # noqa: E731
    return fake_result({name: {"token_f1": v, "exact_match": em(v), "ref_loglik": list(-np.asarray(v))}
                        for name, v in (("soft: s", a), ("bare model", c), ("hard: default", b))})


def test_pair_matrix_covers_every_ordered_pair():
    result = three_systems()
    rows = P.pair_matrix(result, "token_f1")
    assert [(r["a"], r["b"]) for r in rows] == [("soft: s", "bare model"), ("soft: s", "hard: default"),
                                                ("bare model", "soft: s"), ("bare model", "hard: default"),
                                                ("hard: default", "soft: s"), ("hard: default", "bare model")]
    assert all(set(r) == {"a", "b", "metric", "diff", "low", "high", "p", "wins", "ties", "losses", "test", "n"}
               for r in rows)
    assert P.pair_row(rows, "bare model", "hard: default")["diff"] == pytest.approx(-0.1)
    assert P.paired_metrics(result) == ["exact_match", "token_f1", "ref_loglik"]
    assert P.pair_matrix(result, "exact_match")[0]["test"] == P.MCNEMAR


def test_focus_pair_is_soft_against_the_best_baseline_else_the_top_two():
    result = three_systems()
    assert P.focus_pair(result, "token_f1") == ("soft: s", "hard: default")
    assert P.focus_pair(result, "ref_loglik") == ("soft: s", "bare model")  # higher is better there too
    del result["scores"]["soft: s"]
    result["systems"] = result["systems"][1:]
    assert P.focus_pair(result, "token_f1") == ("hard: default", "bare model")
    del result["scores"]["bare model"]
    result["systems"] = result["systems"][1:]
    assert P.focus_pair(result, "token_f1") is None


def row(diff, low, high, p, n=23, metric="token_f1", test=P.RANDOMISATION):
    return {"a": "soft: x", "b": "hard: default", "metric": metric, "diff": diff, "low": low, "high": high,
            "p": p, "wins": 15, "ties": 5, "losses": 3, "test": test, "n": n}


def test_pair_sentences():
    assert P.pair_sentence(row(0.21, 0.12, 0.30, 0.003), "token_f1") == (
        "soft: x beats hard: default by +0.210 token_f1 [0.120, 0.300], p = 0.003 (approximate randomisation), "
        "wins 15, ties 5, losses 3. Only 23 examples: a difference this size may not hold on more data.")
    assert P.pair_sentence(row(0.21, 0.12, 0.30, 0.0001, n=40), "token_f1").endswith(
        "p < 0.001 (approximate randomisation), wins 15, ties 5, losses 3.")
    assert P.pair_sentence(row(0.05, -0.02, 0.12, 0.2)).startswith(
        "soft: x does not clearly beat hard: default: +0.050 token_f1 [-0.020, 0.120], p = 0.200")
    assert "a real difference this small could go unseen" in P.pair_sentence(row(0.05, -0.02, 0.12, 0.2))
    assert P.pair_sentence(row(-0.3, -0.4, -0.2, 0.001, n=30)).startswith("soft: x loses to hard: default by -0.300")
    assert P.pair_sentence(row(-0.05, -0.1, 0.01, 0.08, n=30)).startswith("soft: x is not clearly worse than")
    # interval and p disagree: not a clear difference
    assert "does not clearly beat" in P.pair_sentence(row(0.05, 0.01, 0.09, 0.06))
    assert P.pair_sentence(row(2.5, 1.0, 4.0, 0.01, n=30, metric="chrf"), "chrf").startswith(
        "soft: x beats hard: default by +2.50 chrf [1.00, 4.00]")
    assert P.pair_cell(row(0.21, 0.12, 0.30, 0.003)) == "+0.210 [0.120, 0.300] p=0.003"
    assert P.pair_cell(row(0.21, 0.12, 0.30, 0.0001)) == "+0.210 [0.120, 0.300] p<0.001"


def test_page_pair_table_and_sentence():
    result = three_systems()
    names = ["soft: s", "bare model", "hard: default"]
    gain = np.mean(np.subtract(result["scores"]["soft: s"]["token_f1"], result["scores"]["hard: default"]["token_f1"]))
    table, sentence = paired_summary(result, "token_f1")
    assert list(table.index) == names and list(table.columns) == names
    assert [table.loc[n, n] for n in names] == ["", "", ""]
    cell = table.loc["soft: s", "hard: default"]
    assert cell.startswith(f"{gain:+.3f} [") and cell.endswith("p<0.001")
    assert table.loc["hard: default", "soft: s"].startswith(f"{-gain:+.3f} [")
    assert table.loc["hard: default", "bare model"].startswith("+0.100 [0.100, 0.100]")
    assert sentence.startswith(f"soft: s beats hard: default by {gain:+.3f} token_f1")
    assert sentence.endswith("Only 23 examples: a difference this size may not hold on more data.")
    assert pair_table([], ["A"]).loc["A", "A"] == ""
    single = fake_result({"A": {"token_f1": [0.1, 0.2]}})
    assert paired_summary(single, "token_f1")[1] is None
