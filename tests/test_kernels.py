"""Frozen linear layers on oneDNN: same results as F.linear, input gradients, and every fallback."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from core.model import kernels
from tests.conftest import use_settings
from core.model.kernels import FrozenLinear, use_onednn
from core.model.loading import load_model

pytestmark = pytest.mark.skipif(not kernels.available(), reason="this PyTorch build has no oneDNN")


def frozen(n_in=24, n_out=40, bias=True):
    torch.manual_seed(0)
    layer = torch.nn.Linear(n_in, n_out, bias=bias).requires_grad_(False)
    assert use_onednn(layer) == 1
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_input_gradient_equal_f_linear(bias):
    layer = frozen(bias=bias)
    assert type(layer) is FrozenLinear
    x = torch.randn(3, 7, 24, requires_grad=True)
    y = layer(x)
    ref_x = x.detach().clone().requires_grad_(True)
    ref = F.linear(ref_x, layer.weight, layer.bias)
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    assert torch.allclose(x.grad, ref_x.grad, rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is None  # frozen: no weight gradient is computed


def test_falls_back_to_f_linear_when_the_weight_trains_or_under_bf16_autocast():
    layer = frozen()
    x = torch.randn(4, 24)
    layer.weight.requires_grad_(True)  # trainable again: ordinary autograd, weight gradient included
    layer(x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    layer.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast still casts the matmul


def test_switched_off_by_the_setting(monkeypatch):
    use_settings(monkeypatch, onednn=False)
    layer = torch.nn.Linear(4, 4)
    assert use_onednn(layer) == 0 and type(layer) is torch.nn.Linear


def test_loaded_model_uses_it_and_gives_the_stock_logits(tiny_model_dir, tokenizer):
    lm = load_model(tiny_model_dir)
    layers = [m for m in lm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert layers and all(type(m) is FrozenLinear for m in layers)
    stock = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([tokenizer("The river flows past the stone bridge")["input_ids"]])
    with torch.no_grad():
        ours, ref = lm.model(input_ids=ids).logits, stock(input_ids=ids).logits
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5)
    assert set(lm.model.state_dict()) == set(stock.state_dict())  # saves and loads as before


def test_joined_weights_of_layers_that_share_an_input_built_once_and_rebuilt_when_a_weight_changes(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    at, mlp = lm.model.model.layers[0].self_attn, lm.model.model.layers[0].mlp
    qkv = kernels.joined_weight(at.q_proj, at.k_proj, at.v_proj)
    assert torch.equal(qkv, torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]))
    assert kernels.joined_weight(at.q_proj, at.k_proj, at.v_proj) is qkv  # kept, not rebuilt
    assert "_joined_weight" not in str(list(lm.model.state_dict()))  # not part of the model's weights
    gate_up = kernels.joined_weight(mlp.gate_proj, mlp.up_proj)
    mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight * 2, requires_grad=False)  # replaced
    assert torch.equal(kernels.joined_weight(mlp.gate_proj, mlp.up_proj)[mlp.gate_proj.weight.shape[0]:],
                       mlp.up_proj.weight)
    before = gate_up.clone()
    with torch.no_grad():
        mlp.gate_proj.weight.mul_(3)  # changed in place: the weight is a view of the joined tensor
    assert torch.equal(kernels.joined_weight(mlp.gate_proj, mlp.up_proj)[:mlp.gate_proj.weight.shape[0]],
                       mlp.gate_proj.weight)
    assert not torch.equal(before, kernels.joined_weight(mlp.gate_proj, mlp.up_proj))
    mlp.up_proj.weight.requires_grad_(True)  # a layer that trains is never joined
    assert kernels.joined_weight(mlp.gate_proj, mlp.up_proj) is None


def test_joined_weights_are_the_layers_own_weights_and_the_rest_leave_the_file_mapping(tiny_model_dir):
    lm = load_model(tiny_model_dir)
    at = lm.model.model.layers[0].self_attn
    before = {n: p.clone() for n, p in lm.model.named_parameters()}
    qkv = kernels.joined_weight(at.q_proj, at.k_proj, at.v_proj)
    for m in (at.q_proj, at.k_proj, at.v_proj):  # each weight is its block of rows of the joined tensor: one copy
        assert m.weight.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()
    kernels.own_weights(lm.model)
    assert at.q_proj.weight.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr()  # kept joined
    assert kernels.joined_weight(at.q_proj, at.k_proj, at.v_proj) is qkv
    after = dict(lm.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # the same values, own memory


@pytest.mark.parametrize("onednn", [True, False])
def test_frozen_matmul_with_a_fused_sum_and_a_transposed_weight(onednn, monkeypatch):
    use_settings(monkeypatch, onednn=onednn)
    torch.manual_seed(0)
    x, w, add = torch.randn(5, 12), torch.randn(8, 12), torch.randn(5, 8)
    assert torch.allclose(kernels.frozen_matmul(x, w, add=add), x @ w.T + add, rtol=1e-5, atol=1e-5)
    g = torch.randn(5, 8)
    assert torch.allclose(kernels.frozen_matmul(g, w.t()), g @ w, rtol=1e-5, atol=1e-5)  # an input gradient
