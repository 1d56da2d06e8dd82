"""The LSH forest over the vocabulary: datasketch's `MinHashLSHForest` as the index, sign-random-
projection bits as the hash (banded or MinHash), multi-probe queries, candidates re-ranked by exact
cosine. Parameters are chosen per model from bench/bench_lsh.py's recall/cost curve."""
from __future__ import annotations

from bisect import bisect_left

import numpy as np
import torch
from datasketch import LeanMinHash, MinHash, MinHashLSHForest

from core.explore.neighbors import ExactCosine, _check_k


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
