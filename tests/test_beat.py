"""When a run's soft prompt passes the best hard prompt: pass detection, the cached hard-prompt score, the callback."""
from core.evaluate.beat import BeatHardPrompt, best_hard_prompt, first_pass, hard_prompt_systems
from core.store.runs import new_run
from core.tasks import load_task
from core.train import training
from tests.conftest import tiny_config
from workbench.run_view import beat_text


def test_the_first_evaluation_above_the_hard_prompt_is_the_pass():
    points = [{"step": 100, "seconds": 90.0, "score": 0.7}, {"step": 0, "seconds": 0.0, "score": 0.2},
              {"step": 50, "seconds": 40.0, "score": 0.5}, {"step": 150, "seconds": 130.0, "score": 0.4}]
    assert first_pass(points, hard=0.45)["step"] == 50  # in step order, not file order
    assert first_pass(points, hard=0.5)["step"] == 100  # equal is not past
    assert first_pass(points, hard=0.7) is None
    assert first_pass([], hard=0.1) is None


class CountingGenerator:
    """Answers every row; only the plain 4-shot prompt gives the reference, so it is the best hard prompt."""
    max_input_tokens = 2048

    def __init__(self, targets: dict):
        self.targets, self.calls = targets, 0

    def generate(self, rows, decoding):
        self.calls += 1
        return [self.targets[x] if s.name == "hard: 4-shot (plain)" else "no idea" for s, x in rows]


def test_best_hard_prompt_scored_once_per_task_and_sample_then_read_from_the_workspace(home, toy_data):
    task = load_task("toy", toy_data)
    gen = CountingGenerator({r["input"]: r["target"] for r in task.validation})
    best = best_hard_prompt(gen, task, "some-model", n=2)
    assert best["system"] == "hard: 4-shot (plain)" and best["score"] == 1.0 and best["n"] == 2
    assert set(best["scores"]) == {s.name for s in hard_prompt_systems(task)}
    assert best_hard_prompt(gen, task, "some-model", n=2) == best and gen.calls == 1  # cached
    assert list((home / "cache" / "hard-prompt").glob("toy-*.json"))
    best_hard_prompt(gen, task, "other-model", n=2)
    best_hard_prompt(gen, task, "some-model", n=1)
    assert gen.calls == 3  # another model or sample is scored anew


def test_a_run_records_each_evaluations_score_and_when_it_passed(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, beat_examples=2), run_id="beat")
    assert training.train(run, extra_callbacks=(BeatHardPrompt(run),))["state"] == "completed"
    points = [m for m in run.metrics() if m["kind"] == "beat"]
    assert [p["step"] for p in points] == [0, 3, 6]  # every evaluation, the first one before training
    assert all(0 <= p["score"] <= 1 and p["seconds"] >= 0 for p in points)
    beat = run.status()["beat"]
    assert beat["n"] == 2 and beat["metric"] == "rougeL" and beat["soft"] == points[-1]["score"]
    passed = first_pass(points, beat["hard"])
    assert beat["passed"] == (passed and {k: passed[k] for k in ("step", "seconds", "score")})
    assert ("Passed the best hard prompt" if passed else "Not past the best hard prompt") in beat_text(beat)


def test_results_table_says_when_each_task_passed_the_hard_prompt(tmp_path):
    import json

    from core.evaluate.report import results_table
    base = {"metric": "accuracy", "n": 20, "soft": 0.75, "best_hard": 0.45, "best_hard_system": "hard: default (chat)",
            "bare": 0.0, "train_s": 48.0}
    rows = [{**base, "task": "sentiment", "beat": {"step": 50, "seconds": 54.0, "hard": 0.5, "n": 16}},
            {**base, "task": "qa", "beat": {"step": None, "seconds": None, "hard": 0.5, "n": 16}},
            {**base, "task": "paraphrase"}]  # trained before the column existed
    path = tmp_path / "results-test.json"
    path.write_text(json.dumps({"machine": "test", "rows": rows}))
    table = results_table(path)
    assert [r["passes best hard at"] for r in table["rows"]] == ["step 50, 0.9 min", "not in the run", None]
