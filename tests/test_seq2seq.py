"""Encoder-decoder models end to end, on a tiny T5 built here (d_model 16, 2 layers, the bundled
tokenizer): loading, training through the CLI's tune path, the adapter in plain PEFT, the batched
generator against PEFT's generate, the reference log-likelihood, the vocabulary map, the Tune page."""
import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

from core.config import TuneConfig
from core.generate.formatting import Formatter, PadCollator
from core.generate.generator import Decoding, Generator, System
from core.errors import WorkbenchError
from core.model.adapters import check_adapter_fits, input_space_vectors
from core.model.loading import load_model, model_is_seq2seq
from core.store.runs import Run
from core.train.methods import build_peft_model, prompt_vectors
from core.train.training import SEQ2SEQ_NOTE
from tests.conftest import open_page, peft_reference, tiny_config
from tests.test_cli import _flags
from workbench.cli import main

INPUTS = ["Say apple", "Say a much longer thing please", "Say river", "x"]
METHODS = [dict(method="prompt-tuning", init="random"), dict(method="prompt-tuning", init="sample-vocab"),
           dict(method="p-tuning", encoder_type="mlp"), dict(method="prefix-tuning"),
           dict(method="prefix-tuning", prefix_projection=True)]
ids = lambda kw: "-".join(str(v) for v in kw.values()) if kw else "bare"  # noqa: E731


def make_t5(folder, tokenizer, d_kv=8):
    """A 2-layer T5 with 16-dim states over the bundled vocabulary; decoding starts at the pad token, as in T5."""
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=d_kv, d_ff=32, num_layers=2, num_heads=2,
                   decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory, tokenizer):
    return make_t5(tmp_path_factory.mktemp("tiny-t5"), tokenizer)


@pytest.fixture(scope="module")
def lm(t5_dir):
    return load_model(t5_dir)


def build(t5_dir, tokenizer, **kw):
    """A soft prompt built by the workbench's own method code, scaled up so that it changes the outputs."""
    torch.manual_seed(1)
    model = build_peft_model(AutoModelForSeq2SeqLM.from_pretrained(t5_dir), tokenizer,
                             TuneConfig(num_virtual_tokens=3, encoder_hidden_size=8, **kw), t5_dir)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.mul_(20)
    return model


def save_adapter(t5_dir, tokenizer, folder, **kw):
    build(t5_dir, tokenizer, **kw).save_pretrained(folder)
    return str(folder)


def test_a_t5_folder_loads_frozen_as_an_encoder_decoder_model(lm, t5_dir):
    assert model_is_seq2seq(t5_dir) and not model_is_seq2seq("/no/such/folder")
    assert isinstance(lm.model, T5ForConditionalGeneration)
    assert not any(p.requires_grad for p in lm.model.parameters()) and not lm.model.training
    # the map's anchors: the encoder's input embeddings, T5's shared table
    assert lm.model.get_input_embeddings().weight is lm.model.get_encoder().get_input_embeddings().weight


