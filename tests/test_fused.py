"""Fused C kernels: each against its PyTorch formula and autograd, strided inputs, NaNs, and the
fallbacks when there is no compiler or the kernels are turned off."""
import pytest
import torch
import torch.nn.functional as F

from core.model import fused
from tests.conftest import use_settings

needs_c = pytest.mark.skipif(not fused.available(), reason="no C compiler to build the fused kernels")


@pytest.fixture(params=["C", "PyTorch"])
def impl(request, monkeypatch):
    if request.param == "C" and not fused.available():
        pytest.skip("no C compiler to build the fused kernels")
    if request.param == "PyTorch":
        monkeypatch.setattr(fused, "_forced", fused._NONE)
    return request.param


def rotate_half(x):
    m = x.shape[-1] // 2
    return torch.cat((-x[..., m:], x[..., :m]), -1)


def test_rms_norm_and_its_backward_match_autograd(impl):
    torch.manual_seed(0)
    h, w, dy, dres = torch.randn(7, 40), torch.rand(40) + 0.5, torch.randn(7, 40), torch.randn(7, 40)
    x, r = fused.rms_norm(h, w, 1e-5)
    leaf = h.clone().requires_grad_(True)
    ref = w * (leaf * torch.rsqrt(leaf.pow(2).mean(-1, keepdim=True) + 1e-5))  # LlamaRMSNorm
    assert torch.allclose(x, ref, rtol=1e-5, atol=1e-6)
    ref.backward(dy)
    assert torch.allclose(fused.rms_norm_backward(dy, h, r, w, dres), leaf.grad + dres, rtol=1e-4, atol=1e-5)


def test_rotary_and_its_backward_match_autograd_on_strided_heads(impl):
    """Queries as the attention holds them: (L, heads, d) rows of a wider matmul output."""
    torch.manual_seed(0)
    L, H, d = 6, 3, 8
    wide = torch.randn(L, 2 * H * d)
    q = wide[:, H * d:].view(L, H, d)  # row stride 2*H*d: not contiguous
    cos, sin = torch.randn(L, d), torch.randn(L, d)
    leaf = q.clone().requires_grad_(True)
    ref = leaf * cos[:, None] + rotate_half(leaf) * sin[:, None]
    out = fused.rotary_(q, cos, sin)
    assert out.data_ptr() == wide[:, H * d:].data_ptr()  # in place
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    dy = torch.randn(H, L, d).transpose(0, 1)  # a head-major gradient, as attention's backward gives it
    ref.backward(dy)
    assert torch.allclose(fused.rotary_backward(dy, cos, sin), leaf.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["two tensors", "halves of one matmul output"])
