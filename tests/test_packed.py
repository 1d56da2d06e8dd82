"""Reordered (packed) weights for a stretch of inference (core/model/packed.py) on the tiny llama:
float32 is bitwise the model's own arithmetic; bfloat16 stays close and is undone at the block's end."""
import pytest
import torch

from core.generate import loglik
from core.generate.generator import Decoding, Generator, System
from core.model import fused, kernels, packed
from core.model.loading import load_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="this PyTorch build has no oneDNN")


@pytest.fixture
def lm(tiny_model_dir):
    return load_model(tiny_model_dir)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_float32_packed_weights_give_the_same_outputs_and_go_away(lm):
    ids = torch.randint(5, 3000, (3, 11), generator=torch.Generator().manual_seed(0))
    before = _logits(lm.model, ids)
    gen = Generator(lm.model, lm.tokenizer)
    rows = [(System("bare", "{input}", "plain"), x) for x in ("Say river", "Count to three", "Name a colour")]
    texts = gen.generate(rows, Decoding(max_new_tokens=6))
    with gen.in_precision(torch.float32) as used:
        assert used == torch.float32
        assert sum("_packed" in m.__dict__ for m in lm.model.modules()) == 1 + 7 * lm.model.config.num_hidden_layers
        assert torch.equal(_logits(lm.model, ids), before)  # the same float32 arithmetic, bit for bit
        assert gen.generate(rows, Decoding(max_new_tokens=6)) == texts
    assert not any("_packed" in m.__dict__ or "forward" in m.__dict__ for m in lm.model.modules())
    assert torch.equal(_logits(lm.model, ids), before)


def test_bf16_matmuls_are_close_and_leave_no_trace(lm):
    if not packed.bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    ids = torch.randint(5, 3000, (2, 9), generator=torch.Generator().manual_seed(1))
    before = _logits(lm.model, ids)
    gen = Generator(lm.model, lm.tokenizer)
    row = [(System("bare", "{input}", "plain"), "Say river", "river")]
    ll = gen.log_likelihood(row)
    with gen.in_precision(torch.bfloat16) as used:
        assert used == torch.bfloat16
        fast = _logits(lm.model, ids)
        assert not torch.equal(fast, before)  # it really ran in bf16
        assert torch.allclose(fast, before, atol=0.05 * before.abs().max().item())
        bf16_ll = gen.log_likelihood(row)
        assert bf16_ll != ll and bf16_ll[0] == pytest.approx(ll[0], abs=0.02 * abs(ll[0]))
        head, hidden = lm.model.get_output_embeddings(), torch.randn(6, lm.model.config.hidden_size)
        tokens = torch.tensor([3, 50, 700, 9, 9, 1000])
        with torch.no_grad():
            assert packed.bf16_head(head) is not None  # the normaliser from the head's bf16 copy
            exact = torch.log_softmax(hidden @ head.weight.T, -1)[torch.arange(6), tokens]
            assert torch.allclose(loglik.head_logprobs(head, hidden, tokens), exact, atol=0.02)
    with torch.no_grad():
        assert packed.bf16_head(head) is None
    # the bf16 prefix cache of the bare system was dropped: float32 again, exactly as before
    assert gen.log_likelihood(row) == ll and torch.equal(_logits(lm.model, ids), before)


def test_grad_passes_and_other_dtypes_keep_the_plain_path(lm):
    lin = next(m for m in lm.model.modules() if isinstance(m, kernels.FrozenLinear))
    x = torch.randn(4, lin.in_features)
    with packed.packed_weights(lm.model, torch.float32), torch.no_grad():
        with torch.enable_grad():
            assert packed.packed_forward(lin, x) is None  # a training pass never reads the packed copy
        assert packed.packed_forward(lin, x.double()) is None
        assert torch.equal(packed.packed_forward(lin, x), kernels._mm(x, lin.weight, None))


def test_float32_copies_only_where_the_weights_come_from_the_model_file(lm):
    """A model that owns its weights (a training process) would hold both copies: nothing is packed."""
    kernels.own_weights(lm.model)
    with packed.packed_weights(lm.model, torch.float32) as used:
        assert used is None and not any("_packed" in m.__dict__ for m in lm.model.modules())



def test_bf16_llama_layer_fused_forward_matches_the_transformers_layer(lm, monkeypatch):
    """Inside a bf16 block a llama decoder layer runs its fused forward (core/model/llama_bf16.py): its
    update to the residual stream is the transformers layer's, within bf16 rounding; outside, as before."""
    if not packed.bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    layer, cfg = lm.model.model.layers[0], lm.model.config
    at = layer.self_attn
    at.q_proj.weight.data = at.q_proj.weight.detach() * 30  # peaky attention: positions (rotary) matter
    h = torch.randn(2, 9, cfg.hidden_size, generator=torch.Generator().manual_seed(3))
    pos = torch.arange(9)[None].expand(2, 9)
    pe = lm.model.model.rotary_emb(h, pos)
    calls, real = [], fused.rotary_  # called on the fused path only (transformers rotates in PyTorch ops)
    monkeypatch.setattr(fused, "rotary_", lambda *a: calls.append(1) or real(*a))

    def update(forward):
        with torch.no_grad():
            return forward(h, attention_mask=None, position_ids=pos, position_embeddings=pe) - h

    with torch.no_grad():
        plain = update(layer)
        unrotated = update(lambda x, **k: layer(x, **{**k, "position_embeddings": (pe[0] * 0 + 1, pe[1] * 0)}))
    with packed.packed_weights(lm.model, torch.bfloat16):
        assert "_qkv" in layer.__dict__
        fast = update(layer)
    assert calls and "_qkv" not in layer.__dict__ and "forward" not in layer.__dict__
    scale = plain.abs().max().item()
    assert (plain - unrotated).abs().max().item() > 0.1 * scale  # positions change this layer's output
    assert torch.allclose(fast, plain, atol=0.02 * scale)
    assert torch.equal(update(layer), plain)  # float32 again after the block


