"""Model families beyond llama, each with every method, through the user's path: `workbench tune --model
<folder>` on a tiny random-weight model built here, the adapter read by plain PEFT, the Compare generator
against PEFT `generate`, and the Explore map with the run's prompt placed on it.

To add a family, add a `Family` to FAMILIES: a name and a function building a tiny model over the
bundled tokenizer's vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from core.explore.prompts import run_prompts
from core.explore.vocabgraph import prompt_points
from core.explore.vocabmap import load_or_fit
from core.generate.generator import Decoding, Generator
from core.generate.systems import run_system
from core.model.loading import embedding_matrix, load_model
from core.store.runs import Run
from tests.conftest import peft_reference
from workbench.cli import main

INPUTS = ["Say apple", "Say a much longer thing please", "x"]
MAP_TOKENS = 300  # the map over the first token ids only (as WORKBENCH_MAP_TOKENS does)
METHODS = {"prompt-tuning": [], "p-tuning": ["--encoder-hidden-size", "16"],
           "prefix-tuning": ["--prefix-projection", "true", "--encoder-hidden-size", "16"]}


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable  # tokenizer -> a tiny model with random weights over its vocabulary


def _ids(tok) -> dict:
    return dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id)


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=256, **_ids(tok)))


def _opt(tok):
    from transformers import OPTConfig, OPTForCausalLM
    return OPTForCausalLM(OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2,
                                    word_embed_proj_dim=16, max_position_embeddings=256, **_ids(tok)))


def _qwen2(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2ForCausalLM(Qwen2Config(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        max_position_embeddings=256, **_ids(tok)))


def _gemma3(tok):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    return Gemma3ForCausalLM(Gemma3TextConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                              max_position_embeddings=256, sliding_window=64, **_ids(tok)))


FAMILIES = [Family("gpt2", _gpt2), Family("opt", _opt), Family("qwen2", _qwen2), Family("gemma3", _gemma3)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy CI machine waiting threads make each small op
    cost milliseconds (an OPT forward pass: 0.5 s with 2 threads, 20 ms with one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=FAMILIES, ids=lambda f: f.name)
def family_dir(request, tmp_path_factory, tokenizer):
    """(family, its tiny model saved as a folder with the bundled tokenizer)."""
    torch.manual_seed(0)
    model = request.param.build(tokenizer)
    out = tmp_path_factory.mktemp(request.param.name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return request.param, str(out)


@pytest.fixture(scope="module")
def family_lm(family_dir):
    return load_model(family_dir[1])


@pytest.fixture(scope="module")
def family_map(family_dir, family_lm, tmp_path_factory):
    """The Explore map of the family's first MAP_TOKENS token embeddings."""
    anchors = embedding_matrix(family_lm.model).numpy()[:MAP_TOKENS]  # (V, D)
    return load_or_fit(tmp_path_factory.mktemp("map"), anchors, n_epochs=10, n_neighbors=5)


@pytest.mark.parametrize("method", list(METHODS))
def test_family_trains_loads_in_peft_generates_like_peft_and_maps(home, family_dir, family_lm, family_map,
                                                                   tokenizer, toy_data, method, capsys):
    family, model_dir = family_dir
    run_id = f"{family.name}-{method}"
    flags = ["--model", model_dir, "--task", "toy", "--data-path", toy_data, "--run-id", run_id, "--method", method,
             "--steps", "3", "--eval-every", "3", "--save-every", "3", "--batch-size", "4", "--eval-examples", "2",
             "--virtual-tokens", "4", "--max-input-tokens", "32", "--max-target-tokens", "6", "--warmup-steps", "0",
             "--prompt-format", "plain", "--learning-rate", "0.3", *METHODS[method]]
    assert main(["tune", *flags]) == 0, capsys.readouterr().err
    run = Run.open(run_id)
    status = run.status()
    assert status["state"] == "completed" and status["step"] == 3
    losses = [m["loss"] for m in run.metrics() if m["kind"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))

    # plain PEFT reads the adapter folder
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(run.adapter_dir))
    conf = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert conf["peft_type"] == method.upper().replace("-", "_") and conf["num_virtual_tokens"] == 4
    assert peft.peft_config["default"].num_virtual_tokens == 4

    # the Compare generator (batched, prompt cache shared by the rows) gives PEFT's greedy tokens
    system = run_system(run_id, model=model_dir)
    gen = Generator(family_lm.model, family_lm.tokenizer, batch_size=len(INPUTS))
    outs = gen.generate([(system, x) for x in INPUTS], Decoding(max_new_tokens=6))
    assert outs == peft_reference(model_dir, run.adapter_dir, system.template, system.prompt_format, tokenizer,
                                  INPUTS, n=6)

    # Explore: the prompt on the family's map (prefix tuning's per-layer keys/values are not drawn)
    peft_type, prompts = run_prompts(run)
    assert peft_type == conf["peft_type"]
    if method == "prefix-tuning":
        assert prompts == []
        return
    (source, vectors), = prompts
    assert vectors.shape == (4, family_lm.model.config.hidden_size)
    points = prompt_points(source.label, vectors, family_map, k=3)
    assert points.xy.shape == (4, 2) and np.isfinite(points.xy).all()
    assert points.nearest.shape == (4, 3) and (points.nearest < MAP_TOKENS).all()
