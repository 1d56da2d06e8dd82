"""Metrics for comparing what a system wrote against the references of a task.

Per-example metrics are plain functions of one (prediction, reference) pair; `score_predictions`
returns per-example lists for the metrics relevant to a task kind, and `summarize` turns them
into rows {metric, mean, low, high, n} with percentile-bootstrap confidence intervals.

BLEU and chrF are corpus metrics: the corpus score is not the mean of sentence scores. For them
`score_predictions` also keeps each example's sufficient statistics (n-gram matches and totals,
under "<metric>_stats"); `summarize` reports the corpus score as the mean and gets the interval
by resampling examples and recomputing the corpus score from the summed statistics (Koehn 2004,
the same way `sacrebleu --confidence` does). The "bleu"/"chrf" lists hold sentence-level scores
(smoothed BLEU, sentence chrF) for per-example display and paired comparison.
All bootstraps with the same seed and size draw the same resamples, so they are paired across
metrics and across systems scored on the same examples.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

import numpy as np

from core.evaluate.similarity import SentenceEmbedder, semantic_similarity  # noqa: F401  (re-exported)

KINDS = ("generation", "qa", "label", "translation")
CORPUS_METRICS = ("bleu", "chrf")
STATS_SUFFIX = "_stats"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_BOOTSTRAP_CELLS = 4_000_000  # resample indices held in memory at once (rows x examples)


def _check_pairs(preds, refs) -> tuple[list[str], list[str]]:
    if len(preds) != len(refs):
        raise ValueError(f"preds and refs differ in length: {len(preds)} predictions, {len(refs)} references")
    return [str(p) for p in preds], [str(r) for r in refs]


# ---- per-example text metrics (SQuAD definitions) ----

def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD)."""
    s = str(s).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 if the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(pred) == normalize_answer(ref))


def token_f1(pred: str, ref: str) -> float:
    """F1 of the bag of normalised tokens (SQuAD); 1.0 if both are empty, 0.0 if only one is."""
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def label_accuracy(pred: str, ref: str, labels: list[str]) -> float:
    """1.0 if the first label found in the normalised prediction is the reference label.

    Labels match as whole words (multi-word labels as a whole phrase); "Positive." and
    "The sentiment is positive" both read as "positive". No label found -> 0.0.
    """
    if not labels:
        raise ValueError(f"labels must name at least one label, got {labels!r}")
    text = normalize_answer(pred)
    found = []  # (position, -length, label): earliest first, longest on a tie
    for label in {normalize_answer(x) for x in labels} - {""}:
        m = re.search(rf"(?<!\S){re.escape(label)}(?!\S)", text)
        if m:
            found.append((m.start(), -len(label), label))
    return float(bool(found) and min(found)[2] == normalize_answer(ref))


# ---- library metrics: rouge-score, sacrebleu ----

@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def load_scorers() -> None:
    """Import the library scorers now (ROUGE pulls in nltk: about 2 s once per process), so that the
    first comparison a user starts does not wait for them; the app calls it with the model."""
    _rouge_scorer()
    import sacrebleu  # noqa: F401