def test_swiglu_and_its_backward_match_autograd(impl, layout):
    torch.manual_seed(0)
    if layout == "two tensors":
        g, u = torch.randn(5, 33) * 4, torch.randn(5, 33)
    else:
        g, u = (torch.randn(5, 66) * 4).split(33, dim=1)  # row stride 66
    da = torch.randn(5, 33)
    gl, ul = g.clone().requires_grad_(True), u.clone().requires_grad_(True)
    ref = F.silu(gl) * ul
    assert torch.allclose(fused.swiglu(g, u), ref, rtol=1e-5, atol=1e-6)
    ref.backward(da)
    dgu = fused.swiglu_backward(da, g, u)
    assert dgu.shape == (5, 66)
    assert torch.allclose(dgu[:, :33], gl.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(dgu[:, 33:], ul.grad, rtol=1e-4, atol=1e-5)


def test_a_nan_comes_out_as_nan(impl):
    """A diverged soft prompt must show up as a NaN loss, not as finite garbage."""
    h = torch.randn(3, 16)
    h[1, 4] = float("nan")
    x, _ = fused.rms_norm(h, torch.ones(16), 1e-5)
    assert x[1].isnan().all() and not x[[0, 2]].isnan().any()
    g = torch.randn(3, 16)
    g[2, 0] = float("nan")
    assert fused.swiglu(g, torch.randn(3, 16))[2, 0].isnan()


def test_no_compiler_means_pytorch_ops_with_the_same_results(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_MODEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setattr(fused.shutil, "which", lambda name: None)
    fused._lib.cache_clear()
    try:
        assert not fused.available()
        g, u = torch.randn(4, 8), torch.randn(4, 8)
        assert torch.allclose(fused.swiglu(g, u), F.silu(g) * u)
    finally:
        fused._lib.cache_clear()
    assert not list(tmp_path.glob("kernels/*.so"))


def test_turned_off_by_the_setting(monkeypatch):
    use_settings(monkeypatch, fused=False)
    fused._lib.cache_clear()
    try:
        assert not fused.available()
    finally:
        fused._lib.cache_clear()


@needs_c
def test_a_failed_build_says_why_and_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("WORKBENCH_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(fused, "_CFLAGS", [*fused._CFLAGS, "-fno-such-flag"])
    fused._lib.cache_clear()
    try:
        assert not fused.available()
    finally:
        fused._lib.cache_clear()
    assert "could not be built" in caplog.text and "no-such-flag" in caplog.text


@needs_c
def test_built_once_then_loaded_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_MODEL_CACHE", str(tmp_path))
    fused._lib.cache_clear()
    try:
        assert fused.available()
        (built,) = tmp_path.glob("kernels/fused-*.so")
        fused._lib.cache_clear()
        calls = []
        run = fused.subprocess.run
        monkeypatch.setattr(fused.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or run(cmd, **kw))
        assert fused.available()
        assert [c[1] for c in calls] == ["--version"]  # the compiler was asked its version, nothing built
        assert list(tmp_path.glob("kernels/fused-*.so")) == [built]
    finally:
        fused._lib.cache_clear()


def test_cross_entropy_and_its_gradient_left_in_the_logits_match_autograd(impl):
    torch.manual_seed(0)
    z, t = torch.randn(6, 300) * 8, torch.tensor([0, 299, 5, 5, 120, 7])
    leaf = z.clone().requires_grad_(True)
    ref = F.cross_entropy(leaf, t)
    ref.backward()
    out = z.clone()
    assert fused.cross_entropy_(out, t, grad=True).item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(out, leaf.grad, rtol=1e-4, atol=1e-7)
    untouched = z.clone()
    assert fused.cross_entropy_(untouched, t, grad=False).item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.equal(untouched, z)


@needs_c
def test_cross_entropy_refuses_a_target_outside_the_vocabulary():
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        fused.cross_entropy_(torch.randn(2, 10), torch.tensor([3, 10]), grad=True)


def test_bf16_widening_and_swiglu_match_pytorch_bit_for_bit(impl):
    """The bf16 matmul path of core/model/packed.py: widening is exact; SwiGLU on a joined gate|up
    output rounds to bf16 as PyTorch's own conversion does (NaN stays NaN)."""
    torch.manual_seed(0)
    gu = (torch.randn(6, 2 * 40) * 4).to(torch.bfloat16)
    gu[0, 3] = float("nan")
    assert torch.equal(fused.widen(gu), gu.float()) is False  # NaN != NaN: compare the bits instead
    assert torch.equal(fused.widen(gu).view(torch.int32), gu.float().view(torch.int32))
    g, u = gu.float().chunk(2, -1)
    ref = (F.silu(g) * u).to(torch.bfloat16)
    got = fused.swiglu_bf16(gu)
    assert got.dtype == torch.bfloat16 and got.shape == (6, 40)
    assert torch.isnan(got[0, 3]) and torch.equal(torch.nan_to_num(got.float()), torch.nan_to_num(ref.float()))
    assert fused.swiglu_bf16(gu.view(2, 3, 80)).shape == (2, 3, 40)  # leading dims kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logsumexp_and_argmax_of_logits_match_pytorch(impl, dtype):
    """The log-likelihood's normaliser (core/generate/loglik.py), float32 or read off bf16 logits."""
    z = (torch.randn(7, 3, 1000, generator=torch.Generator().manual_seed(4)) * 8).to(dtype)
    lse, top = fused.logsumexp(z)
    assert lse.dtype == torch.float32 and lse.shape == top.shape == (7, 3)
    assert torch.allclose(lse, z.float().logsumexp(-1), rtol=1e-6, atol=1e-5)
    assert torch.equal(top, z.float().argmax(-1))
    z[2, 1, 5] = float("nan")
    assert torch.isnan(fused.logsumexp(z)[0][2, 1]) and not torch.isnan(fused.logsumexp(z)[0][2, 0])
