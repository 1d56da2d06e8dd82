"""A fixed 2-D map of the vocabulary embeddings, and placement of new vectors onto it.

The anchors (vocabulary input embeddings, mean-centred like `core.explore.neighbors.ExactCosine`)
are laid out once per model with UMAP (cosine metric, fixed seed) and cached on disk.
Learned prompt vectors are then *placed* onto the map without moving any anchor, the way
UMAP's `transform` initialises new points: membership strengths to their nearest anchors
(fuzzy simplicial set, sigma/rho smoothing), then the strength-weighted mean of those
anchors' 2-D positions. So runs and checkpoints placed at different times are comparable.

Speed: plain UMAP runs NN-descent, which a fixed random_state makes single-threaded, then the
layout. Here the exact 15-NN of every anchor comes from `ExactCosine.kneighbors` (bfloat16
shortlist, certified float32 re-rank, both cores) and is handed to UMAP as `precomputed_knn`;
the rest keeps UMAP's defaults (fuzzy graph + spectral init, 200 epochs), with exact
neighbourhoods in the full embedding dimensions. `bench/bench_embedmap.py` measures the build.
Rejected: a PCA-50 copy (keeps ~26% of the centred variance, and was not faster);
n_epochs=100 (faster, but 2-D 15-NN preservation 0.17 vs 0.19); init="pca" (no gain).
The anchor kNN is kept (`knn_indices_`, `knn_sims_`) and cached: `core.explore.vocabgraph` builds
its spanning tree from it.
"""
from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from core.explore.neighbors import ExactCosine, _as_matrix, _check_k, fingerprint  # noqa: F401 (re-exported)
from core.model.memory import release_freed
from core.store.paths import read_json, write_json_atomic

Progress = Callable[[float, str], None]
CACHE_VERSION = 1
SMOOTH_K_TOLERANCE = 1e-5  # umap.umap_.SMOOTH_K_TOLERANCE
MIN_K_DIST_SCALE = 1e-3  # umap.umap_.MIN_K_DIST_SCALE
IDENTICAL = 1e-6  # cosine distances below this are float32 noise around 0


class StaleMapError(ValueError):
    """The cached map does not belong to these anchors or these parameters."""


