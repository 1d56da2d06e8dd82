"""A sweep: prompt length x learning rate over one base config, every grid point a trial, with
Optuna (a seeded order of the grid, MedianPruner on the validation loss). It is a folder
<workspace>/sweeps/<sweep_id>/:
    sweep.json     base config (without the swept fields), grid, metric, pruner settings, seed, storage
    status.json    state (queued/running/completed/cancelled/failed/interrupted), trials, total, pid, current
    trials.jsonl   one row per trial finished by a worker on this machine: number, params, run_id,
                   eval_loss (best), state (completed/pruned/failed), step, pruned_step, intermediate losses
    optuna.db      the Optuna study (SQLite) unless the sweep's storage is another database
    log.txt        output of the sweep process when the app started it (worker-<n>.txt: its other workers)

Each trial is a normal run `<sweep_id>-t<n>`. Workers (`--workers N` on one machine, or the same
sweep id and storage URL on several) claim grid points in the study (core/train/sweepstudy.py), so
no point trains twice, and their results merge there. A pruned trial's run ends `completed` (its
adapter is saved and usable) with `pruned: true` and `pruned_step` in its status; the sweep's row
says `pruned`. SIGTERM: the current trials save and stop, the sweep ends `cancelled`; running it
again trains the grid points not finished.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

from core.config import TuneConfig
from core.store.jobs import spawn
from core.errors import WorkbenchError
from core.store.paths import (IdFolder, append_jsonl, check_run_id, child_path, read_json, read_jsonl, workspace,
                              write_json_atomic)
from core.store.runs import Run, _alive, new_run
from core.train import sweepstudy as studies
from core.train.sweepgrid import (DEFAULT_PRUNER, METRIC, ROW_KEYS, PruneCallback, _row, best_trial,  # noqa: F401
                                  check_grid, grid_order, trial_grid)
from core.train.training import train

ACTIVE = ("queued", "running")
MAX_WORKERS = 64


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

    def storage(self) -> str:
        return self.spec().get("storage") or studies.default_storage(self.path)

    def study(self) -> optuna.Study:
        """The sweep's study (created on first use; a sweep from before studies were stored gets its rows)."""
        spec = self.spec()
        fresh = not (self.path / studies.DB_FILE).exists() and studies.is_local(self.storage(), self.path)
        study = studies.open_study(self.storage(), self.id, spec["pruner"])
        if fresh and not study.trials and self._local_trials():
            studies.import_rows(study, self._local_trials(), spec["grid"])
        return study

    def _local_trials(self) -> list[dict]:
        return read_jsonl(self.path / "trials.jsonl")

    def trials(self) -> list[dict]:
        """Finished trials by number: from trials.jsonl, and with a shared storage also the other machines'."""
        rows = {r["number"]: r for r in self._local_trials()}
        if not studies.is_local(self.storage(), self.path):
            rows.update({r["number"]: r for r in studies.study_rows(studies.open_study(
                self.storage(), self.id, self.spec()["pruner"], create=False))})
        return [rows[n] for n in sorted(rows)]

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

    def run(self, on_trial: Callable[[dict], None] | None = None, workers: int = 1) -> dict:
        """Train the grid points not finished yet with `workers` processes (this one and workers - 1 started
        here, each claiming points from the study); returns the final status."""
        status = self.status()
        if status.get("state") == "cancelled" and status.get("pid") == os.getpid():
            return status  # cancelled while this process was starting
        if status.get("state") == "running" and status.get("pid") != os.getpid():
            raise WorkbenchError(f"Sweep {self.id!r} is already running (pid {status.get('pid')}).")
        if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise WorkbenchError(f"workers {workers!r} is out of range: use 1 to {MAX_WORKERS} (one trial each at a time).")
        stop, children = {"requested": False}, []

        def on_sigterm(*_):  # the other workers save and stop too
            stop["requested"] = True
            for pid in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            total = len(trial_grid(self.spec()["grid"]))
            self.set_status(state="running", pid=os.getpid(), error=None, started=time.time(), trials=len(self.trials()),
                            total=total, cancel_requested=None, workers=workers)
            self.study()  # created once, before the workers open it
            children += [spawn(["sweep", "--sweep", self.id, "--worker"], self.path / f"worker-{n}.txt")
                         for n in range(1, workers)]
            self.set_status(worker_pids=children)
            self.work(stop, on_trial, main=True)
            if stop["requested"]:  # this worker's trial was cancelled: so are the others'
                on_sigterm()
            while any(_alive(pid) for pid in children):
                time.sleep(0.5)
        except BaseException as e:
            on_sigterm()
            self.set_status(state="failed", error=f"{type(e).__name__}: {e}", pid=None)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        rows = self.trials()
        if stop["requested"]:
            return self.set_status(state="cancelled", pid=None, trials=len(rows))
        if len(rows) < total:  # a worker was cancelled on its own, or died
            return self.set_status(state="failed", pid=None, trials=len(rows), error=f"{total - len(rows)} grid "
                                   "point(s) were not trained: a worker ended early (see worker-<n>.txt in the sweep "
                                   "folder); start the sweep again to train them.")
        if rows and all(r["state"] == "failed" for r in rows):
            return self.set_status(state="failed", pid=None, error=f"Every trial failed; the last: {rows[-1]['error']}")
        return self.set_status(state="completed", pid=None, best=best_trial(rows), trials=len(rows))

    def work(self, stop: dict | None = None, on_trial: Callable[[dict], None] | None = None, main: bool = False) -> int:
        """Claim and train grid points until none is left or `stop` is set; returns how many this worker trained.
        Without `stop` (a worker process) SIGTERM stops it. The main worker keeps the sweep's status."""
        own = stop is None
        stop = {"requested": False} if own else stop
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("requested", True)) if own else None
        spec, done = self.spec(), 0
        study, order = self.study(), grid_order(spec["grid"], spec["seed"])
        studies.release_abandoned(study, _alive)
        try:
            while not stop["requested"]:
                trial = studies.claim(study, order, spec["grid"])
                if trial is None:
                    break
                row = self._trial(trial, dict(trial.params), main)
                if row is None:  # the trial's run was cancelled (SIGTERM): its point is trained again later
                    studies.release(study, study.trials[trial.number], "cancelled")
                    stop["requested"] = True
                    break
                append_jsonl(self.path / "trials.jsonl", row)
                studies.finish(study, trial, row)
                done += 1
                if main:
                    self.set_status(trials=len(self.trials()), current=None)
                if on_trial:
                    on_trial(row)
        finally:
            if own:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        return done

    def _trial(self, trial, params: dict, main: bool = True) -> dict | None:
        run = new_run(TuneConfig.from_dict({**self.spec()["base"], **params}), f"{self.id}-t{trial.number}")
        if main:
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
                "pruned_step": pruning.pruned_step, "intermediate": pruning.losses, "worker": os.getpid(),
                "error": status.get("error") if state == "failed" else None, "duration_s": round(time.time() - t0, 2)}


