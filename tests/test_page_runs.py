"""Runs page with AppTest: table, one run's details (nearest tokens, zip), overlaid curves."""
import io
import zipfile

from streamlit.testing.v1 import AppTest

from core.train import training
from core.store.runs import new_run
from tests.conftest import REPO, tiny_config

PAGE = str(REPO / "pages" / "runs.py")


def trained_runs(tiny_model_dir, toy_data):
    a = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=2, eval_every=1), run_id="run-a")
    b = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=2, eval_every=1, method="prefix-tuning"),
                run_id="run-b")
    for r in (a, b):
        assert training.train(r)["state"] == "completed"
    return a, b


def test_empty_workspace_says_how_to_start(home):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and "Tune page" in at.info[0].value


def test_open_one_run_then_overlay_two(home, tiny_model_dir, toy_data):
    a, b = trained_runs(tiny_model_dir, toy_data)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["id"]) == {"run-a", "run-b"} and set(table["state"]) == {"completed"}
    at.multiselect(key="runs_pick").set_value(["run-a"]).run()
    assert not at.exception, at.exception
    tokens = next(d.value for d in at.dataframe if "virtual token" in d.value.columns)
    assert len(tokens) == 4 and tokens["top cosine"].between(-1, 1.0001).all()
    assert any("mean-centred" in c.value for c in at.caption)
    at.multiselect(key="runs_pick").set_value(["run-b"]).run()
    assert any("Prefix tuning learns per-layer" in i.value for i in at.info)
    at.multiselect(key="runs_pick").set_value(["run-a", "run-b"]).run()
    assert not at.exception
    assert at.get("plotly_chart")


def test_adapter_zip_holds_a_loadable_adapter(home, tiny_model_dir, toy_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from core.model.adapters import adapter_zip
    a, _ = trained_runs(tiny_model_dir, toy_data)
    zipfile.ZipFile(io.BytesIO(adapter_zip(a.adapter_dir))).extractall(tmp_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tmp_path / "adapter"))
    assert model.peft_config["default"].num_virtual_tokens == 4


def test_an_active_run_is_polled_and_its_buttons_start_at_the_left(home, tiny_model_dir, toy_data, monkeypatch):
    """A running (or queued) run opens in the polled view: a static one still said 'running' with its
    Cancel button after the run had been cancelled. A finished run's first button is in the first column."""
    from workbench import run_view
    a, _ = trained_runs(tiny_model_dir, toy_data)
    queued = new_run(tiny_config(tiny_model_dir, toy_data), run_id="run-q")
    assert queued.status()["state"] in run_view.ACTIVE
    polled = []
    monkeypatch.setattr(run_view, "live_run", polled.append)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.multiselect(key="runs_pick").set_value(["run-q"]).run()
    assert not at.exception and polled == ["run-q"]
    at.multiselect(key="runs_pick").set_value(["run-a"]).run()
    assert not at.exception and polled == ["run-q"]
    assert [b.label for b in at.columns[0].button] == ["Delete"]
