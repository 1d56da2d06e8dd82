"""Recall/cost/time curve of the LSH forest (core/explore/lshforest.py) on the bundled model's vocabulary.

    .venv/bin/python bench/bench_lsh.py [--queries 200] [--quick]

For several forest settings: fit time, then on each query set recall@10 against exact cosine,
cost (anchors scored by exact cosine, as a share of the vocabulary) and the time of 100
queries. Query sets:
  tokens     random vocabulary tokens (the neighbours a vocabulary kNN graph needs)
  hard       a random token plus Gaussian noise of the same norm (cosine ~0.6 to its token;
             the rest of the exact top-10 sits near 0.2)
  synthetic  prompt-like: 1.0/0.6/0.4 mix of three random tokens plus noise of 0.9x the mix's
             norm, scaled to 1.6x the median token norm (best cosine to a token ~0.4)
  <task>     the trained prompt vectors (final adapter and checkpoints) of each task's
             input-space runs under $WORKBENCH_HOME/runs, one set per task
Targets at the page default (tokens, hard and every task): recall@10 >= 0.95, <= 1 s per 100
queries, cost <= 10%. The kNN graph comes from the vocabulary map's cache when it is there (as on
the Explore page), else from exact search (slower fit). Writes bench-results/lsh.json. Query
times are wall clock: on a loaded machine they grow with the load average, printed with them.
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

FIXED = ("tokens", "hard", "synthetic")
BASE = dict(branching=64, depth=2, graph_k=14, seed=1)
SETTINGS = [  # (forest parameters, [(candidates, ef), ...]); ef 0: the forest alone, no graph walk
    (dict(BASE, trees=1), [(1000, 0), (2000, 40), (3000, 40)]),
    (dict(BASE, trees=2), [(1000, 0), (3000, 0), (4900, 0), (1000, 40), (2000, 40), (2000, 64), (3000, 40),
                           (3000, 64), (4000, 40)]),
    (dict(BASE, trees=3), [(4900, 0), (3000, 40)]),
    (dict(BASE, trees=2, branching=32), [(3000, 40)]),
]
TARGET = {"recall": 0.95, "seconds_per_100": 1.0, "cost": 0.10}


def vocabulary() -> np.ndarray:
    from safetensors import safe_open
    from core.model.loading import DEFAULT_MODEL, resolve_model_dir
    folder, _ = resolve_model_dir(DEFAULT_MODEL)
    with safe_open(str(sorted(Path(folder).glob("*.safetensors"))[0]), framework="np") as f:
        return np.ascontiguousarray(f.get_tensor("model.embed_tokens.weight"), dtype=np.float32)  # (V, D)


def map_knn(A: np.ndarray) -> np.ndarray | None:
    """The vocabulary map's cached kNN (self column dropped), if the map was built; never fits one."""
    from core.explore.prompts import map_cache_dir
    from core.explore.vocabmap import VocabMap
    from core.model.loading import DEFAULT_MODEL
    try:
        return VocabMap.load(map_cache_dir(DEFAULT_MODEL), A).knn_indices_[:, 1:]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def query_sets(A: np.ndarray, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    med = np.median(np.linalg.norm(A, axis=1))
    tokens = A[rng.choice(len(A), n, replace=False)]
    ids = rng.choice(len(A), n, replace=False)
    noise = rng.standard_normal((n, A.shape[1])).astype(np.float32)
    hard = A[ids] + noise * (np.linalg.norm(A[ids], axis=1) / np.linalg.norm(noise, axis=1))[:, None]
    mix = (A[rng.choice(len(A), (n, 3))] * np.array([1.0, 0.6, 0.4], np.float32)[None, :, None]).sum(1)  # (n, D)
    noise = rng.standard_normal(mix.shape).astype(np.float32)
    prompt = mix + noise * (0.9 * np.linalg.norm(mix, axis=1) / np.linalg.norm(noise, axis=1))[:, None]
    prompt *= (1.6 * med / np.linalg.norm(prompt, axis=1))[:, None]
    sets = {"tokens": tokens, "hard": hard.astype(np.float32), "synthetic": prompt.astype(np.float32)}
    return {**sets, **trained_prompts(A.shape[1])}


def trained_prompts(dim: int) -> dict[str, np.ndarray]:
    """Per task: the prompt vectors of its input-space runs' final adapters and checkpoints."""
    from core.model.adapters import input_space_vectors
    from core.store.paths import read_json, runs_dir
    found: dict[str, list] = {}
    for run in sorted(runs_dir().glob("*/config.json")):
        task = (read_json(run) or {}).get("task") or "custom"
        for folder in [run.parent / "adapter", *sorted(run.parent.glob("checkpoints/*"))]:
            try:
                v = input_space_vectors(folder)
            except Exception:  # not an adapter folder (yet), or unreadable: skip
                continue
            if v is not None and v.shape[1] == dim:
                found.setdefault(task, []).append(np.asarray(v, np.float32))
    return {task: np.concatenate(vs) for task, vs in sorted(found.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="only the page default")
    args = ap.parse_args()
    A = vocabulary()
    V = len(A)
    sets = query_sets(A, args.queries)
    knn = map_knn(A)
    print(f"kNN graph: {'the vocabulary map cache' if knn is not None else 'exact search at fit'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    exact = ExactCosine().fit(A)
    truth, described = {}, {}
    for name, q in sets.items():
        start = time.perf_counter()
        truth[name], sims = exact.query(q, 10)
        described[name] = dict(queries=len(q), best_cosine=round(float(np.median(sims[:, 0])), 3),
                               tenth_cosine=round(float(np.median(sims[:, 9])), 3))
        print(f"{name:>13}: {len(q)} queries, median best cosine {np.median(sims[:, 0]):.2f}, "
              f"median 10th {np.median(sims[:, 9]):.2f}; exact top-10 {time.perf_counter() - start:.3f} s")
    default = {k: v for k, v in DEFAULT_LSH.items() if k not in ("candidates_per_k", "ef")}
    settings = ([] if args.quick else SETTINGS) + [(default, [(10 * DEFAULT_LSH["candidates_per_k"],
                                                               DEFAULT_LSH["ef"])])]
    rows = []
    print(f"{'trees/branching/depth/graph_k':<30} {'fit s':>6} {'cand':>5} {'ef':>3}  "
          + "  ".join(f"{n[:19]:>19}" for n in sets))
    print(f"{'':<30} {'':>6} {'':>5} {'':>3}  " + "  ".join(f"{'recall cost s/100':>19}" for _ in sets))
    for params, runs in settings:
        start = time.perf_counter()
        forest = LSHForestIndex(**params).fit(A, knn=knn)
        fit_s = time.perf_counter() - start
        label = "/".join(str(params[k]) for k in ("trees", "branching", "depth", "graph_k"))
        for candidates, ef in runs:
            row = dict(params, candidates=candidates, ef=ef, fit_s=round(fit_s, 1), default=params is default,
                       load_average=round(os.getloadavg()[0], 1))
            cells = []
            for name, q in sets.items():
                start = time.perf_counter()
                idx, _, count = forest.query_stats(q, 10, candidates, ef)
                per_100 = (time.perf_counter() - start) * 100 / len(q)
                row[name] = dict(recall=round(recall_at_k(idx, truth[name]), 3), cost=round(count.mean() / V, 4),
                                 seconds_per_100=round(per_100, 3))
                cells.append(f"{row[name]['recall']:>6.3f} {row[name]['cost']:>5.3f} {per_100:>6.2f}")
            rows.append(row)
            print(f"{label + (' (default)' if row['default'] else ''):<30} {fit_s:>6.1f} {candidates:>5} {ef:>3}  "
                  + "  ".join(f"{c:>19}" for c in cells), flush=True)
    meets = [r for r in rows if all(r[n]["recall"] >= TARGET["recall"] and r[n]["cost"] <= TARGET["cost"]
                                    and r[n]["seconds_per_100"] <= TARGET["seconds_per_100"]
                                    for n in sets if n != "synthetic")]
    print(f"settings meeting every target ({TARGET}) on tokens, hard and every task: {len(meets)} of {len(rows)}"
          + "".join(f"\n  {r['trees']}/{r['branching']}/{r['depth']}/{r['graph_k']} candidates {r['candidates']} "
                    f"ef {r['ef']}" for r in meets))
    out = {"vocabulary": list(A.shape), "cpus": os.cpu_count(), "target": TARGET,
           "knn_from_map_cache": knn is not None, "query_sets": described, "rows": rows}
    folder = Path(__file__).resolve().parent.parent / "bench-results"
    folder.mkdir(exist_ok=True)
    (folder / "lsh.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