def new_sweep(base_cfg: TuneConfig | dict, grid: dict, sweep_id: str | None = None, pruner: dict | None = None,
              seed: int = 0, storage: str | None = None) -> Sweep:
    """Validate and create the sweep folder (state `queued`) and its study; `Sweep.run()` or `launch()` trains it.
    storage: an SQLAlchemy URL for the study (default: SQLite in the sweep folder)."""
    base, grid, pruner = check_grid(base_cfg, grid, pruner)
    root = check_run_id(sweep_id or f"{time.strftime('%Y%m%d-%H%M%S')}-sweep-{base['task']}")
    if len(root) > 90:  # trial run ids add "-t<n>"
        raise WorkbenchError(f"Sweep id {root!r} is too long: use at most 90 characters.")
    sid = next(i for i in (root, *(f"{root}-{n}" for n in range(2, 10_000))) if not sweep_path(i).exists())
    spec = {"base": base, "grid": grid, "metric": METRIC, "seed": seed, "direction": "minimize", "pruner": pruner,
            "storage": (storage or "").strip() or None}
    if spec["storage"]:  # a shared database: the study must be new there, and other machines read the spec from it
        study = studies.open_study(spec["storage"], sid, pruner)
        if study.trials or study.user_attrs.get("spec"):
            raise WorkbenchError(f"Sweep {sid!r} already exists in {spec['storage']!r}: join it with --sweep {sid} "
                                 "--storage URL, or choose another --sweep-id.")
        study.set_user_attr("spec", spec)
    return _create(sid, spec)


