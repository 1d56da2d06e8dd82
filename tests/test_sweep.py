"""Sweeps on the tiny llama: grid trials as runs, replay after a cancel, validation, pruning, SIGTERM."""
import os
import signal
import time

import pytest

from core.train import sweep as sweeps
from workbench.charts import sweep_figure
from core.config import ConfigError, TuneConfig
from core.store.runs import Run, list_runs
from tests.conftest import tiny_config
from workbench.cli import main

GRID = {"num_virtual_tokens": [2, 4], "learning_rate": [0.5, 0.05]}


def test_grid_trials_are_runs_and_a_cancelled_sweep_goes_on(home, tiny_model_dir, toy_data):
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=2, eval_every=2, save_every=2)
    sweep = sweeps.new_sweep(cfg, GRID, "grid")
    assert sweep.status()["state"] == "queued" and [r["state"] for r in sweep.results()] == ["pending"] * 4
    printed = []

    def on_trial(row):  # SIGTERM between trials: the sweep's own handler (put back by train) stops it
        printed.append(row)
        if len(printed) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    assert sweep.run(on_trial=on_trial)["state"] == "cancelled"
    assert len(sweep.trials()) == 2 and sweeps.list_sweeps()[0]["state"] == "cancelled"
    st = sweep.run(on_trial=printed.append)  # goes on with the two trials left
    assert st["state"] == "completed" and st["trials"] == 4 and st["best"]["state"] == "completed"
    trials = sweep.trials()
    assert [t["number"] for t in trials] == [0, 1, 2, 3] and len(printed) == 4
    assert sorted(tuple(t["params"].values()) for t in trials) == sorted((n, lr) for n in [2, 4] for lr in [0.5, 0.05])
    for t in trials:
        run = Run.open(t["run_id"])
        assert t["run_id"] == f"grid-t{t['number']}" and t["state"] in ("completed", "pruned")
        cfg_t = run.config()
        assert (cfg_t.num_virtual_tokens, cfg_t.learning_rate) == tuple(t["params"].values())
        assert cfg_t.max_steps == 2 and run.status()["state"] == "completed"
        assert t["eval_loss"] == min(m["eval_loss"] for m in run.metrics() if m["kind"] == "eval")
    rows = sweep.results()
    assert len(rows) == 4 and {r["state"] for r in rows} <= {"completed", "pruned"}
    fig = sweep_figure(rows)
    lines = [d for d in fig.data if d.name.startswith("lr ")]
    assert sorted(d.name for d in lines) == ["lr 0.05", "lr 0.5"]
    assert all(list(d.x) == [2, 4] and None not in d.y for d in lines)
    assert fig.layout.xaxis.title.text.startswith("prompt length")
    summary = sweeps.list_sweeps()[0]
    assert summary["id"] == "grid" and summary["trials"] == 4 and summary["best_eval_loss"] == st["best"]["eval_loss"]


def test_grid_validation_reports_every_bad_value_at_once(home):
    with pytest.raises(ConfigError) as e:
        sweeps.new_sweep(TuneConfig(task="toy"), {"num_virtual_tokens": [0, 4, 1000, "abc"],
                                                  "learning_rate": [-1, 0.1, 99], "batch_size": [2]})
    errors = e.value.errors
    tokens = errors["num_virtual_tokens"]
    assert "0 is out of range" in tokens and "1000 is out of range" in tokens and "'abc' is not a whole" in tokens
    assert "-1 is out of range" in errors["learning_rate"] and "99 is out of range" in errors["learning_rate"]
    assert "cannot be swept" in errors["batch_size"]
    with pytest.raises(ConfigError) as e:
        sweeps.new_sweep({"task": "toy", "max_steps": 0}, {"num_virtual_tokens": [], "learning_rate": [0.1]},
                         pruner={"n_startup_trials": -1})
    assert set(e.value.errors) == {"num_virtual_tokens", "max_steps", "pruner"}
    assert "no values" in e.value.errors["num_virtual_tokens"]
    assert sweeps.list_sweeps() == [] and list_runs() == []  # nothing was created


def test_median_pruner_stops_a_trial_worse_than_the_finished_one(home, tiny_model_dir, toy_data):
    grid = {"num_virtual_tokens": [4], "learning_rate": [0.5, 1e-6]}
    # workers claim the points in a seeded order: put the good learning rate first
    if sweeps.grid_order(grid, seed=0)[0]["learning_rate"] != 0.5:
        grid["learning_rate"].reverse()
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=4, eval_every=2, save_every=2)
    sweep = sweeps.new_sweep(cfg, grid, pruner={"n_startup_trials": 1, "n_warmup_steps": 1})
    assert sweep.run()["state"] == "completed"
    good, bad = sweep.trials()
    assert good["params"]["learning_rate"] == 0.5 and good["state"] == "completed" and good["step"] == 4
    assert bad["state"] == "pruned" and bad["pruned_step"] == 2 and bad["step"] == 2
    assert list(bad["intermediate"]) == ["0", "2"]  # reported at each evaluation until pruned
    run = Run.open(bad["run_id"]).status()
    assert run["state"] == "completed" and run["pruned"] is True and run["pruned_step"] == 2
    fig = sweep_figure(sweep.results())
    assert "x" in [s for d in fig.data for s in (d.marker.symbol or [])] and fig.data[-1].name == "pruned"


def test_cli_creates_and_runs_a_sweep_with_a_line_per_trial(home, capsys, tiny_model_dir, toy_data):
    assert main(["sweep", "--tokens", "0", "--lrs", "0.1", "-1"]) == 2
    err = capsys.readouterr().err
    assert "--tokens: 0 is out of range" in err and "--lrs: -1.0 is out of range" in err
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=2, eval_every=2, save_every=2)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.to_dict().items() if v is not None and v != []]
    assert main(["sweep", "--sweep-id", "cli", "--tokens", "2", "--lrs", "0.05", *flags]) == 0
    out = capsys.readouterr().out
    assert "sweep cli created" in out and "trial 0: 2 tokens, lr 0.05 -> completed at step 2" in out
    assert "sweep cli: completed, 1/1 trials" in out
    assert main(["sweep", "--sweep", "cli"]) == 0  # nothing left to train
    assert len(sweeps.Sweep.open("cli").trials()) == 1


def test_sigterm_cancels_a_launched_sweep(home, tiny_model_dir, toy_data):
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=400, eval_every=400, save_every=400)
    sweep = sweeps.new_sweep(cfg, {"num_virtual_tokens": [2], "learning_rate": [0.05, 0.1]}, "cancel-me")
    pid = sweeps.launch(sweep)
    deadline = time.time() + 90
    while time.time() < deadline and not _trial_step(sweep) >= 2:
        time.sleep(0.2)
    assert sweep.status()["state"] == "running", (sweep.path / "log.txt").read_text()[-2000:]
    with pytest.raises(Exception, match="already running"):
        sweeps.launch(sweep)
    assert sweeps.cancel(sweep.id) == "stopping"
    while time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.2)
    st = sweep.status()
    assert st["state"] == "cancelled", (sweep.path / "log.txt").read_text()[-2000:]
    run = Run.open(st["current"]["run_id"])
    assert run.status()["state"] == "cancelled" and run.last_checkpoint() is not None
    assert sweep.trials() == [] and [r["state"] for r in sweep.results()] == ["cancelled", "pending"]


def _trial_step(sweep) -> int:
    cur = sweep.status().get("current")
    return (Run.open(cur["run_id"]).status().get("step") or 0) if cur else 0
