"""Nearest vocabulary neighbours of (prompt) vectors: exact cosine top-k and an LSH forest.

Both indexes mean-centre the anchors (the vocabulary input embeddings) before measuring
cosine: LM input embeddings share a large common direction, so raw cosine puts most tokens
close to each other. The same mean (`mean_`, learned in `fit`) is subtracted from every
query, so a query equal to anchor i has cosine 1 with anchor i, exactly as before centring.

`ExactCosine` is the reference. `LSHForestIndex` (core/explore/lshforest.py) gets candidates from
`datasketch.MinHashLSHForest` and re-ranks them by exact cosine; `recall_at_k` measures how
many of the exact top-k it finds.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from typing import Callable

import numpy as np
import torch

from core.errors import WorkbenchError

Progress = Callable[[float, str], None]


def _as_matrix(x, name: str, dim: int | None = None) -> np.ndarray:
    """float32 C-contiguous (N, D) copy-if-needed of x, with a clear error for bad input."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if a.ndim == 1 and dim is not None:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (N, D), got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} has dimension {a.shape[1]}, the anchors have {dim}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def fingerprint(anchors) -> str:
    """Content hash of an anchor matrix (shape, dtype and bytes of its float32 copy)."""
    a = _as_matrix(anchors, "anchors")  # (V, D)
    h = hashlib.blake2b(f"{a.shape}|float32|".encode(), digest_size=16)
    h.update(memoryview(a).cast("B"))
    return "blake2b:" + h.hexdigest()


def _check_k(k, upper: int, name: str = "k") -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= upper:
        raise ValueError(f"{name} must be an integer in [1, {upper}], got {k!r}")
    return int(k)