def test_bf16_fused_llama_layers_keep_log_likelihoods_through_a_prefix_cache(lm, monkeypatch):
    """Inside a bf16 block each llama decoder layer runs its fused forward (core/model/llama_bf16.py):
    the same outputs as transformers' layer on the same bf16 matmuls, through a prefix cache too."""
    if not packed.bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    from core.model import llama_bf16
    ids = torch.randint(5, 3000, (3, 10), generator=torch.Generator().manual_seed(2))
    gen = Generator(lm.model, lm.tokenizer)
    soft = System("soft", "{input}", "plain", vectors=torch.randn(4, lm.model.config.hidden_size).numpy())
    rows = [(soft, "Say river", "river"), (soft, "Count to three please", "one two three")]
    decoders, calls = list(lm.model.model.layers), []
    real = fused.rotary_  # called on the fused path only (the transformers layer rotates in PyTorch ops)
    monkeypatch.setattr(fused, "rotary_", lambda *a: calls.append(1) or real(*a))

    def measured():
        with gen.in_precision(torch.bfloat16):
            fused_now = [("forward" in m.__dict__, "_qkv" in m.__dict__) for m in decoders]
            out = _logits(lm.model, ids), gen.log_likelihood(rows)
        gen.forget_memory_prompts()
        return fused_now, out

    fused_now, (logits, ll) = measured()
    assert fused_now == [(True, True)] * len(decoders) and len(calls) >= 2 * len(decoders)  # it ran
    assert not any("forward" in m.__dict__ or "_qkv" in m.__dict__ for m in decoders)  # undone after the block
    monkeypatch.setattr(llama_bf16, "eligible", lambda *a: False)
    plain_now, (plain_logits, plain_ll) = measured()
    assert plain_now == [(False, False)] * len(decoders)
    assert torch.allclose(logits, plain_logits, atol=0.01 * plain_logits.abs().max().item())
    assert ll == pytest.approx(plain_ll, abs=0.01)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_bf16_fused_llama_layers_give_the_transformers_layers_logits(tokenizer, tmp_path, monkeypatch, heads,
                                                                      kv_heads):
    """Every head layout (one key/value head per query head, grouped, one for all), left padding included:
    the fused layers' logits match transformers' layers on the same bf16 matmuls, and differ from them
    as soon as one piece (rotary on the keys) is left out."""
    if not packed.bf16_supported():
        pytest.skip("this CPU has no native bfloat16")
    from transformers import LlamaConfig, LlamaForCausalLM
    from core.model import llama_bf16
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path)).model
    for layer in model.model.layers:  # peaky attention: positions matter
        layer.self_attn.q_proj.weight.data = layer.self_attn.q_proj.weight.detach() * 30
    ids = torch.randint(5, 3000, (3, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0

    def logits():
        with packed.packed_weights(model, torch.bfloat16), torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits

    fast = logits()
    with monkeypatch.context() as m:
        m.setattr(llama_bf16, "eligible", lambda *a: False)
        plain = logits()
    scale = plain.abs().max().item()
    assert torch.allclose(fast, plain, atol=1e-3 * scale)
    rope = fused.rotary_
    monkeypatch.setattr(fused, "rotary_", lambda x, cos, sin: rope(x[:, :heads], cos, sin))  # keys left unrotated
    assert (logits() - plain).abs().max().item() > 0.05 * scale


def test_a_pass_from_another_thread_waits_for_the_block_to_end(lm):
    """Two app sessions share one model: a log-likelihood pass started from another thread while a bf16
    block is open waits for the block to end, then runs in float32, bitwise as before."""
    import threading
    import time
    gen = Generator(lm.model, lm.tokenizer)
    row = [(System("bare", "{input}", "plain"), "Say river", "river")]
    before, entered, out, order = gen.log_likelihood(row), threading.Event(), {}, []

    def other_session():
        entered.wait()
        out["ll"] = gen.log_likelihood(row)
        order.append("other session's pass")

    thread = threading.Thread(target=other_session)
    thread.start()
    with gen.in_precision(torch.bfloat16):
        entered.set()
        time.sleep(0.5)  # without the lock the other pass would run now, through the bf16 weights
        order.append("bf16 block")
    thread.join(timeout=60)
    assert order == ["bf16 block", "other session's pass"]
    assert out["ll"] == before
