"""The vocabulary as a graph: kNN edges, their minimum spanning tree, and prompt vectors
attached to their nearest tokens, as node and edge tables for plotly / Graphistry / files.

Edge weights are cosine distances (1 - cosine of the mean-centred vectors, as in
`core.explore.neighbors`). The spanning tree is the lightest set of kNN edges that keeps every
connected part of the kNN graph connected: V - 1 edges when the kNN graph is connected.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree

from core.explore.neighbors import ExactCosine, _check_k

from core.explore.lshforest import LSHForestIndex

MIN_WEIGHT = 1e-6  # csgraph reads a weight of 0 as "no edge"; duplicate tokens get this instead
FORMATS = ("csv", "parquet")


def anchor_neighbors(index: ExactCosine | LSHForestIndex, anchors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other anchors of every anchor: (indices (V, k), sims (V, k)), self excluded.

    ExactCosine uses its all-pairs `kneighbors`; an LSHForestIndex queries every anchor
    (k + 1 neighbours, then drops the anchor itself), which is much slower on a full
    vocabulary (pure-Python forest look-ups) and approximate.
    """
    if isinstance(index, ExactCosine):
        return index.kneighbors(k, include_self=False)
    idx, sims = index.query(anchors, k + 1)  # (V, k + 1)
    is_self = idx == np.arange(len(idx))[:, None]  # (V, k + 1)
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # self (if found) moves last, then dropped
    return np.take_along_axis(idx, order, 1), np.take_along_axis(sims, order, 1)


def knn_graph(indices: np.ndarray, sims: np.ndarray) -> sp.csr_matrix:
    """Sparse (V, V) graph with an edge i -> j of weight 1 - cos for every j in row i of indices.

    Self edges and missing neighbours (index -1) are dropped. The graph is read as
    undirected by `spanning_tree` and `graph_tables`.
    """
    indices, sims = np.asarray(indices), np.asarray(sims, dtype=np.float64)
    if indices.ndim != 2 or indices.shape != sims.shape:
        raise ValueError(f"indices and sims must be (V, k) arrays of one shape, got {indices.shape} and {sims.shape}")
    V = indices.shape[0]
    rows = np.repeat(np.arange(V), indices.shape[1])  # (V * k,)
    cols = indices.ravel()
    keep = (cols >= 0) & (cols != rows)
    weights = np.maximum(1.0 - sims.ravel()[keep], MIN_WEIGHT)
    graph = sp.coo_matrix((weights, (rows[keep], cols[keep])), shape=(V, V)).tocsr()
    graph.sum_duplicates()
    return graph


def spanning_tree(graph: sp.spmatrix) -> sp.csr_matrix:
    """Minimum spanning tree (forest) of the undirected kNN graph: V - n_components edges."""
    return minimum_spanning_tree(graph.tocsr()).tocsr()


def n_components(graph: sp.spmatrix) -> int:
    return int(connected_components(graph, directed=False)[0])


