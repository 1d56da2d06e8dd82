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
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_memory import measured  # noqa: E402
from core.evaluate.compare import CompareSpec, run_comparison, soft_system  # noqa: E402
from core.evaluate.metrics import CORPUS_METRICS, STATS_SUFFIX, corpus_stats, summarize  # noqa: E402
from core.config import TuneConfig  # noqa: E402
from core.generate.generator import Generator, System  # noqa: E402
from core.generate.variants import shifted  # noqa: E402
from core.store.paths import read_json  # noqa: E402
from core.evaluate.beat import hard_prompt_systems  # noqa: E402
from core.evaluate.report import OBSERVING, beat_text, machine, run_for_config, shift_change  # noqa: E402
from core.store.paths import runs_dir  # noqa: E402
from core.store.runs import Run  # noqa: E402
from core.tasks import BUILTIN, load_task  # noqa: E402

SHOTS = 4
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


def trains_alike(a: TuneConfig, b: TuneConfig) -> bool:
    """Equal configs, up to the fields that only watch the run (report.OBSERVING)."""
    keep = {f: getattr(b, f) for f in OBSERVING}
    return dataclasses.replace(a, **keep) == b


def trained_run(cfg: TuneConfig, tag: str) -> tuple[Run, dict]:
    """The completed run for this config (trained now in a child process, or found from before)."""
    # a run of an equal config counts too: trained under another tag, or before a field with an
    # unchanged default was added to TuneConfig (which changes the digest in the name)
    same = [Run.open(p.name) for p in sorted(runs_dir().glob(f"results-{cfg.task}-*"))]
    done = [r for r in same if r.status().get("state") == "completed" and trains_alike(r.config(), cfg)]
    run = done[0] if done else run_for_config(cfg, f"results-{cfg.task}" + (f"-{tag.strip('-')}" if tag.strip("-") else ""))
    if run.status().get("state") == "completed":
        saved = read_json(run.path / "results-train.json", default=None)
        return run, saved or {"train_s": run.status().get("elapsed"), "peak_rss_gib": None,
                              "steps": run.status().get("step")}
    t0 = time.time()
    code, peak, stderr = measured([sys.executable, "-m", "workbench", "tune", "--run-dir", str(run.path)])
    wall = time.time() - t0
    st = run.status()
    if code != 0 or st.get("state") != "completed":
        raise SystemExit(f"run {run.id} ended {st.get('state')}: {st.get('error') or stderr[-2000:]}")
    info = {"train_s": round(wall, 1), "peak_rss_gib": round(peak, 2), "steps": st.get("step")}
    (run.path / "results-train.json").write_text(json.dumps(info))
    return run, info


def time_to_beat(run: Run) -> dict | None:
    """Where the run passed the best hard prompt on its validation sample (core/evaluate/beat.py):
    {"step", "seconds", "score", "hard", "n"}, {"step": None, ...} when it did not, None when not measured."""
    beat = run.status().get("beat")
    if not beat:
        return None
    return {**(beat.get("passed") or {"step": None, "seconds": None}), "hard": beat["hard"], "n": beat["n"]}


DRAWS = 3  # shifted draws per split: one draw's own spread is several points (qa test: F1 0.64-0.70 across draws)


def scores(gen: Generator, model: str, task, systems: list[System], split: str,
           shift: bool = False) -> tuple[dict, dict, dict]:
    """Per system: mean of the task's main metric, its 95% CI, and the first output (stored by key).
    shift: on the split's shifted variant (core/generate/variants.py: one random format transform per input),
    drawn DRAWS times (seeds 0, 1, ...): each example's score is its mean over the draws (corpus metrics sum
    its statistics over them), and the interval resamples examples."""
    spec = CompareSpec.for_task(task, split, systems)
    metric = task.spec.main_metric
    if not shift:
        result = run_comparison(gen, spec, model)
        rows = [r for r in result["summary"] if r["metric"] == metric]
        return ({r["system"]: r["mean"] for r in rows}, {r["system"]: (r["low"], r["high"]) for r in rows},
                {name: out[0] for name, out in result["outputs"].items()})
    draws = [run_comparison(gen, dataclasses.replace(spec, inputs=shifted(spec.inputs, seed=d)), model)
             for d in range(DRAWS)]
    refs = [x["target"] for x in spec.inputs]
    means, cis = {}, {}
    for s in systems:
        per = {metric: np.mean([r["scores"][s.name][metric] for r in draws], axis=0).tolist()}
        if metric in CORPUS_METRICS:
            per[metric + STATS_SUFFIX] = np.sum([corpus_stats(metric, r["outputs"][s.name], refs) for r in draws],
                                                axis=0).tolist()
        row = summarize(per)[0]
        means[s.name], cis[s.name] = row["mean"], (row["low"], row["high"])
    return means, cis, {name: out[0] for name, out in draws[0]["outputs"].items()}


