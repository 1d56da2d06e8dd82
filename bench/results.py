"""Soft prompts against hard prompts on every built-in task, with the tasks' defaults (`make results`).

For each task: train a run with the task's tuned defaults (core.tasks.TASK_DEFAULTS, plus any
--set overrides) in its own process, timing it and its peak memory; then generate on the chosen
split (greedy, every output cut at its first line break) with

  * the soft prompt,
  * the task's hard prompt, zero-shot and 4-shot, each in chat and in plain format,
  * the bare model (chat format),

and score each on the task's main metric. "best hard" is the best of the four hard prompts on that
split. Defaults are chosen on `--split validation`; the README reports `--split test`.

A run is named by its config, so a rerun with the same config reuses the trained run (and the
stored comparison) instead of training again: `make results` after choosing on validation only
evaluates on the test split. Writes bench-results/results-<split>.json and prints a markdown
table; --readme replaces the table between the README's results markers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.compare import CompareSpec, hard_systems, run_comparison, soft_system  # noqa: E402
from core.config import TuneConfig  # noqa: E402
from core.generator import Decoding, Generator, System  # noqa: E402
from core.paths import WorkbenchError  # noqa: E402
from core.runs import Run, new_run  # noqa: E402
from core.tasks import BUILTIN, load_task  # noqa: E402

SHOTS = 4
NEW_TOKENS = {"label": 8, "qa": 32, "generation": 64, "translation": 64}
MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


def parse_sets(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, raw = item.partition("=")
        try:
            out[name.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[name.strip()] = raw
    return out


def trained_run(cfg: TuneConfig, tag: str) -> tuple[Run, dict]:
    """The completed run for this config (trained now in a child process, or found from before)."""
    digest = hashlib.sha256(cfg.to_json().encode()).hexdigest()[:8]
    run_id = f"results-{cfg.task}-{tag}{digest}"
    try:
        run = Run.open(run_id)
    except WorkbenchError:
        run = None
    if run is not None and run.status().get("state") == "completed" and (run.path / "results-train.json").exists():
        return run, json.loads((run.path / "results-train.json").read_text())
    if run is not None:  # left unfinished by an earlier attempt: train it again from scratch
        shutil.rmtree(run.path)
    run = new_run(cfg, run_id)
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "tune", "--run-dir", str(run.path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, code, usage = os.wait4(proc.pid, 0)
    wall = time.time() - t0
    peak = usage.ru_maxrss / 2**20  # GiB (ru_maxrss is KiB on Linux)
    st = run.status()
    if code != 0 or st.get("state") != "completed":
        raise SystemExit(f"run {run.id} ended {st.get('state')}: {st.get('error') or stderr[-2000:]}")
    info = {"train_s": round(wall, 1), "peak_rss_gib": round(peak, 2), "steps": st.get("step")}
    (run.path / "results-train.json").write_text(json.dumps(info))
    return run, info


def evaluate(gen: Generator, task, run: Run, split: str) -> dict:
    systems = [soft_system(run.id, run.config().model)]
    for fmt in ("chat", "plain"):
        for s in hard_systems(task, fmt, shots=SHOTS)[:2]:  # zero-shot and k-shot
            systems.append(System(f"{s.name} ({fmt})", s.template, fmt))
    systems.append(System("bare model", "{input}", "chat"))
    spec = CompareSpec(task.split(split), systems, Decoding(NEW_TOKENS[task.spec.kind], stop_at_newline=True),
                       task.spec.kind, task.spec.labels, task.spec.main_metric)
    result = run_comparison(gen, spec, run.config().model)
    metric = task.spec.main_metric
    means = {r["system"]: r["mean"] for r in result["summary"] if r["metric"] == metric}
    cis = {r["system"]: (r.get("low"), r.get("high")) for r in result["summary"] if r["metric"] == metric}
    soft = systems[0].name
    hard = {n: v for n, v in means.items() if n.startswith("hard")}
    best_hard = max(hard, key=hard.get)
    return {"metric": metric, "n": len(spec.inputs), "soft": means[soft], "soft_ci": cis[soft],
            "best_hard": hard[best_hard], "best_hard_system": best_hard, "best_hard_ci": cis[best_hard],
            "bare": means["bare model"], "hard": hard, "example": {
                "input": spec.inputs[0]["input"], "reference": spec.inputs[0]["target"],
                "soft": result["outputs"][soft][0], "best_hard": result["outputs"][best_hard][0]}}


def table(rows: list[dict], split: str) -> str:
    lines = [f"| task | metric ({split}, n) | soft prompt | best hard prompt | bare model | soft wins | "
             "train time | peak RSS | defaults |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d = r["config"]
        defaults = (f"{d['method']}, {d['num_virtual_tokens']} tok, {d['init']} init, lr {d['learning_rate']:g}, "
                    f"{d['max_steps']} steps x {d['batch_size']}, {d['prompt_format']}")
        lines.append(f"| {r['task']} | {r['metric']} (n={r['n']}) | **{r['soft']:.3f}** | {r['best_hard']:.3f} "
                     f"({r['best_hard_system'].removeprefix('hard: ')}) | {r['bare']:.3f} | "
                     f"{'yes' if r['soft'] > r['best_hard'] else 'no'} | {r['train_s'] / 60:.1f} min | "
                     f"{r['peak_rss_gib']:.2f} GiB | {defaults} |")
    wins = sum(r["soft"] > r["best_hard"] for r in rows)
    lines.append(f"\nSoft prompt ahead of the best hard prompt on {wins} of {len(rows)} tasks.")
    return "\n".join(lines)


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_readme(text: str) -> None:
    readme = REPO / "README.md"
    body = readme.read_text()
    if MARKERS[0] not in body:
        raise SystemExit(f"README.md has no {MARKERS[0]} ... {MARKERS[1]} section to fill.")
    pattern = re.compile(re.escape(MARKERS[0]) + ".*?" + re.escape(MARKERS[1]), re.S)
    readme.write_text(pattern.sub(lambda _: f"{MARKERS[0]}\n{text}\n{MARKERS[1]}", body))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(BUILTIN), choices=list(BUILTIN))
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="override a default for every task, e.g. max_steps=100 learning_rate=0.1")
    p.add_argument("--tag", default="", help="extra run-id prefix (keeps experiments apart)")
    p.add_argument("--readme", action="store_true", help="write the table into README.md")
    a = p.parse_args(argv)
    from core.models import load_model

    overrides, rows, gen = parse_sets(a.set), [], None
    for name in a.tasks:
        cfg = TuneConfig.for_task(task=name, **overrides)
        run, info = trained_run(cfg, a.tag)
        if gen is None:
            lm = load_model(cfg.model)
            gen = Generator(lm.model, lm.tokenizer)
        t0 = time.time()
        row = {"task": name, "run": run.id, **info, **evaluate(gen, load_task(name), run, a.split),
               "eval_s": round(time.time() - t0, 1), "config": cfg.to_dict()}
        rows.append(row)
        print(f"{name}: {row['metric']} soft {row['soft']:.3f} | best hard {row['best_hard']:.3f} "
              f"({row['best_hard_system']}) | bare {row['bare']:.3f} | train {info['train_s']:.0f} s, "
              f"peak {info['peak_rss_gib']:.2f} GiB", flush=True)
    out = REPO / "bench-results" / f"results-{a.split}{'-' + a.tag if a.tag else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "split": a.split, "created": time.time(), "rows": rows},
                              indent=2))
    text = table(rows, a.split) + f"\n\nMeasured on {machine()}; `make results` (bench/results.py)."
    print(text)
    if a.readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
