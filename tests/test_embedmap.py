"""core.explore.vocabmap: the fixed UMAP map, placement of new vectors, the on-disk cache."""
import numpy as np
import pytest
import scipy.sparse

from core.explore.vocabmap import (StaleMapError, VocabMap, load_or_fit, membership_strengths,
                           weighted_positions)

RNG = np.random.default_rng(1)
CENTRES = 4 * RNG.standard_normal((6, 16))  # (C, D): six clusters
ANCHORS = (CENTRES[RNG.integers(0, 6, 300)] + RNG.standard_normal((300, 16))).astype(np.float32)  # (V, D)
FAST = dict(n_epochs=30, n_neighbors=10)


@pytest.fixture(scope="module")
def vmap():
    return VocabMap().fit(ANCHORS, **FAST)


def test_fit_state(vmap):
    assert vmap.embedding_.shape == (300, 2) and np.isfinite(vmap.embedding_).all()
    assert vmap.knn_indices_.shape == vmap.knn_sims_.shape == (300, 10)
    assert (vmap.knn_indices_[:, 0] == np.arange(300)).all()
    assert vmap.params_ == dict(seed=42, n_neighbors=10, min_dist=0.1, n_epochs=30, center=True)


def test_placing_prompts_never_moves_anchors(vmap):
    before = vmap.embedding_.copy()
    xy = vmap.place(RNG.standard_normal((25, 16)).astype(np.float32))
    assert xy.shape == (25, 2) and np.isfinite(xy).all()
    np.testing.assert_array_equal(vmap.embedding_, before)


def test_vector_equal_to_an_anchor_lands_on_it(vmap):
    ids = [0, 123, 299]
    np.testing.assert_allclose(vmap.place(ANCHORS[ids]), vmap.embedding_[ids], atol=1e-6)
    near = vmap.place(ANCHORS[ids] + 1e-3)  # almost equal: close to, not exactly on, the anchor
    span = np.ptp(vmap.embedding_, axis=0).max()
    assert np.linalg.norm(near - vmap.embedding_[ids], axis=1).max() < 0.05 * span


def test_placement_matches_umap_transform_initialisation(vmap):
    import umap.umap_ as uu

    queries = ANCHORS[:20] + 0.5 * RNG.standard_normal((20, 16)).astype(np.float32)
    idx, sims = vmap.index_.query(queries, 10)  # (N, k)
    dists = np.maximum(1 - sims, 0).astype(np.float32)  # no query is within 1e-6 of an anchor here
    sigmas, rhos = uu.smooth_knn_dist(dists, 10.0, local_connectivity=0.0)
    # transform passes bipartite=True; ids offset by N never equal their row, so the default
    # (bipartite=False) variant fit already compiled gives the same strengths, ~1 s sooner.
    rows, cols, vals, _ = uu.compute_membership_strengths((idx + 20).astype(np.int32), dists, sigmas, rhos, False)
    np.testing.assert_allclose(membership_strengths(dists), vals.reshape(20, 10), rtol=1e-5, atol=1e-6)
    graph = scipy.sparse.coo_matrix((vals, (rows, cols - 20)), shape=(20, 300)).tocsr()
    graph.eliminate_zeros()
    np.testing.assert_allclose(vmap.place(queries), uu.init_graph_transform(graph, vmap.embedding_), atol=1e-4)


def test_weighted_positions_by_hand():
    emb = np.array([[0, 0], [2, 0], [0, 4]], np.float32)  # (V, 2)
    idx = np.array([[0, 1], [2, 1], [1, 2]])
    w = np.array([[0.5, 0.5], [1.0, 0.3], [0.0, 0.0]], np.float32)
    pos = weighted_positions(idx, w, emb)
    np.testing.assert_allclose(pos[:2], [[1, 0], [0, 4]])  # mean; strength 1 sits on the anchor
    assert np.isnan(pos[2]).all()  # no edges: NaN, as umap


def test_cache_round_trip_and_invalidation(vmap, tmp_path, monkeypatch):
    vmap.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["embedding.npy", "knn_indices.npy", "knn_sims.npy",
                                                          "meta.json"]
    loaded = VocabMap.load(tmp_path, ANCHORS)
    np.testing.assert_array_equal(loaded.embedding_, vmap.embedding_)
    probe = RNG.standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.place(probe), vmap.place(probe))

    fits = []
    real_fit = VocabMap.fit
    monkeypatch.setattr(VocabMap, "fit", lambda self, *a, **kw: fits.append(kw) or real_fit(self, *a, **kw))
    again = load_or_fit(tmp_path, ANCHORS, **FAST)
    assert fits == [] and np.array_equal(again.embedding_, vmap.embedding_)

    changed = ANCHORS.copy()
    changed[7, 3] += 0.5
    with pytest.raises(StaleMapError, match="other anchors"):
        VocabMap.load(tmp_path, changed)
    refit = load_or_fit(tmp_path, changed, **FAST)
    assert len(fits) == 1 and VocabMap.load(tmp_path, changed).fingerprint_ == refit.fingerprint_

    load_or_fit(tmp_path, changed, **dict(FAST, min_dist=0.3))  # other parameters: refit too
    assert len(fits) == 2


def test_missing_cache_is_stale(tmp_path):
    with pytest.raises(StaleMapError):
        VocabMap.load(tmp_path / "nothing", ANCHORS)


def test_progress_reports(tmp_path):
    seen = []
    load_or_fit(tmp_path, ANCHORS[:120], progress=lambda f, m: seen.append((f, m)), n_epochs=20, n_neighbors=5)
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert any("epoch" in m for _, m in seen)


@pytest.mark.parametrize("kwargs, quoted", [
    (dict(n_neighbors=1), "1"), (dict(min_dist=2.0), "2.0"), (dict(seed=-3), "-3"),
    (dict(n_epochs=0), "0"), (dict(n_neighbors=300), "300"),
])
def test_bad_parameters_quote_the_value(kwargs, quoted):
    with pytest.raises(ValueError, match=f"got {quoted}"):
        VocabMap().fit(ANCHORS, **kwargs)


def test_bad_place_arguments(vmap):
    with pytest.raises(ValueError, match="got 0"):
        vmap.place(ANCHORS[:2], k=0)
    with pytest.raises(ValueError, match="dimension 3"):
        vmap.place(np.ones((2, 3)))
