"""Compare page "also on format variants" (AppTest on the tiny model): a Robustness tab with a
table per system and a box chart, only for the comparison it was run with."""
from streamlit.testing.v1 import AppTest

from core.store.runs import new_run
from core.train import training
from tests.conftest import REPO, tiny_config

PAGE = str(REPO / "pages" / "compare.py")


def test_robustness_tab_on_the_tiny_model(home, tiny_model_dir, toy_data):
    assert training.train(new_run(tiny_config(tiny_model_dir, toy_data, max_steps=2), run_id="soft-run"))[
        "state"] == "completed"
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    at.selectbox(key="cmp_model").set_value(tiny_model_dir).run()
    at.selectbox(key="cmp_task").set_value("sentiment").run()
    at.slider(key="cmp_n").set_value(3)
    at.number_input(key="cmp_max_new").set_value(2)
    at.slider(key="cmp_shots").set_value(0)
    at.radio(key="cmp_format").set_value("plain")
    at.multiselect(key="cmp_runs").set_value(["soft-run"]).run()
    assert at.slider(key="cmp_k").disabled
    at.checkbox(key="cmp_variants").check().run()
    at.slider(key="cmp_k").set_value(2)
    at.button(key="cmp_go").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert [t.label for t in at.tabs] == ["Metrics", "Outputs", "Blind rating", "Robustness"]
    robust = at.tabs[3]
    table = robust.dataframe[0].value
    assert list(table.index) == ["soft: soft-run", "hard: default", "bare model"]
    assert list(table.columns) == ["original", "shifted", "casing", "punct_spacing", "min", "mean", "max",
                                   "worst", "drop"]
    assert set(table["worst"]) <= {"shifted", "casing", "punct_spacing"}
    assert (table["min"] <= table["max"]).all()
    assert robust.get("plotly_chart")
    assert list(robust.dataframe[1].value["variant"]) == ["original", "shifted", "casing", "punct_spacing"]
    # a comparison without the box ticked shows no (stale) robustness tab
    at.checkbox(key="cmp_variants").uncheck().run()
    at.button(key="cmp_go").click().run()
    assert not at.exception and [t.label for t in at.tabs] == ["Metrics", "Outputs", "Blind rating"]
