"""core.explore.vocabgraph: kNN graph, spanning tree, prompt attachment, node/edge tables, export."""
import numpy as np
import pandas as pd
import pytest

from core.explore.neighbors import ExactCosine
from core.explore.lshforest import LSHForestIndex
from core.explore.vocabgraph import (PromptPoints, anchor_neighbors, export, graph_tables, knn_graph, map_graph,
                             n_components, prompt_points, spanning_tree)

RNG = np.random.default_rng(2)
ANCHORS = RNG.standard_normal((200, 12)).astype(np.float32)  # (V, D)
LABELS = [f"tok{i}" for i in range(200)]
# Hand-made: 2-D directions at 0, 10, 30, 70 degrees, compared without centring.
ANGLES = np.deg2rad([0, 10, 30, 70])
HAND = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1).astype(np.float32)  # (4, 2)


class StubMap:
    """What prompt_points needs from a VocabMap, without fitting UMAP."""

    def __init__(self, anchors):
        self.index_ = ExactCosine().fit(anchors)
        self.embedding_ = RNG.standard_normal((len(anchors), 2)).astype(np.float32)  # (V, 2)
        self.knn_indices_, self.knn_sims_ = self.index_.kneighbors(8)

    def place(self, vectors):
        return self.embedding_[self.index_.query(vectors, 1)[0][:, 0]]


def test_spanning_tree_of_connected_knn_graph_has_v_minus_1_edges():
    idx, sims = anchor_neighbors(ExactCosine().fit(ANCHORS), ANCHORS, 8)
    assert not (idx == np.arange(200)[:, None]).any()  # self excluded
    graph = knn_graph(idx, sims)
    assert graph.shape == (200, 200) and graph.nnz == 200 * 8
    assert n_components(graph) == 1
    tree = spanning_tree(graph)
    assert tree.nnz == 199 and n_components(tree) == 1
    assert tree.sum() <= graph.sum()


def test_hand_made_tree_is_the_chain_of_smallest_angles():
    index = ExactCosine().fit(HAND, center=False)
    tree = spanning_tree(knn_graph(*anchor_neighbors(index, HAND, 3)))
    edges = {tuple(sorted(e)): w for e, w in zip(zip(*tree.nonzero()), tree.data)}
    expected = {(0, 1): 10, (1, 2): 20, (2, 3): 40}  # degrees between neighbours
    assert set(edges) == set(expected)
    for e, deg in expected.items():
        assert edges[e] == pytest.approx(1 - np.cos(np.deg2rad(deg)), abs=1e-6)


def test_disconnected_graph_gives_a_forest():
    two = np.concatenate([HAND, -HAND])  # (8, 2): two opposite fans
    graph = knn_graph(*anchor_neighbors(ExactCosine().fit(two, center=False), two, 2))
    assert n_components(graph) == 2 and spanning_tree(graph).nnz == 8 - 2


def test_duplicate_tokens_keep_their_edge():
    dup = np.concatenate([ANCHORS[:20], ANCHORS[:1]])  # token 20 duplicates token 0
    graph = knn_graph(*anchor_neighbors(ExactCosine().fit(dup), dup, 3))
    assert graph[20, 0] > 0 and spanning_tree(graph).nnz == 20


def test_forest_neighbours_match_exact_when_candidates_cover_everything():
    forest = LSHForestIndex(trees=2, branching=4, depth=2, candidates_per_k=200).fit(ANCHORS)
    idx, sims = anchor_neighbors(forest, ANCHORS, 5)
    exact_idx, exact_sims = anchor_neighbors(ExactCosine().fit(ANCHORS), ANCHORS, 5)
    np.testing.assert_array_equal(idx, exact_idx)
    np.testing.assert_allclose(sims, exact_sims, atol=1e-5)


def test_graph_tables_with_prompts():
    vmap = StubMap(ANCHORS)
    graph, tree = map_graph(vmap)
    vectors = ANCHORS[[5, 9, 40]] + 0.01  # (P, D)
    pp = prompt_points("run-a", vectors, vmap, k=3)
    assert pp.nearest[:, 0].tolist() == [5, 9, 40] and pp.xy.shape == (3, 2)
    nodes, edges = graph_tables(vmap.embedding_, LABELS, tree, [pp], knn=graph)
    assert list(nodes.columns) == ["id", "label", "kind", "x", "y", "run", "position", "nearest", "sim"]
    assert list(edges.columns) == ["src", "dst", "weight", "kind", "run"]
    assert (nodes["kind"] == "anchor").sum() == 200 and (nodes["kind"] == "prompt").sum() == 3
    prompts = nodes[nodes["kind"] == "prompt"]
    assert prompts["id"].tolist() == [200, 201, 202] and prompts["nearest"].tolist() == ["tok5", "tok9", "tok40"]
    assert prompts["label"].tolist() == ["run-a:v0", "run-a:v1", "run-a:v2"]
    counts = edges["kind"].value_counts()
    assert counts["tree"] == 199 and counts["prompt"] == 9 and counts["knn"] <= 200 * 8
    assert (edges["src"] < edges["dst"])[edges["kind"] != "prompt"].all()  # undirected, listed once
    np.testing.assert_allclose(edges[edges["kind"] == "prompt"]["weight"], 1 - pp.sims.ravel(), atol=1e-6)


def test_anchor_subset_keeps_attached_tokens():
    vmap = StubMap(ANCHORS)
    pp = PromptPoints("r", np.zeros((1, 2), np.float32), np.array([[150, 151]]), np.array([[0.9, 0.8]]))
    nodes, edges = graph_tables(vmap.embedding_, LABELS, map_graph(vmap)[1], [pp], anchor_ids=range(10))
    assert set(nodes["id"]) == set(range(10)) | {150, 151, 200}
    assert set(edges["src"]) | set(edges["dst"]) <= set(nodes["id"])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(tmp_path, fmt):
    vmap = StubMap(ANCHORS)
    nodes, edges = graph_tables(vmap.embedding_, LABELS, map_graph(vmap)[1])
    node_path, edge_path = export(nodes, edges, tmp_path / "out", fmt=fmt)
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    back = read(node_path)
    assert node_path.name == f"nodes.{fmt}" and len(back) == len(nodes)
    assert back["label"].tolist() == LABELS
    assert len(read(edge_path)) == len(edges)


def test_bad_arguments_quote_the_value(tmp_path):
    vmap = StubMap(ANCHORS)
    nodes, edges = graph_tables(vmap.embedding_, LABELS, map_graph(vmap)[1])
    with pytest.raises(ValueError, match="got 'xlsx'"):
        export(nodes, edges, tmp_path, fmt="xlsx")
    with pytest.raises(ValueError, match=r"\(200, 3\)"):
        graph_tables(np.zeros((200, 3)), LABELS, map_graph(vmap)[1])
    with pytest.raises(ValueError, match="got 0"):
        prompt_points("r", ANCHORS[:2], vmap, k=0)
