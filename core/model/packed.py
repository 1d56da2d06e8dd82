"""Frozen linear weights reordered once into oneDNN's blocked layout, for a stretch of inference.

`FrozenLinear` (core/model/kernels.py) hands oneDNN a plain row-major weight on every call; oneDNN then
works from that layout (or reorders it) each time. Reordered once with `_reorder_linear_weight`, the
same float32 weights give bitwise the same outputs, and every linear layer of a decode step runs 1.25x
(8 rows) to 1.3x (32 rows) faster, a 704-row pass 1.1x (`bench/bench_kernels.py`); a comparison's
generation 7-17% faster in all (docs/performance.md).

In bfloat16 the matmuls take bf16 inputs and weights and accumulate in float32 (the CPU's
AVX512-BF16/AMX dot products: 2.0x plain float32 at 8 to 704 rows here); everything between them
(norms, attention, softmax, the residual stream) stays float32, and so does the LM head: bf16 logits would round the
log-probabilities themselves (on paraphrase that halves the importance's largest error, 0.009 -> 0.004,
for 7% more time). A llama-style MLP takes gate and up in one matmul and SwiGLU straight off its bf16
output (fused.swiglu_bf16), and transformers' llama decoder layer runs a fused forward
(core/model/llama_bf16.py: q, k and v in one matmul, norms and rotary in C loops). That is an
approximation: `token_importance` uses it only where the user keeps the default (`docs/performance.md`
has its measured error against float32).

Both are transient: the reordered copies live for the `with` block only. Where the weights are read from
the model file (the app's and the CLI's inference models), their pages leave the resident set while the
copies serve, so memory stays flat; a model that owns its weights (a training process) would hold both
(float32: the linear weights once more, 0.43 GB for the bundled model; bf16: half that).
"""
from __future__ import annotations

import contextlib
import functools
import threading
import types

import torch

from core.model import fused, kernels, llama_bf16
from core.model.device import on_model_device
from core.model.memory import release_freed

HINT = 704  # rows the layout is tuned for (a prefill of 32 x 22 tokens); decode steps gain as much with it


@functools.cache
def bf16_supported() -> bool:
    """The CPU multiplies bfloat16 natively (oneDNN's check: AVX512-BF16 or AMX) and oneDNN is on."""
    try:
        return bool(kernels.available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _linears(model: torch.nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, kernels.FrozenLinear) and not m.weight.requires_grad
            and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]


