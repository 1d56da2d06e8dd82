"""Runs as processes: two at once, or a queue that trains one at a time."""
import time

from core.store import jobs
from core.store.runs import Run
from tests.conftest import tiny_config


def wait(pred, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_two_runs_at_once_do_not_interfere(home, tiny_model_dir, toy_data):
    a = jobs.submit(tiny_config(tiny_model_dir, toy_data, max_steps=4, seed=1), queue=False)
    b = jobs.submit(tiny_config(tiny_model_dir, toy_data, max_steps=6, seed=2), queue=False)
    assert a.id != b.id
    assert wait(lambda: all(r.status()["state"] == "completed" for r in (a, b))), (a.status(), b.status())
    assert a.status()["step"] == 4 and b.status()["step"] == 6
    assert [m["step"] for m in a.metrics() if m["kind"] == "train"] == [1, 2, 3, 4]
    assert [m["step"] for m in b.metrics() if m["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert a.status()["pid"] is None and (a.path / "log.txt").exists()


def test_queue_mode_trains_one_run_at_a_time(home, tiny_model_dir, toy_data):
    jobs.save_settings(queue=True)
    runs = [jobs.submit(tiny_config(tiny_model_dir, toy_data, max_steps=3, seed=i)) for i in range(2)]
    seen_both_running = False
    end = time.time() + 150
    while time.time() < end and not all(r.status()["state"] == "completed" for r in runs):
        states = [r.status()["state"] for r in runs]
        seen_both_running |= states.count("running") + states.count("starting") > 1
        time.sleep(0.1)
    assert [r.status()["state"] for r in runs] == ["completed", "completed"]
    assert not seen_both_running
    first_end = runs[0].status()["updated"]
    assert runs[1].status()["started"] >= first_end - 1.0  # the second started after the first ended


def test_cancel_a_queued_run_and_resume_it(home, tiny_model_dir, toy_data):
    run = Run.open(jobs.new_run(tiny_config(tiny_model_dir, toy_data, max_steps=2)).id)
    run.set_status(state="queued")
    assert jobs.cancel(run.id) == "cancelled" and run.status()["state"] == "cancelled"
    jobs.resume(run.id, queue=False)  # no checkpoint yet: starts from the beginning
    assert wait(lambda: run.status()["state"] == "completed")


def test_graphistry_credentials_never_reach_run_folders_or_logs(home, tiny_model_dir, toy_data, monkeypatch):
    """A run process inherits the app's environment, Graphistry secrets included: none may be written."""
    secrets = {"GRAPHISTRY_SERVER": "hub.example", "GRAPHISTRY_USERNAME": "user-sentinel-71",
               "GRAPHISTRY_PASSWORD": "pw-sentinel-93", "GRAPHISTRY_API_TOKEN": "token-sentinel-44",
               "GRAPHISTRY_PERSONAL_KEY_SECRET": "pks-sentinel-12"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    run = jobs.submit(tiny_config(tiny_model_dir, toy_data, max_steps=2), queue=False)
    assert wait(lambda: run.status()["state"] == "completed"), run.status()
    files = [p for p in home.rglob("*") if p.is_file()]
    assert (run.path / "log.txt") in files and (run.path / "adapter" / "adapter_config.json") in files
    leaked = [(p, s) for p in files for s in secrets.values() if s != "hub.example" and s.encode() in p.read_bytes()]
    assert leaked == []
