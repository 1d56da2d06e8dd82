"""The real bundled model (SmolLM2-135M-Instruct), a few steps per method."""
import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from core.train import training
from core.generate.systems import generate_for_run
from core.store.runs import new_run
from tests.conftest import peft_reference, tiny_config

pytestmark = pytest.mark.integration
METHODS = {
    "prompt-tuning": dict(method="prompt-tuning", init="sample-vocab", learning_rate=0.1),
    "p-tuning": dict(method="p-tuning", encoder_type="mlp", learning_rate=0.01, encoder_hidden_size=64),
    "prefix-tuning": dict(method="prefix-tuning", learning_rate=0.05),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_data_module):
    """One short run per method on the bundled model, in one module-wide workspace."""
    import os
    home = tmp_path_factory.mktemp("ws")
    old = os.environ.get("WORKBENCH_HOME")
    os.environ["WORKBENCH_HOME"] = str(home)
    runs = {}
    for name, kw in METHODS.items():
        cfg = tiny_config("smollm2-135m-instruct", toy_data_module, max_steps=8, eval_every=8, save_every=4,
                          num_virtual_tokens=8, **kw)
        run = new_run(cfg)
        runs[name] = (run, training.train(run))
    yield runs
    if old is None:
        os.environ.pop("WORKBENCH_HOME")
    else:
        os.environ["WORKBENCH_HOME"] = old


@pytest.fixture(scope="module")
def toy_data_module(tmp_path_factory):
    words = ["apple", "river", "stone", "cloud", "music", "garden", "window", "pencil", "candle", "forest",
             "bridge", "tiger", "orange", "silver", "planet", "rocket", "castle", "dragon", "winter", "summer"]
    path = tmp_path_factory.mktemp("data") / "echo.jsonl"
    path.write_text("\n".join(json.dumps({"input": f"Echo the word: {w}", "target": f"{w} {w}"}) for w in words))
    return str(path)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_runs_and_the_validation_loss_goes_down(trained, method):
    run, st = trained[method]
    assert st["state"] == "completed", st.get("error")
    evals = [m["eval_loss"] for m in run.metrics() if m["kind"] == "eval"]
    assert len(evals) == 2  # before training (step 0) and at the end
    assert evals[-1] < evals[0] * 0.8, evals
    assert [step for step, _ in run.checkpoints()] == [4, 8]


@pytest.mark.parametrize("method", list(METHODS))
def test_peft_round_trip_gives_the_same_greedy_output(trained, bundled_dir, tokenizer, method):
    """The run folder loads in plain PEFT, and the workbench's one generation path (the batched
    generator behind generate, Compare and the training samples) answers exactly as PEFT does."""
    run, _ = trained[method]
    cfg = run.config()
    inputs = ["Echo the word: tiger", "Echo the word: a much longer river"]
    ours = generate_for_run(run.id, inputs, max_new_tokens=6)
    plain = peft_reference(bundled_dir, run.adapter_dir, cfg.input_template, cfg.prompt_format.value, tokenizer,
                           inputs, 6, cfg.max_input_tokens)
    assert ours == plain
    samples = [m for m in run.metrics() if m["kind"] == "samples"]
    assert samples and all(r["output"] is not None for r in samples[-1]["samples"])


def test_resume_on_the_real_model_continues_from_the_checkpoint(trained):
    run, _ = trained["prompt-tuning"]
    (run.path / "config.json").write_text(json.dumps({**run.config().to_dict(), "max_steps": 10}))
    st = training.train(run, resume=True)
    assert st["state"] == "completed" and st["step"] == 10
    steps = [m["step"] for m in run.metrics() if m["kind"] == "train"]
    assert steps == list(range(1, 11))


@pytest.mark.parametrize("method", list(METHODS))
def test_kv_cached_batched_generator_equals_peft_generate(trained, bundled_dir, method):
    """Left-padded batches of different lengths, shared prefix cached once: same greedy tokens as
    PEFT's generate on each input alone (and as use_cache=False where PEFT supports it)."""
    from core.generate.generator import Decoding, Generator, System
    from core.model.loading import load_model
    run, _ = trained[method]
    cfg = run.config()
    lm = load_model("smollm2-135m-instruct")
    system = System(method, cfg.input_template, cfg.prompt_format.value, str(run.adapter_dir))
    inputs = ["Echo the word: tiger", "Echo the word: a much longer river than usual", "Echo the word: x y"]
    ours = Generator(lm.model, lm.tokenizer, batch_size=3).generate([(system, x) for x in inputs],
                                                                    Decoding(max_new_tokens=6))
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(bundled_dir), str(run.adapter_dir)).eval()
    fmt = training.Formatter(lm.tokenizer, cfg.prompt_format.value, cfg.input_template)
    for x, out in zip(inputs, ours):
        ids = torch.tensor([fmt.prompt_ids(x)])
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
        ref = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        assert out == fmt.clean_output(lm.tokenizer.decode(ref[0, ids.shape[1]:]))
        if method != "prefix-tuning":
            nocache = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **kw)
            assert nocache.tolist() == ref.tolist()


