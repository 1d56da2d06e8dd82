"""What a soft prompt means, timed: the projected prompt's score beside the soft prompt's and each
virtual token's importance (replaced by the vocabulary mean), on the first 32 validation examples.

Target: projection score + importance of a 20-token prompt on 32 examples <= 30 s on 2 cores.
The scores are float32 (bitwise Compare's, through reordered weights); the importance pass runs in the
page's default precision (bf16 matmuls where the CPU has them) unless --precision fp32.
Uses the newest finished run of a task in WORKBENCH_HOME (default task: sentiment).
Writes bench-results/meaning.json.

Wall-clock times grow with the machine's load. To tell a slow method from a busy machine, a
reference forward pass (the stock base model on 8 x 80 tokens, as bench_train_step.py's stock_forward_s) is
timed before, between and after the two measured phases; its ratio to the recorded stock_forward_s in
bench-results/train_step.json is each phase's `slowdown` (the mean of the two around it), and the
sum of the phases divided by their slowdowns is reported as an estimate at the recorded speed.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from common import load_model, own_peak_gib, timed  # noqa: E402 (common puts the repo on sys.path)
from core.explore.meaning import (PRECISIONS, default_precision, project, projection_scores,  # noqa: E402
                                  run_vectors, shorter_prompt_loglik, token_importance, top_k_tokens)
from core.evaluate.metrics import load_scorers  # noqa: E402
from core.explore.neighbors import ExactCosine  # noqa: E402
from core.generate.generator import Generator  # noqa: E402
from core.model.loading import embedding_matrix  # noqa: E402
from core.store.runs import list_runs, newest_finished  # noqa: E402


RESULTS = Path(__file__).resolve().parent.parent / "bench-results"


def reference_forward(model, reps: int = 2) -> float:
    """Median seconds of the base model's forward on 8 x 80 tokens (bench_train_step.py's stock_forward_s)."""
    ids = torch.randint(1000, 20000, (8, 80), generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return timed(forward, reps=reps, warmup=0)


def ab_layers(gen, run_id, vectors, index, a) -> list[list[float]]:
    """Importance seconds with the fused llama layers and with transformers' own, alternating."""
    from core.model import llama_bf16
    eligible, times = llama_bf16.eligible, [[], []]
    try:
        for _ in range(a.ab_layers):
            for i, rule in enumerate((eligible, lambda *_: False)):
                llama_bf16.eligible = rule
                imp = token_importance(gen, run_id, vectors, index.mean_, a.n, base=0.0, precision=a.precision)
                times[i].append(round(imp["seconds"], 2))
    finally:
        llama_bf16.eligible = eligible
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="sentiment")
    p.add_argument("--run", help="a run id (default: the task's newest finished run)")
    p.add_argument("-n", type=int, default=32)
    p.add_argument("--remove", action="store_true", help="also measure removal (twice the passes)")
    p.add_argument("--precision", choices=PRECISIONS, default=default_precision(),
                   help="of the importance pass (default: the page's, bf16 where the CPU has it)")
    p.add_argument("--ab-layers", type=int, default=0, metavar="N",
                   help="then time the importance pass N times each with and without the fused llama layers "
                        "(core/model/llama_bf16.py), interleaved")
    p.add_argument("--against-fp32", action="store_true",
                   help="then measure the importance in float32 too and print how far the default's drops are from it")
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    run_id = a.run or (newest_finished(list_runs(), "smollm2-135m-instruct", a.task) or [None])[0]
    if run_id is None:
        print(f"skipped: no finished {a.task} run in the workspace ({os.environ.get('WORKBENCH_HOME', 'workspace')}); "
              "train one first (python -m workbench tune --task sentiment)")
        return
    run, vectors = run_vectors(run_id)
    import core.evaluate.compare as compare  # the scores are measured, never read back from a stored comparison
    import core.explore.meaning as meaning  # nor the importance (or the shorter prompt) from a stored result
    compare.stored = lambda key: None
    meaning.stored_importance = lambda key: None
    t0 = time.perf_counter()
    lm = load_model(run.config().model)
    emb = embedding_matrix(lm.model).numpy()
    index = ExactCosine().fit(emb)
    gen = Generator(lm.model, lm.tokenizer, max_input_tokens=run.config().max_input_tokens)
    gen.token_kinds()  # as the app's generator comes (workbench/state.py)
    load_scorers()
    setup = time.perf_counter() - t0
    before = reference_forward(lm.model)
    t0, cpu0 = time.perf_counter(), time.process_time()
    proj = project(vectors, index, emb, lm.tokenizer)
    t_proj = time.perf_counter() - t0
    scores = projection_scores(gen, run_id, proj, a.n)
    between = reference_forward(lm.model)
    imp = token_importance(gen, run_id, vectors, index.mean_, a.n, ("mean", "remove") if a.remove else ("mean",),
                           base=scores["soft_loglik"], precision=a.precision)
    keep = top_k_tokens(imp["mean"], max(1, len(vectors) // 2))
    t0 = time.perf_counter()
    short = shorter_prompt_loglik(gen, run_id, vectors, keep, a.n)
    t_short = time.perf_counter() - t0
    total, cpu = t_proj + scores["seconds"] + imp["seconds"], time.process_time() - cpu0
    after = reference_forward(lm.model)
    # the stock model's forward is what reference_forward times (forward_s there is the training kernels')
    recorded = json.loads((RESULTS / "train_step.json").read_text()).get("stock_forward_s") \
        if (RESULTS / "train_step.json").exists() else None
    slow = [(before + between) / 2 / recorded, (between + after) / 2 / recorded] if recorded else None
    estimate = (t_proj + scores["seconds"]) / slow[0] + imp["seconds"] / slow[1] if slow else None
    load = os.getloadavg()
    out = {"run": run_id, "virtual_tokens": len(vectors), "examples": imp["examples"], "examples_asked": a.n,
           "threads": torch.get_num_threads(),
           "load_average_1_5_15": [round(x, 2) for x in load],
           "setup_s (model, index)": round(setup, 2), "projection_s": round(t_proj, 3),
           "scores_s (soft + projected, generate + loglik)": round(scores["seconds"], 2),
           "importance_s": round(imp["seconds"], 2), "importance_precision": imp["precision"], "total_s": round(total, 2), "target_s": 30,
           "process_cpu_s (all threads, whole measurement)": round(cpu, 1),
           "reference_forward_s (before, between, after)": [round(x, 3) for x in (before, between, after)],
           "recorded_forward_s": recorded, "slowdown (scores, importance)": [round(x, 1) for x in slow or []],
           "total_s_at_recorded_speed (estimate)": round(estimate, 1) if estimate else None,
           "shorter_prompt_s": round(t_short, 2), "peak_rss_gib (process, VmHWM)": round(own_peak_gib(), 2),
           "metric": scores["metric"], "soft": scores["soft"], "projected": scores["projected"], "gap": scores["gap"],
           "soft_loglik": scores["soft_loglik"], "projected_loglik": scores["projected_loglik"],
           "projected_text": proj.text, "distance": proj.distance,
           "importance_mean": [round(float(x), 4) for x in imp["mean"]],
           "importance_remove": [round(float(x), 4) for x in imp["remove"]] if a.remove else None,
           "shorter_prompt_tokens": keep, "shorter_prompt_loglik": short}
    if a.against_fp32:
        exact = token_importance(gen, run_id, vectors, index.mean_, a.n, base=scores["soft_loglik"], precision="fp32")
        top = set(top_k_tokens(exact["mean"], 5)) & set(top_k_tokens(imp["mean"], 5))
        out["against_fp32"] = {"fp32_importance_s": round(exact["seconds"], 2),
                               "largest_difference": round(float(np.abs(imp["mean"] - exact["mean"]).max()), 4),
                               "rank_correlation": round(float(spearmanr(imp["mean"], exact["mean"])[0]), 4),
                               "same_top_5": len(top)}
    if a.ab_layers:
        out["importance_s fused layers / transformers layers (interleaved)"] = ab_layers(gen, run_id, vectors, index, a)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "meaning.json").write_text(json.dumps(out, indent=2))
    for k, v in out.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
