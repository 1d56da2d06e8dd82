"""`python -m workbench sweep`: prompt lengths x learning rates, one run per pair, with one or several workers.

    sweep --task T --tokens 5 20 --lrs 0.3 0.03 [--workers N] [--storage URL]   a new sweep
    sweep --sweep ID [--workers N]                                                 go on with a sweep here
    sweep --sweep ID --storage URL [--workers N]                                   join it from another machine
The study lives in the sweep's storage (SQLite in the sweep folder unless --storage names another
database); every worker, on this machine or another, claims grid points from it (core/train/sweepstudy.py).
"""
from __future__ import annotations

import dataclasses
import sys

from core.config import ConfigError, TuneConfig, with_task_defaults
from core.errors import WorkbenchError
from core.store.runs import FINISHED


def add_parser(sub, add_config_flags) -> None:
    sw = sub.add_parser("sweep", help="try prompt lengths x learning rates, one run per pair (Optuna, median "
                                      "pruning), with one or several workers")
    sw.add_argument("--sweep", help="run an existing sweep folder (as the app does; goes on after a cancel), or "
                                    "with --storage join a sweep kept in that database")
    sw.add_argument("--sweep-id", help="name for the new sweep (default: date-sweep-task)")
    sw.add_argument("--tokens", type=int, nargs="+", help="prompt lengths to try, e.g. 5 20 50 100")
    sw.add_argument("--lrs", type=float, nargs="+", help="learning rates to try, e.g. 0.3 0.03 0.003")
    sw.add_argument("--startup-trials", type=int, default=2, help="completed trials before pruning starts (default: 2)")
    sw.add_argument("--workers", type=int, default=1, help="processes training trials at once on this machine "
                                                           "(default: 1)")
    sw.add_argument("--storage", help="SQLAlchemy URL of the Optuna study, shared by workers on several machines, "
                                      "e.g. postgresql://user@host/db (default: SQLite in the sweep folder)")
    sw.add_argument("--worker", action="store_true", help="only train trials of --sweep (started by a sweep with "
                                                          "--workers N)")
    add_config_flags(sw)


def _show(t: dict) -> None:
    loss = f"best eval_loss {t['eval_loss']:.4f}" if t["eval_loss"] is not None else t.get("error") or ""
    print(f"trial {t['number']}: {t['params']['num_virtual_tokens']} tokens, lr {t['params']['learning_rate']:g} "
          f"-> {t['state']} at step {t['step']}, {loss} (run {t['run_id']})", flush=True)


def cmd_sweep(a) -> int:
    from core.train.sweep import Sweep, join, new_sweep

    if a.sweep and a.storage:
        sweep = join(a.sweep, a.storage)
    elif a.sweep:
        sweep = Sweep.open(a.sweep)
    elif not (a.tokens and a.lrs):
        raise WorkbenchError("a new sweep needs --tokens and --lrs (or --sweep ID to run an existing one).")
    else:
        values = {f.name: getattr(a, f.name) for f in dataclasses.fields(TuneConfig) if hasattr(a, f.name)}
        try:
            sweep = new_sweep(with_task_defaults(values), {"num_virtual_tokens": a.tokens, "learning_rate": a.lrs},
                              a.sweep_id, pruner={"n_startup_trials": a.startup_trials}, storage=a.storage)
        except ConfigError as e:  # name the flags the user typed
            flags = {"num_virtual_tokens": "tokens", "learning_rate": "lrs", "pruner": "startup_trials"}
            raise ConfigError({flags.get(k, k): v for k, v in e.errors.items()}) from None
        print(f"sweep {sweep.id} created in {sweep.path}: {sweep.status()['total']} trials; study {sweep.id!r} in "
              f"{sweep.storage()}")
    if a.worker:
        print(f"worker: trained {sweep.work(on_trial=_show)} trial(s) of sweep {sweep.id}")
        return 0
    st = sweep.run(on_trial=_show, workers=a.workers)
    best = st.get("best")
    print(f"sweep {sweep.id}: {st['state']}, {st.get('trials')}/{st.get('total')} trials" +
          (f"; best: {best['params']} eval_loss {best['eval_loss']:.4f}" if best else ""))
    if st.get("error"):
        print(f"error: {st['error']}", file=sys.stderr)
    return 0 if st["state"] in FINISHED else 1
