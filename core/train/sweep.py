"""A sweep: prompt length x learning rate over one base config, trained trial after trial with
Optuna (GridSampler over the chosen values, MedianPruner on the validation loss). It is a folder
<workspace>/sweeps/<sweep_id>/:
    sweep.json     base config (without the swept fields), grid, metric, pruner settings, seed
    status.json    state (queued/running/completed/cancelled/failed/interrupted), trials, total, pid, current
    trials.jsonl   one row per finished trial: number, params, run_id, eval_loss (best), state
                   (completed/pruned/failed), step, pruned_step, intermediate losses
    log.txt        output of the sweep process when the app started it

Each trial is a normal run `<sweep_id>-t<n>` trained in this process. A pruned trial's run ends
`completed` (its adapter is saved and usable) with `pruned: true` and `pruned_step` in its status;
the sweep's row says `pruned`. SIGTERM: the current trial saves and stops, the sweep ends
`cancelled`; running it again trains the trials not finished (finished ones are replayed into Optuna).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from transformers import TrainerCallback

from core.config import ConfigError, TuneConfig
from core.store.jobs import spawn
from core.errors import WorkbenchError
from core.store.paths import IdFolder, check_run_id, child_path, read_json, workspace, write_json_atomic
from core.store.runs import Run, _alive, new_run
from core.train.training import train

optuna.logging.set_verbosity(optuna.logging.WARNING)
SWEPT = ("num_virtual_tokens", "learning_rate")
ACTIVE = ("queued", "running")
METRIC = "eval_loss"
MAX_TRIALS = 100
ROW_KEYS = ("eval_loss", "step", "pruned_step", "run_id", "error")
DEFAULT_PRUNER = {"n_startup_trials": 2, "n_warmup_steps": 1, "interval_steps": 1}  # never prune at step 0


def sweep_path(sweep_id: str | None = None) -> Path:
    """The sweeps folder, or one sweep's folder (guaranteed to sit directly inside it)."""
    root = workspace() / "sweeps"
    root.mkdir(parents=True, exist_ok=True)
    if sweep_id is None:
        return root
    return child_path(root, sweep_id, "Sweep")


