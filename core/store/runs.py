"""A run is a folder under <workspace>/runs/<run_id>/:

    config.json      the validated TuneConfig
    status.json      state, step, total, loss, eta, error, pid (written atomically)
    metrics.jsonl    one JSON object per logged step / evaluation
    checkpoints/     checkpoint-<step>/ as written by Trainer (PEFT adapter + optimizer state)
    adapter/         the final adapter in PEFT's format (PeftModel.from_pretrained reads it)
"""
from __future__ import annotations

import enum
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import ConfigError, Method, TuneConfig
from core.errors import WorkbenchError
from core.store.paths import (IdFolder, append_jsonl, check_run_id, read_json, read_jsonl, run_path, runs_dir,
                              write_json_atomic)

class RunState(str, enum.Enum):
    """Where a run is; stored as its value in status.json."""
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # its process died without finishing (never written: derived on read)

    def __str__(self) -> str:  # prints and formats as its value, as it is stored
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


ACTIVE = (RunState.QUEUED, RunState.STARTING, RunState.RUNNING)
FINISHED = (RunState.COMPLETED, RunState.CANCELLED)  # runs with a usable soft prompt


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder name (checkpoint-<step>), or None for any other name."""
    prefix, _, step = name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None
PROMPT_PEFT_TYPES = {"PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning", "PREFIX_TUNING": "prefix-tuning"}


@dataclass
class Run(IdFolder):
    MARKER = "config.json"
    MISSING = "Run {id!r} does not exist: `python -m workbench runs` lists the runs."
    locate = staticmethod(run_path)

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def config(self) -> TuneConfig:
        return TuneConfig.from_dict(read_json(self.path / "config.json"))

    def status(self) -> dict:
        """The status file, with a run whose process died mid-way reported as `interrupted`."""
        status = read_json(self.path / "status.json", default={}) or {}
        if status.get("state") in (RunState.RUNNING, RunState.STARTING) and not _alive(status.get("pid")):
            status = {**status, "state": RunState.INTERRUPTED, "error": "The training process ended without finishing (its output is in log.txt in the "
                           "run folder); resume it from its last checkpoint."}
        return status

    def log_metrics(self, row: dict) -> None:
        append_jsonl(self.path / "metrics.jsonl", row)

    def metrics(self) -> list[dict]:
        return read_jsonl(self.path / "metrics.jsonl")

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (adapter weights and trainer state present) as (step, folder), oldest first."""
        if not self.checkpoints_dir.exists():
            return []
        found = [(checkpoint_step(p.name), p) for p in self.checkpoints_dir.glob("checkpoint-*")]
        return sorted((step, p) for step, p in found if step is not None
                      and (p / "adapter_model.safetensors").exists() and (p / "trainer_state.json").exists())

    def checkpoint(self, name: str) -> Path | None:
        """The complete checkpoint folder called `name` (checkpoint-<step>), or None."""
        return next((p for _, p in self.checkpoints() if p.name == name), None)

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint whose trainer_state.json is readable (a save cut by a crash
        or a full disk is skipped: the one before it is used)."""
        for _, ck in reversed(self.checkpoints()):
            try:
                if read_json(ck / "trainer_state.json"):
                    return ck
            except ValueError:
                continue
        return None

    def summary(self) -> dict:
        status, cfg = self.status(), read_json(self.path / "config.json", default={}) or {}
        evals = [m["eval_loss"] for m in self.metrics() if "eval_loss" in m]
        return {
            "id": self.id, "model": cfg.get("model"), "task": cfg.get("task"), "method": cfg.get("method"),
            "tokens": cfg.get("num_virtual_tokens"), "steps": cfg.get("max_steps"), "state": status.get("state"),
            "step": status.get("step", 0), "best_eval_loss": min(evals) if evals else None,
            "duration_s": status.get("elapsed"), "created": status.get("created"),
        }


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:  # a zombie (finished, not yet reaped) is not alive
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def init_run_problem(init_run: str, model: str) -> str | None:
    """Why run `init_run` cannot start a new prompt-tuning run on `model` (None when it can)."""
    try:
        source = Run.open(init_run)
        cfg = source.config()
    except (WorkbenchError, ValueError) as e:
        return str(e)
    state = source.status().get("state")
    if cfg.model != model:
        return f"run {init_run!r} was trained on {cfg.model!r}, not on {model!r}: pick a run of the same model."
    if cfg.method != Method.PROMPT_TUNING:
        return (f"run {init_run!r} is {cfg.method.value}: a new prompt-tuning run starts only from a "
                "prompt-tuning run (same model and method).")
    if state not in FINISHED or not (source.adapter_dir / "adapter_model.safetensors").exists():
        return f"run {init_run!r} is {state} and has no final prompt yet: wait for it to finish, or pick another run."
    return None


def init_runs(runs: list[dict], model: str) -> list[str]:
    """Ids (from list_runs summaries) of the runs a new prompt-tuning run on `model` can start from."""
    return [r["id"] for r in runs if r["model"] == model and r["method"] == Method.PROMPT_TUNING.value
            and r["state"] in FINISHED and (run_path(r["id"]) / "adapter" / "adapter_model.safetensors").exists()]


def new_run(cfg: TuneConfig, run_id: str | None = None) -> Run:
    if cfg.init_run and (problem := init_run_problem(cfg.init_run, cfg.model)):
        raise ConfigError({"init_run": problem})
    base = run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.task}-{cfg.method.value}"
    check_run_id(base)
    rid, n = base, 1
    while run_path(rid).exists():
        n += 1
        rid = f"{base}-{n}"
    path = run_path(rid)
    path.mkdir(parents=True)
    write_json_atomic(path / "config.json", cfg.to_dict())
    run = Run(rid, path)
    run.set_status(state=RunState.QUEUED, step=0, total=cfg.max_steps, created=time.time())
    return run


def list_runs() -> list[dict]:
    out = []
    for p in sorted(runs_dir().iterdir(), reverse=True):
        if p.is_dir() and (p / "config.json").exists():
            try:
                out.append(Run(check_run_id(p.name), p).summary())
            except (WorkbenchError, ValueError, json.JSONDecodeError):
                continue
    return out


def delete_run(run_id: str) -> None:
    run = Run.open(run_id)
    if run.status().get("state") in ACTIVE:
        raise WorkbenchError(f"Run {run_id!r} is still {run.status()['state']}: cancel it before deleting it.")
    shutil.rmtree(run.path)


def newest_finished(runs: list[dict], model: str, task: str) -> list[str]:
    """The id of the newest finished run (completed or cancelled) of `task` on `model`, from
    `list_runs()` summaries, as a one-item list (empty when there is none): what a comparison of
    that task starts with."""
    done = [r for r in runs if r["model"] == model and r["task"] == task and r["state"] in FINISHED]
    return [max(done, key=lambda r: r["created"] or 0)["id"]] if done else []