def evaluate(gen: Generator, task, run: Run, split: str, shift: bool = False) -> dict:
    """The soft prompt, and the hard prompts and bare model (computed once per task and split), on the
    split as it is or (shift) on its shifted variant."""
    hard_list = hard_prompt_systems(task, SHOTS)  # 0- and k-shot, chat and plain
    model = run.config().model
    means, cis, first = scores(gen, model, task, hard_list + [System("bare model", "{input}", "chat")], split, shift)
    soft = soft_system(run.id, model)
    s_mean, s_ci, s_first = scores(gen, model, task, [soft], split, shift)
    hard = {n: v for n, v in means.items() if n.startswith("hard")}
    best = max(hard, key=hard.get)
    example = task.split(split)[0]
    return {"metric": task.spec.main_metric, "n": len(task.split(split)), "soft": s_mean[soft.name],
            "soft_ci": s_ci[soft.name], "best_hard": hard[best], "best_hard_system": best, "best_hard_ci": cis[best],
            "bare": means["bare model"], "bare_ci": cis["bare model"], "hard": hard,
            "example": {"input": example["input"], "reference": example["target"], "soft": s_first[soft.name],
                        "best_hard": first[best]}}


def table(rows: list[dict], split: str) -> str:
    lines = [f"| task | metric ({split}, n) | soft prompt [95% CI] | best hard prompt [95% CI] | bare model | "
             "soft, shifted [95% CI] | best hard, shifted [95% CI] | soft under shift | soft ahead (as is / shifted) | "
             "passes best hard (validation sample) | train time | peak RSS | defaults |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pair(r: dict) -> tuple[str, str]:
        a, b = (f"{r[k]:.3f} [{r[k + '_ci'][0]:.2f}, {r[k + '_ci'][1]:.2f}]" for k in ("soft", "best_hard"))
        return (f"**{a}**", b) if r["soft"] > r["best_hard"] else (a, f"**{b}**")

    for r in rows:
        d, sh = r["config"], r["shifted"]
        defaults = (f"{d['method']}, {d['num_virtual_tokens']} tok, {d['init']} init, lr {d['learning_rate']:g}, "
                    f"{d['max_steps']} steps x {d['batch_size']}, {d['prompt_format']}"
                    + (f", format augmentation {d['format_augmentation']:g}" if d.get("format_augmentation") else "")
                    + (", template `" + d["input_template"].replace("\n", "\\n") + "`"
                       if d.get("input_template", "{input}") != "{input}" else ""))
        (soft, hard), (s_soft, s_hard) = pair(r), pair(sh)
        ahead = f"{'yes' if r['soft'] > r['best_hard'] else 'no'} / {'yes' if sh['soft'] > sh['best_hard'] else 'no'}"
        lines.append(f"| {r['task']} | {r['metric']} (n={r['n']}) | {soft} | {hard} "
                     f"({r['best_hard_system'].removeprefix('hard: ')}) | {r['bare']:.3f} | {s_soft} | {s_hard} | "
                     f"{shift_change(r['soft'], sh['soft'])} | {ahead} | {beat_text(r.get('beat')) or '-'} | "
                     f"{r['train_s'] / 60:.1f} min | {(r['peak_rss_gib'] or 0):.2f} GiB | {defaults} |")
    wins = sum(r["soft"] > r["best_hard"] for r in rows)
    wins_shifted = sum(r["shifted"]["soft"] > r["shifted"]["best_hard"] for r in rows)
    lines.append(f"\nSoft prompt ahead of the best hard prompt on {wins} of {len(rows)} tasks as shipped, and on "
                 f"{wins_shifted} of {len(rows)} on the shifted split (each input in a random format variant; "
                 f"mean of {DRAWS} draws).")
    return "\n".join(lines)


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
    from core.model.loading import load_model

    overrides, rows, gen = parse_sets(a.set), [], None
    for name in a.tasks:
        cfg = TuneConfig.for_task(task=name, **overrides)
        run, info = trained_run(cfg, a.tag)
        if gen is None:
            lm = load_model(cfg.model)
            gen = Generator(lm.model, lm.tokenizer)
        t0 = time.time()
        task = load_task(name)
        row = {"task": name, "run": run.id, **info, "beat": time_to_beat(run), **evaluate(gen, task, run, a.split),
               "shifted": evaluate(gen, task, run, a.split, shift=True),
               "eval_s": round(time.time() - t0, 1), "config": cfg.to_dict()}
        rows.append(row)
        sh = row["shifted"]
        print(f"{name}: {row['metric']} soft {row['soft']:.3f} | best hard {row['best_hard']:.3f} "
              f"({row['best_hard_system']}) | bare {row['bare']:.3f} | shifted: soft {sh['soft']:.3f}, best hard "
              f"{sh['best_hard']:.3f}, bare {sh['bare']:.3f} | train {info['train_s']:.0f} s, "
              f"peak {(info['peak_rss_gib'] or 0):.2f} GiB", flush=True)
    tag = a.tag.strip("-")
    out = REPO / "bench-results" / (f"results-{a.split}" + (f"-{tag}" if tag else "") + ".json")
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
