"""Page smoke tests with streamlit's AppTest (no browser)."""
from streamlit.testing.v1 import AppTest

from core.store.runs import new_run
from tests.conftest import REPO, tiny_config

APP = str(REPO / "workbench" / "app.py")


def test_home_lists_builtin_tasks_and_tells_how_to_start(home):
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Soft Prompt Workbench"
    tasks = at.dataframe[0].value
    assert set(tasks["task"]) == {"paraphrase", "summarisation", "qa", "translation", "sentiment"}
    assert (tasks["test"] > 0).all()
    assert any("No runs yet" in i.value for i in at.info)  # the three steps, Tune first
    assert [e.proto.page for e in at.get("page_link")] == ["tune", "compare", "explore"]
    assert any("python -m workbench tune" in c.value for c in at.caption)


def test_home_shows_existing_runs(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    runs = at.dataframe[1].value
    assert list(runs["id"]) == [run.id] and list(runs["state"]) == ["queued"]
