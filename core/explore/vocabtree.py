"""The vocabulary as a tree, the seed system's view: kNN graph -> minimum spanning tree -> tree layout.

Every anchor (vocabulary input embedding, mean-centred like `core.explore.neighbors.ExactCosine`)
gets its k nearest other anchors by cosine: by default from `ExactCosine.kneighbors` (certified
exact, bfloat16 shortlist on both cores), or from the LSH forest (`source="lsh"`, the seed's way;
a row the forest leaves short is filled by exact search). The kNN graph's pieces, if any, are
joined by their closest pairs of tokens, so the tree always spans the whole vocabulary with V - 1
edges. scipy gives the minimum spanning tree (weights 1 - cos) and tmap (`tmap-silicon`, OGDF's
fast multipole multilevel layout) lays it out in 2-D. bench/bench_tree.py measures the build.
tmap's layout is not reproducible between builds (OGDF seeds itself), so the tree is built once per
model and cached on disk (`save` / `load`, checked against the anchors' fingerprint); runs and
checkpoints attached later are then comparable.

Prompt vectors are attached without moving any anchor: each hangs off its nearest token, a few tree
edges away from it, leaning towards its next nearest tokens.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from core.errors import WorkbenchError
from core.explore.lshforest import LSHForestIndex
from core.explore.neighbors import ExactCosine, _as_matrix, _check_k
from core.explore.vocabgraph import MIN_WEIGHT, PromptPoints, anchor_neighbors, knn_graph, spanning_tree
from core.explore.vocabmap import StaleMapError, cached_fit, fingerprint, load_cache, save_cache

Progress = Callable[[float, str], None]
CACHE_VERSION = 1
SOURCES = ("exact", "lsh")
NODE_SIZE = 1 / 65  # tmap's default node_size
HANG = 3.0  # a prompt sits this many median tree edges away from its nearest token
SPREAD = np.pi / 6  # and prompts on one token are fanned out by this angle


def check_params(k: int = 10, source: str = "exact", node_size: float = NODE_SIZE, center: bool = True,
                 lsh: dict | None = None) -> dict:
    """The tree parameters, validated; every error quotes the bad value."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
        raise ValueError(f"k (neighbours per token in the kNN graph) must be an integer in [1, 100], got {k!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not isinstance(node_size, (int, float)) or not 0 < node_size <= 1:
        raise ValueError(f"node_size must be a number in (0, 1], got {node_size!r}")
    if lsh is not None:
        LSHForestIndex.from_params(lsh)  # raises on unknown or bad forest parameters
    return dict(k=k, source=source, node_size=float(node_size), center=bool(center),
                lsh=dict(lsh) if source == "lsh" and lsh else None)


def bridges(normed: np.ndarray, graph: sp.spmatrix) -> list[tuple[int, int, float]]:
    """Edges (i, j, 1 - cos) that join the pieces of graph: each piece but the largest gets the closest
    pair between one of its tokens and any token outside it, until one piece is left. normed: unit rows."""
    out, graph = [], graph.tocsr()
    t = np.ascontiguousarray(normed, dtype=np.float32)
    while True:
        n, label = connected_components(graph, directed=False)
        if n == 1:
            return out
        giant = np.bincount(label).argmax()
        new = []
        for c in range(n):
            if c == giant:
                continue
            members = np.flatnonzero(label == c)
            best = (-np.inf, -1, -1)
            for s in range(0, len(members), 1024):
                rows = members[s:s + 1024]
                sims = t[rows] @ t.T  # (m, V)
                sims[:, members] = -np.inf
                r, j = np.unravel_index(np.argmax(sims), sims.shape)
                best = max(best, (float(sims[r, j]), int(rows[r]), int(j)))
            new.append((best[1], best[2], max(1.0 - best[0], MIN_WEIGHT)))
        out += new
        i, j, w = map(np.asarray, zip(*new))
        graph = (graph + sp.coo_matrix((w, (i, j)), shape=graph.shape)).tocsr()


def layout(n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, node_size: float = NODE_SIZE) -> np.ndarray:
    """2-D positions (n, 2) of a tree's nodes with tmap (OGDF FM^3 multilevel layout, both cores)."""
    try:
        import tmap
    except ImportError as e:
        raise WorkbenchError(f"The tree view needs tmap ({e}): pip install tmap-silicon==1.0.19") from None
    cfg = tmap.LayoutConfiguration()
    cfg.node_size, cfg.fme_threads = node_size, 2
    edges = list(zip(src.tolist(), dst.tolist(), weight.tolist()))
    x, y, *_ = tmap.layout_from_edge_list(n, edges, cfg, create_mst=True)  # a tree is its own MST
    return np.stack([np.asarray(x, np.float32), np.asarray(y, np.float32)], axis=1)  # (n, 2)


class VocabTree:
    """The vocabulary's spanning tree (`src_`, `dst_`, `weight_`: V - 1 edges) and its layout (`xy_` (V, 2))."""

    _index: ExactCosine | None = None

    def fit(self, anchors, k: int = 10, source: str = "exact", node_size: float = NODE_SIZE, center: bool = True,
            lsh: dict | None = None, progress: Progress | None = None, knn=None) -> "VocabTree":
        """knn: the exact neighbours of every anchor if already known, (indices, sims) (V, >= k) best first,
        self excluded (a VocabMap's `knn_indices_[:, 1:]`, `knn_sims_[:, 1:]`); used for source "exact"."""
        self.params_ = check_params(k, source, node_size, center, lsh)
        report = progress or (lambda fraction, message: None)
        a = _as_matrix(anchors, "anchors")  # (V, D)
        started = time.perf_counter()
        self.fingerprint_ = fingerprint(a)
        self._index = ExactCosine.shared(a, center, self.fingerprint_)
        k = _check_k(k, self.index_.n_anchors - 1, "k")
        if knn is not None and source == "exact":
            self.knn_indices_, self.knn_sims_ = (np.asarray(x)[:, :k] for x in knn)  # (V, k) each
            if self.knn_indices_.shape != (len(a), k):
                raise ValueError(f"knn must hold at least k={k} neighbours for each of {len(a)} anchors, "
                                 f"got {np.asarray(knn[0]).shape}")
        else:
            self.knn_indices_, self.knn_sims_ = self._knn(a, k, report)  # (V, k) each; not cached
        graph = knn_graph(self.knn_indices_, self.knn_sims_)  # (V, V), weights 1 - cos
        report(0.6, "joining the kNN graph's pieces")
        extra = bridges(self.index_.normed_, graph)
        if extra:
            i, j, w = map(np.asarray, zip(*extra))
            graph = (graph + sp.coo_matrix((w, (i, j)), shape=graph.shape)).tocsr()
        self.n_bridges_ = len(extra)
        mst = spanning_tree(graph)  # (V, V), V - 1 entries
        tree = sp.triu(mst + mst.T).tocoo()  # each edge once, src < dst
        self.src_, self.dst_ = tree.row.astype(np.int32), tree.col.astype(np.int32)
        self.weight_ = tree.data.astype(np.float32)
        report(0.65, f"laying out the tree ({len(self.src_):,} edges)")
        self.xy_ = layout(len(a), self.src_, self.dst_, self.weight_, node_size)
        self.fit_seconds_ = time.perf_counter() - started
        report(1.0, f"tree ready ({self.fit_seconds_:.0f} s)")
        return self

    def _knn(self, a: np.ndarray, k: int, report: Progress) -> tuple[np.ndarray, np.ndarray]:
        if self.params_["source"] == "exact":
            return self.index_.kneighbors(k, include_self=False, progress=lambda f, m: report(0.55 * f, m))
        report(0.0, "indexing the vocabulary in the LSH forest")
        forest = LSHForestIndex.from_params(self.params_["lsh"] or {}).fit(a, self.params_["center"])
        report(0.1, f"querying the LSH forest for all {len(a):,} tokens")
        idx, sims = anchor_neighbors(forest, a, k)  # (V, k); -1 where the forest ran short
        short = np.flatnonzero((idx < 0).any(axis=1))
        if len(short):  # the fallback: exact search for those rows (self is dropped)
            ex_i, ex_s = self.index_.query(a[short], k + 1)
            keep = np.argsort(ex_i == short[:, None], axis=1, kind="stable")[:, :k]
            idx[short], sims[short] = np.take_along_axis(ex_i, keep, 1), np.take_along_axis(ex_s, keep, 1)
        return idx, sims

    @property
    def index_(self) -> ExactCosine:
        """The exact cosine index over the anchors (built by fit, or on first use after load)."""
        if self._index is None:
            self._index = ExactCosine.shared(self._anchors, self.params_["center"], self.fingerprint_)
        return self._index

    def tree_matrix(self) -> sp.csr_matrix:
        """The spanning tree as a (V, V) matrix (upper triangle), for `vocabgraph.graph_tables`."""
        V = self.xy_.shape[0]
        return sp.csr_matrix((self.weight_, (self.src_, self.dst_)), shape=(V, V))

    def edge_length(self) -> float:
        """Median drawn length of a tree edge."""
        return float(np.median(np.linalg.norm(self.xy_[self.src_] - self.xy_[self.dst_], axis=1)))

    def attach(self, run: str, vectors, k: int = 3) -> PromptPoints:
        """Hang vectors (P, D) off their nearest tokens (exact cosine top-k); no anchor moves.

        Each sits HANG median edges from its nearest token, in the direction of the similarity-weighted
        mean of its next k - 1 tokens' positions (a random-looking but fixed direction when there are
        none); several prompts of one call on one token are fanned out around that direction.
        """
        nearest, sims = self.index_.query(vectors, _check_k(k, self.xy_.shape[0]))  # (P, k) each
        base = self.xy_[nearest[:, 0]]  # (P, 2)
        lean = np.zeros_like(base)
        if k > 1:
            w = np.maximum(sims[:, 1:], 0)[:, :, None]  # (P, k - 1, 1)
            lean = (w * (self.xy_[nearest[:, 1:]] - base[:, None])).sum(axis=1)  # (P, 2)
        angle = np.where(np.linalg.norm(lean, axis=1) > 0, np.arctan2(lean[:, 1], lean[:, 0]),
                         nearest[:, 0] * 2.399963)  # golden angle per token id
        seen: dict[int, int] = {}
        for p, a in enumerate(nearest[:, 0].tolist()):
            m = seen[a] = seen.get(a, -1) + 1
            angle[p] += SPREAD * ((m + 1) // 2) * (1 if m % 2 else -1)  # 0, +1, -1, +2, ... steps
        r = HANG * self.edge_length()
        xy = base + r * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return PromptPoints(run=str(run), xy=xy.astype(np.float32), nearest=nearest, sims=sims)

    ARRAYS = ("xy", "src", "dst", "weight")

    def save(self, folder) -> Path:
        """Write xy.npy, src.npy, dst.npy, weight.npy and meta.json (last) into folder."""
        return save_cache(folder, {name: getattr(self, f"{name}_") for name in self.ARRAYS}, {
            "version": CACHE_VERSION, "params": self.params_, "anchors_shape": list(self.index_.normed_.shape),
            "fingerprint": self.fingerprint_, "fit_seconds": round(self.fit_seconds_, 2), "bridges": self.n_bridges_})

    @classmethod
    def load(cls, folder, anchors) -> "VocabTree":
        """The tree cached in folder, checked against anchors; StaleMapError if it does not match."""
        meta, arrays, a = load_cache(folder, anchors, cls.ARRAYS, CACHE_VERSION, "tree")
        tree = cls()
        tree.params_ = check_params(**meta["params"])
        tree.fingerprint_, tree.fit_seconds_, tree.n_bridges_ = meta["fingerprint"], meta["fit_seconds"], meta["bridges"]
        tree.xy_, tree.src_, tree.dst_, tree.weight_ = (arrays[name] for name in cls.ARRAYS)
        if tree.xy_.shape != (len(a), 2) or not len(tree.src_) == len(tree.dst_) == len(tree.weight_) == len(a) - 1:
            raise StaleMapError(f"tree cache in {folder} is incomplete")
        tree._anchors = a  # the exact index is built on the first attach: reopening stays quick
        return tree


def load_or_fit(cache_dir, anchors, progress: Progress | None = None, knn=None, **params) -> VocabTree:
    """The cached tree if it matches these anchors and parameters, else a fresh build (saved); knn as in fit."""
    return cached_fit(VocabTree, cache_dir, anchors, check_params(**params), progress, "tree", knn=knn)
