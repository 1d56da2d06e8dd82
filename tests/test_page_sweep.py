"""Sweep page with AppTest: renders, reports bad values, starts a sweep in its own process."""
import os
import time

from core.train import sweep as sweeps
from core.tasks import TASK_DEFAULTS
from tests.conftest import open_page


def page():
    return open_page("sweep")


def test_page_renders_with_default_values(home):
    at = page()
    assert not at.exception
    assert at.text_input(key="sweep_tokens").value == "5, 20, 50, 100"
    assert at.text_input(key="sweep_lrs").value == "0.3, 0.03, 0.003"
    assert at.selectbox(key="sweep_cfg_method").value == "prompt-tuning"
    assert any("12 trials" in c.value for c in at.caption)
    assert any("No sweep yet" in i.value for i in at.info)


def test_bad_values_are_reported_and_nothing_starts(home):
    at = page()
    at.text_input(key="sweep_tokens").set_value("5, abc, 0")
    at.text_input(key="sweep_lrs").set_value("")
    at.button(key="sweep_start").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("Prompt lengths:") and "'abc'" in e and "0 is out of range" in e for e in errors), errors
    assert any(e.startswith("Learning rates:") and "no values" in e for e in errors), errors
    assert any("2 setting(s) need fixing" in e for e in errors)
    assert sweeps.list_sweeps() == []


def test_start_creates_the_sweep_and_shows_it_live(home, tiny_model_dir):
    at = page()
    at.radio(key="sweep_model_source").set_value("Local folder").run()
    at.text_input(key="sweep_model_folder").set_value(tiny_model_dir)
    at.selectbox(key="sweep_task").set_value("sentiment").run()  # the task sets its tuned defaults first
    at.text_input(key="sweep_tokens").set_value("2, 4")
    at.text_input(key="sweep_lrs").set_value("0.05")
    at.number_input(key="sweep_cfg_max_steps").set_value(500)
    at.number_input(key="sweep_cfg_batch_size").set_value(2)
    at.button(key="sweep_start").click().run()
    assert not at.exception, at.exception
    [row] = sweeps.list_sweeps()
    sweep = sweeps.Sweep.open(row["id"])
    spec = sweep.spec()
    assert spec["grid"] == {"num_virtual_tokens": [2, 4], "learning_rate": [0.05]}
    assert spec["base"]["model"] == tiny_model_dir and spec["base"]["max_steps"] == 500
    assert spec["base"]["init"] == TASK_DEFAULTS["sentiment"]["init"]  # not on the page: from the task
    pid = sweep.status()["pid"]
    assert any(sweep.id in m.value for m in at.markdown)
    assert len(at.dataframe) == 1 and list(at.dataframe[0].value["state"]) == ["pending", "pending"]
    at.button(key="sweep_cancel").click().run()  # before its first trial: it stops at once
    deadline = time.time() + 60
    while time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
        time.sleep(0.2)
    assert sweep.status()["state"] == "cancelled"


def test_task_defaults_stay_in_the_sweep_form(home):
    """Picking a task here sets this page's fields only: the Tune page's form (cfg_*) keeps its own
    task's values; before, the sentiment init and label words showed up there under another task."""
    at = page()
    at.selectbox(key="sweep_task").set_value("sentiment").run()
    assert not at.exception
    assert at.number_input(key="sweep_cfg_max_steps").value == TASK_DEFAULTS["sentiment"]["max_steps"]
    state = at.session_state.to_dict()
    assert state["sweep_cfg_init"] == "class-label"
    assert not [k for k in state if k.startswith("cfg_")]


def test_model_folder_is_kept_while_bundled_hides_it(home):
    at = page()
    at.radio(key="sweep_model_source").set_value("Local folder").run()
    at.text_input(key="sweep_model_folder").set_value("/models/mine").run()
    at.radio(key="sweep_model_source").set_value("Bundled").run()
    at.radio(key="sweep_model_source").set_value("Local folder").run()
    assert not at.exception
    assert at.text_input(key="sweep_model_folder").value == "/models/mine"
