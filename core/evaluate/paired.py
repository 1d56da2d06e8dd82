"""Paired significance between the systems of a comparison, one metric at a time.

Every system in a comparison answers the same inputs, so two systems are compared example by
example rather than by whether their separate intervals overlap. For systems A and B on a metric:

- wins / ties / losses: the examples where A scores above / the same as / below B;
- the mean difference A - B with a paired bootstrap interval: the example indices are resampled
  (seeded) and the differences averaged (`bootstrap_ci` on the per-example differences);
- a two-sided p-value. 0/1 metrics (exact_match, accuracy): McNemar's exact test, a binomial test
  of the discordant pairs (A right and B wrong vs the reverse) at 1/2. Continuous metrics:
  approximate randomisation, i.e. a paired permutation test that flips the sign of each
  per-example difference at random (seeded; exact when 2**n is at most the number of rounds).

BLEU and chrF: a result keeps their sentence-level scores per example ("bleu", "chrf"; the
corpus statistics are not stored), so the paired tests use those sentence scores. Their mean
difference is a difference of mean sentence scores and can differ from the difference of the
corpus scores shown in the metrics table.
"""
from __future__ import annotations

from itertools import permutations

import numpy as np
from scipy import stats

from core.errors import WorkbenchError
from core.evaluate.metrics import bootstrap_ci

BINARY_METRICS = ("exact_match", "accuracy")
CONTINUOUS_METRICS = ("token_f1", "rouge1", "rouge2", "rougeL", "chrf", "bleu", "semantic_similarity", "ref_loglik")
MCNEMAR, RANDOMISATION = "McNemar exact", "approximate randomisation"
SMALL_SAMPLE = 30  # below this many examples a sentence carries a warning
TIE_TOLERANCE = 1e-9


