"""Benchmark the vocabulary tree (core/explore/vocabtree.py) on the bundled model's 49,152 x 576 embeddings.

    .venv/bin/python bench/bench_tree.py [--sample 300] [--no-browser]

Prints and writes bench-results/tree.json: the first build with exact kNN (stages: kNN, joining
pieces, layout; wall and CPU time, as the 2 cores are often shared), reopening from the cache,
attaching 100 virtual tokens; the LSH forest as the kNN source (the page's default forest, timed on
a sample of anchors and extrapolated to the whole vocabulary, with its recall@10 against exact);
and the plotly WebGL figure: building it, its size, and in headless chromium the time to the first
drawing, to a zoom into a branch, and to drawing it again after a reload.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_embedmap import load_embeddings, timed  # also puts the repository on sys.path

from core.explore.lshforest import LSHForestIndex, default_lsh  # noqa: E402
from core.explore.neighbors import ExactCosine, recall_at_k  # noqa: E402
from core.explore.vocabtree import load_or_fit  # noqa: E402

TARGETS = {"build_s": 90.0, "reopen_s": 1.0}  # the browser's times are printed as measured (software WebGL)
CHROMIUM = "/usr/bin/chromium"
OUT = Path(__file__).resolve().parent.parent / "bench-results"


def forest_knn(anchors: np.ndarray, exact: ExactCosine, sample: int, k: int) -> dict:
    """The page's default forest as the tree's kNN source, on `sample` anchors: time and recall@k against exact.

    Each anchor asks for k + 1 neighbours and drops itself, as core.explore.vocabgraph.anchor_neighbors does."""
    params = default_lsh("smollm2-135m-instruct")
    forest, fit_s = timed(LSHForestIndex.from_params(params).fit, anchors)
    ids = np.random.default_rng(0).choice(len(anchors), sample, replace=False)
    (forest_i, _), query_s = timed(forest.query, anchors[ids], k + 1)
    exact_i, _ = exact.query(anchors[ids], k + 1)
    drop = lambda rows: np.array([[j for j in row if j != i][:k] for i, row in zip(ids, rows)])  # noqa: E731
    per_anchor = query_s / sample
    return dict(params, fit_s=round(fit_s, 2), sample=sample, query_s_per_anchor=round(per_anchor, 4),
                full_vocabulary_s=round(fit_s + per_anchor * len(anchors), 1),
                recall_at_k=round(recall_at_k(drop(forest_i), drop(exact_i)), 3))


def browser_times(fig, folder: Path) -> dict:
    """Load the figure (plotly.js inline) in headless chromium: first drawing, then a zoom into a branch."""
    from playwright.sync_api import sync_playwright

    page_file = folder / "tree.html"
    fig.write_html(page_file, include_plotlyjs=True, full_html=True, div_id="tree")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        start = time.perf_counter()
        pg.goto(page_file.as_uri(), wait_until="commit")  # the inline script draws before "load"
        pg.wait_for_function("document.getElementById('tree') && document.getElementById('tree')._fullLayout",
                             timeout=300_000)
        first = time.perf_counter() - start
        zoom = pg.evaluate("""async () => {
            const gd = document.getElementById('tree'), xr = gd._fullLayout.xaxis.range, yr = gd._fullLayout.yaxis.range;
            const t0 = performance.now();
            const mid = (r, a) => r[0] + a * (r[1] - r[0]);  // the middle tenth of each axis
            await Plotly.relayout(gd, {'xaxis.range': [mid(xr, 0.45), mid(xr, 0.55)],
                                       'yaxis.range': [mid(yr, 0.45), mid(yr, 0.55)]});
            return (performance.now() - t0) / 1000; }""")
        webgl = pg.evaluate("() => document.querySelectorAll('#tree canvas').length")
        start = time.perf_counter()  # again, in the browser that has drawn it once (plotly.js compiled, GL up)
        pg.reload(wait_until="commit")
        pg.wait_for_function("document.getElementById('tree') && document.getElementById('tree')._fullLayout",
                             timeout=300_000)
        again = time.perf_counter() - start
        browser.close()
    return {"browser_first_draw_s": round(first, 2), "browser_zoom_s": round(zoom, 3),
            "browser_redraw_s": round(again, 2), "webgl_canvases": webgl}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=int, default=300, help="anchors the LSH forest is timed on")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    from core.model.loading import DEFAULT_MODEL, resolve_model_dir
    folder, _ = resolve_model_dir(DEFAULT_MODEL)
    anchors = load_embeddings(str(sorted(Path(folder).glob("*.safetensors"))[0]), "model.embed_tokens.weight")
    res = {"anchors": list(anchors.shape), "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "k": args.k}
    print(f"anchors {anchors.shape}, {os.cpu_count()} CPUs, load average {res['load_average']:.1f}")

    cache = Path(tempfile.mkdtemp(prefix="tree-bench-"))
    marks: dict[str, float] = {}
    start = time.perf_counter()
    note = lambda f, msg: marks.setdefault(msg.split()[0], time.perf_counter() - start)  # noqa: E731
    cpu = time.process_time()  # CPU seconds of all threads: what the build costs when the cores are shared
    tree, res["build_s"] = timed(load_or_fit, cache / "tree", anchors, k=args.k, progress=note)
    res["build_cpu_s"] = round(time.process_time() - cpu, 1)
    res["build_stages_s"] = {"knn_s": round(marks["joining"] - marks.get("nearest", 0.0), 2),
                             "join_s": round(marks["laying"] - marks["joining"], 2),
                             "layout_s": round(res["build_s"] - marks["laying"], 2)}
    res["bridges"] = tree.n_bridges_
    print(f"  build stages: {res['build_stages_s']}, pieces joined: {tree.n_bridges_}, CPU time {res['build_cpu_s']} s "
          f"(= {res['build_cpu_s'] / os.cpu_count():.0f} s on {os.cpu_count()} idle cores)")
    tree, res["reopen_s"] = timed(load_or_fit, cache / "tree", anchors, k=args.k)
    prompts = anchors[np.random.default_rng(1).choice(len(anchors), 100)] * 1.5  # (100, D): norm like trained tokens
    before = tree.xy_.copy()
    pts, res["attach_100_first_s"] = timed(tree.attach, "bench", prompts)
    _, res["attach_100_s"] = timed(tree.attach, "bench", prompts)
    res["anchors_unmoved"] = bool(np.array_equal(before, tree.xy_))

    res["lsh_knn"] = forest_knn(anchors, tree.index_, args.sample, args.k)
    lsh = res["lsh_knn"]
    print(f"  LSH forest kNN (default forest, {args.sample} anchors): {lsh['query_s_per_anchor'] * 1e3:.1f} ms per "
          f"token -> {lsh['full_vocabulary_s']:.0f} s for the vocabulary (exact: {res['build_stages_s']['knn_s']} s), "
          f"recall@{args.k} {lsh['recall_at_k']}")

    from core.explore.prompts import PromptSource  # noqa: E402 (the figure: same code as the Tree tab)
    from workbench.tree_view import tree_figure  # noqa: E402
    names = [f"token {i}" for i in range(len(anchors))]
    fig, res["figure_s"] = timed(tree_figure, tree, names, [(PromptSource("bench", "bench", ""), pts)],
                                 {"bench": "#DC2626"})
    res["figure_mb"] = round(len(fig.to_json()) / 1e6, 1)
    if not args.no_browser and os.path.exists(CHROMIUM):
        res.update(browser_times(fig, cache))
    for name, target in TARGETS.items():
        if name in res:
            print(f"{name:>22}: {res[name]:8.3f} s   (target <= {target} s) {'ok' if res[name] <= target else 'MISSED'}")
    print(f"  figure: {res['figure_s']:.2f} s to build, {res['figure_mb']} MB; attach 100: {res['attach_100_s']:.3f} s"
          f"; anchors unmoved: {res['anchors_unmoved']}")
    if "browser_first_draw_s" in res:
        print(f"  headless chromium: first drawing {res['browser_first_draw_s']} s, zoom {res['browser_zoom_s']} s, "
              f"page reloaded and drawn again {res['browser_redraw_s']} s")
    shutil.rmtree(cache, ignore_errors=True)
    out = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
    OUT.mkdir(exist_ok=True)
    (OUT / "tree.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
