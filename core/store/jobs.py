"""Start, queue and cancel runs as separate processes (the CLI entry point).

A run started from the app trains in its own process (`python -m workbench tune --run-dir`),
so closing the browser or restarting the app does not stop it. In queue mode (a workspace
setting) runs wait as `queued` and one worker process trains them one at a time.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

from core.config import TuneConfig
from core.errors import WorkbenchError
from core.store.paths import REPO_ROOT, read_json, workspace, write_json_atomic
from core.store.runs import ACTIVE, Run, RunState, list_runs, new_run

SETTINGS_DEFAULTS = {"queue": False}


def settings() -> dict:
    return {**SETTINGS_DEFAULTS, **(read_json(workspace() / "settings.json", default={}) or {})}


def save_settings(**changes) -> dict:
    new = {**settings(), **changes}
    write_json_atomic(workspace() / "settings.json", new)
    return new


def spawn(args: list[str], log_path) -> int:
    """Start `python -m workbench <args>` in its own session (it outlives the app); output to log_path."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WORKBENCH_HOME": str(workspace()),
           "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workbench", *args], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own session: survives the app
    return proc.pid


def launch(run: Run, resume: bool = False) -> int:
    """Start training the run in a new process now; returns its pid."""
    state = run.status().get("state")
    if state in (RunState.RUNNING, RunState.STARTING):
        raise WorkbenchError(f"Run {run.id!r} is already {state}.")
    if resume and state not in (RunState.CANCELLED, RunState.FAILED, RunState.INTERRUPTED, RunState.QUEUED):
        raise WorkbenchError(f"Run {run.id!r} is {state}: only cancelled, failed or interrupted runs resume.")
    args = ["resume", "--run", run.id] if resume else ["tune", "--run-dir", str(run.path)]
    pid = spawn(args, run.path / "log.txt")
    run.set_status(state=RunState.STARTING, pid=pid, error=None)
    return pid


def submit(cfg: TuneConfig, queue: bool | None = None) -> Run:
    """Create a run and start it, or queue it behind the running one in queue mode."""
    run = new_run(cfg)
    queue = settings()["queue"] if queue is None else queue
    if queue:
        run.set_status(state=RunState.QUEUED, queued_at=time.time())
        ensure_worker()
    else:
        launch(run)
    return run


def resume(run_id: str, queue: bool | None = None) -> Run:
    run = Run.open(run_id)
    if (settings()["queue"] if queue is None else queue):
        run.set_status(state=RunState.QUEUED, queued_at=time.time(), resume=True, error=None)
        ensure_worker()
    else:
        launch(run, resume=bool(run.checkpoints()))
    return run


def cancel(run_id: str) -> str:
    """Ask a running run to save and stop (SIGTERM); a queued run is cancelled at once."""
    run = Run.open(run_id)
    status = run.status()
    if status.get("state") == RunState.QUEUED:
        run.set_status(state=RunState.CANCELLED)
        return RunState.CANCELLED.value
    if status.get("state") not in (RunState.RUNNING, RunState.STARTING) or not status.get("pid"):
        raise WorkbenchError(f"Run {run_id!r} is not running (state: {status.get('state')}).")
    os.kill(int(status["pid"]), signal.SIGTERM)
    run.set_status(cancel_requested=time.time())
    return "stopping"


def active_runs() -> list[dict]:
    return [r for r in list_runs() if r["state"] in ACTIVE]


def ensure_worker() -> None:
    """Start the queue worker unless one is already running (it holds the queue lock)."""
    with open(workspace() / "queue.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a worker is running and will pick the run up
        fcntl.flock(f, fcntl.LOCK_UN)
    spawn(["worker"], workspace() / "worker.log")


def worker_loop(poll: float = 1.0) -> int:
    """Train queued runs one at a time, oldest first; exit when the queue is empty."""
    with open(workspace() / "queue.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0
        done = 0
        while True:
            while any(r["state"] in (RunState.RUNNING, RunState.STARTING) for r in list_runs()):
                time.sleep(poll)  # a run started directly is training: one at a time
            queued = sorted((Run.open(r["id"]) for r in list_runs() if r["state"] == RunState.QUEUED),
                            key=lambda r: r.status().get("queued_at") or 0)
            if not queued:
                return done
            run = queued[0]
            pid = launch(run, resume=bool(run.status().get("resume") and run.checkpoints()))
            while _running(pid):
                time.sleep(poll)
            done += 1


def _running(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return False
