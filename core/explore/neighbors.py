"""Nearest vocabulary neighbours of (prompt) vectors: exact cosine top-k and an LSH forest.

Both indexes mean-centre the anchors (the vocabulary input embeddings) before measuring
cosine: LM input embeddings share a large common direction, so raw cosine puts most tokens
close to each other. The same mean (`mean_`, learned in `fit`) is subtracted from every
query, so a query equal to anchor i has cosine 1 with anchor i, exactly as before centring.

`ExactCosine` is the reference. `LSHForestIndex` gets candidates from
`datasketch.MinHashLSHForest` and re-ranks them by exact cosine; `recall_at_k` measures how
many of the exact top-k it finds.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Callable

import numpy as np
import torch
from datasketch import LeanMinHash, MinHash, MinHashLSHForest

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

    def __init__(self, chunk: int = 1024) -> None:
        self.chunk = _check_k(chunk, 1 << 20, "chunk")

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
        x = _as_matrix(vectors, "vectors", self.mean_.shape[0]) - self.mean_  # (N, D)
        norms = np.linalg.norm(x, axis=1, keepdims=True)  # (N, 1)
        return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)

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


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 32-bit finalizer, the pre-mix datasketch's "affine32" MinHash applies."""
    h = np.asarray(h, dtype=np.uint32)  # arrays: numpy wraps the multiplies mod 2**32 silently
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


FAMILIES = ("minhash", "bands")
# The page's default forest, from bench/bench_lsh.py on SmolLM2-135M's vocabulary (49,152 x 576):
# with 1,000 candidates (2% of the vocabulary) recall@10 0.22 on hard queries (token + equal-norm
# noise) against 0.075 for the old minhash/16-tree forest at the same cost. No setting reached
# recall 0.95 within 10% of the vocabulary (best: 0.47 at 10%, 0.60 at 20%), see the bench.
DEFAULT_LSH = dict(family="bands", n_bits=512, num_perm=256, l=32, bits_per_token=2, probes=4,
                   candidates_per_k=100, seed=1)
MODEL_LSH = {"smollm2-135m-instruct": DEFAULT_LSH}  # measured per model; others start from DEFAULT_LSH


def default_lsh(model: str) -> dict:
    """The LSH forest parameters chosen for a model (a copy), DEFAULT_LSH when it was not measured."""
    return dict(MODEL_LSH.get(model, DEFAULT_LSH))


