"""Sweeps with several workers: claims in the shared Optuna study (a point claimed twice in a race goes to the
lower trial number, before anything trains), the study kept in SQLite in the sweep folder, another database
shared by two "machines" (two workspaces), and two worker processes on one SQLite study."""
import os
import subprocess
import sys
import time

import optuna
import pytest

from core.errors import WorkbenchError
from core.store.runs import list_runs
from core.train import sweep as sweeps
from core.train import sweepstudy as studies
from tests.conftest import REPO, tiny_config

GRID = {"num_virtual_tokens": [2, 4], "learning_rate": [0.5, 0.05]}
POINTS = sorted((n, lr) for n in GRID["num_virtual_tokens"] for lr in GRID["learning_rate"])


def _points(rows):
    return sorted((r["params"]["num_virtual_tokens"], r["params"]["learning_rate"]) for r in rows)


def test_a_point_claimed_twice_in_a_race_goes_to_the_first_claim(tmp_path):
    study = studies.open_study(f"sqlite:///{tmp_path / 'o.db'}", "race", sweeps.DEFAULT_PRUNER)
    order = sweeps.grid_order(GRID, seed=0)
    first = studies.claim(study, order, GRID)
    late = studies.claim(study, order, GRID, seen=set())  # read the study before `first` was added
    assert first.params == order[0] and late.params == order[1]
    assert [(t.number, t.state.name, t.user_attrs.get("released")) for t in study.trials] == \
        [(0, "RUNNING", None), (1, "FAIL", "duplicate"), (2, "RUNNING", None)]
    # a claim whose worker died on this host is released, and its point claimed again
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study.add_trial(optuna.trial.create_trial(
        state=studies.TrialState.RUNNING, params=order[2], distributions=studies.grid_distributions(GRID),
        user_attrs={"worker": {"host": studies.worker_id()["host"], "pid": dead.pid}}))
    assert studies.claim(study, order, GRID).params == order[3]  # held by the dead worker's claim
    assert studies.release_abandoned(study, lambda pid: pid != dead.pid) == 1
    assert studies.claim(study, order, GRID).params == order[2] and studies.claim(study, order, GRID) is None


def test_bad_storage_urls_are_named(home):
    with pytest.raises(WorkbenchError, match="is not an SQLAlchemy database URL"):
        sweeps.new_sweep({"task": "toy"}, GRID, storage="not a url")
    with pytest.raises(WorkbenchError, match="is not in the storage"):
        sweeps.join("nowhere", f"sqlite:///{home.parent / 'empty.db'}")


def test_two_machines_share_one_study_and_merge_results(home, tmp_path, monkeypatch, tiny_model_dir, toy_data):
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # stands for postgresql://... reachable from both machines
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=2, eval_every=2, save_every=2)
    first = sweeps.new_sweep(cfg, GRID, "shared", storage=url)
    assert first.storage() == url and not (first.path / studies.DB_FILE).exists()
    stop = {"requested": False}
    assert first.work(stop, on_trial=lambda row: stop.__setitem__("requested", True)) == 1  # one trial, then stops

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "machine-2"))  # the same command on another machine
    with pytest.raises(WorkbenchError, match="already exists in .*join it with --sweep shared"):
        sweeps.new_sweep(cfg, GRID, "shared", storage=url)  # a second sweep of that name in the database
    second = sweeps.join("shared", url)
    assert second.spec()["grid"] == first.spec()["grid"] and second.spec()["base"] == first.spec()["base"]
    st = second.run()
    assert st["state"] == "completed" and st["trials"] == 4
    assert len(second._local_trials()) == 3 and len(list_runs()) == 3  # this machine trained the other three
    assert _points(second.trials()) == POINTS and sorted(r["number"] for r in second.trials()) == [0, 1, 2, 3]
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    assert _points(first.trials()) == POINTS  # machine 1 sees machine 2's results through the study
    listed = sweeps.list_sweeps()[0]
    assert listed["trials"] == 4 and listed["best_eval_loss"] == st["best"]["eval_loss"]


def test_the_study_survives_in_the_sweep_folder(home, tiny_model_dir, toy_data):
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=2, eval_every=2, save_every=2)
    sweep = sweeps.new_sweep(cfg, {"num_virtual_tokens": [2], "learning_rate": [0.5, 0.05]}, "kept")
    stop = {"requested": False}
    sweep.work(stop, on_trial=lambda row: stop.__setitem__("requested", True))
    assert (sweep.path / studies.DB_FILE).exists()
    reopened = sweeps.Sweep.open("kept").study()  # as after an app restart: a new process, a new object
    assert [t.state.name for t in reopened.trials] == ["COMPLETE"] and reopened.trials[0].user_attrs["row"]["run_id"]
    assert sweeps.Sweep.open("kept").run()["trials"] == 2


@pytest.mark.integration
def test_two_worker_processes_share_one_sqlite_study(home, tiny_model_dir, toy_data):
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=8, eval_every=8, save_every=8)
    sweep = sweeps.new_sweep(cfg, GRID, "pair")
    sweep.study()
    env = {**os.environ, "WORKBENCH_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.time()
    workers = [subprocess.Popen([sys.executable, "-m", "workbench", "sweep", "--sweep", "pair", "--worker"], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=240)[0] for w in workers]
    print(f"two sweep workers: {time.time() - t0:.1f} s")
    assert [w.returncode for w in workers] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    rows = sweep.trials()
    assert _points(rows) == POINTS  # every point once: no trial ran twice
    assert sorted(r["run_id"] for r in rows) == sorted(r["id"] for r in list_runs())  # one run per point, no others
    assert {r["worker"] for r in rows} == {w.pid for w in workers}  # both trained, and their results merged
    kept = [t for t in sweep.study().trials if not t.user_attrs.get("released")]
    assert len(kept) == 4 and {t.state.name for t in kept} <= {"COMPLETE", "PRUNED"}
    st = sweeps.Sweep.open("pair").run()  # nothing left: completes at once with the merged best
    assert st["state"] == "completed" and st["trials"] == 4 and st["best"]["eval_loss"] is not None
