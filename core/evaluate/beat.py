"""When does the soft prompt beat the best hard prompt? The user's figure of a run, measured while it trains.

At every validation evaluation of a run with `beat_examples` > 0, the soft prompt as it stands
writes its answers to the first `beat_examples` validation examples (greedy, each output cut at
its first line break, as long as the task's answers need: the results table's settings,
core/evaluate/compare.CompareSpec.for_task) through the batched generator, and they are scored on
the task's main metric. The best hard prompt's score on the same examples (the task's prompt
zero-shot and 4-shot, chat and plain, as in the results table) is computed once per task, model
and sample and cached in <workspace>/cache/hard-prompt/. The first evaluation at which the soft
prompt scores above it is the run's pass: status.json's `beat` holds it (step and training
seconds, the time spent on the one-off hard-prompt scores left out) with the latest scores, and
each evaluation adds a `{"kind": "beat"}` line to metrics.jsonl.
"""
from __future__ import annotations

import hashlib
import json
import time

from transformers import TrainerCallback

from core.evaluate.compare import CompareSpec
from core.evaluate.metrics import score_predictions, summarize
from core.generate.generator import Generator, System
from core.store.paths import read_json, workspace, write_json_atomic
from core.store.runs import Run
from core.tasks import TaskData, few_shot_template, load_task

SHOTS = 4  # the k-shot hard prompt (bench/results.py uses the same)
# Rows at once. Every row holds its own key/value cache of its whole prompt (46 KB a token for the
# bundled model): 32 rows of a 4-shot summarisation prompt (~500 tokens, then the answer) held 0.8 GB
# and twice that while the cache grew, inside the training process. The hard prompts run once per task.
HARD_BATCH, SOFT_BATCH = 4, 16


def hard_prompt_systems(task: TaskData, shots: int = SHOTS) -> list[System]:
    """The hard prompts the results table counts: the task's prompt zero-shot and k-shot, chat and plain."""
    return [System(f"hard: {name} ({fmt})", template, fmt) for fmt in ("chat", "plain")
            for name, template in (("default", task.spec.hard_prompt),
                                   (f"{shots}-shot", few_shot_template(task, shots)))]


def main_score(outputs: list[str], rows: list[dict], task: TaskData) -> float:
    """The task's main metric of `outputs` against the rows' targets (corpus chrF/BLEU, else the mean)."""
    per = score_predictions(outputs, [r["target"] for r in rows], task.spec.kind, list(task.spec.labels) or None)
    return next(r["mean"] for r in summarize(per, n_resamples=1) if r["metric"] == task.spec.main_metric)


def sample_spec(task: TaskData, n: int, systems: list[System]) -> CompareSpec:
    spec = CompareSpec.for_task(task, "validation", systems)
    spec.inputs = spec.inputs[:n]
    return spec


def best_hard_prompt(gen: Generator, task: TaskData, model: str, n: int) -> dict:
    """The best hard prompt's main-metric score on the first n validation examples: computed once per
    task, model, sample and decoding, then read from the workspace's cache."""
    spec = sample_spec(task, n, hard_prompt_systems(task))
    blob = json.dumps({"model": model, "task": task.spec.name, "inputs": spec.inputs, "decoding": spec.decoding.__dict__,
                       "systems": [s.__dict__ for s in spec.systems], "max_input": gen.max_input_tokens}, sort_keys=True)
    path = workspace() / "cache" / "hard-prompt" / f"{task.spec.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.json"
    if (hit := read_json(path, default=None)) is not None:
        return hit
    t0 = time.time()
    texts = gen.generate([(s, x["input"]) for s in spec.systems for x in spec.inputs], spec.decoding)
    k = len(spec.inputs)
    scores = {s.name: main_score(texts[i * k:(i + 1) * k], spec.inputs, task) for i, s in enumerate(spec.systems)}
    best = max(scores, key=scores.get)
    result = {"metric": task.spec.main_metric, "n": k, "score": scores[best], "system": best, "scores": scores,
              "seconds": round(time.time() - t0, 1)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return result


def first_pass(points: list[dict], hard: float) -> dict | None:
    """The first evaluation point ({"step", "seconds", "score"}, in step order) scoring above `hard`."""
    return next((p for p in sorted(points, key=lambda p: p["step"]) if p["score"] > hard), None)


def _tokenizer(model: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    from core.model.loading import prepare_tokenizer, resolve_model_dir

    where, kwargs = resolve_model_dir(model, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    prepare_tokenizer(tokenizer)
    return tokenizer


class BeatHardPrompt(TrainerCallback):
    """Scores the soft prompt on the sample at every evaluation and records when it passes the best
    hard prompt. `load_tokenizer` gives the run model's tokenizer (at the first evaluation)."""

    def __init__(self, run: Run, load_tokenizer=None):
        self.run = run
        self.load_tokenizer = load_tokenizer or (lambda: _tokenizer(self.cfg.model, self.cfg.trust_remote_code))
        self.cfg = run.config()
        self.gen: Generator | None = None
        self.task: TaskData | None = None
        self.hard: dict | None = None
        self.points: list[dict] = []
        self.t0, self.offset, self.excluded = time.time(), 0.0, 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.offset = time.time(), float(self.run.status().get("elapsed") or 0)  # resumed: time before
        self.points = [m for m in self.run.metrics() if m.get("kind") == "beat"]

    def on_evaluate(self, args, state, control, model=None, **kw):
        if not state.is_world_process_zero or model is None:
            return
        t_eval = time.time()
        seconds = self.offset + (t_eval - self.t0) - self.excluded  # training time up to this evaluation
        if self.gen is None:
            self.task = load_task(self.cfg.task, self.cfg.data_path, self.cfg.input_column, self.cfg.target_column)
            self.gen = Generator(model.get_base_model(), self.load_tokenizer(), batch_size=HARD_BATCH)
            self.hard = best_hard_prompt(self.gen, self.task, self.cfg.model, self.cfg.beat_examples)
            self.gen.batch_size = SOFT_BATCH
            self.excluded += time.time() - t_eval  # the one-off hard-prompt scores are not the run's time
        score = self.soft_score(model)
        point = {"kind": "beat", "step": state.global_step, "seconds": round(seconds, 1), "score": score,
                 "hard": self.hard["score"], "time": time.time()}
        self.points.append(point)
        self.run.log_metrics(point)
        passed = first_pass(self.points, self.hard["score"])
        self.run.set_status(beat={"metric": self.hard["metric"], "n": self.hard["n"], "hard": self.hard["score"],
                                  "hard_system": self.hard["system"], "soft": score, "step": state.global_step,
                                  "passed": passed and {k: passed[k] for k in ("step", "seconds", "score")}})

    def soft_score(self, model) -> float:
        folder = self.run.path / "samples-adapter"
        model.save_pretrained(str(folder))
        spec = sample_spec(self.task, self.cfg.beat_examples,
                           [System("soft", self.cfg.input_template, self.cfg.prompt_format.value, str(folder))])
        was_training = model.training
        model.eval()
        try:
            texts = self.gen.generate([(spec.systems[0], x["input"]) for x in spec.inputs], spec.decoding)
        finally:
            model.train(was_training)
        return main_score(texts, spec.inputs, self.task)
