"""Explore's Meaning tab with AppTest on the tiny llama: the projected prompt, its score beside the soft
prompt's, token importance with a shorter prompt, prefix tuning explained, and runs against runs."""
import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.explore.meaning import PREFIX_NOTE, default_precision, project, run_vectors
from core.explore.neighbors import ExactCosine
from core.model.loading import embedding_matrix, load_model
from core.store.runs import new_run
from core.train import training
from tests.conftest import REPO, tiny_config

PAGE = str(REPO / "pages" / "explore.py")
WORDS = ("red", "blue", "green", "black", "white", "brown", "pink", "grey", "gold", "teal", "navy", "lime")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """run-a and run-c: prompt tuning (4 tokens, other seeds); run-b: prefix tuning."""
    root = tmp_path_factory.mktemp("meaning")
    data = root / "toy.jsonl"
    data.write_text("".join(json.dumps({"input": f"Say {w}", "target": w}) + "\n" for w in WORDS))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("WORKBENCH_HOME", root / "ws"), ("WORKBENCH_MODEL_CACHE", root / "models"),
                            ("WORKBENCH_MAP_TOKENS", 2000), ("WORKBENCH_MAP_EPOCHS", 10)):
            mp.setenv(name, str(value))
        for rid, kw in (("run-a", {}), ("run-c", {"seed": 7}), ("run-b", {"method": "prefix-tuning"})):
            assert training.train(new_run(tiny_config(tiny_model_dir, str(data), max_steps=2, **kw), rid))[
                "state"] == "completed"
        yield tiny_model_dir


def meaning_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180)
    at.session_state["exp_runs"] = ["run-a", "run-c", "run-b"]
    at.session_state["exp_view"] = "Meaning"
    return at.run()


def heatmaps(at) -> list[np.ndarray]:
    out = []
    for chart in at.get("plotly_chart"):
        for trace in json.loads(chart.proto.spec)["data"]:
            z = trace.get("z")
            if isinstance(z, dict):  # plotly sends arrays as base64
                z = np.frombuffer(base64.b64decode(z["bdata"]), z["dtype"]).reshape(
                    [int(n) for n in str(z["shape"]).split(",")])
            if z is not None:
                out.append(np.asarray(z, float))
    return out


def test_projected_prompt_prefix_note_and_run_similarity(trained):
    at = meaning_page()
    assert not at.exception, at.exception
    assert any("run-b" in i.value and PREFIX_NOTE in i.value for i in at.info)
    lm = load_model(trained)
    emb = embedding_matrix(lm.model).numpy()
    expected = project(run_vectors("run-a")[1], ExactCosine().fit(emb), emb, lm.tokenizer)
    assert at.code[0].value == expected.text
    maps = heatmaps(at)
    assert len(maps) == 2 and all(m.shape == (2, 2) for m in maps)  # run-a and run-c; prefix tuning left out
    for m in maps:
        assert np.allclose(np.diag(m), 1, atol=1e-3) and np.allclose(m, m.T) and m[0, 1] < 0.999


def test_scores_importance_and_a_shorter_prompt(trained):
    at = meaning_page()
    at.checkbox(key="mean_remove").check()
    at.button(key="mean_go").click().run()
    assert not at.exception, at.exception
    labels = [m.label for m in at.metric]
    assert any(label.startswith("Soft prompt rougeL") for label in labels)
    assert any(label.startswith("Projected prompt rougeL") for label in labels)
    soft, projected, gap = (float(next(m.value for m in at.metric if m.label.startswith(p)))
                            for p in ("Soft prompt", "Projected prompt", "Waywardness gap"))
    assert gap == pytest.approx(soft - projected, abs=2e-3)
    table = at.dataframe[0].value
    assert len(table) == 4 and {"log-lik drop (replaced by mean)", "log-lik drop (removed)"} <= set(table.columns)
    assert np.isfinite(table["log-lik drop (removed)"]).all()
    at.slider(key="mean_k").set_value(4).run()  # keeping every token is the full prompt
    line = next(m.value for m in at.markdown if m.value.startswith("Keeping tokens"))
    full = line.split("(full prompt ")[1].rstrip(").")
    # both float32 whatever the importance's precision: the shorter prompt and the base it is set beside
    assert "[0, 1, 2, 3]" in line and line.split("log-likelihood ")[1].split(" ")[0] == full
    fast = "bfloat16 matmuls" if default_precision() == "bf16" else "float32"
    assert any(f"(importance in {fast})" in c.value for c in at.caption)
    # a new session (a reload, another tab): before any click, nothing measured with these settings
    again = meaning_page()
    assert not again.dataframe and not any(m.label.startswith("Waywardness") for m in again.metric)
    again.checkbox(key="mean_remove").check().run()  # the settings measured above: read back, no click
    assert not again.exception, again.exception
    assert any(c.value.startswith("Reference log-likelihood") and "Stored: measured earlier in" in c.value
               for c in again.caption)
    assert float(next(m.value for m in again.metric if m.label.startswith("Waywardness gap"))) == gap
    assert again.dataframe[0].value.equals(table)


def test_exact_importance_is_float32_and_matches_the_shorter_prompt(trained):
    at = meaning_page()
    if default_precision() == "bf16":
        at.checkbox(key="mean_exact").check()
    else:
        assert at.checkbox(key="mean_exact").value and at.checkbox(key="mean_exact").disabled
    at.button(key="mean_go").click().run()
    assert not at.exception, at.exception
    assert any("(importance in float32)" in c.value for c in at.caption)
    at.slider(key="mean_k").set_value(4).run()
    line = next(m.value for m in at.markdown if m.value.startswith("Keeping tokens"))
    assert line.split("log-likelihood ")[1].split(" ")[0] == line.split("(full prompt ")[1].rstrip(").")
