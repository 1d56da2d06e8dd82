"""Results page with AppTest: the shipped tables, the report picker and the report form."""
import json

from core.evaluate import report as rep
from tests.conftest import open_page


def test_renders_the_shipped_results_and_report(home):
    at = open_page("results")
    assert not at.exception, at.exception
    assert at.dataframe[0].value["task"].tolist()  # the soft-vs-hard table
    held = [m.value for m in at.markdown if "does not hold" in m.value]  # where it loses, said plainly
    assert held and held[0].endswith(rep.results_table()["losses"] + ".")
    assert "shipped" in at.selectbox(key="rep_pick").format_func(at.selectbox(key="rep_pick").value)


def test_init_strategies_follow_the_task(home):
    """class-label needs a task with labels: offered for qa, it was skipped in the report while the
    page had announced its points."""
    at = open_page("results")
    assert "class-label" in at.multiselect(key="rep_inits_sentiment").options
    at.selectbox(key="rep_task").set_value("qa").run()
    assert not at.exception
    inits = at.multiselect(key="rep_inits_qa")
    assert inits.options == inits.value == ["random", "sample-vocab", "text"]


def test_the_picked_report_stays_picked_when_a_new_one_appears(home):
    """Reports of this workspace list before the shipped ones; the pick was an index, so a report
    started here silently replaced the one on screen."""
    at = open_page("results")
    shipped = at.selectbox(key="rep_pick").value
    rep.report_path("qa").write_text(json.dumps({"task": "qa", "metric": "token_f1", "n": 3, "points": [],
                                                 "state": "running", "machine": "here"}))
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="rep_pick").value == shipped
    assert len(at.selectbox(key="rep_pick").options) == 2
    assert any(c.value.startswith("sentiment, validation split") for c in at.caption)
