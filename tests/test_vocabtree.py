"""core.explore.vocabtree: kNN graph -> spanning tree -> tmap layout, prompts attached, the on-disk cache."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from core.explore import vocabtree
from core.explore.lshforest import LSHForestIndex
from core.explore.neighbors import ExactCosine
from core.explore.vocabgraph import graph_tables, knn_graph
from core.explore.vocabmap import StaleMapError
from core.explore.vocabtree import VocabTree, bridges, check_params, load_or_fit

RNG = np.random.default_rng(5)
CENTRES = 4 * RNG.standard_normal((6, 16))  # (C, D): six clusters
ANCHORS = (CENTRES[RNG.integers(0, 6, 300)] + RNG.standard_normal((300, 16))).astype(np.float32)  # (V, D)
LABELS = [f"tok{i}" for i in range(300)]


@pytest.fixture(scope="module")
def tree():
    return VocabTree().fit(ANCHORS, k=5)


def spans(n: int, src, dst) -> bool:
    """src/dst are a tree on n nodes: n - 1 edges, all nodes in one piece."""
    graph = sp.coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    return len(src) == n - 1 and connected_components(graph, directed=False)[0] == 1


def test_tree_spans_the_vocabulary_with_knn_edges(tree):
    assert spans(300, tree.src_, tree.dst_) and tree.xy_.shape == (300, 2) and np.isfinite(tree.xy_).all()
    assert (tree.src_ < tree.dst_).all()
    exact_i, exact_s = ExactCosine().fit(ANCHORS).kneighbors(5, include_self=False)
    knn = {(min(i, j), max(i, j)) for i, row in enumerate(exact_i) for j in row}
    joined = {(min(i, j), max(i, j)) for i, j, _ in bridges(tree.index_.normed_, knn_graph(exact_i, exact_s))}
    assert set(zip(tree.src_.tolist(), tree.dst_.tolist())) <= knn | joined  # no other edges
    normed = tree.index_.normed_
    np.testing.assert_allclose(tree.weight_, 1 - (normed[tree.src_] * normed[tree.dst_]).sum(1), atol=1e-5)
    span = np.ptp(tree.xy_, axis=0).max()
    assert np.median(np.linalg.norm(tree.xy_[tree.src_] - tree.xy_[tree.dst_], axis=1)) < 0.1 * span  # short edges


def test_far_apart_pieces_are_joined():
    """Two clusters far apart and k=2: the kNN graph falls into pieces; the tree still spans everything."""
    two = np.concatenate([RNG.standard_normal((40, 8)) + 20, RNG.standard_normal((40, 8)) - 20]).astype(np.float32)
    t = VocabTree().fit(two, k=2, center=False)
    assert t.n_bridges_ >= 1 and spans(80, t.src_, t.dst_)
    crossing = (t.src_ < 40) != (t.dst_ < 40)
    assert crossing.sum() == 1  # one edge between the clusters: the closest pair
    normed = t.index_.normed_
    sims = normed[:40] @ normed[40:].T
    assert np.isclose(1 - t.weight_[crossing][0], sims.max(), atol=1e-5)


def test_attaching_prompts_never_moves_anchors(tree):
    before = tree.xy_.copy()
    pts = tree.attach("run-a", ANCHORS[[3, 3, 120]] + 0.01, k=3)
    np.testing.assert_array_equal(tree.xy_, before)
    assert pts.nearest[:, 0].tolist() == [3, 3, 120] and pts.xy.shape == (3, 2) and pts.run == "run-a"
    gap = np.linalg.norm(pts.xy - tree.xy_[pts.nearest[:, 0]], axis=1)  # (P,)
    np.testing.assert_allclose(gap, vocabtree.HANG * tree.edge_length(), rtol=1e-4)  # near its token
    assert not np.allclose(pts.xy[0], pts.xy[1])  # two prompts on one token are fanned out
    again = tree.attach("run-a", ANCHORS[[120]] + 0.01, k=3)
    np.testing.assert_allclose(again.xy[0], pts.xy[2], atol=1e-6)  # the same vector lands in the same place


def test_tables_hold_the_tree_and_prompt_links(tree):
    pts = tree.attach("run-a", ANCHORS[[7, 8]], k=4)
    nodes, edges = graph_tables(tree.xy_, LABELS, tree.tree_matrix(), [pts])
    assert (edges["kind"] == "tree").sum() == 299 and (edges["kind"] == "prompt").sum() == 8
    anchors = nodes[nodes["kind"] == "anchor"]
    np.testing.assert_allclose(anchors[["x", "y"]].to_numpy(), tree.xy_)  # Graphistry gets the tree's positions


def test_cache_reopen_is_identical_and_checked(tree, tmp_path, monkeypatch):
    tree.save(tmp_path / "t")
    back = VocabTree.load(tmp_path / "t", ANCHORS)
    for name in ("xy_", "src_", "dst_", "weight_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tree, name))
    assert back.params_ == tree.params_
    np.testing.assert_array_equal(back.attach("r", ANCHORS[:4]).xy, tree.attach("r", ANCHORS[:4]).xy)
    with pytest.raises(StaleMapError, match="other anchors"):
        VocabTree.load(tmp_path / "t", ANCHORS + 1)

    fits = []
    real_fit = VocabTree.fit
    monkeypatch.setattr(VocabTree, "fit", lambda self, *a, **kw: fits.append(kw) or real_fit(self, *a, **kw))
    first = load_or_fit(tmp_path / "c", ANCHORS, k=5)
    reopened = load_or_fit(tmp_path / "c", ANCHORS, k=5)
    np.testing.assert_array_equal(reopened.xy_, first.xy_)
    assert len(fits) == 1  # the second call read the cache
    load_or_fit(tmp_path / "c", ANCHORS, k=4)  # other parameters: built again
    assert len(fits) == 2


def test_lsh_forest_source_and_its_exact_fallback(monkeypatch):
    """The seed's way: neighbours from the LSH forest; rows the forest leaves short are filled by exact search."""
    lsh = dict(trees=2, branching=4, depth=2, candidates_per_k=200, graph_k=0, ef=0)
    real = vocabtree.anchor_neighbors

    def short(index, anchors, k):  # the forest finds nothing for tokens 0-9
        idx, sims = real(index, anchors, k)
        idx[:10], sims[:10] = -1, -np.inf
        return idx, sims

    monkeypatch.setattr(vocabtree, "anchor_neighbors", short)
    t = VocabTree().fit(ANCHORS[:120], k=4, source="lsh", lsh=lsh)
    assert spans(120, t.src_, t.dst_) and t.params_["lsh"] == lsh
    exact_i, _ = ExactCosine().fit(ANCHORS[:120]).kneighbors(4, include_self=False)
    np.testing.assert_array_equal(t.knn_indices_, exact_i)  # candidates cover the vocabulary: all rows exact


