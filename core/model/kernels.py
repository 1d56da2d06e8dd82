"""Frozen linear layers on oneDNN's CPU matmul.

PyTorch sends a float32 `nn.Linear` on the CPU to MKL's sgemm. On AMD processors MKL does not
take its AVX-512 code path, so oneDNN's matmul (shipped inside every PyTorch CPU build,
`torch.ops.mkldnn`) is faster on the same shapes; `bench/bench_kernels.py` measures both on the
bundled model's linear layers (8 rows, one decode step; 640 tokens, a training batch). Both
compute in float32 (no bf16 or tf32 shortcuts); results differ only in summation order (~1e-6
relative).

The base model is frozen, so its linear layers need no weight gradient: the backward pass only
computes the input gradient, `grad @ W`, which is the same oneDNN matmul on `W.t()` (a view,
no copy). Anything else falls back to `F.linear`: a weight that trains, bf16 autocast (which
must keep casting), other dtypes and non-CPU devices. `WORKBENCH_ONEDNN=0` turns it off.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from core import settings

_OP = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_BINARY = getattr(_OP, "binary", None)  # x @ W.T + other in one pass


def _mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _OP(x, weight, bias, "none", [], "")  # (..., out) = x @ weight.T + bias


class _FrozenLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return _mm(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        gx = _mm(grad.contiguous(), weight.t(), None) if ctx.needs_input_grad[0] else None  # (..., in)
        return gx, None, None


class FrozenLinear(torch.nn.Linear):
    """An `nn.Linear` whose frozen float32 CPU matmuls run on oneDNN; same parameters, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if "_packed" in self.__dict__:  # inside core/model/packed.packed_weights
            from core.model.packed import packed_forward
            out = packed_forward(self, x)
            if out is not None:
                return out
        w = self.weight
        if (w.requires_grad or w.device.type != "cpu" or w.dtype != torch.float32 or x.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or (self.bias is not None and self.bias.requires_grad)):
            return F.linear(x, w, self.bias)
        return _FrozenLinearFn.apply(x, w, self.bias)


def _onednn_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and available()


def frozen_matmul(x: torch.Tensor, weight: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ add) for a frozen float32 CPU weight, on oneDNN where it is available; `weight`
    may be a transposed view (the input gradient of a linear layer is grad @ W = frozen_matmul(grad, W.t())).
    The sum with `add` is fused into the matmul's output pass."""
    if not _onednn_ok(x, weight):
        return F.linear(x, weight) if add is None else torch.addmm(add, x, weight.t())
    if add is None or _BINARY is None:
        out = _mm(x, weight, None)
        return out if add is None else out.add_(add)
    return _BINARY(x, add, weight, None, "add")


@functools.cache
def _probe() -> bool:
    try:
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(3, 5, 16, generator=g), torch.randn(8, 16, generator=g)
        return bool(torch.allclose(_mm(x, w, None), F.linear(x, w), rtol=1e-5, atol=1e-5))
    except RuntimeError:
        return False


def available() -> bool:
    """oneDNN is in this PyTorch build, not turned off, and agrees with F.linear on a probe."""
    if _OP is None or not settings.SETTINGS.onednn or not torch.backends.mkldnn.is_available():
        return False
    return _probe()


def use_onednn(model: torch.nn.Module) -> int:
    """Switch the model's plain `nn.Linear` layers to FrozenLinear in place; returns how many."""
    if not available():
        return 0
    n = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = FrozenLinear
            n += 1
    return n


def joined_weight(*linears: torch.nn.Module) -> torch.Tensor | None:
    """The weights of frozen linear layers that read the same input (a llama layer's q/k/v, its
    gate/up) stacked in one (sum of outputs, inputs) tensor, so that a training pass takes their
    outputs, and their input gradient, in one matmul each (core/train/flatstack.py: 31 ms of a 0.9 s
    step). Built on first use and kept on the first layer; each layer's weight then becomes its rows
    of the joined tensor (a view), so the model holds one copy, not two (for the bundled model the
    copy was 279 MB of the training process). A weight changed in place changes the joined tensor
    with it; a weight replaced by another tensor is joined again. None when the layers have
    biases, train, or differ in input size, dtype or device. (A model whose weights share one
    tensor this way saves through safetensors only after `.clone()`-ing them: the workbench never
    saves the frozen base model.)"""
    ws = [m.weight for m in linears]
    if any(m.bias is not None for m in linears) or any(w.requires_grad for w in ws):
        return None
    if len({(w.shape[1], w.dtype, w.device) for w in ws}) != 1:
        return None
    cached = getattr(linears[0], "_joined_weight", None)
    if cached is not None and _rows_of(cached, ws):
        return cached
    joined = torch.cat([w.detach() for w in ws])  # (sum of outputs, inputs)
    start, mapped = 0, _file_mappings()
    for m in linears:
        rows, old = m.weight.shape[0], m.weight.data
        m.weight.data = joined[start:start + rows]  # the same Parameter, now a view: one copy of the weights
        _drop_pages(old, mapped)  # a weight read from the model file leaves the resident set
        start += rows
    linears[0]._joined_weight = joined
    return joined


def _rows_of(joined: torch.Tensor, ws: list[torch.Tensor]) -> bool:
    """Every weight is still its own block of rows of `joined`, in order."""
    start, base = 0, joined.untyped_storage().data_ptr()
    for w in ws:
        if (w.untyped_storage().data_ptr() != base or not w.is_contiguous()
                or w.storage_offset() != joined.storage_offset() + start * joined.shape[1]):
            return False
        start += w.shape[0]
    return start == joined.shape[0]


def own_weights(model: torch.nn.Module) -> None:
    """Copy every parameter and buffer of a frozen model into memory of the process's own, once.

    `from_pretrained` maps the safetensors file and each weight reads from that mapping; its pages
    count in the resident size as they are read, and the mapping stays while any weight reads from it.
    A training pass that joins weights (joined_weight) would otherwise keep both the mapped
    originals and the joined copies. Called after the weights are joined, it lets the mapping go:
    the model then holds one copy of each weight."""
    if getattr(model, "_owns_weights", False):
        return
    joined = {m._joined_weight.untyped_storage().data_ptr() for m in model.modules() if hasattr(m, "_joined_weight")}
    mapped = _file_mappings()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if not t.requires_grad and t.untyped_storage().data_ptr() not in joined:  # joined ones are copies already
                old = t.data
                t.data = old.clone()
                _drop_pages(old, mapped)  # its file pages leave the resident set now, not when the mapping closes
    model._owns_weights = True


_PAGE = 4096
_MADV_DONTNEED = 4


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from safetensors files (/proc/self/maps; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            lines = [line.split() for line in f if line.rstrip().endswith(".safetensors")]
    except OSError:
        return []
    return [tuple(int(x, 16) for x in parts[0].split("-")) for parts in lines]


def file_backed(t: torch.Tensor, mapped: list[tuple[int, int]]) -> bool:
    """The tensor's bytes lie inside one of the file mappings `mapped` (_file_mappings())."""
    start = t.data_ptr()
    return any(lo <= start and start + t.numel() * t.element_size() <= hi for lo, hi in mapped)


def _drop_pages(t: torch.Tensor, mapped: list[tuple[int, int]]) -> None:
    """Drop the resident pages of a tensor read from a file mapping (re-read from the file if touched
    again, so nothing can change); a tensor in anonymous memory is left alone."""
    if not file_backed(t, mapped):
        return
    start, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    lo, hi = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # the whole pages inside the tensor
    if hi > lo:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)
        except (OSError, AttributeError):
            pass
