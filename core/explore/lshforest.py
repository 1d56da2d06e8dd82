"""The LSH forest over the vocabulary: datasketch's `MinHashLSHForest` as the index, paths down
k-means trees as the hash (core/explore/kmtree.py), multi-probe into the next-nearest leaves, then
a walk on the vocabulary's kNN graph from the best candidates; every candidate is scored by exact
cosine. Parameters are chosen per model from bench/bench_lsh.py's recall/cost curve, and a fitted
index is cached on disk with its parameters (`load_or_fit`)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from datasketch import LeanMinHash, MinHashLSHForest

from core.explore.kmtree import fit_tree, leaf_numbers
from core.explore.neighbors import ExactCosine, Progress, _as_matrix, _check_k, fingerprint
from core.model.memory import release_freed
from core.store.paths import read_json, write_json_atomic

CACHE_VERSION = 1
WALK_WIDTH = 4  # graph nodes expanded per query and round of the walk
QUERY_CHUNK = 256  # queries walked together (a (chunk, V) bool "seen" mask)
# The page's default, read off bench/bench_lsh.py's curve on SmolLM2-135M (49,152 x 576), see
# docs/performance.md: the cheapest setting with recall@10 >= 0.95 on vocabulary and trained-prompt queries.
DEFAULT_LSH = dict(trees=2, branching=64, depth=2, candidates_per_k=300, graph_k=14, ef=40, seed=1)
MODEL_LSH = {"smollm2-135m-instruct": DEFAULT_LSH}  # measured per model; others start from DEFAULT_LSH


def default_lsh(model: str) -> dict:
    """The LSH forest parameters chosen for a model (a copy), DEFAULT_LSH when it was not measured."""
    return dict(MODEL_LSH.get(model, DEFAULT_LSH))


class LSHForestIndex:
    """Approximate cosine neighbours of vectors among fixed anchors (the vocabulary embeddings).

    fit: `trees` hierarchical k-means trees over the mean-centred unit anchors (different seeds),
    `branching` clusters per node, `depth` levels. An anchor's hash values in tree t are its
    path (cluster index per level); `datasketch.MinHashLSHForest(num_perm=trees*depth, l=trees)`
    indexes them, so a prefix of r values is a level-r cluster and a full path a leaf. Also the
    exact `graph_k` nearest anchors of every anchor (the vocabulary's kNN graph).

    query, for each vector: (1) multi-probe: the leaves of all trees in order of their centroid's
    cosine to the vector (its own leaf first, then the next-nearest), each leaf's anchors as the
    forest's table holds them under that full path, until `candidates` distinct anchors
    (default k * candidates_per_k);
    (2) with ef > 0, a best-first walk on the kNN graph: the neighbours of the best unexpanded of
    the ef best anchors so far become candidates, WALK_WIDTH at a time, until the ef best are all
    expanded (at most 2 * ef expansions). Every candidate is scored by exact cosine and counted
    (`query_stats`); the best k are returned.
    """

    PARAMS = ("trees", "branching", "depth", "candidates_per_k", "graph_k", "ef", "seed")

    def __init__(self, trees: int = 2, branching: int = 64, depth: int = 2, candidates_per_k: int = 300,
                 graph_k: int = 14, ef: int = 40, seed: int = 1) -> None:  # defaults: DEFAULT_LSH
        for name, value, low, high in (("trees", trees, 1, 64), ("branching", branching, 2, 1024),
                                       ("depth", depth, 1, 4), ("candidates_per_k", candidates_per_k, 1, 1 << 20),
                                       ("graph_k", graph_k, 0, 256), ("ef", ef, 0, 4096), ("seed", seed, 0, 2**32 - 1)):
            if not _is_int(value) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if branching ** depth > 1 << 20:
            raise ValueError(f"branching ** depth (leaves per tree) must be at most 2**20, got {branching}**{depth}")
        if ef and not graph_k:
            raise ValueError(f"ef must be 0 (no graph walk) when graph_k is 0, got {ef!r}")
        self.trees, self.branching, self.depth = int(trees), int(branching), int(depth)
        self.candidates_per_k, self.graph_k = int(candidates_per_k), int(graph_k)
        self.ef, self.seed = int(ef), int(seed)

    def params(self) -> dict:
        """The constructor arguments, JSON-ready: LSHForestIndex(**index.params()) builds the same index."""
        return {name: getattr(self, name) for name in self.PARAMS}

    @classmethod
    def from_params(cls, params: dict) -> "LSHForestIndex":
        unknown = sorted(set(params) - set(cls.PARAMS))
        if unknown:
            raise ValueError(f"unknown LSH forest parameter(s) {unknown}; expected some of {list(cls.PARAMS)}")
        return cls(**params)

    def __repr__(self) -> str:
        return "LSHForestIndex(" + ", ".join(f"{k}={v!r}" for k, v in self.params().items()) + ")"

    def fit(self, anchors, center: bool = True, progress: Progress | None = None,
            knn: np.ndarray | None = None) -> "LSHForestIndex":
        """Build the trees, the forest and the kNN graph. knn (V, >= graph_k), optional: each anchor's
        nearest other anchors, best first (e.g. the vocabulary map's cached kNN without its first,
        self, column), which saves the all-pairs search."""
        report = progress or (lambda fraction, message: None)
        started = time.perf_counter()
        self.fingerprint_ = fingerprint(anchors)
        self.exact_ = ExactCosine.shared(anchors, center, self.fingerprint_)
        seeds = np.random.SeedSequence(self.seed).generate_state(self.trees)
        paths, cents = [], []
        for t, s in enumerate(seeds):
            report(t / (self.trees + 1), f"k-means tree {t + 1}/{self.trees}")
            p, c = fit_tree(self.exact_.normed_, self.branching, self.depth, int(s))
            paths.append(p), cents.append(c)
        self.paths_, self.centroids_ = np.stack(paths, axis=1), np.stack(cents)  # (V, T, depth), (T, L, D)
        k = min(self.graph_k, self.exact_.n_anchors - 1)
        report(self.trees / (self.trees + 1), "kNN graph of the anchors")
        if knn is not None and (np.shape(knn)[0] != self.exact_.n_anchors or np.shape(knn)[1] < k):
            raise ValueError(f"knn must be ({self.exact_.n_anchors}, >= {k}) anchor ids, got shape {np.shape(knn)}")
        if knn is None:
            knn = self.exact_.kneighbors(k, include_self=False)[0] if k > 0 else np.zeros((len(self.paths_), 0))
        self.graph_ = np.ascontiguousarray(knn[:, :k], dtype=np.int32)  # (V, graph_k)
        self._index()
        self.fit_seconds_ = time.perf_counter() - started
        report(1.0, f"LSH forest ready ({self.fit_seconds_:.0f} s)")
        return self

    def _index(self) -> None:
        self.forest_ = MinHashLSHForest(num_perm=self.trees * self.depth, l=self.trees)
        for key, hv in enumerate(self.paths_.reshape(len(self.paths_), -1).astype(np.uint32)):
            self.forest_.add(key, LeanMinHash(seed=self.seed, hashvalues=hv, scheme="affine32"))
        self.forest_.index()
        # The forest's full-path entries are the leaves: read them once into arrays, leaf id t * L + leaf.
        L = self.branching ** self.depth
        self._leaf_keys = [np.zeros(0, np.int64)] * (self.trees * L)
        for t, (sorted_ht, table) in enumerate(zip(self.forest_.sorted_hashtables, self.forest_.hashtables)):
            for key in sorted_ht:
                path = np.frombuffer(key, dtype=">u4")  # big-endian uint32 values, as the forest stores them
                self._leaf_keys[t * L + int(leaf_numbers(path[None], self.branching)[0])] = np.array(table[key])
        self._leaf_sizes = np.array([len(a) for a in self._leaf_keys])  # (T * L,)
        self._cent_t = torch.from_numpy(self.centroids_.reshape(-1, self.centroids_.shape[-1]))  # (T * L, D)

    def query(self, vectors, k: int, candidates: int | None = None, ef: int | None = None):
        """Approximate top-k: (indices (N, k) int64, sims (N, k) float32), best first.

        With candidates >= the number of anchors the result is exact (every anchor is scored).
        Slots the search did not fill hold index -1, sim -inf."""
        idx, sims, _ = self.query_stats(vectors, k, candidates, ef)
        return idx, sims

    def query_stats(self, vectors, k: int, candidates: int | None = None, ef: int | None = None):
        """`query`, plus the number of anchors scored by exact cosine for each vector (N,)."""
        V = self.exact_.n_anchors
        k = _check_k(k, V)
        c = k * self.candidates_per_k if candidates is None else _check_k(candidates, 1 << 31, "candidates")
        ef = self.ef if ef is None else ef
        if not _is_int(ef) or ef < 0 or (ef and not self.graph_.shape[1]):
            raise ValueError(f"ef must be a non-negative integer, and 0 for an index without a graph, got {ef!r}")
        if c >= V:
            i, s = self.exact_.query(vectors, k)
            return i, s, np.full(len(i), V)
        q = self.exact_.transform(vectors)  # (N, D)
        parts = [self._search(q[s:s + QUERY_CHUNK], k, c, int(ef)) for s in range(0, len(q), QUERY_CHUNK)]
        return tuple(np.concatenate(p) for p in zip(*parts))

    def _search(self, q: np.ndarray, k: int, c: int, ef: int):
        V, P = self.exact_.n_anchors, max(k, ef)
        scores = (torch.from_numpy(q) @ self._cent_t.T).numpy()  # (n, T * L)
        m = min(scores.shape[1], 2 * c * scores.shape[1] // V + 64)  # leaves enough for c candidates, mostly
        order = _best_first(scores, m)  # (n, m) leaf ids, best first
        seen = np.zeros((len(q), V), bool)
        ids = np.full((len(q), P), -1, np.int64)
        sims = np.full((len(q), P), -np.inf, np.float32)
        for r in range(len(q)):
            cand = self._candidates(order[r], c, seen[r])  # (c',) distinct anchor ids
            if len(cand) < c and m < scores.shape[1]:  # the best m leaves were not enough: all leaves
                cand = np.concatenate([cand, self._candidates(_best_first(scores[r:r + 1], scores.shape[1])[0][m:],
                                                              c - len(cand), seen[r])])
            s = np.einsum("cd,d->c", self.exact_.normed_[cand], q[r])  # (c',) single-threaded: no BLAS start-up
            top = _best_first(s[None], P)[0]
            ids[r, :len(top)], sims[r, :len(top)] = cand[top], s[top]
        if ef:
            ids, sims = self._walk(q, ids, sims, seen)
        return ids[:, :k], sims[:, :k], seen.sum(axis=1)

    def _candidates(self, order: np.ndarray, c: int, seen: np.ndarray) -> np.ndarray:
        """Up to c distinct anchor ids from the leaves in probe order (T * L,), marked in seen (V,).

        Leaves are taken in blocks whose sizes add up to the ids still missing (an anchor met in
        an earlier tree's leaf counts once), so the loop runs a few times, not once per leaf."""
        sizes, got, start, out = self._leaf_sizes[order], 0, 0, []
        while got < c and start < len(order):
            stop = start + int(np.searchsorted(np.cumsum(sizes[start:]), c - got)) + 1
            block = np.concatenate([self._leaf_keys[j] for j in order[start:stop]])
            block = block[~seen[block]]
            block = block[np.sort(np.unique(block, return_index=True)[1])][:c - got]  # first occurrences, in order
            seen[block] = True
            out.append(block)
            got, start = got + len(block), stop
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _walk(self, q: np.ndarray, ids: np.ndarray, sims: np.ndarray, seen: np.ndarray):
        """Best-first walk on the kNN graph for all rows at once; ids/sims (n, P) sorted, best first."""
        n, P = ids.shape
        done = np.zeros((n, P), bool)
        for _ in range(2 * P // WALK_WIDTH):
            open_ = ~done & (ids >= 0)
            rows = np.flatnonzero(open_.any(axis=1))
            if not len(rows):
                break
            pos = np.argsort(~open_[rows], axis=1, kind="stable")[:, :WALK_WIDTH]  # (m, W) best open slots
            ok = np.take_along_axis(open_[rows], pos, 1)  # (m, W)
            done[rows[:, None], pos] |= ok
            picked = np.take_along_axis(ids[rows], pos, 1)  # (m, W)
            nb = np.where(ok[..., None], self.graph_[np.maximum(picked, 0)], -1).reshape(len(rows), -1)  # (m, W*g)
            nb = np.sort(nb, axis=1)
            r = np.repeat(rows, nb.shape[1]).reshape(nb.shape)  # (m, W*g)
            new = nb >= 0
            new[:, 1:] &= nb[:, 1:] != nb[:, :-1]  # a neighbour of two picked anchors counts once
            new &= ~seen[r, np.maximum(nb, 0)]
            seen[r[new], nb[new]] = True
            s = np.full(nb.shape, -np.inf, np.float32)  # (m, W*g): only new anchors are scored
            s[new] = np.einsum("nd,nd->n", self.exact_.normed_[nb[new]], q[r[new]])
            all_ids = np.concatenate([ids[rows], np.where(new, nb, -1)], axis=1)
            all_sims = np.concatenate([sims[rows], s], axis=1)
            all_done = np.concatenate([done[rows], np.zeros(nb.shape, bool)], axis=1)
            keep = np.argsort(-all_sims, axis=1, kind="stable")[:, :P]
            ids[rows] = np.take_along_axis(all_ids, keep, 1)
            sims[rows] = np.take_along_axis(all_sims, keep, 1)
            done[rows] = np.take_along_axis(all_done, keep, 1)
        return ids, sims

    def save(self, folder) -> Path:
        """Write paths.npy, centroids.npy, graph.npy and meta.json (last, with the parameters) into folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)  # a half-written cache never looks valid
        for name in ("paths", "centroids", "graph"):
            np.save(folder / f"{name}.npy", getattr(self, f"{name}_"), allow_pickle=False)
        V, D = self.exact_.normed_.shape
        write_json_atomic(folder / "meta.json", {
            "version": CACHE_VERSION, "params": self.params(), "center": self.exact_.center_,
            "anchors_shape": [V, D], "fingerprint": self.fingerprint_, "fit_seconds": round(self.fit_seconds_, 2)})
        return folder

    @classmethod
    def load(cls, folder, anchors) -> "LSHForestIndex":
        """The index cached in folder; ValueError when it is missing, stale or built for other anchors."""
        folder, a = Path(folder), _as_matrix(anchors, "anchors")
        meta = read_json(folder / "meta.json")
        if not meta or meta.get("version") != CACHE_VERSION:
            raise ValueError(f"no usable LSH forest cache in {folder}")
        if meta["anchors_shape"] != list(a.shape) or meta["fingerprint"] != fingerprint(a):
            raise ValueError(f"LSH forest cache in {folder} was built for other anchors ({meta['anchors_shape']})")
        index = cls.from_params(meta["params"])
        index.exact_ = ExactCosine.shared(a, meta["center"], meta["fingerprint"])  # checked above
        index.fingerprint_, index.fit_seconds_ = meta["fingerprint"], meta["fit_seconds"]
        T, L = index.trees, index.branching ** index.depth
        shapes = {"paths": (len(a), T, index.depth), "centroids": (T, L, a.shape[1]),
                  "graph": (len(a), min(index.graph_k, len(a) - 1))}
        for name, shape in shapes.items():
            arr = np.load(folder / f"{name}.npy", allow_pickle=False)
            if arr.shape != shape:
                raise ValueError(f"{name}.npy in {folder} has shape {arr.shape}, expected {shape}")
            setattr(index, f"{name}_", arr)
        index._index()
        return index


def load_or_fit(folder, anchors, params: dict, center: bool = True, progress: Progress | None = None,
                knn: np.ndarray | None = None) -> LSHForestIndex:
    """The index cached in folder/lsh-<parameters> if it matches these anchors, else a fresh fit
    (knn as in `LSHForestIndex.fit`), saved there."""
    index = LSHForestIndex.from_params(params)
    name = "lsh-" + "-".join(f"{k}{v}" for k, v in index.params().items()) + ("" if center else "-raw")
    where = Path(folder) / name
    try:
        cached = LSHForestIndex.load(where, anchors)
        if cached.exact_.center_ == bool(center):
            if progress:
                progress(1.0, "LSH forest loaded from cache")
            return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index.fit(anchors, center, progress, knn)
    index.save(where)
    release_freed(collect=True)
    return index


def _best_first(scores: np.ndarray, m: int) -> np.ndarray:
    """Column ids of the m highest scores of each row (n, C), highest first -> (n, min(m, C))."""
    if m < scores.shape[1]:
        part = np.argpartition(-scores, m - 1, axis=1)[:, :m]
        return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable"), 1)
    return np.argsort(-scores, axis=1, kind="stable")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
