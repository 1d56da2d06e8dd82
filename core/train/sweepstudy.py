"""A sweep's Optuna study in a database, shared by every worker that trains it.

The storage is a setting of the sweep: by default SQLite in the sweep folder (`optuna.db`), so the
study outlives the process and the app; otherwise any SQLAlchemy URL (PostgreSQL, MySQL), through
which workers on several machines join one study by its name (the sweep id).

Workers claim grid points, one trial each. A claim is a RUNNING trial with the point's parameters,
added in one write (Optuna numbers trials in the database, one writer at a time). Two workers that
read the study at the same moment may claim the same point; each then reads the study again and
the claim with the lower trial number keeps the point, the other is released (`released:
duplicate`, state FAIL) before anything trains, and its worker claims the next point. A claim holds
its point until it is released: as a duplicate, when its run is cancelled (the point is trained
again later), or when its worker died (`abandoned`, found from its host and pid). A finished
trial keeps its sweep row (run id, losses, state) as the user attribute `row`, so the results of
every worker, on every machine, merge in the study.
"""
from __future__ import annotations

import os
import socket
import uuid

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from core.errors import WorkbenchError

optuna.logging.set_verbosity(optuna.logging.WARNING)
SWEPT = ("num_virtual_tokens", "learning_rate")
DB_FILE = "optuna.db"


def default_storage(folder) -> str:
    """SQLite in the sweep folder."""
    return f"sqlite:///{os.path.abspath(os.path.join(folder, DB_FILE))}"


def is_local(url: str, folder) -> bool:
    return url == default_storage(folder)


def _storage(url: str):
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=None)
    except (ArgumentError, ValueError) as e:
        raise WorkbenchError(f"Sweep storage {url!r} is not an SQLAlchemy database URL ({e}): leave it empty for "
                             "SQLite in the sweep folder, or give e.g. postgresql://user@host/db.") from e
    except (SQLAlchemyError, ImportError, optuna.exceptions.StorageInternalError) as e:
        raise WorkbenchError(f"Sweep storage {url!r} cannot be opened: {str(e).splitlines()[0]}. Check that the "
                             "database server is reachable and its driver installed (PostgreSQL: psycopg2).") from e


def open_study(url: str, name: str, pruner: dict, create: bool = True) -> optuna.Study:
    """The sweep's study in `url` (created when `create`, else it must exist)."""
    storage = _storage(url)
    median = optuna.pruners.MedianPruner(**pruner)
    if create:
        return optuna.create_study(study_name=name, storage=storage, direction="minimize", pruner=median,
                                   load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=median)
    except KeyError:
        raise WorkbenchError(f"Sweep {name!r} is not in the storage {url!r}: check the sweep id and the URL (the "
                             "machine that created the sweep prints both).") from None


def grid_distributions(grid: dict) -> dict:
    return {k: CategoricalDistribution(grid[k]) for k in SWEPT}


def _key(params: dict) -> tuple:
    return tuple(params[k] for k in SWEPT)


def holders(study: optuna.Study) -> dict[tuple, optuna.trial.FrozenTrial]:
    """Per grid point, the trial that holds it: the lowest-numbered claim not released."""
    out: dict[tuple, optuna.trial.FrozenTrial] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if set(SWEPT) <= set(t.params) and not t.user_attrs.get("released"):
            out.setdefault(_key(t.params), t)
    return out


def release(study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str) -> None:
    """Give up a claim (its point is free again); the trial ends FAIL with `released: why`."""
    optuna.Trial(study, trial._trial_id).set_user_attr("released", why)
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)


def worker_id() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def release_abandoned(study: optuna.Study, alive) -> int:
    """Release the claims of workers on this host that died mid-trial (killed, not cancelled); returns how many."""
    me, n = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker") or {}
        if worker.get("host") == me and worker.get("pid") != os.getpid() and not alive(worker.get("pid")):
            release(study, t, "abandoned")
            n += 1
    return n


def claim(study: optuna.Study, order: list[dict], grid: dict, seen=None) -> optuna.Trial | None:
    """A RUNNING trial holding the first grid point of `order` no claim holds, or None when none is left.
    `seen` (tests only) stands in for the first reading of the study, as a worker racing another saw it."""
    dists = grid_distributions(grid)
    while True:
        taken = set(holders(study)) if seen is None else seen
        seen = None
        free = [p for p in order if _key(p) not in taken]
        if not free:
            return None
        token = uuid.uuid4().hex
        study.add_trial(optuna.trial.create_trial(state=TrialState.RUNNING, params=free[0], distributions=dists,
                                                  user_attrs={"claim": token, "worker": worker_id()}))
        held = holders(study)[_key(free[0])]
        if held.user_attrs.get("claim") == token:
            return optuna.Trial(study, held._trial_id)
        mine = next(t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("claim") == token)
        release(study, mine, "duplicate")  # another worker claimed the point first: take the next


def finish(study: optuna.Study, trial: optuna.Trial, row: dict) -> None:
    """Record a trained trial: its sweep row, then its Optuna state (pruned, failed or completed with its loss)."""
    trial.set_user_attr("row", row)
    if row["state"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    elif row["state"] == "completed":
        study.tell(trial, row["eval_loss"])
    else:
        study.tell(trial, state=TrialState.FAIL)


def study_rows(study: optuna.Study) -> list[dict]:
    """The sweep rows of every finished trial, from every worker, by trial number."""
    return [t.user_attrs["row"] for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
            if "row" in t.user_attrs and not t.user_attrs.get("released")]


def import_rows(study: optuna.Study, rows: list[dict], grid: dict) -> None:
    """Rows of a sweep trained before its study was kept in a database, added as finished trials."""
    states = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}
    for row in rows:
        state = states.get(row["state"], TrialState.FAIL)
        study.add_trial(optuna.trial.create_trial(
            params=row["params"], distributions=grid_distributions(grid), state=state,
            value=row["eval_loss"] if state == TrialState.COMPLETE else None, user_attrs={"row": row},
            intermediate_values={int(k): v for k, v in (row.get("intermediate") or {}).items()}))
