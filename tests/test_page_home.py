"""Home page's guided start with AppTest: one button trains the sentiment default, shows it against the
best hard prompt live, then opens the Compare page with that run picked; the first start's model conversion."""
import time

from streamlit.testing.v1 import AppTest

from core.config import TuneConfig
from core.store.runs import Run
from tests.conftest import REPO
from workbench import home_view, state

APP = str(REPO / "workbench" / "app.py")


def test_guided_start_trains_shows_the_race_with_the_hard_prompt_then_opens_the_comparison(home, tiny_model_dir,
                                                                                          monkeypatch):
    cfg = TuneConfig.for_task(task="sentiment", model=tiny_model_dir, num_virtual_tokens=2, max_steps=4,
                              batch_size=2, eval_every=2, save_every=4, eval_examples=2, beat_examples=2,
                              max_input_tokens=32)
    monkeypatch.setattr(home_view, "quickstart_config", lambda: cfg)  # the tiny model, a few steps
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    at.button(key="home_quickstart").click().run()
    assert not at.exception, at.exception
    run = Run.open(at.session_state[home_view.RUN_KEY])
    assert run.config().task == "sentiment" and run.config().beat_examples == 2
    deadline = time.time() + 400
    while time.time() < deadline and run.status().get("state") not in ("completed", "failed"):
        time.sleep(0.5)
    assert run.status()["state"] == "completed", run.status()
    beat = run.status()["beat"]
    assert [m["step"] for m in run.metrics() if m["kind"] == "beat"] == [0, 2, 4]
    at.run()  # the live view's next poll: the run against the best hard prompt, then the Compare page
    assert not at.exception, at.exception
    lines = [e.value for e in [*at.success, *at.info]]
    assert any("best hard prompt" in t and f"{beat['hard']:.3f}" in t for t in lines), lines
    assert any("opening the comparison" in c.value for c in at.caption)
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["cmp_runs"] == [run.id] and at.session_state["cmp_task"] == "sentiment"
    assert at.multiselect(key="cmp_runs").value == [run.id]  # the Compare page, its run picked


def test_first_start_converts_the_bundled_model_with_a_progress_bar_then_shows_the_page(home, tmp_path,
                                                                                       monkeypatch):
    import core.model.loading as loading
    monkeypatch.setenv("WORKBENCH_MODEL_CACHE", str(tmp_path / "models"))
    calls = []

    def convert(name, out):
        calls.append(name)
        time.sleep(0.6)  # long enough for the bar to be drawn
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(loading, "_convert_bundled", convert)
    monkeypatch.setattr(state, "CONVERT_SECONDS", 1.0)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and calls == [TuneConfig().model]
    assert at.title[0].value == "Soft Prompt Workbench"  # the page after the conversion
    at.run()
    assert calls == [TuneConfig().model]  # once