class LSHForestIndex:
    """Approximate cosine neighbours: sign-random-projection hashes in a MinHash LSH forest, re-ranked.

    Each (mean-centred) vector gets sign bits, one per seeded random hyperplane; two vectors at
    angle theta agree on each bit with probability 1 - theta / pi. Two hash families turn the
    bits into the num_perm values that `datasketch.MinHashLSHForest` indexes (l prefix trees of
    num_perm // l values each; a query walks the trees from the longest matching prefix down):

    * family="bands": value j hashes band j, the bits j*b .. j*b + b - 1 (b = bits_per_token,
      n_bits = num_perm * b). A tree prefix of r values matching means r*b sign bits agree, so
      prefix length tracks Hamming distance directly (bit-sampling LSH for cosine).
    * family="minhash": the bits are cut into groups of b and the vector becomes the set of
      tokens (group g, its b-bit pattern); the values are that set's MinHash (datasketch's
      affine32 scheme with an identity hashfunc, computed for all vectors at once from per-byte
      tables). Prefix equality tracks Jaccard similarity, a looser proxy for the angle.

    Multi-probe (probes > 1): at each prefix length r the forest is also asked with perturbed
    signatures: probe p flips the p-th least-confident sign bit (the projection closest to 0)
    among the bits the prefix covers - per tree for bands, over all bits for minhash. The union
    of candidates only grows with probes. The candidates (k * candidates_per_k of them, deepest
    prefixes first) are re-ranked by exact cosine.
    """

    def __init__(self, n_bits: int = 512, num_perm: int = 128, l: int = 16, bits_per_token: int = 2,
                 candidates_per_k: int = 100, seed: int = 1, family: str = "minhash", probes: int = 1) -> None:
        if family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        if not _is_int(n_bits) or n_bits < 8 or n_bits % 8:
            raise ValueError(f"n_bits must be a positive multiple of 8, got {n_bits!r}")
        allowed = (1, 2, 4, 8) if family == "minhash" else tuple(range(1, 9))
        if not _is_int(bits_per_token) or bits_per_token not in allowed:
            raise ValueError(f"bits_per_token must be one of {allowed} for family {family!r}, got {bits_per_token!r}")
        if not _is_int(num_perm) or num_perm < 1:
            raise ValueError(f"num_perm must be a positive integer, got {num_perm!r}")
        if family == "bands" and num_perm * bits_per_token != n_bits:
            raise ValueError(f"num_perm must be n_bits / bits_per_token = {n_bits / bits_per_token:g} for family "
                             f"'bands' (one value per band of sign bits), got {num_perm!r}")
        if not _is_int(l) or not 1 <= l <= num_perm:
            raise ValueError(f"l (number of trees) must be an integer in [1, num_perm={num_perm}], got {l!r}")
        if not _is_int(candidates_per_k) or candidates_per_k < 1:
            raise ValueError(f"candidates_per_k must be a positive integer, got {candidates_per_k!r}")
        if not _is_int(seed) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
        depth_bits = (num_perm // l) * bits_per_token if family == "bands" else n_bits
        if not _is_int(probes) or not 1 <= probes <= depth_bits + 1:
            raise ValueError(f"probes must be an integer in [1, {depth_bits + 1}] (1 + the sign bits a query can "
                             f"flip), got {probes!r}")
        self.n_bits, self.num_perm, self.l, self.bits_per_token = int(n_bits), int(num_perm), int(l), int(bits_per_token)
        self.candidates_per_k, self.seed, self.family, self.probes = int(candidates_per_k), int(seed), family, int(probes)

    PARAMS = ("family", "n_bits", "num_perm", "l", "bits_per_token", "probes", "candidates_per_k", "seed")

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

    def fit(self, anchors, center: bool = True) -> "LSHForestIndex":
        self.exact_ = ExactCosine().fit(anchors, center)
        D = self.exact_.normed_.shape[1]
        self.planes_ = np.random.default_rng(self.seed).standard_normal((D, self.n_bits)).astype(np.float32)
        if self.family == "minhash":
            a, b = MinHash(num_perm=self.num_perm, seed=self.seed).permutations  # (num_perm,) each, uint32
            self.tables_ = self._byte_tables(a, b)  # (n_bits / 8, 256, num_perm)
        sigs = self._signatures(self.exact_.normed_)  # (V, num_perm)
        self.forest_ = MinHashLSHForest(num_perm=self.num_perm, l=self.l)
        for key, hv in enumerate(sigs):
            self.forest_.add(key, LeanMinHash(seed=self.seed, hashvalues=hv, scheme="affine32"))
        self.forest_.index()
        return self

    def _byte_tables(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        bt = self.bits_per_token
        per, mask = 8 // bt, (1 << bt) - 1  # tokens per byte, pattern mask
        tokens = np.arange((self.n_bits // bt) << bt, dtype=np.uint32)  # token g * 2**b + pattern
        permuted = _fmix32(tokens)[:, None] * a[None, :] + b[None, :]  # (n_tokens, num_perm), wraps mod 2**32
        byte = np.arange(256)[:, None]  # (256, 1)
        i = np.arange(per)[None, :]  # (1, per) token slot within the byte
        return np.stack([permuted[((g * per + i) << bt) + ((byte >> (i * bt)) & mask)].min(axis=1)  # (256, P)
                         for g in range(self.n_bits // 8)])  # (n_bits / 8, 256, num_perm)

    def _band_values(self, tokens: np.ndarray) -> np.ndarray:
        """Hash values of band tokens j * 2**b + pattern (any shape, uint32), seeded."""
        return _fmix32(tokens.astype(np.uint32) ^ _fmix32(np.array([self.seed], np.uint32) + np.uint32(0x9E3779B9)))

    def _band_tokens(self, bits: np.ndarray) -> np.ndarray:
        """(N, n_bits) bool -> (N, num_perm) uint32 tokens j * 2**b + the pattern of band j."""
        b = self.bits_per_token
        pattern = (bits.reshape(len(bits), self.num_perm, b) << np.arange(b)).sum(axis=2)  # (N, num_perm)
        return ((np.arange(self.num_perm) << b) + pattern).astype(np.uint32)

    def _signatures(self, normed: np.ndarray) -> np.ndarray:
        """Hash values of the sign bits of unit (centred) rows: (N, D) -> (N, num_perm) uint32."""
        bits = (normed @ self.planes_) > 0  # (N, n_bits)
        return self._bits_signatures(bits)

    def _bits_signatures(self, bits: np.ndarray) -> np.ndarray:
        if self.family == "bands":
            return self._band_values(self._band_tokens(bits))
        codes = np.packbits(bits, axis=1, bitorder="little")  # (N, n_bits / 8); bit i of byte g = bit 8g+i
        out = self.tables_[0][codes[:, 0]].copy()  # (N, num_perm)
        for g in range(1, codes.shape[1]):
            np.minimum(out, self.tables_[g][codes[:, g]], out=out)
        return out

    def signatures(self, vectors) -> np.ndarray:
        """Hash values (N, num_perm) uint32 of raw vectors (centred like the anchors)."""
        return self._signatures(self.exact_.transform(vectors))

    def query(self, vectors, k: int, candidates: int | None = None,
              probes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-k: (indices (N, k) int64, sims (N, k) float32), best first.

        candidates defaults to k * candidates_per_k, probes to the index's own. With candidates
        >= the number of anchors every anchor is a candidate (the forest is skipped), so the
        result is exact. If the forest returns fewer than k candidates the missing slots hold
        index -1, sim -inf.
        """
        idx, sims, _ = self.query_stats(vectors, k, candidates, probes)
        return idx, sims

    def query_stats(self, vectors, k: int, candidates: int | None = None,
                    probes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`query`, plus the number of candidates re-ranked for each vector (N,)."""
        V = self.exact_.n_anchors
        k = _check_k(k, V)
        c = k * self.candidates_per_k if candidates is None else _check_k(candidates, 1 << 31, "candidates")
        p = self.probes if probes is None else probes
        if not _is_int(p) or p < 1:
            raise ValueError(f"probes must be a positive integer, got {p!r}")
        if c >= V:
            i, s = self.exact_.query(vectors, k)
            return i, s, np.full(len(i), V)
        q = self.exact_.transform(vectors)  # (N, D)
        z = q @ self.planes_  # (N, n_bits)
        qt = torch.from_numpy(q)  # (N, D)
        idx = np.full((len(q), k), -1, np.int64)
        sims = np.full((len(q), k), -np.inf, np.float32)
        counts = np.zeros(len(q), np.int64)
        for r in range(len(q)):
            cand = np.fromiter(self._candidates(z[r], c, p), dtype=np.int64)  # (c',)
            s = (self.exact_._t[torch.from_numpy(cand)] @ qt[r]).numpy()  # (c',) torch gathers rows faster
            top = np.argsort(-s, kind="stable")[:k]
            idx[r, :len(top)], sims[r, :len(top)], counts[r] = cand[top], s[top], len(cand)
        return idx, sims, counts

    def _candidates(self, z: np.ndarray, c: int, probes: int) -> dict:
        """Up to c anchor ids from the forest for one query's projections z (n_bits,), as dict keys.

        Walks the forest's sorted prefix arrays exactly as `MinHashLSHForest.query` does (prefix
        length from num_perm // l down to 1, trees in order), with bisect instead of its
        Python binary search, and at each length also asks the probe prefixes.
        """
        f, found = self.forest_, {}
        state = self._probe_state(z, probes)
        for r in range(f.k, 0, -1):  # f.k: values per tree
            for prefixes in self._probe_prefixes(z, r, probes, state):  # per probe: one prefix per tree
                for hp, sorted_ht, table in zip(prefixes, f.sorted_hashtables, f.hashtables):
                    i = bisect_left(sorted_ht, hp)
                    while i < len(sorted_ht) and sorted_ht[i].startswith(hp):
                        for key in table[sorted_ht[i]]:
                            found[key] = None
                            if len(found) >= c:
                                return found
                        i += 1
        return found

    def _probe_state(self, z: np.ndarray, probes: int):
        """What every prefix length's probes share: minhash, the probes' signatures as big-endian bytes."""
        if self.family != "minhash":
            return None
        flips = np.argsort(np.abs(z), kind="stable")[:probes - 1]  # least confident first
        many = np.repeat((z > 0)[None], len(flips) + 1, axis=0)  # (P, n_bits)
        many[np.arange(1, len(flips) + 1), flips] ^= True
        return [sig.byteswap().tobytes() for sig in self._bits_signatures(many)]

    def _probe_prefixes(self, z: np.ndarray, r: int, probes: int, state):
        """Yield, for the query and each perturbed probe, the l tree prefixes of r values (bytes)."""
        d, l = self.forest_.k, self.l
        bits = z > 0  # (n_bits,)
        if self.family == "minhash":
            for sig in state:
                yield [sig[4 * t * d: 4 * (t * d + r)] for t in range(l)]
            return
        b = self.bits_per_token
        tokens = self._band_tokens(bits[None])[0]  # (num_perm,)
        base = self._band_values(tokens).byteswap().tobytes()
        prefixes = [base[4 * t * d: 4 * (t * d + r)] for t in range(l)]
        yield prefixes
        if probes == 1:
            return
        conf = np.abs(z[:l * d * b]).reshape(l, d * b)[:, :r * b]  # (l, r*b) the bits these prefixes cover
        order = np.argsort(conf, axis=1, kind="stable")[:, :probes - 1]  # (l, P-1) within-tree bit positions
        band = order // b + (np.arange(l) * d)[:, None]  # (l, P-1) global band index
        flipped = self._band_values(tokens[band] ^ (1 << (order % b)).astype(np.uint32)).byteswap()  # (l, P-1)
        for p in range(order.shape[1]):
            out = []
            for t in range(l):
                pos = 4 * (order[t, p] // b)
                out.append(prefixes[t][:pos] + flipped[t, p].tobytes() + prefixes[t][pos + 4:])
            yield out


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


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