def check_params(seed=42, n_neighbors=15, min_dist=0.1, n_epochs=None, center=True) -> dict:
    """The map parameters, validated; every error quotes the bad value."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(n_neighbors, int) or isinstance(n_neighbors, bool) or n_neighbors < 2:
        raise ValueError(f"n_neighbors must be an integer >= 2, got {n_neighbors!r}")
    if not isinstance(min_dist, (int, float)) or not 0.0 <= min_dist <= 1.0:
        raise ValueError(f"min_dist must be a number in [0, 1] (UMAP's spread is 1), got {min_dist!r}")
    if n_epochs is not None and (not isinstance(n_epochs, int) or n_epochs < 1):
        raise ValueError(f"n_epochs must be None (UMAP's default) or a positive integer, got {n_epochs!r}")
    return dict(seed=seed, n_neighbors=n_neighbors, min_dist=float(min_dist), n_epochs=n_epochs,
                center=bool(center))


def membership_strengths(dists: np.ndarray) -> np.ndarray:
    """Fuzzy membership of each new point to its k nearest anchors: (N, k) -> (N, k).

    Mirrors what `umap.umap_.UMAP.transform` computes for new points, vectorised over rows:
    `smooth_knn_dist(dists, k, local_connectivity=max(0, 1 - 1) = 0)` (float32 binary search
    for sigma with sum_{j>=1} exp(-(d_j - rho) / sigma) = log2(k); rho = 0) followed by
    `compute_membership_strengths(..., bipartite=True)` (exp(-(d - rho) / sigma), or 1 where
    d - rho <= 0 or sigma == 0).
    """
    d = np.ascontiguousarray(dists, dtype=np.float32)  # (N, k)
    n, k = d.shape
    rho = np.zeros(n, np.float32)  # local_connectivity 0 -> rho = 0
    target = np.log2(k)
    lo, hi, mid = np.zeros(n, np.float32), np.full(n, np.inf, np.float32), np.ones(n, np.float32)
    done = np.zeros(n, bool)
    shifted = d[:, 1:] - rho[:, None]  # (N, k - 1): umap's loop starts at j = 1
    for _ in range(64):
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            terms = np.where(shifted > 0, np.exp(-(shifted / mid[:, None])), np.float32(1.0))
        psum = terms.sum(axis=1, dtype=np.float32)  # (N,)
        done |= np.abs(psum - target) < SMOOTH_K_TOLERANCE
        go_down = ~done & (psum > target)
        go_up = ~done & ~(psum > target)
        hi = np.where(go_down, mid, hi)
        lo = np.where(go_up, mid, lo)
        mid = np.where(go_down | (go_up & np.isfinite(hi)), (lo + hi) / np.float32(2.0),
                       np.where(go_up, mid * np.float32(2.0), mid)).astype(np.float32)
        if done.all():
            break
    sigma = np.maximum(mid, np.float32(MIN_K_DIST_SCALE * d.mean()))  # rho == 0 branch of umap
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.exp(-((d - rho[:, None]) / sigma[:, None]))  # (N, k)
    return np.where((d - rho[:, None] <= 0) | (sigma[:, None] == 0), np.float32(1.0), w).astype(np.float32)


def weighted_positions(indices: np.ndarray, weights: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """New points at the weight-normalised mean of their anchors' positions: -> (N, 2).

    Mirrors `umap.umap_.init_graph_transform`: a point with a strength-1 edge (distance 0
    to an anchor) sits exactly on that anchor (lowest anchor index among ties, as CSR
    column order gives there); a point with no edges gets NaN.
    """
    w = np.where(weights > 0, weights, 0).astype(np.float64)  # (N, k); eliminate_zeros
    total = w.sum(axis=1, keepdims=True)  # (N, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.einsum("nk,nkc->nc", w / total, embedding[indices].astype(np.float64))  # (N, 2)
    exact = weights == 1  # (N, k)
    rows = exact.any(axis=1)
    if rows.any():
        first = np.where(exact[rows], indices[rows], np.iinfo(np.int64).max).min(axis=1)
        pos[rows] = embedding[first]
    return pos.astype(np.float32)


class _EpochProgress:
    """File-like sink for umap's tqdm bar ("{n}/{total}") that reports to progress(fraction, message)."""

    def __init__(self, progress: Progress, start: float, stop: float) -> None:
        self.progress, self.start, self.stop = progress, start, stop

    def write(self, text: str) -> None:
        found = re.findall(r"(\d+)/(\d+)", text)
        if found:
            n, total = map(int, found[-1])
            self.progress(self.start + (self.stop - self.start) * n / max(total, 1), f"layout epoch {n}/{total}")

    def flush(self) -> None:
        pass