_NEW_LOCK = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The model's own re-entrant lock. A packed block swaps weights and forwards on the model itself, and
    the app's sessions share one model: a pass from another thread (a second browser tab's comparison)
    waits for the block to end instead of running through its bf16 weights."""
    with _NEW_LOCK:
        return model.__dict__.setdefault("_workbench_lock", threading.RLock())


def on_model(method):
    """A Generator method that runs the model: it holds the model's lock (model_lock), and new tensors go to
    the model's device (core/model/device.on_model_device)."""
    on_device = on_model_device(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with model_lock(self.model):
            return on_device(self, *args, **kwargs)
    return wrapper


@contextlib.contextmanager
def packed_weights(model: torch.nn.Module, dtype: torch.dtype = torch.float32):
    """Within the block, the model's frozen CPU linear layers multiply with their weights reordered once
    (in `dtype`: float32, exact, or bfloat16); outside it, as before. Yields the dtype in use: float32
    where bf16 was asked on a CPU without it; None where nothing changes: oneDNN off, or float32 asked
    for weights that are not read from the model file (their copy would stay resident beside them)."""
    with model_lock(model):
        with _packed(model, dtype) as used:
            yield used


@contextlib.contextmanager
def _packed(model: torch.nn.Module, dtype: torch.dtype):
    if dtype == torch.bfloat16 and not bf16_supported():
        dtype = torch.float32
    layers, mapped = _linears(model) if kernels.available() else [], kernels._file_mappings()
    if dtype == torch.float32 and not all(kernels.file_backed(m.weight, mapped) for m in layers):
        layers = []  # weights the process owns (a training process): a float32 copy would double them
    if not layers:
        yield None
        return
    reorder = torch.ops.mkldnn._reorder_linear_weight
    packed: dict[int, torch.Tensor] = {}  # by weight storage: layers that share a weight share its copy
    ids = {id(m) for m in layers}
    mlps = [m for m in model.modules() if _swiglu_mlp(m, ids)] if dtype == torch.bfloat16 else []
    decoders = [m for m in model.modules() if llama_bf16.eligible(m, ids)] if dtype == torch.bfloat16 else []
    joined = {id(p) for m in mlps for p in (m.gate_proj, m.up_proj)}
    joined |= {id(p) for m in decoders for p in (m.self_attn.q_proj, m.self_attn.k_proj, m.self_attn.v_proj)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    try:
        for m in mlps:  # gate and up in one matmul, then SwiGLU on its bf16 output (fused.swiglu_bf16)
            m._gate_up = reorder(torch.cat([m.gate_proj.weight.detach(), m.up_proj.weight.detach()]).to(dtype), HINT)
            m.forward = types.MethodType(_mlp_forward, m)
            for lin in (m.gate_proj, m.up_proj):
                kernels._drop_pages(lin.weight, mapped)
        for m in decoders:  # q, k and v in one matmul, norms and rotary in C loops (core/model/llama_bf16.py)
            llama_bf16.install(m, dtype, reorder, HINT)
            for lin in (m.self_attn.q_proj, m.self_attn.k_proj, m.self_attn.v_proj):
                kernels._drop_pages(lin.weight, mapped)
        for m in (lin for lin in layers if id(lin) not in joined):
            key, own = m.weight.data_ptr(), torch.float32 if m is head else dtype  # logits stay float32
            if key not in packed:
                packed[key] = reorder(m.weight.detach().to(own), HINT)
                kernels._drop_pages(m.weight, mapped)  # read from the model file: its pages leave the resident
                # set while the copy serves (re-read from the page cache when next touched)
            m._packed = (packed[key], own)
        if head is not None and dtype == torch.bfloat16 and id(head) in ids:
            head._head_bf16 = reorder(head.weight.detach().to(dtype), HINT)  # for scoring (bf16_head), not logits
        yield dtype
    finally:
        for m in layers:
            m.__dict__.pop("_packed", None)
        if head is not None:
            head.__dict__.pop("_head_bf16", None)
        for m in decoders:
            llama_bf16.remove(m)
        for m in mlps:
            m.__dict__.pop("forward", None)
            m.__dict__.pop("_gate_up", None)
        packed.clear()
        release_freed()  # the copies go back to the system, not to a heap the next pass grows past


def _swiglu_mlp(m: torch.nn.Module, layers: set[int]) -> bool:
    """A llama-style MLP, down(silu(gate(x)) * up(x)), of frozen bias-free layers."""
    parts = [getattr(m, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    return (all(id(p) in layers and p.bias is None for p in parts)
            and _is_silu(getattr(m, "act_fn", None))
            and parts[0].weight.shape == parts[1].weight.shape)


def _is_silu(act) -> bool:
    """torch's SiLU or transformers' (ACT2FN["silu"]: the same function); checked on a probe."""
    if not isinstance(act, torch.nn.Module):
        return False
    x = torch.linspace(-6, 6, 13)
    return bool(torch.equal(act(x), torch.nn.functional.silu(x)))


def _mlp_forward(self, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
        return type(self).forward(self, x)
    gu = kernels._OP(x.to(torch.bfloat16), self._gate_up, None, "none", [], "")  # (..., 2F) bf16
    out = kernels._OP(fused.swiglu_bf16(gu), self.down_proj._packed[0], None, "none", [], "")
    return fused.widen(out)


def bf16_head(head: torch.nn.Module):
    """Inside a bfloat16 block: the bias-free output head's products in bf16 (float32 accumulation), as a
    function (N, D) float32 -> (N, V) bfloat16, for a log-likelihood's normaliser
    (core/generate/loglik.head_logprobs); None elsewhere, where the head is float32."""
    weight = head.__dict__.get("_head_bf16")
    if weight is None or head.bias is not None or torch.is_grad_enabled():
        return None
    return lambda x: kernels._OP(x.contiguous().to(torch.bfloat16), weight, None, "none", [], "")


def packed_forward(module, x: torch.Tensor) -> torch.Tensor | None:
    """The layer's output through its reordered weight, or None where it has none or x needs grad."""
    packed = module.__dict__.get("_packed")
    if packed is None or torch.is_grad_enabled() or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    weight, dtype = packed
    out = kernels._OP(x.to(dtype), weight, None, "none", [], "")
    if dtype != torch.float32:
        out = fused.widen(out)
    return out if module.bias is None else out + module.bias
