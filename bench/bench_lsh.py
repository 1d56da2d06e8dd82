"""Recall/cost curve of the LSH forest (core/explore/neighbors.py) on the bundled model's vocabulary.

    .venv/bin/python bench/bench_lsh.py [--queries 100] [--quick]

For several forest settings: fit time, then on each query set recall@10 against exact cosine,
cost (candidates re-ranked by exact cosine, as a share of the vocabulary) and the time of 100
queries. Query sets:
  hard     a random token plus Gaussian noise of the same norm (cosine ~0.7 to its token;
           the rest of the exact top-10 sits near 0.2)
  prompt   prompt-like: 1.0/0.6/0.4 mix of three random tokens plus noise of 0.9x the mix's
           norm, scaled to 1.6x the median token norm (best cosine to a token ~0.4-0.6,
           like trained prompts)
  adapters the prompt vectors of every input-space adapter (and checkpoint) under
           $WORKBENCH_HOME/runs, when there are any
Targets at the page default: recall@10 >= 0.95, <= 1 s per 100 queries, cost <= 10%.
Writes bench-results/lsh.json. About 2-3 minutes on 2 cores (--quick: two settings). Query
times are wall clock: on a loaded machine they grow with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.explore.neighbors import ExactCosine, recall_at_k  # noqa: E402
from core.explore.lshforest import DEFAULT_LSH, LSHForestIndex  # noqa: E402

OLD = dict(family="minhash", n_bits=512, num_perm=128, l=16, bits_per_token=2)
BANDS = dict(family="bands", n_bits=512, num_perm=256, bits_per_token=2)
SETTINGS = [  # (forest parameters, [(candidates, probes), ...])
    (OLD, [(500, 1), (1000, 1), (4900, 1), (4900, 4)]),
    (dict(BANDS, l=32), [(1000, 4), (2450, 1), (2450, 4), (4900, 1), (4900, 4), (4900, 8)]),
    (dict(BANDS, l=64), [(2450, 4), (4900, 4), (9800, 4)]),
    (dict(family="bands", n_bits=512, num_perm=128, l=32, bits_per_token=4), [(2450, 4), (4900, 4)]),
]
TARGET = {"recall": 0.95, "seconds_per_100": 1.0, "cost": 0.10}


def vocabulary() -> np.ndarray:
    from safetensors import safe_open
    from core.model.loading import DEFAULT_MODEL, resolve_model_dir
    folder, _ = resolve_model_dir(DEFAULT_MODEL)
    with safe_open(str(sorted(Path(folder).glob("*.safetensors"))[0]), framework="np") as f:
        return np.ascontiguousarray(f.get_tensor("model.embed_tokens.weight"), dtype=np.float32)  # (V, D)


def query_sets(A: np.ndarray, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    med = np.median(np.linalg.norm(A, axis=1))
    ids = rng.choice(len(A), n, replace=False)
    noise = rng.standard_normal((n, A.shape[1])).astype(np.float32)
    hard = A[ids] + noise * (np.linalg.norm(A[ids], axis=1) / np.linalg.norm(noise, axis=1))[:, None]
    mix = (A[rng.choice(len(A), (n, 3))] * np.array([1.0, 0.6, 0.4], np.float32)[None, :, None]).sum(1)  # (n, D)
    noise = rng.standard_normal(mix.shape).astype(np.float32)
    prompt = mix + noise * (0.9 * np.linalg.norm(mix, axis=1) / np.linalg.norm(noise, axis=1))[:, None]
    prompt *= (1.6 * med / np.linalg.norm(prompt, axis=1))[:, None]
    sets = {"hard": hard.astype(np.float32), "prompt": prompt.astype(np.float32)}
    adapters = trained_prompts(A.shape[1])
    if adapters is not None:
        sets["adapters"] = adapters
    return sets


def trained_prompts(dim: int) -> np.ndarray | None:
    from core.model.adapters import input_space_vectors
    from core.store.paths import runs_dir
    runs = runs_dir()
    found = []
    for folder in sorted(list(runs.glob("*/adapter")) + list(runs.glob("*/checkpoints/*"))):
        try:
            v = input_space_vectors(folder)
        except Exception:  # not an adapter folder, or unreadable: skip
            continue
        if v is not None and v.shape[1] == dim:
            found.append(np.asarray(v, np.float32))
    return np.concatenate(found) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="only the old and the new default")
    args = ap.parse_args()
    A = vocabulary()
    V = len(A)
    sets = query_sets(A, args.queries)
    exact = ExactCosine().fit(A)
    truth = {}
    for name, q in sets.items():
        start = time.perf_counter()
        truth[name], sims = exact.query(q, 10)
        print(f"{name:>8}: {len(q)} queries, median best cosine {np.median(sims[:, 0]):.2f}, "
              f"median 10th {np.median(sims[:, 9]):.2f}; exact top-10 {time.perf_counter() - start:.3f} s")
    default = {k: v for k, v in DEFAULT_LSH.items() if k not in ("probes", "candidates_per_k", "seed")}
    settings = SETTINGS if not args.quick else [(OLD, [(1000, 1)])]
    settings = settings + [(default, [(10 * DEFAULT_LSH["candidates_per_k"], DEFAULT_LSH["probes"])])]
    rows = []
    print(f"{'setting':<44} {'fit s':>6} {'cand':>5} {'P':>2}  " + "  ".join(f"{n:>22}" for n in sets))
    print(f"{'':<44} {'':>6} {'':>5} {'':>2}  " + "  ".join(f"{'recall cost  s/100':>22}" for _ in sets))
    for params, runs in settings:
        start = time.perf_counter()
        forest = LSHForestIndex(**params).fit(A)
        fit_s = time.perf_counter() - start
        label = "/".join(str(params[k]) for k in ("family", "n_bits", "num_perm", "l", "bits_per_token"))
        for candidates, probes in runs:
            row = dict(params, candidates=candidates, probes=probes, fit_s=round(fit_s, 1),
                       default=params is default)
            cells = []
            for name, q in sets.items():
                start = time.perf_counter()
                idx, _, count = forest.query_stats(q, 10, candidates, probes)
                per_100 = (time.perf_counter() - start) * 100 / len(q)
                row[name] = dict(recall=round(recall_at_k(idx, truth[name]), 3), cost=round(count.mean() / V, 4),
                                 seconds_per_100=round(per_100, 3))
                cells.append(f"{row[name]['recall']:>6.3f} {row[name]['cost']:>5.3f} {per_100:>6.2f}")
            rows.append(row)
            print(f"{label + (' (default)' if row['default'] else ''):<44} {fit_s:>6.1f} {candidates:>5} "
                  f"{probes:>2}  " + "  ".join(f"{c:>22}" for c in cells), flush=True)
    meets = [r for r in rows if all(r[n]["recall"] >= TARGET["recall"] and r[n]["cost"] <= TARGET["cost"]
                                    and r[n]["seconds_per_100"] <= TARGET["seconds_per_100"] for n in sets)]
    print(f"settings meeting every target ({TARGET}): {len(meets)} of {len(rows)}")
    out = {"vocabulary": list(A.shape), "cpus": os.cpu_count(), "target": TARGET, "rows": rows}
    folder = Path(__file__).resolve().parent.parent / "bench-results"
    folder.mkdir(exist_ok=True)
    (folder / "lsh.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