def test_finished_rows_leave_the_batch_and_the_others_go_on_unchanged():
    """Greedy: a row that stops early is dropped from the batch (its cache rows sliced away); every
    other row must produce exactly what it produces when no row stops (the tiny test model only
    repeats one token, so this runs on the bundled model)."""
    from core.generate.generator import Decoding, Generator, System
    from core.model.loading import load_model
    lm = load_model("smollm2-135m-instruct")
    gen = Generator(lm.model, lm.tokenizer, batch_size=4)
    system = System("bare", "{input}", "plain")
    inputs = ["The capital of France is", "My favourite colour is", "Two plus two equals", "Once upon a time"]
    rows = [(system, gen.formatter(system).prompt_ids(x)) for x in inputs]
    full = gen._generate_batch(rows, Decoding(max_new_tokens=10), None)
    stopper = next((t for o in full for t in o[1:6] if sum(t in p for p in full) < len(full)), None)
    assert stopper is not None, full  # a token some rows emit and others never do
    breaks, texts = (torch.zeros(lm.model.config.vocab_size, dtype=torch.bool) for _ in range(2))
    breaks[stopper], texts[:] = True, True
    gen._token_kinds = (breaks, texts)
    stopped = gen._generate_batch(rows, Decoding(max_new_tokens=10, stop_at_newline=True), None)
    assert stopped == [o[:o.index(stopper) + 1] if stopper in o else o for o in full]
    assert any(len(s) < 10 for s in stopped) and any(len(s) == 10 for s in stopped)


def test_continuous_batching_gives_every_row_what_it_gets_alone(monkeypatch):
    """Greedy rows that end early make room for waiting rows, which are prefilled and join the
    running batch; each row's output must be exactly its output in a batch of its own."""
    from core.generate import batching
    from core.generate.generator import Decoding, Generator, System
    from core.model.loading import load_model
    lm = load_model("smollm2-135m-instruct")
    system = System("bare", "{input}", "plain")
    inputs = ["The capital of France is", "My favourite colour is", "Two plus two equals", "Once upon a time",
              "The best way to learn is", "Water boils at"]
    rows = [(system, x) for x in inputs]
    decoding = Decoding(max_new_tokens=8, stop_at_newline=True)
    alone = [Generator(lm.model, lm.tokenizer, batch_size=1).generate([r], decoding)[0] for r in rows]
    merges = []
    real_merge = batching.ActiveRows.merge
    monkeypatch.setattr(batching.ActiveRows, "merge", lambda a, b: merges.append((len(a.rows), len(b.rows)))
                        or real_merge(a, b))
    together = Generator(lm.model, lm.tokenizer, batch_size=4).generate(rows, decoding)
    assert together == alone
    assert merges, "no row joined a running batch: the inputs no longer end at different times"


def test_a_run_trained_with_format_augmentation_answers_shifted_inputs(tmp_path, monkeypatch):
    """qa-style data in one layout; the run is trained with format augmentation and asked questions
    laid out as it never saw them in its own data (other line breaks, field names, quotes, a preface)."""
    from core.evaluate.metrics import token_f1
    from core.generate.variants import shifted
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "ws"))
    things = ["apple", "river", "stone", "cloud", "music", "garden", "window", "pencil", "candle", "forest",
              "bridge", "tiger", "orange", "silver", "planet", "rocket", "castle", "dragon", "winter", "summer",
              "violin", "carpet", "lemon", "anchor"]
    rows = [{"input": f"Context: Anna put the {w} in the box.\nQuestion: What did Anna put in the box?",
             "target": w} for w in things]
    data = tmp_path / "box.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tiny_config("smollm2-135m-instruct", str(data), max_steps=30, eval_every=30, save_every=30,
                      num_virtual_tokens=8, learning_rate=0.1, format_augmentation=1.0, method="prompt-tuning",
                      init="text", init_text="Answer with the word from the context.")
    run = new_run(cfg)
    assert training.train(run)["state"] == "completed"
    held_out = [{"input": f"Context: Anna put the {w} in the box.\nQuestion: What did Anna put in the box?",
                 "target": w} for w in ["mirror", "basket", "feather", "hammer", "bottle", "ladder"]]
    moved = shifted(held_out, seed=5)
    assert all(m["input"] != h["input"] for m, h in zip(moved, held_out))
    outs = generate_for_run(run.id, [m["input"] for m in moved], max_new_tokens=6)
    scores = [token_f1(o, m["target"]) for o, m in zip(outs, moved)]
    assert sum(scores) / len(scores) >= 0.5, list(zip([m["input"] for m in moved], outs))