def map_graph(vocab_map) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(kNN graph, its spanning tree) from the exact anchor kNN a VocabMap already holds."""
    graph = knn_graph(vocab_map.knn_indices_, vocab_map.knn_sims_)  # column 0 (self) is dropped
    return graph, spanning_tree(graph)


@dataclass
class PromptPoints:
    """Prompt vectors of one run (or checkpoint), placed on the map and linked to tokens."""
    run: str
    xy: np.ndarray  # (P, 2) positions on the fixed map
    nearest: np.ndarray  # (P, a) anchor ids, best first
    sims: np.ndarray  # (P, a) cosine to those anchors


def prompt_points(run: str, vectors, vocab_map, index=None, k: int = 3) -> PromptPoints:
    """Place vectors (P, D) with vocab_map.place and find their k nearest tokens.

    index defaults to the map's own ExactCosine; pass an LSHForestIndex for the forest.
    """
    index = vocab_map.index_ if index is None else index
    nearest, sims = index.query(vectors, _check_k(k, vocab_map.embedding_.shape[0]))  # (P, k)
    return PromptPoints(run=str(run), xy=vocab_map.place(vectors), nearest=nearest, sims=sims)


def _edge_frame(graph: sp.spmatrix, kind: str) -> pd.DataFrame:
    """Undirected edges of graph, each once (src < dst)."""
    sym = sp.triu(graph.maximum(graph.T), k=1).tocoo()  # (V, V) upper triangle
    return pd.DataFrame({"src": sym.row.astype(np.int64), "dst": sym.col.astype(np.int64),
                         "weight": sym.data.astype(np.float32), "kind": kind, "run": ""})


def graph_tables(xy: np.ndarray, labels, tree: sp.spmatrix, prompts: list[PromptPoints] = (),
                 knn: sp.spmatrix | None = None, anchor_ids=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Node and edge tables of the map.

    nodes: id, label, kind ("anchor" | "prompt"), x, y, run, position (virtual token index,
    -1 for anchors), nearest (label of the closest token, prompts only), sim.
    edges: src, dst, weight (cosine distance), kind ("tree" | "knn" | "prompt"), run.
    Anchors keep their token id as node id; prompt nodes are numbered from V on. With
    anchor_ids, only those anchors (and edges between them) are kept, plus every anchor a
    prompt is attached to.
    """
    xy = np.asarray(xy, dtype=np.float32)  # (V, 2)
    labels = np.asarray(labels, dtype=object)
    V = xy.shape[0]
    if xy.ndim != 2 or xy.shape[1] != 2 or len(labels) != V or tree.shape != (V, V):
        raise ValueError(f"xy must be (V, 2) with V labels and a (V, V) tree, got {xy.shape}, "
                         f"{len(labels)} labels and tree {tree.shape}")
    nodes = [pd.DataFrame({"id": np.arange(V), "label": labels, "kind": "anchor", "x": xy[:, 0],
                           "y": xy[:, 1], "run": "", "position": -1, "nearest": "", "sim": np.nan})]
    edges = [_edge_frame(tree, "tree")] + ([_edge_frame(knn, "knn")] if knn is not None else [])
    next_id = V
    for pp in prompts:
        P, a = pp.nearest.shape
        ids = np.arange(next_id, next_id + P)
        next_id += P
        nodes.append(pd.DataFrame({"id": ids, "label": [f"{pp.run}:v{i}" for i in range(P)], "kind": "prompt",
                                   "x": pp.xy[:, 0], "y": pp.xy[:, 1], "run": pp.run, "position": np.arange(P),
                                   "nearest": np.where(pp.nearest[:, 0] >= 0, labels[pp.nearest[:, 0]], ""),
                                   "sim": pp.sims[:, 0]}))
        edges.append(pd.DataFrame({"src": np.repeat(ids, a), "dst": pp.nearest.ravel(),
                                   "weight": (1.0 - pp.sims.ravel()).astype(np.float32), "kind": "prompt",
                                   "run": pp.run}))
    nodes, edges = pd.concat(nodes, ignore_index=True), pd.concat(edges, ignore_index=True)
    edges = edges[edges["dst"] >= 0]  # missing forest neighbours
    if anchor_ids is not None:
        keep = np.zeros(next_id, bool)
        keep[np.asarray(anchor_ids, dtype=np.int64)] = True
        keep[V:] = True
        keep[edges.loc[edges["kind"] == "prompt", "dst"].to_numpy()] = True
        edges = edges[keep[edges["src"].to_numpy()] & keep[edges["dst"].to_numpy()]]
        nodes = nodes[keep[nodes["id"].to_numpy()]]
    return nodes.reset_index(drop=True), edges.reset_index(drop=True)


def export(nodes: pd.DataFrame, edges: pd.DataFrame, folder, fmt: str = "csv") -> tuple[Path, Path]:
    """Write nodes.<fmt> and edges.<fmt> into folder; returns their paths."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"nodes.{fmt}", folder / f"edges.{fmt}"
    for frame, path in zip((nodes, edges), paths):
        frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    return paths
