"""A comparison's reference log-likelihoods read off the generation's prefill (Generator.generate_scored)
against the separate pass after generating (generate + log_likelihood): time, equal outputs and the
largest log-likelihood difference on 32 test inputs x (soft prompt + bare model) of qa and sentiment,
then the peak RSS of each way on summarisation (36 inputs x soft, bare, a hard prompt), each in its
own process. Uses each task's newest finished run in WORKBENCH_HOME; writes bench-results/scored.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import load_model, own_peak_gib  # noqa: E402 (common puts the repo on sys.path)
from core.evaluate.compare import NEW_TOKENS  # noqa: E402
from core.generate.generator import Decoding, Generator, System  # noqa: E402
from core.generate.systems import run_system  # noqa: E402
from core.store.runs import list_runs, newest_finished  # noqa: E402
from core.tasks import load_task  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "bench-results"
MODEL = "smollm2-135m-instruct"


def rows_for(task_name: str, run_id: str, memory: bool = False):
    task = load_task(task_name)
    systems = [run_system(run_id), System("bare")] + ([System("hard", "Summarise: {input}", "plain")] if memory else [])
    inputs = task.test + task.validation if memory else task.test[:32]
    return [(s, x["input"], x["target"]) for s in systems for x in inputs], \
        Decoding(NEW_TOKENS[task.spec.kind], stop_at_newline=True)


def peak(way: str, run_id: str) -> float:
    """GiB: the peak RSS of one process scoring summarisation one way ("one" pass or "two")."""
    out = subprocess.run([sys.executable, __file__, "--peak", way, run_id], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(RESULTS.parent)}, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if sys.argv[1:2] == ["--peak"]:  # a child: one way, then its own VmHWM in GiB
        way, run_id = sys.argv[2:4]
        lm = load_model(MODEL)
        gen = Generator(lm.model, lm.tokenizer)
        rows, d = rows_for("summarisation", run_id, memory=True)
        if way == "one":
            gen.generate_scored(rows, d)
        else:
            gen.generate([r[:2] for r in rows], d)
            gen.log_likelihood(rows)
        print(round(own_peak_gib(), 3))
        return
    runs = {t: (newest_finished(list_runs(), MODEL, t) or [None])[0] for t in ("qa", "sentiment", "summarisation")}
    if not all(runs.values()):
        print(f"skipped: needs a finished run of each of {list(runs)} in the workspace (make results trains them)")
        return
    lm = load_model(MODEL)
    gen = Generator(lm.model, lm.tokenizer)
    out = {"threads": torch.get_num_threads(), "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()]}
    for name in ("qa", "sentiment"):
        rows, d = rows_for(name, runs[name])
        gen.generate([r[:2] for r in rows[:4]], d)  # warm-up
        t0 = time.perf_counter()
        texts, lls = gen.generate([r[:2] for r in rows], d), gen.log_likelihood(rows)
        two = time.perf_counter() - t0
        t0 = time.perf_counter()
        texts1, lls1 = gen.generate_scored(rows, d)
        one = time.perf_counter() - t0
        out[name] = {"rows": len(rows), "two_passes_s": round(two, 2), "one_pass_s": round(one, 2),
                     "same_outputs": texts == texts1, "max_loglik_diff": max(abs(a - b) for a, b in zip(lls, lls1))}
        print(name, out[name], flush=True)
    out["summarisation_peak_gib"] = {way: peak(way, runs["summarisation"]) for way in ("two", "one")}
    print("summarisation peak RSS (GiB):", out["summarisation_peak_gib"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scored.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
