"""Blind pairwise rating of a stored comparison: two systems' outputs for one input, names hidden,
in random order; the votes, and what they add up to.

Votes are kept beside the comparison as <workspace>/comparisons/<key>.votes.jsonl, one JSON line
each ({"row", "left", "right", "choice", "time"}; choice: left | right | tie | both_bad), so they
survive a restart and belong to exactly the outputs that were rated. The ranking is a
Bradley-Terry model (ties count half a win to each side; "both bad" counts as a tie) fitted with
Hunter's MM updates, with percentile intervals from resampling the votes. Position bias is the
share of decisive votes that went to the left-hand output: 0.5 when the order does not matter.
"""
from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import numpy as np

from core.errors import WorkbenchError
from core.store.paths import check_run_id, workspace

CHOICES = ("left", "right", "tie", "both_bad")


def votes_path(key: str) -> Path:
    return workspace() / "comparisons" / f"{check_run_id(key)}.votes.jsonl"


def load_votes(key: str) -> list[dict]:
    path = votes_path(key)
    if not path.exists():
        return []
    votes = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            votes.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
    return votes


def record_vote(key: str, row: int, left: str, right: str, choice: str) -> dict:
    """Append one vote (the systems by name, as they were shown) to the comparison's votes file."""
    if choice not in CHOICES:
        raise WorkbenchError(f"Vote {choice!r} is not one of {', '.join(CHOICES)}.")
    vote = {"row": int(row), "left": left, "right": right, "choice": choice, "time": time.time()}
    path = votes_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(vote) + "\n")
    return vote


def next_pair(result: dict, votes: list[dict], seed: int = 0) -> dict | None:
    """The next (input, two systems) to rate: the least-rated pair of systems first, then the
    least-rated input for it; which output stands left is drawn at random. None: nothing to rate."""
    names = [s["name"] for s in result["systems"]]
    n = len(result["inputs"])
    if len(names) < 2 or n == 0:
        return None
    seen: dict = {}
    for v in votes:
        pair = tuple(sorted((v["left"], v["right"])))
        seen[pair] = seen.get(pair, 0) + 1
        seen[(pair, v["row"])] = seen.get((pair, v["row"]), 0) + 1
    rng = random.Random(f"{result['key']}|{seed}|{len(votes)}")
    pairs = sorted(itertools.combinations(sorted(names), 2), key=lambda p: (seen.get(p, 0), rng.random()))
    pair = pairs[0]
    row = min(range(n), key=lambda r: (seen.get((pair, r), 0), rng.random()))
    left, right = pair if rng.random() < 0.5 else pair[::-1]
    return {"row": row, "left": left, "right": right, "input": result["inputs"][row]["input"],
            "left_output": result["outputs"][left][row], "right_output": result["outputs"][right][row]}


def _wins(votes: list[dict], names: list[str]) -> np.ndarray:
    """W[i, j]: wins of system i over j (ties and 'both bad' half each)."""
    idx = {n: i for i, n in enumerate(names)}
    w = np.zeros((len(names), len(names)))
    for v in votes:
        a, b = idx.get(v["left"]), idx.get(v["right"])
        if a is None or b is None:
            continue
        if v["choice"] == "left":
            w[a, b] += 1
        elif v["choice"] == "right":
            w[b, a] += 1
        else:
            w[a, b] += 0.5
            w[b, a] += 0.5
    return w


def bradley_terry(w: np.ndarray, iters: int = 200) -> np.ndarray:
    """Strengths p (summing to 1) maximising the Bradley-Terry likelihood of the win matrix
    (Hunter 2004, MM): p_i <- W_i / sum_j n_ij / (p_i + p_j). A tiny prior win against every other
    system keeps strengths finite for a system that never lost (or never won)."""
    w = w + 0.1 * (1 - np.eye(len(w)))
    n = w + w.T
    p = np.full(len(w), 1 / len(w))
    for _ in range(iters):
        denom = (n / (p[:, None] + p[None, :])).sum(axis=1)
        p = w.sum(axis=1) / denom
        p /= p.sum()
    return p


def rating_summary(votes: list[dict], names: list[str], n_resamples: int = 500, seed: int = 0) -> dict:
    """Per pair the win rate; per system the Bradley-Terry strength with a 95% interval (votes
    resampled) and its rank; the position bias; the vote count."""
    w = _wins(votes, names)
    strength = bradley_terry(w)
    rng = np.random.default_rng(seed)
    boot = np.array([bradley_terry(_wins([votes[i] for i in rng.integers(0, len(votes), len(votes))], names))
                     for _ in range(n_resamples)]) if votes else np.full((1, len(names)), np.nan)
    low, high = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    order = np.argsort(-strength)
    ranking = [{"rank": r + 1, "system": names[i], "strength": float(strength[i]), "low": float(low[i]),
                "high": float(high[i]), "votes": int((w[i] + w[:, i]).sum())} for r, i in enumerate(order)]
    pairs = [{"a": names[i], "b": names[j], "a wins": float(w[i, j]), "b wins": float(w[j, i]),
              "win rate a": float(w[i, j] / (w[i, j] + w[j, i]))}
             for i, j in itertools.combinations(range(len(names)), 2) if w[i, j] + w[j, i] > 0]
    decisive = [v for v in votes if v["choice"] in ("left", "right")]
    left_share = sum(v["choice"] == "left" for v in decisive) / len(decisive) if decisive else None
    return {"ranking": ranking, "pairs": pairs, "position_bias": left_share, "votes": len(votes),
            "both_bad": sum(v["choice"] == "both_bad" for v in votes)}
