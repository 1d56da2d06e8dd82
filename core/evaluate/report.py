"""Prompt length x init strategy on one task: how long a soft prompt, started from what?

Each point is a real run, trained with the task's tuned defaults except its length and init,
then scored on the validation split with the task's main metric by the comparison generator
(greedy, outputs cut at the first line break) and by its best validation loss. Runs are named
report-<task>-<init>-<length>-<config digest> and kept: a report run again with the same
settings reuses them. The report file is rewritten after every point, so the Results page shows
it growing; reports measured for the project are shipped in bench-results/report-<task>.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

from core import settings
from core.config import TuneConfig
from core.errors import WorkbenchError
from core.store.paths import REPO_ROOT, check_run_id, read_json, workspace, write_json_atomic
from core.store.runs import Run, RunState, delete_run, new_run
from core.tasks import BUILTIN, TaskSpec, load_task, task_defaults

LENGTHS = (1, 5, 20, 50, 100)
INITS = ("random", "sample-vocab", "text", "class-label")
SHIPPED = REPO_ROOT / "bench-results"


def init_values(spec: TaskSpec, init: str) -> dict | None:
    """Config values for an init strategy on a task; None where it does not apply (class labels
    on a task without labels)."""
    if init == "text":
        text = task_defaults(spec.name).get("init_text") or spec.hard_prompt.split("{input}")[0].strip()
        return {"init": "text", "init_text": text or spec.title}
    if init == "class-label":
        return {"init": "class-label", "label_words": list(spec.labels)} if spec.labels else None
    return {"init": init}


OBSERVING = ("beat_examples",)  # fields that watch a run without changing what it trains: not in its name


def config_digest(cfg: TuneConfig) -> str:
    """Eight hex digits naming a config: runs trained alike (equal but for OBSERVING) share it."""
    named = {k: v for k, v in cfg.to_dict().items() if k not in OBSERVING}
    return hashlib.sha256(json.dumps(named, indent=2).encode()).hexdigest()[:8]


def run_for_config(cfg: TuneConfig, prefix: str) -> Run:
    """The run named by `prefix` and the config's digest: the completed one from before, or a new
    queued one (an unfinished leftover is deleted first)."""
    run_id = check_run_id(f"{prefix}-{config_digest(cfg)}")
    try:
        run = Run.open(run_id)
    except WorkbenchError:
        return new_run(cfg, run_id)
    if run.status().get("state") == RunState.COMPLETED:
        return run
    delete_run(run_id)
    return new_run(cfg, run_id)


def report_path(task: str) -> Path:
    folder = workspace() / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{check_run_id(task)}.json"


def reports() -> list[dict]:
    """Reports of this workspace, then the ones shipped with the project (marked `shipped`)."""
    found = []
    for path, shipped in ([(p, False) for p in sorted((workspace() / "reports").glob("*.json"))] +
                          [(p, True) for p in sorted(SHIPPED.glob("report-*.json"))]):
        data = read_json(path, default=None)
        if isinstance(data, dict) and data.get("points") is not None:
            found.append({**data, "shipped": shipped, "path": str(path)})
    return found


def machine() -> str:
    return f"{settings.cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run_report(task_name: str, lengths=LENGTHS, inits=INITS, overrides: dict | None = None,
               progress: Callable[[dict], None] | None = None, out: Path | None = None) -> dict:
    """Train and score every (init, length) point; returns the report (also written to `out`)."""
    from core.evaluate.compare import CompareSpec, run_comparison, soft_system
    from core.generate.generator import Generator
    from core.model.loading import load_model
    from core.train.training import train

    if task_name not in BUILTIN:
        raise WorkbenchError(f"Task {task_name!r} is not built in: a report runs on one of {', '.join(BUILTIN)}.")
    if bad := [i for i in inits if i not in INITS]:
        raise WorkbenchError(f"Unknown init strategy {', '.join(map(repr, bad))}: use {', '.join(INITS)}.")
    task, overrides = load_task(task_name), dict(overrides or {})
    out = out or report_path(task_name)
    report = {"task": task_name, "metric": task.spec.main_metric, "split": "validation",
              "n": len(task.validation), "lengths": list(lengths), "inits": list(inits), "overrides": overrides,
              "machine": machine(), "created": time.time(), "state": RunState.RUNNING, "points": [], "skipped": []}
    gen = None
    for init in inits:
        values = init_values(task.spec, init)
        if values is None:
            report["skipped"].append({"init": init, "why": f"{task_name} has no class labels"})
            continue
        for n in lengths:
            cfg = TuneConfig.for_task(task=task_name, **{**values, **overrides, "num_virtual_tokens": n})
            run = run_for_config(cfg, f"report-{task_name}-{init}-{n}")
            t0 = time.time()
            if run.status().get("state") != RunState.COMPLETED:
                status = train(run)
                if status["state"] != RunState.COMPLETED:
                    raise WorkbenchError(f"Report run {run.id} ended {status['state']}: {status.get('error')}")
            if gen is None:
                lm = load_model(cfg.model)
                gen = Generator(lm.model, lm.tokenizer)
            spec = CompareSpec.for_task(task, "validation", [soft_system(run.id, cfg.model)])
            result = run_comparison(gen, spec, cfg.model)
            row = next(r for r in result["summary"] if r["metric"] == task.spec.main_metric)
            report["points"].append({"init": init, "num_virtual_tokens": n, "run_id": run.id, "metric": row["mean"],
                                     "low": row["low"], "high": row["high"],
                                     "eval_loss": run.summary()["best_eval_loss"], "seconds": round(time.time() - t0, 1)})
            write_json_atomic(out, report)
            if progress:
                progress(report)
    report["state"] = "completed"
    write_json_atomic(out, report)
    return report


def interval(ci) -> str:
    """A 95% interval as text ("0.39-0.48"), blank when it was not measured."""
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else ""


def shift_change(as_is: float, shifted: float) -> str:
    """How much of its in-distribution score the soft prompt keeps on shifted inputs, as a signed percent."""
    return f"{(shifted - as_is) / as_is:+.0%}" if as_is else ""


def results_table(path: Path | None = None) -> dict | None:
    """The results table (bench/results.py) as rows to show: per task the soft prompt, the best
    hard prompt (and which), the bare model, whether the soft prompt is ahead, the same on the
    shifted split (each input in a random format variant) where measured, and train minutes; with
    `wins`, `wins_shifted` and the `machine` it was measured on. None when no table was written yet."""
    table = read_json(path or SHIPPED / "results-test.json", default=None)
    if not table:
        return None
    rows = [{"task": r["task"], "metric": r["metric"], "n (test)": r["n"], "soft prompt": r["soft"],
             "soft 95% CI": interval(r.get("soft_ci")), "best hard prompt": r["best_hard"],
             "which hard prompt": r["best_hard_system"].removeprefix("hard: "),
             "bare model": r["bare"], "soft ahead": r["soft"] > r["best_hard"],
             **({"soft, shifted": r["shifted"]["soft"], "soft, shifted 95% CI": interval(r["shifted"].get("soft_ci")),
                 "best hard, shifted": r["shifted"]["best_hard"],
                 "soft ahead, shifted": r["shifted"]["soft"] > r["shifted"]["best_hard"],
                 "soft change under shift": shift_change(r["soft"], r["shifted"]["soft"])} if "shifted" in r else {}),
             "passes best hard at": beat_text(r.get("beat")), "train min": (r["train_s"] or 0) / 60}
            for r in table["rows"]]
    shifted = all("soft ahead, shifted" in r for r in rows)
    return {"rows": rows, "wins": sum(r["soft ahead"] for r in rows), "machine": table["machine"],
            "wins_shifted": sum(r["soft ahead, shifted"] for r in rows) if shifted else None,
            "losses": losses(table["rows"]) if shifted else None}


def losses(rows: list[dict], drop: float = 0.15) -> str:
    """Where the soft prompt does not hold, in words: the tasks where it is not ahead (as is, shifted)
    and those whose soft score falls by more than `drop` of its own under the shift."""
    def names(pick) -> str:
        return ", ".join(r["task"] for r in rows if pick(r))
    parts = [f"behind or level as is: {names(lambda r: r['soft'] <= r['best_hard'])}",
             f"behind or level shifted: {names(lambda r: r['shifted']['soft'] <= r['shifted']['best_hard'])}",
             f"drops more than {drop:.0%} under the shift: "
             + names(lambda r: r["soft"] and (r["soft"] - r["shifted"]["soft"]) / r["soft"] > drop)]
    said = [p for p in parts if not p.endswith(": ")]
    return "; ".join(said) if said else "ahead on every task, as is and shifted, none dropping by more than " \
        f"{drop:.0%}"


def beat_text(beat: dict | None) -> str | None:
    """When a results run passed the best hard prompt on its validation sample (core/evaluate/beat.py)."""
    if not beat:
        return None
    return f"step {beat['step']}, {beat['seconds'] / 60:.1f} min" if beat.get("step") is not None else "not in the run"


def start_report(task: str, lengths: list[int], inits: list[str], steps: int = 0) -> Path:
    """Run a report in its own process (`python -m workbench report ...`); returns its log file."""
    from core.store.jobs import spawn

    log = report_path(task).with_suffix(".log")
    args = ["report", "--task", task, "--lengths", *map(str, sorted(lengths)), "--inits", *inits]
    spawn(args + (["--steps", str(steps)] if steps else []), log)
    return log