def test_examples_put_the_input_in_the_encoder_and_label_only_the_target(tokenizer):
    fmt = Formatter(tokenizer, "chat", "Q: {input}", seq2seq=True)  # no chat template for an encoder
    enc = fmt.encode({"input": "Say apple", "target": "apple"})
    assert enc["input_ids"] == tokenizer("Q: Say apple")["input_ids"]
    assert enc["labels"] == tokenizer("apple", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    other = fmt.encode({"input": "x", "target": "a much longer target than the input"})
    batch = PadCollator(tokenizer.pad_token_id)([enc, other])  # each padded to its own longest row
    assert batch["input_ids"].shape == (2, len(enc["input_ids"])) and batch["labels"].shape == (2, len(other["labels"]))
    assert (batch["labels"][0, len(enc["labels"]):] == -100).all()


@pytest.mark.parametrize("kw", [dict(method="prompt-tuning"), dict(method="prefix-tuning"),
                                dict(method="p-tuning")], ids=ids)
def test_a_run_trains_through_the_cli_and_its_adapter_loads_in_plain_peft(home, capsys, t5_dir, toy_data,
                                                                         tokenizer, tmp_path, kw):
    cfg = tiny_config(t5_dir, toy_data, max_steps=3, eval_every=3, save_every=3, encoder_hidden_size=8, **kw)
    assert main(["tune", "--run-id", "t5-run"] + _flags(cfg)) == 0
    run = Run.open("t5-run")
    assert run.status()["state"] == "completed" and run.status()["step"] == 3
    runtime = json.loads((run.path / "runtime.json").read_text())
    assert SEQ2SEQ_NOTE in runtime["notes"]  # the causal-LM fast paths stepped aside, and the run says so
    losses = [m["loss"] for m in run.metrics() if m["kind"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert any(m["kind"] == "samples" for m in run.metrics())  # sample generations through the generator
    peft = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(t5_dir), str(run.adapter_dir))
    assert peft.peft_config["default"].task_type == "SEQ_2_SEQ_LM"
    capsys.readouterr()
    assert main(["generate", "--run", "t5-run", "--input", "Say apple", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == peft_reference(t5_dir, run.adapter_dir, cfg.input_template, "plain",
                                                     tokenizer, ["Say apple"], 4)[0] + "\n"
    if kw["method"] != "prompt-tuning":
        return
    out = tmp_path / "out"  # Compare from the CLI: outputs and the references' log-likelihood per system
    small = tmp_path / "small.jsonl"
    small.write_text("".join(line + "\n" for line in open(toy_data).read().splitlines()[:3]))
    assert main(["compare", "--run", "t5-run", "--data-path", str(small), "--shots", "1", "--max-new-tokens", "3",
                 "--out", str(out)]) == 0
    assert "3 inputs x 4 systems" in capsys.readouterr().out
    result = json.loads(next(out.glob("*.json")).read_text())
    soft = System("soft", cfg.input_template, "plain", str(run.adapter_dir))
    lm = load_model(t5_dir)
    expected = Generator(lm.model, lm.tokenizer).log_likelihood([(soft, x["input"], x["target"])
                                                                 for x in result["inputs"]])
    assert result["scores"]["soft: t5-run"]["ref_loglik"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("kw", METHODS, ids=ids)
def test_the_batched_generator_equals_peft_generate(lm, t5_dir, tokenizer, tmp_path, kw):
    system = System("soft", template="Repeat: {input}", prompt_format="chat",
                    adapter_dir=save_adapter(t5_dir, tokenizer, tmp_path, **kw))
    ours = Generator(lm.model, lm.tokenizer, batch_size=3).generate([(system, x) for x in INPUTS],
                                                                    Decoding(max_new_tokens=8))
    ref = peft_reference(t5_dir, system.adapter_dir, system.template, "plain", tokenizer, INPUTS, 8)
    assert ours == ref
    assert len(set(ours)) > 1  # the inputs reach the outputs


def test_prefix_tuning_takes_the_key_value_width_where_it_is_not_the_hidden_size(t5_dir, tokenizer, tmp_path):
    narrow = make_t5(tmp_path / "t5", tokenizer, d_kv=4)  # 2 heads x 4 = 8 beside 16, as FLAN-T5-small's 384 / 512
    system = System("soft", adapter_dir=save_adapter(narrow, tokenizer, tmp_path / "a", method="prefix-tuning"))
    lm = load_model(narrow)
    ours = Generator(lm.model, lm.tokenizer, batch_size=4).generate([(system, x) for x in INPUTS],
                                                                    Decoding(max_new_tokens=6))
    assert ours == peft_reference(narrow, system.adapter_dir, "{input}", "plain", tokenizer, INPUTS, 6)
    with pytest.raises(WorkbenchError, match="key/value width 8 where the model has 16"):
        check_adapter_fits(system.adapter_dir, load_model(t5_dir).model.config, t5_dir)


def test_mixed_systems_in_one_call_equal_each_alone_and_hard_prompts_equal_generate(lm, t5_dir, tokenizer, tmp_path):
    a = System("a", adapter_dir=save_adapter(t5_dir, tokenizer, tmp_path / "a", method="prompt-tuning"))
    b = System("b", adapter_dir=save_adapter(t5_dir, tokenizer, tmp_path / "b", method="prefix-tuning"))
    hard = System("hard", template="Repeat: {input}")
    inputs = INPUTS[:3]  # a short, a long and a short row: padded in one encoder batch
    rows = [(s, x) for s in (a, b, hard) for x in inputs]
    together = Generator(lm.model, lm.tokenizer, batch_size=12)
    mixed = together.generate(rows, Decoding(max_new_tokens=6))
    alone = Generator(lm.model, lm.tokenizer, batch_size=1)
    assert mixed == [alone.generate([r], Decoding(max_new_tokens=6))[0] for r in rows]
    assert mixed[6:] == peft_reference(t5_dir, None, hard.template, "plain", tokenizer, inputs, 6)
    sampled = Decoding(max_new_tokens=3, temperature=1.0, top_p=0.9, seed=3)  # seeded, as for causal LMs
    assert together.generate(rows, sampled) == together.generate(rows, sampled)


@pytest.mark.parametrize("kw", [dict(method="prompt-tuning"), dict(method="prefix-tuning"), None], ids=ids)
def test_reference_log_likelihood_matches_the_peft_loss(lm, t5_dir, tokenizer, tmp_path, kw):
    adapter = save_adapter(t5_dir, tokenizer, tmp_path, **kw) if kw else None
    system = System("s", template="Q: {input}", adapter_dir=adapter)
    pairs = [("Say apple", "apple"), ("Say a longer river", "the river flows on"), ("x", "y")]
    ours = Generator(lm.model, lm.tokenizer, batch_size=3).log_likelihood([(system, x, t) for x, t in pairs])
    base = AutoModelForSeq2SeqLM.from_pretrained(t5_dir)
    ref = (PeftModel.from_pretrained(base, adapter) if adapter else base).eval()
    fmt = Formatter(tokenizer, "plain", "Q: {input}", seq2seq=True)
    for (x, t), value in zip(pairs, ours):
        enc = fmt.encode({"input": x, "target": t})
        with torch.no_grad():
            loss = ref(input_ids=torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]])).loss
        assert value == pytest.approx(-loss.item(), abs=1e-4)


@pytest.mark.parametrize("kw", [dict(method="prompt-tuning", init="sample-vocab"),
                                dict(method="p-tuning", encoder_type="lstm")], ids=ids)
def test_the_saved_prompt_is_the_encoders_virtual_tokens(t5_dir, tokenizer, tmp_path, kw):
    model = build(t5_dir, tokenizer, **kw)
    model.save_pretrained(tmp_path)
    vectors = input_space_vectors(tmp_path)  # PEFT saves 2N rows for T5; the encoder's N are the prompt
    assert vectors.shape == (3, 16) and np.allclose(vectors, prompt_vectors(model).numpy(), atol=1e-5)
    assert np.allclose(vectors, model.get_prompt(1)[0, :3].detach().numpy(), atol=1e-5)  # what PEFT's forward uses
    assert input_space_vectors(save_adapter(t5_dir, tokenizer, tmp_path / "p", method="prefix-tuning")) is None


def test_the_prompt_is_placed_on_a_small_map_of_the_encoder_embeddings(home, t5_dir, tokenizer, tmp_path, monkeypatch):
    from core.explore.prompts import map_cache_dir, map_settings
    from core.explore.vocabmap import load_or_fit
    from core.model.loading import embedding_matrix
    monkeypatch.setenv("WORKBENCH_MAP_TOKENS", "200")  # a small, quick map, as the Explore page builds it
    monkeypatch.setenv("WORKBENCH_MAP_EPOCHS", "20")
    monkeypatch.setenv("WORKBENCH_MODEL_CACHE", str(tmp_path / "models"))
    limit, params = map_settings()
    anchors = embedding_matrix(load_model(t5_dir).model).numpy()[:limit]  # T5's shared table, the encoder's input
    vmap = load_or_fit(map_cache_dir(t5_dir, limit), anchors, **params, n_neighbors=5)
    placed = vmap.place(input_space_vectors(save_adapter(t5_dir, tokenizer, tmp_path / "a", method="prompt-tuning",
                                                         init="sample-vocab")))
    assert placed.shape == (3, 2) and np.isfinite(placed).all()
    assert (map_cache_dir(t5_dir, limit)).is_dir()  # cached for the next look


def shown(widgets, key: str) -> bool:
    try:
        return widgets(key=key) is not None
    except KeyError:
        return False


def test_the_tune_and_compare_pages_take_a_t5_folder_without_the_chat_format(home, t5_dir, monkeypatch):
    from core.store import jobs
    from core.store.runs import new_run
    monkeypatch.setattr(jobs, "submit", lambda cfg, **kw: new_run(cfg, "t5-page"))  # the run itself: tested above
    at = open_page("tune")
    assert shown(at.selectbox, "cfg_prompt_format")  # a causal LM: chat or plain
    at.radio(key="model_source").set_value("Local folder").run()
    at.text_input(key="model_folder").set_value(t5_dir).run()
    assert not at.exception
    assert not shown(at.selectbox, "cfg_prompt_format")
    assert any("encoder-decoder" in c.value for c in at.caption)
    at.button(key="start").click().run()
    assert not at.exception and not at.error
    cfg = Run.open("t5-page").config()
    assert cfg.model == t5_dir and cfg.prompt_format.value == "plain"
    compare = open_page("compare")  # the run's model is offered there; its hard prompts have no chat format either
    compare.selectbox(key="cmp_model").set_value("smollm2-135m-instruct").run()
    assert shown(compare.radio, "cmp_format")
    compare.selectbox(key="cmp_model").set_value(t5_dir).run()
    assert not compare.exception and not shown(compare.radio, "cmp_format")
