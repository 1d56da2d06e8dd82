"""A sweep's grid and its checks, the order in which workers claim its points, the pruning callback
that reports each evaluation to the point's Optuna trial, and the best finished trial."""
from __future__ import annotations

import itertools
import random

import optuna
from transformers import TrainerCallback

from core.config import ConfigError, TuneConfig
from core.store.runs import Run
from core.train.sweepstudy import SWEPT

METRIC = "eval_loss"
MAX_TRIALS = 100
ROW_KEYS = ("eval_loss", "step", "pruned_step", "run_id", "error")
DEFAULT_PRUNER = {"n_startup_trials": 2, "n_warmup_steps": 1, "interval_steps": 1}  # never prune at step 0


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


def trial_grid(grid: dict) -> list[dict]:
    return [dict(zip(SWEPT, combo)) for combo in itertools.product(*(grid[k] for k in SWEPT))]


def grid_order(grid: dict, seed: int) -> list[dict]:
    """The order in which workers claim the grid points: a seeded shuffle, so the first trials spread over the grid."""
    points = trial_grid(grid)
    random.Random(seed).shuffle(points)
    return points


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


def best_trial(rows: list[dict]) -> dict | None:
    done = [r for r in rows if r.get("state") == "completed" and r.get("eval_loss") is not None]
    return min(done, key=lambda r: r["eval_loss"]) if done else None


def _row(number, params: dict, state: str, **rest) -> dict:
    return {"trial": number, **{k: params[k] for k in SWEPT}, "state": state, **dict.fromkeys(ROW_KEYS), **rest}
