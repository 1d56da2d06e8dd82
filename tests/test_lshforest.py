"""core.explore.lshforest: the LSH forest over k-means tree paths, multi-probe, the graph walk, the cache."""
import json

import numpy as np
import pytest

from core.explore.lshforest import DEFAULT_LSH, LSHForestIndex, default_lsh, load_or_fit
from core.explore.neighbors import ExactCosine, recall_at_k

RNG = np.random.default_rng(0)
# Clustered data: 60 directions in 32 dims, 50 anchors around each (cosine ~0.7 to their centre).
CENTRES = RNG.standard_normal((60, 32)).astype(np.float32)
ANCHORS = (np.repeat(CENTRES, 50, axis=0) + 0.6 * RNG.standard_normal((3000, 32))).astype(np.float32)  # (V, D)
QUERIES = (ANCHORS[RNG.choice(3000, 80, replace=False)] + 0.5 * RNG.standard_normal((80, 32))).astype(np.float32)
SMALL = dict(trees=2, branching=8, depth=2, candidates_per_k=15, graph_k=8, ef=20, seed=4)


class CountingRows(np.ndarray):
    """An anchor matrix that records every row index it is asked for (the rows scored by cosine)."""

    def __getitem__(self, item):
        if isinstance(item, np.ndarray) and item.dtype.kind == "i":
            self.log.extend(item.ravel().tolist())
        return np.asarray(self)[item]


@pytest.fixture(scope="module")
def truth():
    return ExactCosine().fit(ANCHORS).query(QUERIES, 10)[0]


@pytest.fixture(scope="module")
def forest():
    return LSHForestIndex(**SMALL).fit(ANCHORS)


def test_recall_high_on_clustered_data_at_a_tenth_of_the_anchors(forest, truth):
    idx, sims, count = forest.query_stats(QUERIES, 10)
    assert recall_at_k(idx, truth) >= 0.95
    assert count.max() <= 0.1 * len(ANCHORS)
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first
    exact_sims = ExactCosine().fit(ANCHORS).query(QUERIES, 10)[1]
    assert (sims <= exact_sims + 1e-5).all()  # a found neighbour's cosine is its true cosine, never more
    forest_alone = recall_at_k(forest.query(QUERIES, 10, ef=0)[0], truth)
    assert forest_alone < recall_at_k(idx, truth)  # the graph walk adds what the leaves missed


def test_a_token_finds_itself_first(forest):
    ids = [0, 17, 2999]
    idx, sims = forest.query(ANCHORS[ids], 5)
    assert idx[:, 0].tolist() == ids
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("ef", [0, 20])
def test_count_is_the_number_of_anchors_scored(forest, ef, monkeypatch):
    rows = forest.exact_.normed_.view(CountingRows)
    rows.log = []
    monkeypatch.setattr(forest.exact_, "normed_", rows)
    for q in QUERIES[:10]:
        rows.log.clear()
        _, _, count = forest.query_stats(q[None], 10, candidates=100, ef=ef)
        assert len(rows.log) == len(set(rows.log)) == count[0]  # every anchor scored once, and counted
        if ef == 0:
            assert count[0] == 100  # the forest alone: exactly the candidates asked for


def test_more_probes_and_the_walk_only_add_candidates(forest, monkeypatch):
    rows = forest.exact_.normed_.view(CountingRows)
    monkeypatch.setattr(forest.exact_, "normed_", rows)
    for q in QUERIES[:10]:
        found = []
        for candidates, ef in ((40, 0), (120, 0), (120, 20)):
            rows.log = []
            _, sims, _ = forest.query_stats(q[None], 10, candidates, ef)
            found.append((set(rows.log), sims[0]))
        assert found[0][0] <= found[1][0] <= found[2][0]
        assert (found[0][1] <= found[1][1] + 1e-6).all() and (found[1][1] <= found[2][1] + 1e-6).all()


def test_hash_values_are_tree_paths_in_the_datasketch_forest(forest):
    T, d = forest.trees, forest.depth
    assert forest.forest_.l == T and forest.forest_.k == d
    for key in (0, 1234):
        np.testing.assert_array_equal(forest.forest_.get_minhash_hashvalues(key), forest.paths_[key].ravel())
    same_leaf = np.flatnonzero((forest.paths_[:, 0] == forest.paths_[0, 0]).all(axis=1))
    assert 0 < len(same_leaf) < len(ANCHORS)
    assert sorted(forest.forest_.hashtables[0][forest.paths_[0, 0].astype(">u4").tobytes()]) == same_leaf.tolist()