@dataclass
class Sweep(IdFolder):
    MARKER = "sweep.json"
    MISSING = "Sweep {id!r} does not exist: the Sweep page lists the sweeps."
    locate = staticmethod(sweep_path)

    def spec(self) -> dict:
        return read_json(self.path / "sweep.json")

    def status(self) -> dict:
        """The status file, with a sweep whose process died reported as `interrupted` (as runs are)."""
        status = read_json(self.path / "status.json", default={}) or {}
        if status.get("state") in ACTIVE and status.get("pid") and not _alive(status["pid"]):
            status = {**status, "state": "interrupted", "error": "The sweep process ended without finishing (see log.txt "
                  "in the sweep folder); start the sweep again to train the remaining trials."}
        return status

    def trials(self) -> list[dict]:
        path = self.path / "trials.jsonl"
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            with contextlib.suppress(json.JSONDecodeError):  # a line cut by a crash mid-write
                rows.append(json.loads(line))
        return rows

    def results(self) -> list[dict]:
        """One row per grid point: finished trials, the current one, then those still pending."""
        status = self.status()
        rows = [_row(t["number"], t["params"], t["state"], **{k: t.get(k) for k in ROW_KEYS})
                for t in self.trials()]
        cur = status.get("current")
        if cur and cur["number"] not in {r["trial"] for r in rows}:
            try:
                s = Run.open(cur["run_id"]).summary()
                state = status["state"] if status.get("state") in ("interrupted", "cancelled") else s["state"]
                rows.append(_row(cur["number"], cur["params"], state, eval_loss=s["best_eval_loss"], step=s["step"],
                                 run_id=cur["run_id"]))
            except WorkbenchError:
                pass  # its run was deleted
        seen = [(r["num_virtual_tokens"], r["learning_rate"]) for r in rows]
        pending = [p for p in trial_grid(self.spec()["grid"]) if tuple(p.values()) not in seen]
        return rows + [_row(None, p, "pending") for p in pending]

    def run(self, on_trial: Callable[[dict], None] | None = None) -> dict:
        """Train the trials not finished yet, one after another, in this process; returns the final status."""
        status = self.status()
        if status.get("state") == "cancelled" and status.get("pid") == os.getpid():
            return status  # cancelled while this process was starting
        if status.get("state") == "running" and status.get("pid") != os.getpid():
            raise WorkbenchError(f"Sweep {self.id!r} is already running (pid {status.get('pid')}).")
        stop = {"requested": False}
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("requested", True))
        try:
            spec, done = self.spec(), self.trials()
            grid, total = spec["grid"], len(trial_grid(spec["grid"]))
            self.set_status(state="running", pid=os.getpid(), error=None, started=time.time(), trials=len(done),
                            total=total, cancel_requested=None)
            study = optuna.create_study(direction="minimize", pruner=optuna.pruners.MedianPruner(**spec["pruner"]),
                                        sampler=optuna.samplers.GridSampler(grid, seed=spec["seed"]))
            for row in done:  # trial n is grid point n of the seeded grid: replaying keeps the numbering
                study.add_trial(_frozen(row, grid))

            def objective(trial):
                params = {k: trial.suggest_categorical(k, grid[k]) for k in SWEPT}
                row = None if stop["requested"] else self._trial(trial, params)
                if row is None:  # the trial's run was cancelled (SIGTERM): the sweep ends here
                    stop["requested"] = True
                    raise optuna.TrialPruned()
                with open(self.path / "trials.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                self.set_status(trials=trial.number + 1, current=None)
                if on_trial:
                    on_trial(row)
                if row["state"] == "pruned":
                    raise optuna.TrialPruned()
                return row["eval_loss"] if row["state"] == "completed" else math.nan  # nan: Optuna marks it failed

            if total > len(done) and not stop["requested"]:
                study.optimize(objective, n_trials=total - len(done),
                               callbacks=[lambda s, t: s.stop() if stop["requested"] else None])
        except BaseException as e:
            self.set_status(state="failed", error=f"{type(e).__name__}: {e}", pid=None)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        rows = self.trials()
        if stop["requested"]:
            return self.set_status(state="cancelled", pid=None)
        if rows and all(r["state"] == "failed" for r in rows):
            return self.set_status(state="failed", pid=None, error=f"Every trial failed; the last: {rows[-1]['error']}")
        return self.set_status(state="completed", pid=None, best=best_trial(rows))

    def _trial(self, trial, params: dict) -> dict | None:
        run = new_run(TuneConfig.from_dict({**self.spec()["base"], **params}), f"{self.id}-t{trial.number}")
        self.set_status(current={"number": trial.number, "params": params, "run_id": run.id})
        pruning, t0 = PruneCallback(trial, run), time.time()
        try:
            status = train(run, extra_callbacks=(pruning,))
        except Exception as e:  # already recorded in the run's status; the next trial may still work
            status = {"state": "failed", "error": f"{type(e).__name__}: {e}", "step": run.status().get("step")}
        if status["state"] == "cancelled":
            return None
        state = "pruned" if status["state"] == "completed" and pruning.pruned_step is not None else status["state"]
        losses = [v for v in pruning.losses.values() if math.isfinite(v)]
        if state == "completed" and not losses:
            state, status = "failed", {**status, "error": "No validation loss was reported: the task needs validation data."}
        return {"number": trial.number, "params": params, "run_id": run.id, "state": state,
                "eval_loss": min(losses) if losses else None, "step": status.get("step"),
                "pruned_step": pruning.pruned_step, "intermediate": pruning.losses,
                "error": status.get("error") if state == "failed" else None, "duration_s": round(time.time() - t0, 2)}


class PruneCallback(TrainerCallback):
    """Report the validation loss to the Optuna trial at each evaluation; stop the run when it should prune
    (never at the last evaluation: the trial has then trained all its steps and counts as completed)."""

    def __init__(self, trial, run: Run):
        self.trial, self.run = trial, run
        self.losses: dict[int, float] = {}
        self.pruned_step: int | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        loss = (metrics or {}).get(METRIC)
        if loss is None or not state.is_world_process_zero or self.pruned_step is not None:
            return
        self.losses[state.global_step] = float(loss)
        self.trial.report(float(loss), state.global_step)
        if state.global_step < state.max_steps and self.trial.should_prune():  # at the last step it is complete
            self.pruned_step = state.global_step
            control.should_training_stop = True
            self.run.set_status(pruned=True, pruned_step=state.global_step)


def _row(number, params: dict, state: str, **rest) -> dict:
    return {"trial": number, **{k: params[k] for k in SWEPT}, "state": state, **dict.fromkeys(ROW_KEYS), **rest}


def _frozen(row: dict, grid: dict):
    state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(row["state"], TrialState.FAIL)
    return optuna.trial.create_trial(
        params=row["params"], distributions={k: CategoricalDistribution(grid[k]) for k in SWEPT}, state=state,
        value=row["eval_loss"] if state == TrialState.COMPLETE else None,
        intermediate_values={int(k): v for k, v in (row.get("intermediate") or {}).items()})


def trial_grid(grid: dict) -> list[dict]:
    return [dict(zip(SWEPT, combo)) for combo in itertools.product(*(grid[k] for k in SWEPT))]


def check_grid(base: TuneConfig | dict, grid: dict, pruner: dict | None = None) -> tuple[dict, dict, dict]:
    """(base without the swept fields, grid without duplicates, pruner); every problem at once (ConfigError)."""
    base = base.to_dict() if isinstance(base, TuneConfig) else dict(base)
    clean = {k: list(dict.fromkeys(grid.get(k) or [])) for k in SWEPT}
    errors = {k: ["has no values: give at least one."] for k in SWEPT if not clean[k]}
    errors.update({k: [f"cannot be swept: a sweep varies {' and '.join(SWEPT)}."] for k in set(grid) - set(SWEPT)})
    combos, configs = trial_grid(clean), []
    if len(combos) > MAX_TRIALS:
        errors["grid"] = [f"{len(combos)} combinations is too many: use at most {MAX_TRIALS}."]
    singles = [{k: v} for k in SWEPT for v in clean[k]]  # each value on its own, then every trial's config
    for params in (singles or [{}]) + combos:
        try:
            configs.append(TuneConfig.from_dict({**base, **params}))
        except ConfigError as e:
            for k, msg in e.errors.items():
                if msg not in errors.setdefault(k, []):
                    errors[k].append(msg)
    pruner = {**DEFAULT_PRUNER, **(pruner or {})}
    try:
        optuna.pruners.MedianPruner(**pruner)
    except (TypeError, ValueError) as e:
        errors["pruner"] = [f"{pruner!r} is not valid: {e}"]
    if errors:
        raise ConfigError({k: " ".join(v) for k, v in errors.items()})
    return {k: v for k, v in configs[-1].to_dict().items() if k not in SWEPT}, clean, pruner


def new_sweep(base_cfg: TuneConfig | dict, grid: dict, sweep_id: str | None = None, pruner: dict | None = None,
              seed: int = 0) -> Sweep:
    """Validate and create the sweep folder (state `queued`); `Sweep.run()` or `launch()` trains it."""
    base, grid, pruner = check_grid(base_cfg, grid, pruner)
    root = check_run_id(sweep_id or f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{base['task']}")
    if len(root) > 90:  # trial run ids add "-t<n>"
        raise WorkbenchError(f"Sweep id {root!r} is too long: use at most 90 characters.")
    sid = next(i for i in (root, *(f"{root}-{n}" for n in range(2, 10_000))) if not sweep_path(i).exists())
    sweep = Sweep(sid, sweep_path(sid))
    sweep.path.mkdir(parents=True)
    write_json_atomic(sweep.path / "sweep.json", {"base": base, "grid": grid, "metric": METRIC, "seed": seed,
                                                  "direction": "minimize", "pruner": pruner})
    sweep.set_status(state="queued", trials=0, total=len(trial_grid(grid)), created=time.time())
    return sweep


def best_trial(rows: list[dict]) -> dict | None:
    done = [r for r in rows if r.get("state") == "completed" and r.get("eval_loss") is not None]
    return min(done, key=lambda r: r["eval_loss"]) if done else None


def list_sweeps() -> list[dict]:
    out = []
    for sw in (Sweep(p.name, p) for p in sorted(sweep_path().iterdir(), reverse=True) if (p / "sweep.json").exists()):
        spec, status, best = sw.spec(), sw.status(), best_trial(sw.trials())
        out.append({"id": sw.id, "task": spec["base"].get("task"), "method": spec["base"].get("method"),
                    "tokens": spec["grid"]["num_virtual_tokens"], "learning_rates": spec["grid"]["learning_rate"],
                    "state": status.get("state"), "trials": status.get("trials", 0), "total": status.get("total"),
                    "best_eval_loss": best and best["eval_loss"], "best_params": best and best["params"],
                    "created": status.get("created")})
    return out


def launch(sweep: Sweep) -> int:
    """Run the sweep in its own process (`python -m workbench sweep --sweep ID`); returns its pid."""
    status = sweep.status()
    if status.get("state") in ACTIVE and status.get("pid"):
        raise WorkbenchError(f"Sweep {sweep.id!r} is already {status['state']}.")
    sweep.set_status(state="queued", error=None)
    return sweep.set_status(pid=spawn(["sweep", "--sweep", sweep.id], sweep.path / "log.txt"))["pid"]


def cancel(sweep_id: str) -> str:
    """SIGTERM the sweep process: the current trial saves and stops, the sweep ends cancelled."""
    sweep = Sweep.open(sweep_id)
    status = sweep.status()
    if status.get("state") not in ACTIVE:
        raise WorkbenchError(f"Sweep {sweep_id!r} is not running (state: {status.get('state')}).")
    if status.get("pid"):
        os.kill(int(status["pid"]), signal.SIGTERM)
    queued = status["state"] == "queued"  # not started yet: it stops before its first trial (or dies at once)
    sweep.set_status(**({"state": "cancelled"} if queued else {"cancel_requested": time.time()}))
    return "cancelled" if queued else "stopping"
