"""Compare page with AppTest on the bundled model: a soft prompt, two hard prompts, the bare model."""
import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformers import AutoModelForCausalLM

from core.config import TuneConfig
from core.train.methods import build_peft_model
from core.model.adapters import import_adapter
from tests.conftest import REPO

PAGE = str(REPO / "pages" / "compare.py")
pytestmark = pytest.mark.integration


@pytest.fixture
def soft_run(home, bundled_dir, tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_peft_model(AutoModelForCausalLM.from_pretrained(bundled_dir), tokenizer,
                             TuneConfig(num_virtual_tokens=4, init="text", init_text="Is it positive or negative"),
                             bundled_dir)
    model.save_pretrained(tmp_path / "adapter")
    return import_adapter(tmp_path / "adapter", task="sentiment", run_id="sentiment-soft")


def test_compare_on_the_bundled_model(soft_run):
    at = AppTest.from_file(PAGE, default_timeout=240).run()
    assert not at.exception
    at.selectbox(key="cmp_task").set_value("sentiment").run()
    at.slider(key="cmp_n").set_value(3)
    at.number_input(key="cmp_max_new").set_value(3)
    at.slider(key="cmp_shots").set_value(2)
    at.text_area(key="cmp_template_sentiment").set_value("Review: {input}\nPositive or negative?")
    assert at.multiselect(key="cmp_runs").options == ["sentiment-soft"]
    at.multiselect(key="cmp_runs").set_value(["sentiment-soft"]).run()
    at.button(key="cmp_go").click().run()
    assert not at.exception, at.exception
    summary = at.dataframe[0].value
    assert set(summary.columns) == {"soft: sentiment-soft", "hard: default", "hard: edited", "hard: 2-shot",
                                    "bare model"}
    assert {"accuracy", "rougeL", "semantic_similarity", "ref_loglik"} <= set(summary.index)
    pairs = at.dataframe[1].value  # paired tests on the main metric: rows A, columns B
    assert at.selectbox(key="cmp_pair_metric").value == "accuracy"
    assert list(pairs.index) == list(pairs.columns) and set(pairs.columns) == set(summary.columns)
    assert pairs.loc["soft: sentiment-soft", "soft: sentiment-soft"] == ""
    assert " p" in pairs.loc["soft: sentiment-soft", "hard: default"]
    sentence = next(m.value for m in at.markdown if m.value.startswith("soft: sentiment-soft "))
    assert "(McNemar exact)" in sentence and "Only 3 examples" in sentence
    at.selectbox(key="cmp_pair_metric").set_value("ref_loglik").run()
    assert not at.exception and any("(approximate randomisation)" in m.value for m in at.markdown)
    rows = at.dataframe[2].value
    assert len(rows) == 3 and "soft: sentiment-soft" in rows.columns and rows["reference"].isin(
        ["positive", "negative"]).all()
    assert at.get("plotly_chart")
    at.radio(key="cmp_filter").set_value("systems disagree").run()
    assert not at.exception
    at.text_input(key="cmp_play").set_value("A wonderful, moving film.").run()
    assert any(m.value.startswith("**soft: sentiment-soft**") for m in at.markdown)
