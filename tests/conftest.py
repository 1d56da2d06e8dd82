"""Shared fixtures: a private workspace per test, the bundled tokenizer, and a tiny llama.

The bundled model is converted to safetensors once into <repo>/workspace/models (shared with
the app), so only the first test session pays the ~20 s conversion.
"""
import json
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WORKBENCH_MODEL_CACHE", str(REPO / "workspace" / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, empty workspace for this test."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "ws"))
    return tmp_path / "ws"


@pytest.fixture(scope="session")
def bundled_dir():
    from core.model.loading import resolve_model_dir
    return resolve_model_dir("smollm2-135m-instruct")[0]


@pytest.fixture(scope="session")
def tokenizer(bundled_dir):
    from transformers import AutoTokenizer
    from core.model.loading import prepare_tokenizer
    tok = AutoTokenizer.from_pretrained(bundled_dir)
    prepare_tokenizer(tok)
    return tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A 2-layer llama with 16-dim embeddings over the real vocabulary, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture
def toy_data(tmp_path):
    """A small JSONL task the tiny model can overfit: echo a word after a fixed cue."""
    words = ["apple", "river", "stone", "cloud", "music", "garden", "window", "pencil", "candle", "forest",
             "bridge", "tiger", "orange", "silver", "planet", "rocket", "castle", "dragon", "winter", "summer"]
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps({"input": f"Say {w}", "target": w}) for w in words) + "\n")
    return str(path)


def tiny_config(model_dir, data_path, **kw):
    from core.config import TuneConfig
    base = dict(model=model_dir, task="toy", data_path=data_path, num_virtual_tokens=4, max_steps=6,
                batch_size=4, eval_every=3, save_every=3, eval_examples=2, learning_rate=0.05,
                max_input_tokens=48, max_target_tokens=8, warmup_steps=0, prompt_format="plain")
    base.update(kw)
    return TuneConfig(**base)


def open_page(name: str, timeout: int = 60):
    """Run pages/<name>.py once with AppTest and return it."""
    from streamlit.testing.v1 import AppTest
    return AppTest.from_file(str(REPO / "pages" / f"{name}.py"), default_timeout=timeout).run()


def peft_reference(model_dir, adapter, template: str, prompt_format: str, tokenizer, inputs: list[str], n: int = 8,
                   max_input_tokens: int = 2048) -> list[str]:
    """The reference every generation path is held to: plain PEFT `generate`, greedy, one input at a time.
    An encoder-decoder model (T5) reads the input in its encoder and answers after its decoder start token."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
    from core.generate.formatting import Formatter
    seq2seq = AutoConfig.from_pretrained(model_dir).is_encoder_decoder
    base = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(model_dir)
    model = (PeftModel.from_pretrained(base, str(adapter)) if adapter else base).eval()
    fmt = Formatter(tokenizer, prompt_format, template, max_input_tokens, seq2seq=seq2seq)
    outs = []
    for x in inputs:
        ids = torch.tensor([fmt.prompt_ids(x)])
        o = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
        outs.append(fmt.clean_output(tokenizer.decode(o[0, 1:] if seq2seq else o[0, ids.shape[1]:])))
    return outs


def use_settings(monkeypatch, **changes):
    """This process's settings with `changes` (they are read once from the environment at start)."""
    import dataclasses
    from core import settings
    monkeypatch.setattr(settings, "SETTINGS", dataclasses.replace(settings.SETTINGS, **changes))


def soft_compare_setup(model_dir, data_path, max_new_tokens: int = 3, batch_size: int = 8, **hard):
    """A 2-step soft prompt trained on the toy data (run "soft-run"), beside the task's hard prompts
    (`hard`: shots, template), as (generator, spec over test + validation, model)."""
    from core.evaluate.compare import CompareSpec, hard_systems, soft_system
    from core.generate.generator import Decoding, Generator
    from core.model.loading import load_model
    from core.store.runs import new_run
    from core.tasks import load_task
    from core.train import training
    run = new_run(tiny_config(model_dir, data_path, max_steps=2), run_id="soft-run")
    assert training.train(run)["state"] == "completed"
    lm = load_model(model_dir)
    task = load_task("toy", data_path)
    systems = [soft_system("soft-run", model_dir)] + hard_systems(task, "plain", **hard)
    spec = CompareSpec(task.test + task.validation, systems, Decoding(max_new_tokens=max_new_tokens), "generation",
                       main_metric="token_f1")
    return Generator(lm.model, lm.tokenizer, batch_size=batch_size), spec, model_dir


def assert_loss_matches_peft(model, batch):
    """The workbench's labelled loss and its gradients equal PEFT's own loss path on `batch`."""
    from core.train.fastloss import labelled_loss
    params = [p for p in model.parameters() if p.requires_grad]
    ref = model(**batch).loss
    ref_grads = torch.autograd.grad(ref, params)
    ours = labelled_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    grads = torch.autograd.grad(ours, params)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, rtol=1e-4, atol=1e-6)