class VocabMap:
    """UMAP layout of the anchors (`embedding_` (V, 2)) and placement of new vectors onto it."""

    def fit(self, anchors, seed: int = 42, n_neighbors: int = 15, min_dist: float = 0.1,
            n_epochs: int | None = None, center: bool = True, progress: Progress | None = None) -> "VocabMap":
        import umap  # heavy import (numba), only needed when fitting

        self.params_ = check_params(seed, n_neighbors, min_dist, n_epochs, center)
        report = progress or (lambda fraction, message: None)
        report(0.0, "centring and normalising the anchors")
        self.fingerprint_ = fingerprint(anchors)
        self.index_ = ExactCosine.shared(anchors, center, self.fingerprint_)
        _check_k(n_neighbors, self.index_.n_anchors - 1, "n_neighbors")
        started = time.perf_counter()
        knn_i, knn_s = self.index_.kneighbors(
            n_neighbors, include_self=True, progress=lambda f, m: report(0.3 * f, m))  # (V, k) each
        self.knn_indices_, self.knn_sims_ = knn_i.astype(np.int32), knn_s.astype(np.float32)
        report(0.3, "fuzzy graph and spectral initialisation")
        dists = np.maximum(1.0 - self.knn_sims_, 0.0).astype(np.float32)  # cosine distance, (V, k)
        dists[:, 0] = 0.0  # the anchor itself
        model = umap.UMAP(
            n_neighbors=n_neighbors, min_dist=min_dist, metric="cosine", random_state=seed, n_epochs=n_epochs,
            init="spectral", precomputed_knn=(self.knn_indices_, dists, None), force_approximation_algorithm=True,
            tqdm_kwds={"disable": progress is None, "file": _EpochProgress(report, 0.35, 0.99),
                       "bar_format": "{n}/{total}", "mininterval": 0.5})
        with warnings.catch_warnings():  # "no search index" / "n_jobs overridden": expected here
            warnings.simplefilter("ignore", UserWarning)
            self.embedding_ = model.fit_transform(self.index_.normed_).astype(np.float32)  # (V, 2)
        self.fit_seconds_ = time.perf_counter() - started
        report(1.0, f"map ready ({self.fit_seconds_:.0f} s)")
        return self

    def place(self, vectors, k: int | None = None) -> np.ndarray:
        """2-D positions (N, 2) of new vectors (N, D); no anchor moves."""
        k = self.params_["n_neighbors"] if k is None else _check_k(k, self.index_.n_anchors)
        idx, sims = self.index_.query(vectors, k)  # (N, k) each
        dists = 1.0 - sims  # cosine distance, as umap's "cosine" metric
        dists[dists < IDENTICAL] = 0.0  # float32 rounding of an identical direction: strength 1
        return weighted_positions(idx, membership_strengths(dists), self.embedding_)

    def save(self, folder) -> Path:
        """Write embedding.npy, knn_indices.npy, knn_sims.npy and meta.json (last) into folder."""
        return save_cache(folder, {name: getattr(self, f"{name}_") for name in self.ARRAYS}, {
            "version": CACHE_VERSION, "params": self.params_, "anchors_shape": list(self.index_.normed_.shape),
            "fingerprint": self.fingerprint_, "fit_seconds": round(self.fit_seconds_, 2)})

    ARRAYS = ("embedding", "knn_indices", "knn_sims")

    @classmethod
    def load(cls, folder, anchors) -> "VocabMap":
        """The map cached in folder, checked against anchors; StaleMapError if it does not match."""
        meta, arrays, a = load_cache(folder, anchors, cls.ARRAYS, CACHE_VERSION, "map")
        vmap = cls()
        vmap.params_ = check_params(**meta["params"])
        vmap.fingerprint_, vmap.fit_seconds_ = meta["fingerprint"], meta.get("fit_seconds", 0.0)
        for name, arr in arrays.items():
            if arr.shape[0] != a.shape[0]:
                raise StaleMapError(f"{name}.npy in {folder} has {arr.shape[0]} rows, expected {a.shape[0]}")
            setattr(vmap, f"{name}_", arr)
        vmap.index_ = ExactCosine.shared(a, vmap.params_["center"], vmap.fingerprint_)  # load_cache checked it
        return vmap


def save_cache(folder, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write <name>.npy for each array, then meta.json: a half-written cache never looks valid."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr, allow_pickle=False)
    write_json_atomic(folder / "meta.json", meta)
    return folder


def load_cache(folder, anchors, names, version: int, what: str) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """(meta, {name: array}, anchors as float32) of a cache save_cache wrote for these anchors (same shape and
    fingerprint, meta version == version); StaleMapError (naming `what`) if there is none."""
    folder = Path(folder)
    meta = read_json(folder / "meta.json")
    if not meta or meta.get("version") != version:
        raise StaleMapError(f"no usable {what} cache in {folder}")
    a = _as_matrix(anchors, "anchors")
    if meta["anchors_shape"] != list(a.shape) or meta["fingerprint"] != fingerprint(a):
        raise StaleMapError(f"{what} cache in {folder} was built for other anchors ({meta['anchors_shape']})")
    return meta, {name: np.load(folder / f"{name}.npy", allow_pickle=False) for name in names}, a


def cached_fit(cls, cache_dir, anchors, wanted: dict, progress: Progress | None, what: str, **fit_args):
    """cls.load(cache_dir, anchors) if it matches and was built with the parameters wanted, else
    cls().fit(anchors, **wanted, **fit_args), saved to cache_dir."""
    try:
        cached = cls.load(cache_dir, anchors)
        if cached.params_ == wanted:
            if progress:
                progress(1.0, f"{what} loaded from cache")
            return cached
    except (StaleMapError, OSError, ValueError, KeyError, TypeError):
        pass
    fitted = cls().fit(anchors, progress=progress, **wanted, **fit_args)
    fitted.save(cache_dir)
    release_freed(collect=True)  # the build's kNN graph, layout and UMAP intermediates
    return fitted


def load_or_fit(cache_dir, anchors, progress: Progress | None = None, **params) -> VocabMap:
    """The cached map if it matches these anchors and parameters, else a fresh fit (saved)."""
    return cached_fit(VocabMap, cache_dir, anchors, check_params(**params), progress, "map")
