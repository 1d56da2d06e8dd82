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


def left_as_set_after_another_page(at: AppTest, page: str, widgets: list[tuple[str, str, object]]) -> None:
    """Set each (widget kind, key, value) in order on `page`, visit another page and come back: every
    widget holds what was set."""
    at.switch_page(f"../pages/{page}.py").run()
    for kind, key, value in widgets:
        getattr(at, kind)(key=key).set_value(value).run()
    visit_runs_and_return(at, page)
    assert [getattr(at, kind)(key=key).value for kind, key, _ in widgets] == [value for _, _, value in widgets]


def test_the_tune_form_is_as_the_user_left_it_after_another_page(home, tmp_path):
    at = app()
    left_as_set_after_another_page(at, "tune", [
        ("selectbox", "cfg_task", "qa"), ("selectbox", "cfg_method", "p-tuning"),
        ("number_input", "cfg_max_steps", 77), ("text_input", "cfg_learning_rate", "0.005"),
        ("number_input", "cfg_encoder_hidden_size", 64), ("radio", "model_source", "Local folder"),
        ("text_input", "model_folder", "/models/mine")])
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
    left_as_set_after_another_page(at, "sweep", [
        ("selectbox", "sweep_task", "translation"), ("selectbox", "sweep_cfg_method", "p-tuning"),
        ("number_input", "sweep_cfg_max_steps", 40), ("text_input", "sweep_tokens", "4, 8"),
        ("text_input", "sweep_lrs", "0.1"), ("number_input", "sweep_workers", 2),
        ("radio", "sweep_model_source", "Local folder"), ("text_input", "sweep_model_folder", "/models/mine")])
    assert "2 trials of 40 steps" in " ".join(c.value for c in at.caption)