def test_deterministic_with_a_seed():
    a = LSHForestIndex(**SMALL).fit(ANCHORS)
    b = LSHForestIndex(**SMALL).fit(ANCHORS)
    c = LSHForestIndex(**dict(SMALL, seed=5)).fit(ANCHORS)
    np.testing.assert_array_equal(a.paths_, b.paths_)
    np.testing.assert_array_equal(a.query(QUERIES, 10, ef=0)[0], b.query(QUERIES, 10, ef=0)[0])
    assert not np.array_equal(a.paths_, c.paths_)


def test_full_candidates_are_exact(forest, truth):
    idx, sims, count = forest.query_stats(QUERIES, 10, candidates=len(ANCHORS))
    np.testing.assert_array_equal(idx, truth)
    assert (count == len(ANCHORS)).all()


def test_given_knn_graph_is_used_as_is():
    knn = ExactCosine().fit(ANCHORS).kneighbors(12, include_self=False)[0]
    given = LSHForestIndex(**SMALL).fit(ANCHORS, knn=knn)
    np.testing.assert_array_equal(given.graph_, knn[:, :8])
    with pytest.raises(ValueError, match="knn"):
        LSHForestIndex(**SMALL).fit(ANCHORS, knn=knn[:, :4])


def test_cache_round_trip(tmp_path, forest, monkeypatch):
    first = load_or_fit(tmp_path, ANCHORS, SMALL)
    monkeypatch.setattr(LSHForestIndex, "fit", lambda *a, **k: pytest.fail("refitted a cached index"))
    again = load_or_fit(tmp_path, ANCHORS, SMALL)
    assert again.params() == SMALL == json.loads(next(tmp_path.glob("lsh-*/meta.json")).read_text())["params"]
    for a, b in zip(first.query_stats(QUERIES, 10), again.query_stats(QUERIES, 10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.query(QUERIES, 10)[0], forest.query(QUERIES, 10)[0])  # same seed, same index
    folder = next(tmp_path.glob("lsh-*"))
    with pytest.raises(ValueError, match="other anchors"):
        LSHForestIndex.load(folder, ANCHORS + 1.0)
    monkeypatch.undo()
    other = load_or_fit(tmp_path, ANCHORS, dict(SMALL, trees=1))  # other parameters: a second cache folder
    assert other.trees == 1 and len(list(tmp_path.glob("lsh-*"))) == 2


def test_default_parameters_per_model():
    assert default_lsh("smollm2-135m-instruct") == DEFAULT_LSH and default_lsh("some/other-model") == DEFAULT_LSH
    d = default_lsh("smollm2-135m-instruct")
    d["trees"] = 99
    assert DEFAULT_LSH["trees"] != 99  # a copy
    assert LSHForestIndex.from_params(DEFAULT_LSH).params() == DEFAULT_LSH


@pytest.mark.parametrize("kwargs, name", [
    (dict(trees=0), "trees"), (dict(branching=1), "branching"), (dict(depth=9), "depth"),
    (dict(candidates_per_k=0), "candidates_per_k"), (dict(graph_k=-1), "graph_k"), (dict(ef=-2), "ef"),
    (dict(seed=-1), "seed"), (dict(trees="2"), "trees"), (dict(ef=True), "ef"),
    (dict(graph_k=0, ef=10), "ef"), (dict(branching=1024, depth=3), "branching"),
])
def test_bad_parameters_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        LSHForestIndex(**kwargs)


def test_unknown_parameter_and_bad_query_arguments_are_named(forest):
    with pytest.raises(ValueError, match="n_bits"):
        LSHForestIndex.from_params({"n_bits": 512})
    with pytest.raises(ValueError, match="ef"):
        forest.query(ANCHORS[:2], 3, ef=-1)
    with pytest.raises(ValueError, match="got 3001"):
        forest.query(ANCHORS[:2], 3001)
    with pytest.raises(ValueError, match="dimension 5"):
        forest.query(np.ones((2, 5)), 3)


def test_constructor_defaults_are_the_default_setting():
    assert LSHForestIndex().params() == DEFAULT_LSH
