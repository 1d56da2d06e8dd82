"""Compare page choices a new user makes first (AppTest, no generation): the soft prompts follow
the task, and an uploaded file's reference column is guessed, previewed and never the input."""
from streamlit.testing.v1 import AppTest

from core.config import TuneConfig
from core.store.runs import new_run
from tests.conftest import REPO

PAGE = str(REPO / "pages" / "compare.py")


def completed_run(task: str, run_id: str):
    run = new_run(TuneConfig(task=task), run_id=run_id)
    run.set_status(state="completed")
    return run


def test_soft_prompts_follow_the_task_and_other_tasks_are_marked(home):
    completed_run("paraphrase", "para-old")
    completed_run("paraphrase", "para-new")
    completed_run("qa", "qa-run")
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.selectbox(key="cmp_task").value == "paraphrase"
    assert at.multiselect(key="cmp_runs").value == ["para-new"]  # the task's newest
    at.selectbox(key="cmp_task").set_value("qa").run()
    assert at.multiselect(key="cmp_runs").value == ["qa-run"]  # not the paraphrase run any more
    at.selectbox(key="cmp_task").set_value("sentiment").run()
    assert at.multiselect(key="cmp_runs").value == []  # no sentiment run: none picked
    assert any("No soft prompt picked" in i.value for i in at.info)
    at.multiselect(key="cmp_runs").set_value(["qa-run"]).run()  # picked on purpose: kept, marked
    assert any("trained on another task" in w.value for w in at.warning)


def test_own_file_reference_is_the_answer_column_and_never_the_input(home):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.radio(key="cmp_source").set_value("a file").run()
    at.file_uploader(key="cmp_upload").upload(
        "mine.csv", b"question,answer\nWhat colour is the sky?,blue\nWhat barks?,a dog\n").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="cmp_col_in").value == "question"
    assert at.selectbox(key="cmp_col_ref").value == "answer"
    preview = at.sidebar.dataframe[0].value
    assert list(preview.columns) == ["question", "answer"] and len(preview) == 2
    at.selectbox(key="cmp_col_ref").set_value("question").run()
    assert any("same column as the input" in e.value for e in at.error)