def _check(a, b, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if metric not in BINARY_METRICS + CONTINUOUS_METRICS:
        raise WorkbenchError(f"Unknown metric {metric!r} for a paired test: use one of "
                             f"{', '.join(BINARY_METRICS + CONTINUOUS_METRICS)}.")
    x, y = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if x.size != y.size:
        raise WorkbenchError(f"A paired test needs one score per example from both systems, but {metric} has "
                             f"{x.size} scores for one and {y.size} for the other: score both on the same inputs.")
    if x.size == 0:
        raise WorkbenchError(f"There are no {metric} scores to compare: run the comparison on inputs with references.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise WorkbenchError(f"Some {metric} scores are missing (NaN or infinite): a paired test needs every example "
                             "scored; rerun the comparison.")
    if metric in BINARY_METRICS and not np.isin(np.concatenate([x, y]), (0.0, 1.0)).all():
        raise WorkbenchError(f"{metric} should be 0 or 1 per example but has other values: "
                             "the McNemar test needs right/wrong scores.")
    return x, y


def mcnemar_p(a, b) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 scores: binomial test of the discordant pairs."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    if only_a + only_b == 0:
        return 1.0  # no discordant pairs: nothing speaks for either system
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def randomisation_p(diffs, rounds: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of approximate randomisation: random sign flips of the paired differences."""
    d = np.asarray(diffs, dtype=float)
    if not np.any(np.abs(d) > TIE_TOLERANCE):
        return 1.0
    res = stats.permutation_test((d,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
                                 vectorized=True, n_resamples=rounds, alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


def paired_test(a, b, metric: str, seed: int = 0, n_resamples: int = 2000, rounds: int = 10_000,
                alpha: float = 0.05) -> dict:
    """{diff, low, high, p, wins, ties, losses, test, n} for per-example scores `a` against `b`."""
    x, y = _check(a, b, metric)
    d = x - y
    diff, low, high = bootstrap_ci(d, n_resamples=n_resamples, alpha=alpha, seed=seed)
    binary = metric in BINARY_METRICS
    p = mcnemar_p(x, y) if binary else randomisation_p(d, rounds, seed)
    return {"diff": diff, "low": low, "high": high, "p": p,
            "wins": int((d > TIE_TOLERANCE).sum()), "ties": int((np.abs(d) <= TIE_TOLERANCE).sum()),
            "losses": int((d < -TIE_TOLERANCE).sum()), "test": MCNEMAR if binary else RANDOMISATION, "n": int(d.size)}


def paired_metrics(result: dict) -> list[str]:
    """The metrics of a stored comparison that have per-example scores for a paired test."""
    scores = result.get("scores") or {}
    if not scores:
        return []
    have = set.intersection(*(set(per) for per in scores.values()))
    return [m for m in BINARY_METRICS + CONTINUOUS_METRICS if m in have]


def _scores(result: dict, metric: str) -> dict[str, list[float]]:
    if not result.get("scores"):
        raise WorkbenchError("This comparison has no scores (its inputs have no references): "
                             "paired tests need inputs with references.")
    if metric not in paired_metrics(result):
        raise WorkbenchError(f"Unknown metric {metric!r} for this comparison: use one of "
                             f"{', '.join(paired_metrics(result)) or '(none)'}.")
    names = [s["name"] for s in result.get("systems", []) if s["name"] in result["scores"]] or list(result["scores"])
    return {n: result["scores"][n][metric] for n in names}


def pair_matrix(result: dict, metric: str, seed: int = 0, rounds: int = 10_000) -> list[dict]:
    """Rows {a, b, metric, diff, low, high, p, wins, ties, losses, test, n} for every ordered pair of systems."""
    scores = _scores(result, metric)
    return [{"a": a, "b": b, "metric": metric, **paired_test(scores[a], scores[b], metric, seed=seed, rounds=rounds)}
            for a, b in permutations(scores, 2)]


def focus_pair(result: dict, metric: str) -> tuple[str, str] | None:
    """The pair most worth a sentence: the first soft prompt against the best other system on `metric`,
    or with no soft prompt the best system against the second best (by mean score); None with one system."""
    scores = _scores(result, metric)
    by_mean = sorted(scores, key=lambda n: -float(np.mean(scores[n])))  # stable: ties keep system order
    soft = [n for n in scores if n.startswith("soft:")]
    others = [n for n in by_mean if not n.startswith("soft:")]
    if soft and others:
        return soft[0], others[0]
    return (by_mean[0], by_mean[1]) if len(by_mean) > 1 else None


def fmt_value(x: float, metric: str, sign: bool = False) -> str:
    """A score or difference at the precision of its scale (0-100 for bleu/chrf, else 3 decimals)."""
    digits = 2 if metric in ("bleu", "chrf") else 3
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


def is_clear(row: dict, alpha: float = 0.05) -> bool:
    """A difference counts only when the interval leaves out 0 and p < alpha."""
    return row["p"] < alpha and (row["low"] > 0 or row["high"] < 0)


def pair_cell(row: dict) -> str:
    """'+0.210 [0.120, 0.300] p=0.003'."""
    m = row["metric"]
    return (f"{fmt_value(row['diff'], m, sign=True)} [{fmt_value(row['low'], m)}, {fmt_value(row['high'], m)}] "
            f"p{fmt_p(row['p']).replace(' ', '')}")


def pair_sentence(row: dict, metric: str | None = None) -> str:
    """A plain sentence on one pair, e.g. 'soft: x beats hard: default by +0.210 token_f1 [0.120, 0.300],
    p = 0.003 (approximate randomisation), wins 15, ties 5, losses 3', with a warning below 30 examples."""
    metric = metric or row["metric"]
    a, b, diff = row["a"], row["b"], row["diff"]
    clear = is_clear(row)
    if clear:
        verb = "beats" if diff > 0 else "loses to"
    elif abs(diff) <= TIE_TOLERANCE:
        verb = "ties with"
    else:
        verb = "does not clearly beat" if diff > 0 else "is not clearly worse than"
    text = (f"{a} {verb} {b}{' by' if clear else ':'} {fmt_value(diff, metric, sign=True)} {metric} "
            f"[{fmt_value(row['low'], metric)}, {fmt_value(row['high'], metric)}], p {fmt_p(row['p'])} "
            f"({row['test']}), wins {row['wins']}, ties {row['ties']}, losses {row['losses']}.")
    if row["n"] < SMALL_SAMPLE:
        text += (f" Only {row['n']} examples: a difference this size may not hold on more data." if clear else
                 f" Only {row['n']} examples: a real difference this small could go unseen; compare on more inputs.")
    return text


def pair_row(rows: list[dict], a: str, b: str) -> dict:
    """The row of `pair_matrix` for the ordered pair (a, b)."""
    for row in rows:
        if row["a"] == a and row["b"] == b:
            return row
    raise WorkbenchError(f"No paired test for {a} against {b}: both must be systems of the comparison.")
