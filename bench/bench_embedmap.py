"""Benchmark the embedding explorer on a real input-embedding matrix.

    .venv/bin/python bench/bench_embedmap.py [--safetensors PATH] [--key NAME] [--cache-dir DIR]

Prints the first map build, reopening it from the cache, placing the query vectors, exact
top-10, and for a few LSH forest settings: build time, query time and recall@10 against
exact; then one JSON line with every number. Query vectors are random vocabulary rows plus
Gaussian noise at half the matrix's scale (cosine ~0.8 to their source token), a stand-in
for learned prompt vectors initialised from the vocabulary.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.explore.vocabmap import load_or_fit  # noqa: E402
from core.explore.neighbors import ExactCosine, recall_at_k  # noqa: E402
from core.explore.lshforest import LSHForestIndex  # noqa: E402

TARGETS = {"build_s": 60.0, "reopen_s": 1.0, "place_s": 1.0, "exact_top10_s": 0.2}
FOREST_SETTINGS = [  # (forest parameters, candidates per query)
    (dict(trees=2, branching=64, depth=2, graph_k=14, ef=0), 1000),  # the forest alone
    (dict(trees=2, branching=64, depth=2, graph_k=14, ef=0), 3000),
    (dict(trees=2, branching=64, depth=2, graph_k=14, ef=40), 3000),  # with the graph walk (the page default)
]


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def load_embeddings(path: str, key: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        if key not in f.keys():
            raise SystemExit(f"{path} has no tensor {key!r}; tensors: {sorted(f.keys())[:10]} ...")
        return np.ascontiguousarray(f.get_tensor(key), dtype=np.float32)  # (V, D)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--safetensors", default=None, help="weights file (default: the bundled model's)")
    ap.add_argument("--key", default="model.embed_tokens.weight")
    ap.add_argument("--cache-dir", default=None, help="map cache folder (default: a fresh temp folder)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--skip-forest", action="store_true")
    args = ap.parse_args()

    if args.safetensors is None:
        from core.model.loading import DEFAULT_MODEL, resolve_model_dir
        folder, _ = resolve_model_dir(DEFAULT_MODEL)
        args.safetensors = str(sorted(Path(folder).glob("*.safetensors"))[0])
    anchors = load_embeddings(args.safetensors, args.key)
    rng = np.random.default_rng(0)
    ids = rng.choice(len(anchors), args.queries, replace=False)
    noise = 0.5 * anchors.std() * rng.standard_normal((args.queries, anchors.shape[1]))
    queries = (anchors[ids] + noise).astype(np.float32)  # (N, D)
    res = {"anchors": list(anchors.shape), "queries": args.queries, "k": args.k, "cpus": os.cpu_count()}
    print(f"anchors {anchors.shape}, {args.queries} queries, k={args.k}, {os.cpu_count()} CPUs")

    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="embedmap-bench-"))
    shutil.rmtree(cache, ignore_errors=True)
    marks: dict[str, float] = {}  # first time each build stage reported progress
    start = time.perf_counter()
    stage = {"nearest": "knn_s", "fuzzy": "graph_init_s", "layout": "epochs_s"}
    note = lambda f, msg: marks.setdefault(msg.split()[0], time.perf_counter() - start)  # noqa: E731
    vmap, res["build_s"] = timed(load_or_fit, cache, anchors, progress=note)
    ends = [marks.get("fuzzy"), marks.get("layout"), marks.get("map")]
    res["build_stages_s"] = {name: round(end - marks.get(word, 0.0), 2)
                             for (word, name), end in zip(stage.items(), ends) if end and word in marks}
    print(f"  build stages: {res['build_stages_s']}")
    vmap, res["reopen_s"] = timed(load_or_fit, cache, anchors)
    before = vmap.embedding_.copy()
    _, res["place_s"] = timed(vmap.place, queries)
    res["anchors_unmoved"] = bool(np.array_equal(before, vmap.embedding_))

    exact = ExactCosine().fit(anchors)
    runs = [timed(exact.query, queries, args.k) for _ in range(5)]
    (exact_idx, _), res["exact_top10_s"] = runs[0][0], statistics.median(t for _, t in runs)
    res["exact_top10_first_s"] = runs[0][1]
    for name, target in TARGETS.items():
        print(f"{name:>16}: {res[name]:8.3f} s   (target <= {target} s) {'ok' if res[name] <= target else 'MISSED'}")
    print(f"  anchors unmoved by place: {res['anchors_unmoved']}")

    res["forest"] = []
    for params, candidates in [] if args.skip_forest else FOREST_SETTINGS:
        forest, build_s = timed(LSHForestIndex(**params).fit, anchors, knn=vmap.knn_indices_[:, 1:])  # as the page
        (idx, _), query_s = timed(forest.query, queries, args.k, candidates=candidates)
        row = dict(params, candidates=candidates, build_s=round(build_s, 2), query_s=round(query_s, 3),
                   recall=round(recall_at_k(idx, exact_idx), 3))
        row["beats_exact"] = row["recall"] >= 0.9 and query_s < res["exact_top10_s"]
        res["forest"].append(row)
        print(f"  forest {params} candidates={candidates}: build {build_s:.1f} s, "
              f"query {query_s:.3f} s, recall@{args.k} {row['recall']:.3f}")
    for name, target in TARGETS.items():
        res[f"{name}_over_target"] = round(res[name] / target, 3)
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    Path(__file__).resolve().parent.parent.joinpath("bench-results").mkdir(exist_ok=True)
    Path(__file__).resolve().parent.parent.joinpath("bench-results", "embedmap.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
