"""core.explore.neighbors: exact cosine top-k and recall (the LSH forest: tests/test_lshforest.py)."""
import gc
import weakref

import numpy as np
import pytest

from core.explore.neighbors import ExactCosine, recall_at_k

RNG = np.random.default_rng(0)
ANCHORS = RNG.standard_normal((400, 24)).astype(np.float32)  # (V, D)
# Hand-made: 2-D directions at 0, 10, 30, 70 and 180 degrees (no centring).
ANGLES = np.deg2rad([0, 10, 30, 70, 180])
HAND = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1).astype(np.float32)  # (5, 2)


def brute_force(anchors, queries, k, center=True):
    mean = anchors.mean(0) if center else 0
    a, q = anchors - mean, queries - mean
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (a / np.linalg.norm(a, axis=1, keepdims=True)).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(sims, idx, 1)


def test_exact_matches_brute_force_with_centring():
    queries = RNG.standard_normal((30, 24)).astype(np.float32) + 2.0  # (N, D), far from the mean
    for center in (True, False):
        idx, sims = ExactCosine().fit(ANCHORS, center=center).query(queries, 7)
        ref_idx, ref_sims = brute_force(ANCHORS, queries, 7, center)
        assert idx.shape == sims.shape == (30, 7)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


def test_exact_without_shortlist_margin_falls_back_to_float32():
    index = ExactCosine().fit(ANCHORS)
    index.SHORTLIST_MARGIN = 0  # the bfloat16 shortlist alone can no longer certify most rows
    queries = RNG.standard_normal((50, 24)).astype(np.float32)
    idx, sims = index.query(queries, 8)
    np.testing.assert_array_equal(idx, brute_force(ANCHORS, queries, 8)[0])
    others, _ = index.kneighbors(4, include_self=False)
    np.testing.assert_array_equal(others, brute_force(ANCHORS, ANCHORS, 5)[0][:, 1:])


def test_hand_made_neighbours_in_angle_order():
    idx, sims = ExactCosine().fit(HAND, center=False).query(HAND[:1], 5)
    assert idx[0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(sims[0], np.cos(ANGLES), atol=1e-6)


def test_vector_equal_to_a_token_finds_it_first():
    ids = [0, 17, 399]
    idx, sims = ExactCosine().fit(ANCHORS).query(ANCHORS[ids], 5)
    assert idx[:, 0].tolist() == ids
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    idx, _ = ExactCosine().fit(HAND, center=False).query(HAND[3], 1)  # a single (D,) vector works too
    assert idx.tolist() == [[3]]


def test_kneighbors_all_anchors():
    index = ExactCosine(chunk=64).fit(ANCHORS)
    idx, sims = index.kneighbors(6)
    ref_idx, ref_sims = brute_force(ANCHORS, ANCHORS, 6)
    assert (idx[:, 0] == np.arange(400)).all()
    assert recall_at_k(idx, ref_idx) == 1.0
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    others, _ = index.kneighbors(5, include_self=False)
    np.testing.assert_array_equal(others, ref_idx[:, 1:])
    seen = []
    index.kneighbors(3, progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_recall_at_k_by_hand():
    assert recall_at_k([[1, 2, 3], [4, 5, 6]], [[3, 4, 5], [4, 5, 6]]) == pytest.approx((1 / 3 + 1) / 2)
    assert recall_at_k([[-1, -1]], [[0, 1]]) == 0.0
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        recall_at_k([[1, 2], [3, 4]], [[1, 2]])


def test_bad_query_arguments():
    index = ExactCosine().fit(ANCHORS)
    with pytest.raises(ValueError, match="got 0"):
        index.query(ANCHORS[:2], 0)
    with pytest.raises(ValueError, match="got 401"):
        index.query(ANCHORS[:2], 401)
    with pytest.raises(ValueError, match="dimension 5"):
        index.query(np.ones((2, 5)), 3)
    with pytest.raises(ValueError, match="NaN"):
        index.query(np.full((1, 24), np.nan), 3)
    with pytest.raises(ValueError, match="shape"):
        ExactCosine().fit(np.ones(7))


def test_shared_index_is_one_per_anchor_content_and_centring():
    a = ANCHORS.copy()
    first = ExactCosine.shared(a)
    assert ExactCosine.shared(a.copy()) is first  # same content: the same matrices, not another copy
    assert ExactCosine.shared(a, center=False) is not first
    assert ExactCosine.shared(a + 1.0) is not first
    idx, sims = first.query(a[:5] + 0.5, 4)
    ref_idx, ref_sims = ExactCosine().fit(a).query(a[:5] + 0.5, 4)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(sims, ref_sims)
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None  # the share keeps nobody's index alive