def rouge_scores(preds: list[str], refs: list[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F-measure per example (rouge-score, Porter stemmer)."""
    preds, refs = _check_pairs(preds, refs)
    out = {k: [] for k in ROUGE_TYPES}
    for p, r in zip(preds, refs):
        scores = _rouge_scorer().score(r, p)  # score(target, prediction)
        for k in ROUGE_TYPES:
            out[k].append(float(scores[k].fmeasure))
    return out


def _sacrebleu_metric(name: str, sentence: bool = False):
    from sacrebleu.metrics import BLEU, CHRF
    if name == "bleu":
        return BLEU(effective_order=sentence)  # sentence BLEU needs effective order (sacrebleu's default)
    if name == "chrf":
        return CHRF()
    raise ValueError(f"Unknown corpus metric {name!r}: use one of {CORPUS_METRICS}")


def _corpus_score(name: str, preds: list[str], refs: list[str]) -> float:
    preds, refs = _check_pairs(preds, refs)
    if not preds:
        return float("nan")
    return float(_sacrebleu_metric(name).corpus_score(preds, [refs]).score)


def _sentence_scores(name: str, preds: list[str], refs: list[str]) -> list[float]:
    preds, refs = _check_pairs(preds, refs)
    metric = _sacrebleu_metric(name, sentence=True)
    return [float(metric.sentence_score(p, [r]).score) for p, r in zip(preds, refs)]


def bleu(preds: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults, 13a tokenisation), 0-100; NaN for no examples."""
    return _corpus_score("bleu", preds, refs)


def chrf(preds: list[str], refs: list[str]) -> float:
    """Corpus chrF (sacrebleu defaults: character 6-grams, beta 2), 0-100; NaN for no examples."""
    return _corpus_score("chrf", preds, refs)


def sentence_bleu_scores(preds: list[str], refs: list[str]) -> list[float]:
    """Sentence-level BLEU per example (exp smoothing, effective order), 0-100."""
    return _sentence_scores("bleu", preds, refs)


def sentence_chrf_scores(preds: list[str], refs: list[str]) -> list[float]:
    """Sentence-level chrF per example, 0-100."""
    return _sentence_scores("chrf", preds, refs)


def corpus_stats(name: str, preds: list[str], refs: list[str]) -> list[list[float]]:
    """Per-example sufficient statistics of a corpus metric; their sum gives the corpus score."""
    preds, refs = _check_pairs(preds, refs)
    if not preds:
        return []
    # The same private-by-name hooks sacrebleu's own significance tests use.
    stats = _sacrebleu_metric(name)._extract_corpus_statistics(preds, [refs])
    return [[float(x) for x in row] for row in stats]


def _score_from_stats(name: str, summed: np.ndarray) -> np.ndarray:
    """Corpus scores (R,) from summed statistics (R, K)."""
    metric = _sacrebleu_metric(name)
    return np.array([metric._compute_score_from_stats(row.tolist()).score for row in summed], dtype=float)


# ---- bootstrap ----

def _resampled_sums(stats: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Sums (R, K) of `stats` (N, K) over R bootstrap resamples of the N rows."""
    n = stats.shape[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    sums = []
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))  # (r, N)
        sums.append(stats[idx].sum(axis=1))  # (r, K)
    return np.concatenate(sums)


def _check_bootstrap_args(n_resamples: int, alpha: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")


def _interval(estimates: np.ndarray, alpha: float) -> tuple[float, float]:
    low, high = np.quantile(estimates, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(values, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and its percentile-bootstrap (1 - alpha) interval.

    Resamples examples with replacement; no values gives (nan, nan, nan).
    """
    _check_bootstrap_args(n_resamples, alpha)
    x = np.asarray(values, dtype=float).reshape(-1)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = _resampled_sums(x[:, None], n_resamples, seed)[:, 0] / x.size  # (R,)
    return (float(x.mean()), *_interval(means, alpha))


def corpus_bootstrap_ci(name: str, stats, n_resamples: int = 1000, alpha: float = 0.05,
                        seed: int = 0) -> tuple[float, float, float]:
    """(corpus score, low, high) for BLEU/chrF from per-example statistics (see module doc)."""
    _check_bootstrap_args(n_resamples, alpha)
    s = np.asarray(stats, dtype=float)
    if s.size == 0:
        return float("nan"), float("nan"), float("nan")
    score = float(_score_from_stats(name, s.sum(axis=0, keepdims=True))[0])
    return (score, *_interval(_score_from_stats(name, _resampled_sums(s, n_resamples, seed)), alpha))


# ---- task-level scoring ----

def score_predictions(preds: list[str], refs: list[str], kind: str, labels: list[str] | None = None,
                      embedder: SentenceEmbedder | None = None) -> dict[str, list]:
    """Per-example metric lists for a task `kind` (generation | qa | label | translation).

    Always exact_match, token_f1, rouge1/2/L; `accuracy` for label tasks (labels default to the
    distinct references); bleu/chrf (+ their *_stats) for generation and translation;
    semantic_similarity when an embedder is given.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown task kind {kind!r}: use one of {', '.join(KINDS)}")
    preds, refs = _check_pairs(preds, refs)
    out: dict[str, list] = {}
    if kind == "label":
        labels = list(labels) if labels else sorted(set(refs))
        out["accuracy"] = [label_accuracy(p, r, labels) for p, r in zip(preds, refs)]
    out["exact_match"] = [exact_match(p, r) for p, r in zip(preds, refs)]
    out["token_f1"] = [token_f1(p, r) for p, r in zip(preds, refs)]
    out.update(rouge_scores(preds, refs))
    if kind in ("generation", "translation"):
        for name in ("chrf", "bleu"):
            out[name] = _sentence_scores(name, preds, refs)
            out[name + STATS_SUFFIX] = corpus_stats(name, preds, refs)
    if embedder is not None:
        out["semantic_similarity"] = semantic_similarity(preds, refs, embedder)
    return out


def metric_names(per_example: dict) -> list[str]:
    """The metric keys of a `score_predictions` result (without the *_stats helpers)."""
    return [k for k in per_example if not k.endswith(STATS_SUFFIX)]


def summarize(per_example: dict, seed: int = 0, n_resamples: int = 1000, alpha: float = 0.05) -> list[dict]:
    """Rows {metric, mean, low, high, n}: bootstrap CIs; corpus BLEU/chrF where stats are given."""
    rows = []
    for name in metric_names(per_example):
        stats = per_example.get(name + STATS_SUFFIX)
        if name in CORPUS_METRICS and stats is not None:
            mean, low, high = corpus_bootstrap_ci(name, stats, n_resamples, alpha, seed)
        else:
            mean, low, high = bootstrap_ci(per_example[name], n_resamples, alpha, seed)
        rows.append({"metric": name, "mean": mean, "low": low, "high": high, "n": len(per_example[name])})
    return rows
