"""Reordered (packed) weights for a stretch of inference (core/model/packed.py) on the tiny llama:
float32 is bitwise the model's own arithmetic; bfloat16 stays close and is undone at the block's end."""
import pytest
import torch

from core.generate import loglik
from core.generate.generator import Decoding, Generator, System
from core.model import kernels, packed
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