class ExactCosine:
    """Exact cosine top-k against a fixed anchor matrix (brute force, chunked matmuls).

    A bfloat16 matmul (about 3x faster than float32 on CPU) shortlists k + 64 candidates,
    which are re-ranked by float32 cosine. The result is certified exact: with unit rows,
    a bfloat16 score differs from the true cosine by at most 2u + u^2 (rounded inputs) + u
    (rounded output), u = 2^-8, i.e. < BF16_SLACK; a row whose k-th float32 sim is not at
    least BF16_SLACK above the best score left out of the shortlist is recomputed fully in
    float32. (Measured on SmolLM2's vocabulary: largest bfloat16 error 0.0026.)
    """

    SHORTLIST_MARGIN = 64
    BF16_SLACK = 2.0 ** -6  # > 3 * 2^-8 + 2^-16
    _shared: "weakref.WeakValueDictionary[tuple, ExactCosine]" = weakref.WeakValueDictionary()
    _shared_lock = threading.Lock()

    def __init__(self, chunk: int = 1024) -> None:
        self.chunk = _check_k(chunk, 1 << 20, "chunk")

    @classmethod
    def shared(cls, anchors, center: bool = True, key: str | None = None) -> "ExactCosine":
        """An index over anchors fitted once while anyone holds it: the map, the tree, the LSH forest and
        the app's own index over one vocabulary share its (V, D) float32 and bfloat16 matrices (170 MB
        for SmolLM2) instead of holding a copy each. key: the anchors' `fingerprint`, if already known.
        The index must be treated as read-only (every method here is)."""
        a = _as_matrix(anchors, "anchors")
        wanted = (key or fingerprint(a), bool(center))
        with cls._shared_lock:
            index = cls._shared.get(wanted)
            if index is None:
                index = cls._shared[wanted] = cls().fit(a, center)
            return index

    def fit(self, anchors, center: bool = True) -> "ExactCosine":
        a = _as_matrix(anchors, "anchors")  # (V, D)
        self.mean_ = a.mean(axis=0) if center else np.zeros(a.shape[1], np.float32)  # (D,)
        self.center_ = bool(center)
        self.normed_ = self.transform(a)  # (V, D) unit rows
        self._t = torch.from_numpy(self.normed_)  # (V, D), shares memory with normed_
        self._low = self._t.to(torch.bfloat16)  # (V, D) for the shortlist
        return self

    @property
    def n_anchors(self) -> int:
        return self.normed_.shape[0]

    def transform(self, vectors) -> np.ndarray:
        """Centre with the anchors' mean_ and scale rows to unit length: (N, D) -> (N, D)."""
        x = _as_matrix(vectors, "vectors", self.mean_.shape[0]) - self.mean_  # (N, D), a new array
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # in place: no second (N, D) copy
        return x

    def query(self, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k anchors by cosine: (indices (N, k) int64, sims (N, k) float32), best first."""
        k = _check_k(k, self.n_anchors)
        q = torch.from_numpy(self.transform(vectors))  # (N, D)
        parts = [self._topk(q[s:s + self.chunk], k) for s in range(0, q.shape[0], self.chunk)]
        return torch.cat([i for i, _ in parts]).numpy(), torch.cat([v for _, v in parts]).numpy()

    def kneighbors(self, k: int, include_self: bool = True,
                   progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest anchors of every anchor: (indices (V, k) int64, sims (V, k) float32).

        With include_self the anchor itself is always column 0 (sim 1), as UMAP expects of
        a precomputed kNN, even when duplicate rows tie with it; without, it is left out.
        """
        V = self.n_anchors
        k = _check_k(k, V if include_self else V - 1)
        out_i, out_s = np.empty((V, k), np.int64), np.empty((V, k), np.float32)
        for s in range(0, V, self.chunk):
            rows = torch.arange(s, min(s + self.chunk, V))  # (n,)
            i, v = self._topk(self._t[rows], k, rows, 4.0 if include_self else -4.0)  # above / below any cosine
            out_i[rows], out_s[rows] = i.numpy(), v.clamp(-1.0, 1.0).numpy()
            if progress:
                progress(int(rows[-1] + 1) / V, f"nearest neighbours {int(rows[-1]) + 1}/{V}")
        return out_i, out_s

    def _topk(self, q: torch.Tensor, k: int, rows: torch.Tensor | None = None,
              self_score: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Certified top-k of unit rows q (n, D); rows (n,), if given, are anchor ids scored self_score."""
        c = min(self.n_anchors, k + self.SHORTLIST_MARGIN)
        rough = _pin(q.to(torch.bfloat16) @ self._low.T, rows, self_score)  # (n, V) bfloat16
        bound, cand = torch.topk(rough, c, dim=1)  # (n, c)
        bound = bound.float()
        exact = _pin(torch.bmm(self._t[cand], q[:, :, None])[..., 0], rows, self_score, cand)  # (n, c)
        v, j = torch.topk(exact, k, dim=1)  # (n, k)
        idx = torch.gather(cand, 1, j)
        if c < self.n_anchors:
            unsure = v[:, -1] < bound[:, -1] + self.BF16_SLACK  # a left-out anchor might still win
            if unsure.any():
                sub = None if rows is None else rows[unsure]
                v[unsure], idx[unsure] = torch.topk(_pin(q[unsure] @ self._t.T, sub, self_score), k, dim=1)
        return idx, v


def _pin(scores: torch.Tensor, rows: torch.Tensor | None, value: float,
         cols: torch.Tensor | None = None) -> torch.Tensor:
    """Set each row's own-anchor score to value: scores (n, V), or (n, c) over candidate ids cols (n, c)."""
    if rows is not None:
        if cols is None:
            scores[torch.arange(len(rows)), rows] = value
        else:
            scores[cols == rows[:, None]] = value
    return scores


def recall_at_k(approx_idx, exact_idx) -> float:
    """Mean over rows of the fraction of the exact top-k (exact_idx (N, k)) found in approx_idx (N, k')."""
    approx, exact = np.asarray(approx_idx), np.asarray(exact_idx)
    if approx.ndim != 2 or exact.ndim != 2 or approx.shape[0] != exact.shape[0] or exact.size == 0:
        raise ValueError(f"recall_at_k needs two (N, k) arrays with the same N, got {approx.shape} and {exact.shape}")
    found = (exact[:, :, None] == approx[:, None, :]).any(axis=2)  # (N, k)
    return float(found.mean())


def nearest_tokens(vectors: np.ndarray, index: ExactCosine, tokenizer, k: int = 5) -> list[dict]:
    """One row per virtual token: its k nearest vocabulary tokens by exact cosine (mean-centred)."""
    if vectors.shape[1] != index.mean_.shape[0]:
        raise WorkbenchError(f"The prompt vectors have width {vectors.shape[1]} but the model's embeddings have "
                             f"{index.mean_.shape[0]}: the adapter belongs to another base model; open it with "
                             "that one.")
    idx, sims = index.query(vectors, k)
    rows = []
    for i, (ids, ss) in enumerate(zip(idx, sims)):
        toks = tokenizer.convert_ids_to_tokens([int(t) for t in ids])
        rows.append({"virtual token": i, "nearest": ", ".join(f"{t!r} ({s:.2f})" for t, s in zip(toks, ss)),
                     "top cosine": float(ss[0])})
    return rows