def join(sweep_id: str, storage: str) -> Sweep:
    """This machine's folder for a sweep kept in a shared database (made from the spec stored there)."""
    check_run_id(sweep_id)
    if sweep_path(sweep_id).exists():
        sweep = Sweep.open(sweep_id)
        if sweep.storage() != storage:
            raise WorkbenchError(f"Sweep {sweep_id!r} here keeps its study in {sweep.storage()!r}, not {storage!r}: "
                                 "give that URL, or another sweep id.")
        return sweep
    spec = studies.open_study(storage, sweep_id, DEFAULT_PRUNER, create=False).user_attrs.get("spec")
    if not spec:
        raise WorkbenchError(f"The study {sweep_id!r} in {storage!r} is not a workbench sweep (it has no spec).")
    return _create(sweep_id, spec)


def _create(sid: str, spec: dict) -> Sweep:
    sweep = Sweep(sid, sweep_path(sid))
    sweep.path.mkdir(parents=True)
    write_json_atomic(sweep.path / "sweep.json", spec)
    sweep.set_status(state="queued", trials=0, total=len(trial_grid(spec["grid"])), created=time.time())
    return sweep


def list_sweeps() -> list[dict]:
    out = []
    for sw in (Sweep(p.name, p) for p in sorted(sweep_path().iterdir(), reverse=True) if (p / "sweep.json").exists()):
        try:
            rows = sw.trials()
        except WorkbenchError:  # its shared database is out of reach: this machine's trials
            rows = sw._local_trials()
        spec, status, best = sw.spec(), sw.status(), best_trial(rows)
        out.append({"id": sw.id, "task": spec["base"].get("task"), "method": spec["base"].get("method"),
                    "tokens": spec["grid"]["num_virtual_tokens"], "learning_rates": spec["grid"]["learning_rate"],
                    "state": status.get("state"), "trials": len(rows), "total": status.get("total"),
                    "best_eval_loss": best and best["eval_loss"], "best_params": best and best["params"],
                    "created": status.get("created")})
    return out


def launch(sweep: Sweep, workers: int = 1) -> int:
    """Run the sweep in its own process (`python -m workbench sweep --sweep ID --workers N`); returns its pid."""
    status = sweep.status()
    if status.get("state") in ACTIVE and status.get("pid"):
        raise WorkbenchError(f"Sweep {sweep.id!r} is already {status['state']}.")
    sweep.set_status(state="queued", error=None)
    args = ["sweep", "--sweep", sweep.id, "--workers", str(workers)]
    return sweep.set_status(pid=spawn(args, sweep.path / "log.txt"))["pid"]


def cancel(sweep_id: str) -> str:
    """SIGTERM the sweep process: the current trial saves and stops, the sweep ends cancelled."""
    sweep = Sweep.open(sweep_id)
    status = sweep.status()
    if status.get("state") not in ACTIVE:
        raise WorkbenchError(f"Sweep {sweep_id!r} is not running (state: {status.get('state')}).")
    for pid in [status.get("pid"), *(status.get("worker_pids") or [])]:
        if pid and _alive(pid):
            os.kill(int(pid), signal.SIGTERM)
    queued = status["state"] == "queued"  # not started yet: it stops before its first trial (or dies at once)
    sweep.set_status(**({"state": "cancelled"} if queued else {"cancel_requested": time.time()}))
    return "cancelled" if queued else "stopping"
