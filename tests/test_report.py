"""Prompt length x init report on the tiny llama: real runs, scored on the validation split; the
Results page shows it (chart, points) and starts a report in its own process."""
import json

import pytest

from core.evaluate import report as rep
from workbench.charts import report_figure
from core.errors import WorkbenchError
from core.store.runs import list_runs
from tests.conftest import open_page

SMALL = {"max_steps": 1, "batch_size": 2, "eval_examples": 2, "eval_every": 1, "save_every": 1}


@pytest.fixture(scope="module")
def sentiment_report(tiny_model_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("report") / "ws"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(home))
        seen = []
        r = rep.run_report("sentiment", (1, 3), ("random", "class-label"), {"model": tiny_model_dir, **SMALL},
                           progress=lambda r: seen.append(len(r["points"])))
        yield r, seen, home, tiny_model_dir


def test_every_point_is_a_trained_run_scored_on_validation(sentiment_report):
    r, seen, home, model = sentiment_report
    assert seen == [1, 2, 3, 4] and r["state"] == "completed" and r["metric"] == "accuracy"
    assert [(p["init"], p["num_virtual_tokens"]) for p in r["points"]] == [
        ("random", 1), ("random", 3), ("class-label", 1), ("class-label", 3)]
    runs = {x["id"]: x for x in list_runs()}
    for p in r["points"]:
        assert runs[p["run_id"]]["state"] == "completed" and runs[p["run_id"]]["tokens"] == p["num_virtual_tokens"]
        assert 0.0 <= p["low"] <= p["metric"] <= p["high"] <= 1.0 and p["eval_loss"] > 0
    assert json.loads(rep.report_path("sentiment").read_text())["points"] == r["points"]
    again = rep.run_report("sentiment", (1,), ("random",), {"model": model, **SMALL}, out=home / "again.json")
    assert again["points"][0]["run_id"] == r["points"][0]["run_id"] and len(list_runs()) == 4  # reused, not retrained


def test_class_labels_are_skipped_on_a_task_without_labels_and_bad_inits_named(home):
    r = rep.run_report("qa", (1,), ("class-label",))
    assert r["points"] == [] and "no class labels" in r["skipped"][0]["why"]
    with pytest.raises(WorkbenchError, match="Unknown init strategy 'vocab'.*random, sample-vocab"):
        rep.run_report("qa", (1,), ("vocab",))
    with pytest.raises(WorkbenchError, match="not built in"):
        rep.run_report("mine", (1,), ("random",))


def test_report_figure_has_one_line_per_init(sentiment_report):
    fig = report_figure(sentiment_report[0])
    assert [t.name for t in fig.data] == ["random", "class-label"] and list(fig.data[0].x) == [1, 3]
    assert list(report_figure(sentiment_report[0], "eval_loss").data[1].y) == [
        p["eval_loss"] for p in sentiment_report[0]["points"][2:]]


def test_results_page_shows_the_report_and_starts_one(sentiment_report, monkeypatch):
    from core.store import jobs
    _, _, home, _ = sentiment_report
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    spawned = []
    monkeypatch.setattr(jobs, "spawn", lambda args, log: spawned.append((args, log)) or 0)
    at = open_page("results", timeout=60)
    assert not at.exception, at.exception
    assert any(o.startswith("sentiment (this workspace, 4 points") for o in at.selectbox(key="rep_pick").options)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in spec["data"]] == ["random", "class-label"]
    assert len(at.dataframe[-1].value) == 4  # the report's points (after the shipped results table)
    at.selectbox(key="rep_task").set_value("paraphrase").run()  # the inits offered follow the task
    at.multiselect(key="rep_lengths").set_value([5, 20])
    at.multiselect(key="rep_inits_paraphrase").set_value(["random", "text"])
    at.number_input(key="rep_steps").set_value(30)
    at.button(key="rep_start").click().run()
    assert not at.exception, at.exception
    assert spawned[0][0] == ["report", "--task", "paraphrase", "--lengths", "5", "20", "--inits", "random", "text",
                             "--steps", "30"]
    assert any("4 points" in s.value for s in at.success)


def test_results_table_reports_the_shifted_split_with_intervals(tmp_path):
    """The table a user reads: each task on the test split and on its shifted copy, the soft prompt's
    interval, and how much of its score it keeps when the inputs' layout changes."""
    def row(task, soft, hard, s_soft, s_hard):
        return {"task": task, "metric": "token_f1", "n": 20, "soft": soft, "soft_ci": [soft - 0.1, soft + 0.1],
                "best_hard": hard, "best_hard_system": "hard: default (plain)", "bare": 0.1, "train_s": 120,
                "shifted": {"soft": s_soft, "soft_ci": [s_soft - 0.1, s_soft + 0.1], "best_hard": s_hard}}
    path = tmp_path / "results-test.json"
    path.write_text(json.dumps({"machine": "here", "rows": [row("qa", 0.8, 0.3, 0.6, 0.35),
                                                             row("sentiment", 0.7, 0.5, 0.45, 0.5)]}))
    table = rep.results_table(path)
    qa, sentiment = table["rows"]
    assert qa["soft change under shift"] == "-25%" and qa["soft 95% CI"] == "0.700-0.900"
    assert qa["soft ahead, shifted"] and not sentiment["soft ahead, shifted"]
    assert (table["wins"], table["wins_shifted"]) == (2, 1)
    assert table["losses"] == ("behind or level shifted: sentiment; drops more than 15% under the shift: qa, "
                               "sentiment")  # said in words on the Results page
    path.write_text(json.dumps({"machine": "here", "rows": [row("qa", 0.8, 0.3, 0.75, 0.35)]}))
    assert rep.results_table(path)["losses"].startswith("ahead on every task")
