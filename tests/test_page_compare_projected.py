"""Compare with each run's projected prompt as one more system (tiny llama, pasted inputs)."""
from streamlit.testing.v1 import AppTest

from core.evaluate.compare import system_fields
from core.generate.generator import System
from core.store.runs import new_run
from core.train import training
from tests.conftest import REPO, tiny_config


def test_stored_systems_name_a_token_prefix_only_when_there_is_one():
    assert set(system_fields(System("hard: default"))) == {"name", "template", "prompt_format", "adapter_dir"}
    assert system_fields(System("projected: r", prefix_ids=(5, 6)))["prefix_ids"] == (5, 6)


def test_projected_prompt_is_an_optional_system(home, tiny_model_dir, toy_data):
    for rid, kw in (("run-a", {}), ("run-p", {"method": "prefix-tuning"})):
        assert training.train(new_run(tiny_config(tiny_model_dir, toy_data, max_steps=1, **kw), rid))["state"] \
            == "completed"
    at = AppTest.from_file(str(REPO / "pages" / "compare.py"), default_timeout=180).run()
    at.selectbox(key="cmp_model").set_value(tiny_model_dir).run()
    at.radio(key="cmp_source").set_value("pasted text").run()
    at.text_area(key="cmp_pasted").set_value("Say river\nSay stone")
    at.number_input(key="cmp_max_new").set_value(2)
    at.slider(key="cmp_shots").set_value(0)
    at.multiselect(key="cmp_runs").set_value(["run-a", "run-p"])
    assert not at.checkbox(key="cmp_projected").value  # off by default: it costs one more system per run
    at.checkbox(key="cmp_projected").check()
    at.button(key="cmp_go").click().run()
    assert not at.exception, at.exception
    assert any("run-p" in c.value and "Prefix tuning" in c.value for c in at.caption)
    rows = at.dataframe[0].value
    assert {"soft: run-a", "projected: run-a", "soft: run-p"} <= set(rows.columns)
    assert "projected: run-p" not in rows.columns and len(rows) == 2
