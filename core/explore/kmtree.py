"""Hierarchical spherical k-means trees: the data-dependent hash of the LSH forest (core/explore/lshforest.py).

A tree splits the (mean-centred, unit) anchors into `branching` clusters by spherical k-means,
then splits every cluster again, `depth` levels deep: branching ** depth leaves. An anchor's path
is its cluster index at each level, so two anchors share a path prefix of length r exactly when
they fall in the same level-r cluster; the forest indexes these paths. Every leaf keeps the unit
mean of its anchors; a query ranks the leaves of all trees by cosine to those centroids (the
neighbour structure in 576 dimensions is weak, so a greedy descent through the upper levels
misses too many neighbours: measured, probing the children of the 8 best of 64 top clusters
loses 0.06-0.10 recall@10 against ranking all leaves).
"""
from __future__ import annotations

import numpy as np
import torch

KMEANS_ITERS = 8
TRAIN_PER_CLUSTER = 256  # a node's k-means trains on at most branching * this many of its anchors


def spherical_kmeans(x: torch.Tensor, clusters: int, rng: np.random.Generator,
                     iters: int = KMEANS_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit centroids (C, D) and assignments (n,) of unit rows x (n, D); C = min(clusters, n).

    Trains on at most clusters * TRAIN_PER_CLUSTER rows drawn by rng (starting from C distinct
    ones), then assigns every row; a cluster that empties keeps its old centroid."""
    c = min(clusters, len(x))
    full, x = x, x[torch.from_numpy(np.sort(rng.choice(len(x), min(len(x), c * TRAIN_PER_CLUSTER), replace=False)))]
    cent = x[torch.from_numpy(rng.choice(len(x), c, replace=False))].clone()  # (C, D)
    for _ in range(iters):
        assign = (x @ cent.T).argmax(dim=1)  # (n,)
        onehot = torch.zeros(c, len(x))
        onehot[assign, torch.arange(len(x))] = 1.0
        sums = onehot @ x  # (C, D): a matmul, much faster than index_add_ on CPU
        empty = onehot.sum(dim=1) == 0
        sums[empty] = cent[empty]
        cent = torch.nn.functional.normalize(sums, dim=1)
    return cent, (full @ cent.T).argmax(dim=1)


def fit_tree(normed: np.ndarray, branching: int, depth: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One tree over unit rows normed (V, D): (paths (V, depth) int32, leaf centroids (branching**depth, D)).

    Leaf number = the path read in base `branching`; leaves that stay empty (a cluster with
    fewer anchors than `branching`) get a zero centroid, so no query ranks them first. Runs on one
    thread: the node-sized matmuls are small, and on 2 shared cores a second thread made the fit
    several times slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_tree(torch.from_numpy(normed), branching, depth, np.random.default_rng(seed))
    finally:
        torch.set_num_threads(threads)


def _fit_tree(x: torch.Tensor, branching: int, depth: int, rng: np.random.Generator):
    paths = np.zeros((len(x), depth), np.int32)
    groups = [np.arange(len(x))]  # anchor ids of each cluster at the current level
    for level in range(depth):
        nxt = []
        for ids in groups:
            _, assign = spherical_kmeans(x[torch.from_numpy(ids)], branching, rng)
            assign = assign.numpy()
            paths[ids, level] = assign
            nxt += [ids[assign == c] for c in range(branching)]
        groups = [g for g in nxt if len(g)]
    leaf = torch.from_numpy(leaf_numbers(paths, branching))  # (V,)
    sums = torch.zeros(branching ** depth, x.shape[1]).index_add_(0, leaf, x)  # (L, D); empty leaves stay 0
    return paths, torch.nn.functional.normalize(sums, dim=1).numpy()


def leaf_numbers(paths: np.ndarray, branching: int) -> np.ndarray:
    """Leaf number of each path (N, depth): its digits read in base branching -> (N,) int64."""
    return (paths.astype(np.int64) * branching ** np.arange(paths.shape[1] - 1, -1, -1)).sum(axis=1)

