"""A page's settings survive a visit to another page (the whole app under AppTest, pages switched as the
sidebar does): Streamlit drops the state of widgets a run does not draw, workbench/keep.py keeps it."""
from streamlit.testing.v1 import AppTest

from core.config import TuneConfig
from core.store.runs import new_run
from tests.conftest import REPO


def app() -> AppTest:
    return AppTest.from_file(str(REPO / "workbench" / "app.py"), default_timeout=60).run()


def visit_runs_and_return(at: AppTest, page: str) -> None:
    at.switch_page("../pages/runs.py").run()
    assert not at.exception and not at.selectbox  # another page: none of this page's widgets drawn
    at.switch_page(f"../pages/{page}.py").run()
    assert not at.exception, at.exception


def test_the_tune_form_is_as_the_user_left_it_after_another_page(home, tmp_path):
    at = app()
    at.switch_page("../pages/tune.py").run()
    at.selectbox(key="cfg_task").set_value("qa").run()
    at.selectbox(key="cfg_method").set_value("p-tuning").run()
    at.number_input(key="cfg_max_steps").set_value(77)
    at.text_input(key="cfg_learning_rate").set_value("0.005")
    at.number_input(key="cfg_encoder_hidden_size").set_value(64)
    at.radio(key="model_source").set_value("Local folder").run()
    at.text_input(key="model_folder").set_value("/models/mine").run()
    visit_runs_and_return(at, "tune")
    assert at.selectbox(key="cfg_task").value == "qa"
    assert at.selectbox(key="cfg_method").value == "p-tuning"
    assert at.number_input(key="cfg_max_steps").value == 77
    assert at.text_input(key="cfg_learning_rate").value == "0.005"
    assert at.number_input(key="cfg_encoder_hidden_size").value == 64
    assert (at.radio(key="model_source").value, at.text_input(key="model_folder").value) == (
        "Local folder", "/models/mine")
    at.radio(key="data_kind").set_value("My file").run()  # the data file and its column choice too
    at.file_uploader(key="upload").upload("qa.csv", b"question,answer,note\nWhat?,this,x\nWho?,me,y\n").run()
    at.selectbox(key="cfg_target_column").set_value("note").run()
    visit_runs_and_return(at, "tune")
    assert at.radio(key="data_kind").value == "My file"
    assert any("qa.csv" in c.value and "uploaded earlier" in c.value for c in at.caption)
    assert at.selectbox(key="cfg_target_column").value == "note"


def test_compare_choices_are_as_the_user_left_them_after_another_page(home):
    for run_id in ("qa-a", "qa-b"):  # listed as finished (no adapter: the page says so below the choices)
        new_run(TuneConfig(task="qa"), run_id=run_id).set_status(state="completed")
    at = app()
    at.switch_page("../pages/compare.py").run()
    at.selectbox(key="cmp_task").set_value("qa").run()
    at.multiselect(key="cmp_runs").set_value(["qa-a", "qa-b"]).run()
    at.slider(key="cmp_n").set_value(5)
    at.slider(key="cmp_shots").set_value(1)
    at.number_input(key="cmp_max_new").set_value(20)
    at.checkbox(key="cmp_projected").check().run()
    visit_runs_and_return(at, "compare")
    assert at.selectbox(key="cmp_task").value == "qa"
    assert at.multiselect(key="cmp_runs").value == ["qa-a", "qa-b"]
    assert (at.slider(key="cmp_n").value, at.slider(key="cmp_shots").value) == (5, 1)
    assert at.number_input(key="cmp_max_new").value == 20 and at.checkbox(key="cmp_projected").value
    at.slider(key="cmp_n").set_value(23).run()  # all of qa's test split, then a task with a shorter one
    at.selectbox(key="cmp_task").set_value("summarisation").run()
    assert not at.exception and at.slider(key="cmp_n").value == 18
    visit_runs_and_return(at, "compare")
    assert (at.selectbox(key="cmp_task").value, at.slider(key="cmp_n").value) == ("summarisation", 18)


def test_the_sweep_form_is_as_the_user_left_it_after_another_page(home):
    at = app()
    at.switch_page("../pages/sweep.py").run()
    at.selectbox(key="sweep_task").set_value("translation").run()
    at.selectbox(key="sweep_cfg_method").set_value("p-tuning").run()
    at.number_input(key="sweep_cfg_max_steps").set_value(40)
    at.text_input(key="sweep_tokens").set_value("4, 8")
    at.text_input(key="sweep_lrs").set_value("0.1")
    at.number_input(key="sweep_workers").set_value(2)
    at.radio(key="sweep_model_source").set_value("Local folder").run()
    at.text_input(key="sweep_model_folder").set_value("/models/mine").run()
    visit_runs_and_return(at, "sweep")
    assert at.selectbox(key="sweep_task").value == "translation"
    assert at.selectbox(key="sweep_cfg_method").value == "p-tuning"
    assert at.number_input(key="sweep_cfg_max_steps").value == 40
    assert (at.text_input(key="sweep_tokens").value, at.text_input(key="sweep_lrs").value) == ("4, 8", "0.1")
    assert at.number_input(key="sweep_workers").value == 2
    assert (at.radio(key="sweep_model_source").value, at.text_input(key="sweep_model_folder").value) == (
        "Local folder", "/models/mine")
    assert "2 trials of 40 steps" in " ".join(c.value for c in at.caption)
