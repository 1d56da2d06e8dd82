import pytest
import torch
from transformers import AutoModelForCausalLM

from core.config import TuneConfig
from core.train.methods import build_peft_model, frequent_token_ids, label_vectors, prompt_vectors
from core.model.loading import freeze


def tiny(tiny_model_dir):
    m = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    freeze(m)
    return m


@pytest.mark.parametrize("kw", [
    dict(method="prompt-tuning", init="random"),
    dict(method="prompt-tuning", init="sample-vocab"),
    dict(method="prompt-tuning", init="text", init_text="Rewrite this sentence"),
    dict(method="prompt-tuning", init="class-label", label_words=["positive", "negative"]),
    dict(method="p-tuning", encoder_type="mlp"),
    dict(method="p-tuning", encoder_type="lstm"),
    dict(method="prefix-tuning", prefix_projection=False),
    dict(method="prefix-tuning", prefix_projection=True),
])
def test_every_method_trains_only_prompt_parameters(tiny_model_dir, tokenizer, kw):
    cfg = TuneConfig(num_virtual_tokens=5, encoder_hidden_size=8, **kw)
    model = build_peft_model(tiny(tiny_model_dir), tokenizer, cfg, tiny_model_dir)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("prompt_encoder" in n for n in trainable)
    assert not any(p.requires_grad for p in model.get_base_model().parameters())
    ids = torch.tensor([tokenizer("hello world")["input_ids"]])
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_sample_vocab_init_draws_from_the_top_k_frequent_tokens(tiny_model_dir, tokenizer):
    base = tiny(tiny_model_dir)
    emb = base.get_input_embeddings().weight.detach().clone()
    cfg = TuneConfig(num_virtual_tokens=6, init="sample-vocab", sample_vocab_top_k=50)
    vecs = prompt_vectors(build_peft_model(base, tokenizer, cfg, tiny_model_dir))
    pool = frequent_token_ids(tokenizer, 50)
    assert len(pool) == 50 and not set(pool.tolist()) & set(tokenizer.all_special_ids)
    for v in vecs:  # every start vector is exactly one of the pool's embeddings
        assert (emb[pool] - v).abs().sum(-1).min() < 1e-6


def test_class_label_init_starts_with_the_label_embeddings(tiny_model_dir, tokenizer):
    base = tiny(tiny_model_dir)
    emb = base.get_input_embeddings().weight.detach().clone()
    cfg = TuneConfig(num_virtual_tokens=4, init="class-label", label_words=["positive", "negative"])
    vecs = prompt_vectors(build_peft_model(base, tokenizer, cfg, tiny_model_dir))
    assert torch.allclose(vecs[:2], label_vectors(tokenizer, emb, ["positive", "negative"]), atol=1e-6)


def test_text_init_uses_the_text_tokens(tiny_model_dir, tokenizer):
    base = tiny(tiny_model_dir)
    emb = base.get_input_embeddings().weight.detach().clone()
    cfg = TuneConfig(num_virtual_tokens=3, init="text", init_text="Rewrite this sentence")
    vecs = prompt_vectors(build_peft_model(base, tokenizer, cfg, tiny_model_dir))
    ids = tokenizer("Rewrite this sentence")["input_ids"][:3]
    assert torch.allclose(vecs, emb[ids], atol=1e-6)


def test_prefix_tuning_has_no_input_space_vectors(tiny_model_dir, tokenizer):
    cfg = TuneConfig(num_virtual_tokens=3, method="prefix-tuning")
    assert prompt_vectors(build_peft_model(tiny(tiny_model_dir), tokenizer, cfg, tiny_model_dir)) is None
    cfg = TuneConfig(num_virtual_tokens=3, method="p-tuning", encoder_hidden_size=8)
    assert prompt_vectors(build_peft_model(tiny(tiny_model_dir), tokenizer, cfg, tiny_model_dir)).shape == (3, 16)
