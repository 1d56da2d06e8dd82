"""A run is a folder under <workspace>/runs/<run_id>/:

    config.json      the validated TuneConfig
    status.json      state, step, total, loss, eta, error, pid (written atomically)
    metrics.jsonl    one JSON object per logged step / evaluation
    checkpoints/     checkpoint-<step>/ as written by Trainer (PEFT adapter + optimizer state)
    adapter/         the final adapter in PEFT's format (PeftModel.from_pretrained reads it)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core.config import TuneConfig
from core.store.paths import IdFolder, WorkbenchError, check_run_id, read_json, run_path, runs_dir, write_json_atomic

ACTIVE = ("queued", "starting", "running")
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
        st = read_json(self.path / "status.json", default={}) or {}
        if st.get("state") in ("running", "starting") and not _alive(st.get("pid")):
            st = {**st, "state": "interrupted", "error": "The training process ended without finishing (its output is in log.txt in the "
                           "run folder); resume it from its last checkpoint."}
        return st

    def log_metrics(self, row: dict) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def metrics(self) -> list[dict]:
        rows = []
        try:
            with open(self.path / "metrics.jsonl", encoding="utf-8") as f:
                for line in f:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        continue  # a line cut by a crash mid-write
        except FileNotFoundError:
            pass
        return rows

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (adapter weights present), oldest first."""
        if not self.checkpoints_dir.exists():
            return []
        cks = [p for p in self.checkpoints_dir.glob("checkpoint-*")
               if p.name.split("-")[-1].isdigit() and (p / "adapter_model.safetensors").exists()
               and (p / "trainer_state.json").exists()]
        return sorted(cks, key=lambda p: int(p.name.split("-")[-1]))

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint whose trainer_state.json is readable (a save cut by a crash
        or a full disk is skipped: the one before it is used)."""
        for ck in reversed(self.checkpoints()):
            try:
                if read_json(ck / "trainer_state.json"):
                    return ck
            except ValueError:
                continue
        return None

    def summary(self) -> dict:
        st, cfg = self.status(), read_json(self.path / "config.json", default={}) or {}
        evals = [m["eval_loss"] for m in self.metrics() if "eval_loss" in m]
        return {
            "id": self.id, "model": cfg.get("model"), "task": cfg.get("task"), "method": cfg.get("method"),
            "tokens": cfg.get("num_virtual_tokens"), "steps": cfg.get("max_steps"), "state": st.get("state"),
            "step": st.get("step", 0), "best_eval_loss": min(evals) if evals else None,
            "duration_s": st.get("elapsed"), "created": st.get("created"),
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


def new_run(cfg: TuneConfig, run_id: str | None = None) -> Run:
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
    run.set_status(state="queued", step=0, total=cfg.max_steps, created=time.time())
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


def import_adapter(src: str | Path, model: str = "smollm2-135m-instruct", task: str = "imported",
                   run_id: str | None = None) -> Run:
    """Copy a PEFT soft-prompt adapter trained elsewhere into a new run (state: completed)."""
    from core.model.loading import model_config
    from core.model.adapters import adapter_prompt, check_adapter_fits

    src = Path(src).expanduser()
    try:
        conf = read_json(src / "adapter_config.json")
    except ValueError:
        conf = None
    if not isinstance(conf, dict) or not (src / "adapter_model.safetensors").exists():
        raise WorkbenchError(
            f"{str(src)!r} is not a PEFT adapter folder: it needs adapter_config.json and "
            "adapter_model.safetensors (save with model.save_pretrained(folder))."
        )
    method = PROMPT_PEFT_TYPES.get(conf.get("peft_type"))
    if method is None:
        raise WorkbenchError(
            f"Adapter type {conf.get('peft_type')!r} is not a soft prompt: import prompt tuning, "
            "P-tuning or prefix tuning adapters."
        )
    adapter_prompt(src)  # the weights are a readable safetensors file
    check_adapter_fits(src, model_config(model), model)
    cfg = TuneConfig(model=model, task=task, method=method, num_virtual_tokens=int(conf["num_virtual_tokens"]),
                     init="random", max_steps=1)
    run = new_run(cfg, run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-imported-{method}")
    run.adapter_dir.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(src / name, run.adapter_dir / name)
    run.set_status(state="completed", step=0, total=0, imported_from=str(src))
    return run
