"""Headless entry point: `python -m workbench tune|resume|runs|generate|cancel|delete|import-adapter|sweep|report|
robustness|compare` (compare: workbench/compare_cli.py, sweep: workbench/sweep_cli.py).

The tune flags are generated from TuneConfig, so the CLI, the form and the saved run agree.
The app starts runs through this same entry point (`tune --run-dir`), in their own process.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from core.config import ConfigError, TuneConfig
from core.errors import WorkbenchError
from core.store.runs import FINISHED
from workbench import compare_cli, sweep_cli
from workbench.compare_cli import _bool, print_robustness
from workbench.pipes import survive_closed_pipes

ALIASES = {"max_steps": ["--steps"], "num_virtual_tokens": ["--virtual-tokens"]}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    defaults = TuneConfig()
    for f in dataclasses.fields(TuneConfig):
        default = getattr(defaults, f.name)
        kind = {bool: _bool, int: int, float: float}.get(type(default), str)
        flags = [f"--{f.name.replace('_', '-')}"] + ALIASES.get(f.name, [])
        extra = {"nargs": "*"} if isinstance(default, list) else {}
        shown = getattr(default, "value", default)
        p.add_argument(*flags, dest=f.name, type=kind, default=argparse.SUPPRESS,
                       help=f"{f.metadata.get('help', '')} (default: {shown})", **extra)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench", description="Soft Prompt Workbench (headless).")
    sub = p.add_subparsers(dest="cmd", required=True)
    tune = sub.add_parser("tune", help="train a soft prompt (creates a run folder)")
    tune.add_argument("--run-dir", help="train an existing run folder (as the app does)")
    tune.add_argument("--run-id", help="name for the new run (default: date-task-method)")
    add_config_flags(tune)
    res = sub.add_parser("resume", help="resume a cancelled / failed / interrupted run from its last checkpoint")
    res.add_argument("--run", required=True)
    sub.add_parser("runs", help="list runs").add_argument("--json", action="store_true")
    gen = sub.add_parser("generate", help="print the soft-prompted output for an input")
    gen.add_argument("--run", required=True)
    gen.add_argument("--input", required=True, action="append", help="repeat for several inputs")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--checkpoint", help="a checkpoint of the run (checkpoint-<step>) instead of its final adapter")
    for name, helptext in (("cancel", "stop a running run (it saves and ends as cancelled)"), ("delete", "delete a run")):
        sub.add_parser(name, help=helptext).add_argument("--run", required=True)
    sub.add_parser("worker", help="train queued runs one at a time (started by the app in queue mode)")
    imp = sub.add_parser("import-adapter", help="import a PEFT soft-prompt adapter folder as a run")
    imp.add_argument("path")
    imp.add_argument("--model", default="smollm2-135m-instruct")
    imp.add_argument("--task", default="imported")
    imp.add_argument("--run-id", help="name for the new run (default: date-imported-method)")
    imp.add_argument("--prompt-format", default="plain", help="how the adapter's trainer formatted its inputs: plain "
                     "(PEFT's convention: the raw text, no chat template) or chat (default: plain)")
    imp.add_argument("--input-template", default="{input}", help="text around each input as the trainer wrote it; "
                     "must contain {input} (default: {input})")
    sweep_cli.add_parser(sub, add_config_flags)
    rep = sub.add_parser("report", help="prompt length x init strategy on one task: train every point, score it "
                                        "on the validation split (shown on the Results page)")
    rep.add_argument("--task", default="sentiment", help="built-in task (default: sentiment)")
    rep.add_argument("--lengths", type=int, nargs="+", default=None, help="prompt lengths (default: 1 5 20 50 100)")
    rep.add_argument("--inits", nargs="+", default=None, help="init strategies (default: all four)")
    rep.add_argument("--steps", type=int, default=None, help="training steps per point (default: the task's)")
    rep.add_argument("--out", help="report file (default: workspace/reports/<task>.json)")
    rob = sub.add_parser("robustness", help="compare soft / hard prompts on a task split and on format variants of it")
    rob.add_argument("--task", default="qa", help="built-in task (default: qa)")
    rob.add_argument("--split", default="test", choices=["train", "validation", "test"])
    rob.add_argument("-n", type=int, help="first n inputs of the split (default: all)")
    rob.add_argument("--model", default="smollm2-135m-instruct")
    rob.add_argument("--runs", nargs="*", default=[], help="trained runs to compare as soft prompts")
    rob.add_argument("--shots", type=int, default=0, help="add a k-shot hard prompt (default: none)")
    rob.add_argument("--format", default="plain", choices=["plain", "chat"], help="hard prompt format")
    rob.add_argument("--max-new-tokens", type=int, help="default: the task's answer length")
    rob.add_argument("--k", type=int, default=3, help="format variants besides the shifted split (default: 3)")
    rob.add_argument("--variants", nargs="+", help="the transforms to use, by name (default: the first k that apply)")
    rob.add_argument("--seed", type=int, default=0)
    rob.add_argument("--json", action="store_true")
    compare_cli.add_parser(sub)
    return p


def _progress_printer(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def update(st: dict):
        bar.total = st.get("total") or bar.total
        bar.n = st.get("step", 0)
        if st.get("loss") is not None:
            bar.set_postfix(loss=f"{st['loss']:.4f}")
        bar.refresh()
    return update, bar


def _train(run, resume: bool) -> int:
    from core.train.training import train

    update, bar = _progress_printer(run.config().max_steps)
    st = train(run, resume=resume, progress=update, extra_callbacks=_watchers(run))
    bar.close()
    print(f"run {run.id}: {st['state']} at step {st.get('step')} -> {run.path}")
    if st.get("error"):
        print(f"error: {st['error']}", file=sys.stderr)
    return 0 if st["state"] in FINISHED else 1


def _watchers(run) -> tuple:
    """Callbacks that watch a run from above core/train: when it passes the best hard prompt."""
    if not run.config().beat_examples or int(os.environ.get("RANK", "0")) != 0:
        return ()
    from core.evaluate.beat import BeatHardPrompt

    return (BeatHardPrompt(run),)


def cmd_tune(a) -> int:
    from core.store.runs import Run, new_run

    if a.run_dir:
        path = Path(a.run_dir).resolve()
        return _train(Run.open(path.name) if path.parent.name == "runs" else _outside(path), resume=False)
    values = {f.name: getattr(a, f.name) for f in dataclasses.fields(TuneConfig) if hasattr(a, f.name)}
    cfg = TuneConfig.for_task(**values)
    from core.model.device import resolve_device
    resolve_device(cfg.device)  # a device that is not there is named now, before a run folder exists
    if one_process_under_accelerate_cpu():
        print("note: `accelerate launch --cpu` starts one process whatever --num_processes says (several CPU "
              "processes need mpirun): for N processes on this machine use `accelerate launch --multi_gpu "
              "--num_processes N -m workbench tune --device cpu ...` (docs/distributed.md).", file=sys.stderr)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch: one run shared by all processes
        return _train(_shared_run(cfg, a.run_id), resume=False)
    run = new_run(cfg, a.run_id)
    print(f"run {run.id} created in {run.path}")
    return _train(run, resume=False)


def one_process_under_accelerate_cpu(env=None) -> bool:
    """`accelerate launch --cpu --num_processes N` (N > 1) runs one plain process: it sets MASTER_ADDR and
    ACCELERATE_USE_CPU but no WORLD_SIZE."""
    env = os.environ if env is None else env
    return (env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env
            and "WORLD_SIZE" not in env)


def _shared_run(cfg: TuneConfig, run_id: str | None):
    """The main process creates the run folder; the others wait for it and open the same run."""
    from core.store.runs import Run, new_run

    if not run_id:
        raise WorkbenchError("Under accelerate launch with several processes, name the run: add --run-id NAME.")
    if int(os.environ.get("RANK", "0")) == 0:
        return new_run(cfg, run_id)
    for _ in range(600):
        try:
            return Run.open(run_id)
        except WorkbenchError:
            time.sleep(0.1)
    raise WorkbenchError(f"Run {run_id!r} was not created by the main process within 60 s.")


def _outside(path: Path):
    raise WorkbenchError(f"{str(path)!r} is not a run folder inside the workspace's runs/ folder.")


def cmd_runs(a) -> int:
    from core.store.runs import list_runs

    rows = list_runs()
    if a.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no runs yet: start one with `python -m workbench tune --task paraphrase`")
    else:
        cols = ["id", "task", "method", "tokens", "state", "step", "steps", "best_eval_loss"]
        print("  ".join(f"{c:<14}" if c != "id" else f"{c:<44}" for c in cols))
        for r in rows:
            cells = [str(r[c] if not isinstance(r[c], float) else f"{r[c]:.4f}") for c in cols]
            print("  ".join(f"{x:<14}" if i else f"{x:<44}" for i, x in enumerate(cells)))
    return 0


def cmd_generate(a) -> int:
    from core.generate.systems import generate_for_run

    outs = generate_for_run(a.run, a.input, max_new_tokens=a.max_new_tokens, which=a.checkpoint)
    for text, out in zip(a.input, outs):
        print(out if len(a.input) == 1 else f"> {text}\n{out}\n")
    return 0


def cmd_cancel(a) -> int:
    from core.store.jobs import cancel

    outcome = cancel(a.run)
    print(f"run {a.run}: {'asked to save and stop' if outcome == 'stopping' else outcome}")
    return 0


def cmd_report(a) -> int:
    from core.evaluate import report as rep

    def show(r: dict) -> None:
        p = r["points"][-1]
        print(f"{p['init']:>12} {p['num_virtual_tokens']:>4} tokens: {r['metric']} {p['metric']:.3f}, "
              f"best eval_loss {p['eval_loss']:.4f} ({p['seconds']:.0f} s, run {p['run_id']})", flush=True)
    overrides = {"max_steps": a.steps} if a.steps else {}
    r = rep.run_report(a.task, a.lengths or rep.LENGTHS, a.inits or rep.INITS, overrides, progress=show,
                       out=Path(a.out) if a.out else None)
    print(f"report on {a.task}: {len(r['points'])} points -> {a.out or rep.report_path(a.task)}")
    return 0


def cmd_robustness(a) -> int:
    from core.evaluate.compare import CompareSpec, hard_systems, soft_system
    from core.evaluate.robustness import run_robustness
    from core.generate.generator import Generator
    from core.model.loading import load_model
    from core.tasks import load_task

    task = load_task(a.task)
    systems = [soft_system(r, a.model) for r in a.runs] + hard_systems(task, a.format, a.shots)
    spec = CompareSpec.for_task(task, a.split, systems)
    spec.inputs = spec.inputs[:a.n] if a.n else spec.inputs
    spec.decoding.max_new_tokens = a.max_new_tokens or spec.decoding.max_new_tokens
    lm = load_model(a.model)
    r = run_robustness(Generator(lm.model, lm.tokenizer), spec, a.model, a.k, a.variants, a.seed,
                       progress=lambda f, msg: print(f"{f:4.0%} {msg}", file=sys.stderr, flush=True))
    if a.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{a.task} {a.split}, {len(spec.inputs)} inputs, {r['metric']}:")
    print_robustness(r)
    return 0


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    with survive_closed_pipes():  # `tune ... | head -1`: printing stops, the run goes on
        return _run(a)


def _run(a) -> int:
    try:
        if a.cmd == "tune":
            return cmd_tune(a)
        if a.cmd == "resume":
            from core.store.runs import Run
            return _train(Run.open(a.run), resume=True)
        if a.cmd == "worker":
            from core.store.jobs import worker_loop
            print(f"worker: trained {worker_loop()} queued run(s)")
            return 0
        if a.cmd == "delete":
            from core.store.runs import delete_run
            delete_run(a.run)
            return 0
        if a.cmd == "import-adapter":
            from core.model.adapters import import_adapter
            run = import_adapter(a.path, a.model, a.task, a.run_id, a.prompt_format, a.input_template)
            print(f"imported as run {run.id} ({a.prompt_format} format, template {a.input_template!r})")
            return 0
        return {"runs": cmd_runs, "generate": cmd_generate, "cancel": cmd_cancel, "sweep": sweep_cli.cmd_sweep,
                "report": cmd_report, "robustness": cmd_robustness, "compare": compare_cli.cmd_compare}[a.cmd](a)
    except ConfigError as e:
        for k, v in e.errors.items():
            print(f"error: {'-' if len(k) == 1 else '--'}{k.replace('_', '-')}: {v}", file=sys.stderr)
        return 2
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