def test_bad_parameters_quote_the_value():
    with pytest.raises(ValueError, match="got 0"):
        check_params(k=0)
    with pytest.raises(ValueError, match="got 'umap'"):
        check_params(source="umap")
    with pytest.raises(ValueError, match="unknown LSH"):
        check_params(source="lsh", lsh={"n_bits": 64})
    with pytest.raises(ValueError, match=r"\[1, 9\]"):
        VocabTree().fit(ANCHORS[:10], k=12)


def test_known_exact_neighbours_give_the_same_tree(tree):
    """A VocabMap's cached kNN (self in column 0) spares the tree's own kNN search: same tree."""
    idx, sims = ExactCosine().fit(ANCHORS).kneighbors(8, include_self=True)  # (V, 8), as a map caches them
    again = VocabTree().fit(ANCHORS, k=5, knn=(idx[:, 1:], sims[:, 1:]))
    np.testing.assert_array_equal(again.src_, tree.src_)
    np.testing.assert_array_equal(again.dst_, tree.dst_)
    with pytest.raises(ValueError, match="at least k=5"):
        VocabTree().fit(ANCHORS, k=5, knn=(idx[:, 1:4], sims[:, 1:4]))


def test_tree_and_forest_share_one_exact_index(tree, tmp_path):
    """Over one vocabulary the tree (built or reopened) and the LSH forest hold one exact index, not a copy each."""
    forest = LSHForestIndex(trees=1, branching=4, depth=2, graph_k=4, ef=8, seed=1).fit(ANCHORS)
    tree.save(tmp_path / "t")
    back = VocabTree.load(tmp_path / "t", ANCHORS.copy())
    assert back.index_ is tree.index_ is forest.exact_ is ExactCosine.shared(ANCHORS)
    np.testing.assert_array_equal(back.attach("r", ANCHORS[:3]).nearest[:, 0], [0, 1, 2])
