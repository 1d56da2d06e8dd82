"""Fused float32 CPU kernels for the elementwise parts of a llama decoder layer, with PyTorch fallbacks.

The hand-written training pass (core/train/flatstack.py) spends most of its time in the frozen matmuls;
what is left is memory-bound elementwise work: RMSNorm, rotary embeddings and SwiGLU, forward and
backward. PyTorch runs each of them as several ops, one pass over memory each (rotary alone is a
slice, a negation, a concatenation, two products and a sum). Here each is one loop over the rows,
written in C (core/model/fused.c) and compiled with the machine's C compiler on first use (cached
under the model cache by source, compiler and CPU). The LM head's cross-entropy over the labelled rows
is here too: two passes over each row of logits instead of five. `bench/bench_kernels.py`
measures each kernel against the PyTorch ops at the training step's shapes (660 x 576 and
660 x 1536 tensors, 128 x 49,152 logits).

Every function has a PyTorch fallback computing the same formula, used when no compiler is
found, when the build or the probe against the fallback fails, or with `WORKBENCH_FUSED=0`.
The loops use the OpenMP runtime PyTorch has already loaded, so they share its threads.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from core import settings
from core.store.paths import model_cache_dir

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("fused.c")  # compiled on first use
# -ffast-math (for the vectorised expf of glibc's libmvec) only when compiling: linked in, it would
# switch the whole process to flush-to-zero
_CFLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
_LDFLAGS = ["-shared", "-fopenmp", "-lmvec", "-lm"]

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {"rms_fwd": [_P, _P, _P, _P, _I, _I, _F], "rms_bwd": [_P] * 6 + [_I, _I],
               "rope": [_P, _I, _I, _P, _I, _I, _P, _P, _I, _I, _I, ctypes.c_int],
               "swiglu_fwd": [_P, _P, _I, _P, _I, _I], "swiglu_bwd": [_P, _P, _P, _I, _P, _P, _I, _I, _I],
               "xent": [_P, _P, _P, _I, _I, _F, ctypes.c_int], "bf16_to_f32": [_P, _P, _I],
               "swiglu_bf16": [_P, _P, _I, _I], "lse_bf16": [_P, _P, _P, _I, _I],
               "lse_f32": [_P, _P, _P, _I, _I]}


def _build(cc: str) -> ctypes.CDLL:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text().split("flags", 1)[-1].split("\n", 1)[0] if cpuinfo.exists() else ""
    cpu = platform.processor() + flags  # -march=native: a library built for one CPU is not loaded on another
    source = _SOURCE.read_text()
    key = hashlib.sha256("\0".join([source, *_CFLAGS, *_LDFLAGS, version, cpu]).encode()).hexdigest()[:16]
    out = model_cache_dir() / "kernels" / f"fused-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src, obj, lib = (os.path.join(tmp, n) for n in ("fused.c", "fused.o", "fused.so"))
            with open(src, "w") as f:
                f.write(source)
            for cmd in ([cc, *_CFLAGS, "-c", src, "-o", obj], [cc, obj, "-o", lib, *_LDFLAGS]):
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if done.returncode:
                    raise OSError(f"{' '.join(cmd[:2])}... failed: {done.stderr.strip()[:500]}")
            os.replace(lib, out)  # atomic: a second process never loads a half-written file
    lib = ctypes.CDLL(str(out))
    for name, args in _SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    return lib


@functools.cache
def _lib() -> ctypes.CDLL | None:
    if not settings.SETTINGS.fused:
        return None
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        log.info("no C compiler found: fused kernels off, PyTorch ops instead")
        return None
    try:
        lib = _build(cc)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("fused kernels could not be built (%s): PyTorch ops instead", e)
        return None
    if not _probe(lib):
        log.warning("fused kernels disagree with PyTorch on a probe: PyTorch ops instead")
        return None
    return lib


_NONE = object()
_forced: object = None  # while probing: the library to use, or _NONE for the PyTorch formulas


def _get() -> ctypes.CDLL | None:
    if _forced is not None:
        return None if _forced is _NONE else _forced
    return _lib()


def available() -> bool:
    """The C kernels are built, loaded and agree with the PyTorch formulas."""
    return _get() is not None


def _ok(*ts: torch.Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in ts)


def rms_norm(h: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w * h * r, r) with r = rsqrt(mean(h^2) + eps) per row; h (L, D)."""
    lib = _get()
    if lib is None or not _ok(h, w):
        r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return w * (h * r), r
    h, w = h.contiguous(), w.contiguous()
    x, r = torch.empty_like(h), h.new_empty(h.shape[0], 1)
    lib.rms_fwd(h.data_ptr(), w.data_ptr(), x.data_ptr(), r.data_ptr(), *h.shape, eps)
    return x, r


def rms_norm_backward(dy: torch.Tensor, h: torch.Tensor, r: torch.Tensor, w: torch.Tensor,
                      dres: torch.Tensor) -> torch.Tensor:
    """dres + the gradient of w * (h * r) at h for the output gradient dy."""
    lib = _get()
    if lib is None or not _ok(dy, h, r, w, dres):
        dxh = dy * w
        return dres + r * dxh - h * (r.pow(3) * (dxh * h).mean(-1, keepdim=True))
    dy, h, r, w, dres = (t.contiguous() for t in (dy, h, r, w, dres))  # kept alive through the call
    dh = torch.empty_like(h)
    lib.rms_bwd(dy.data_ptr(), h.data_ptr(), r.data_ptr(), w.data_ptr(), dres.data_ptr(), dh.data_ptr(), *h.shape)
    return dh


def widen(x: torch.Tensor) -> torch.Tensor:
    """A bfloat16 CPU tensor as float32 (exact: the bf16 bits are the float's top half)."""
    lib = _get()
    if lib is None or x.dtype != torch.bfloat16 or x.device.type != "cpu":
        return x.float()
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.float32)
    lib.bf16_to_f32(x.data_ptr(), out.data_ptr(), x.numel())
    return out


def swiglu_bf16(gu: torch.Tensor) -> torch.Tensor:
    """silu(g) * u, rounded to bfloat16, from a bfloat16 (L, 2F) holding g | u side by side."""
    lib = _get()
    if lib is None or gu.dtype != torch.bfloat16 or gu.device.type != "cpu":
        g, u = gu.float().chunk(2, -1)
        return (F.silu(g) * u).to(torch.bfloat16)
    gu = gu.contiguous()
    a = gu.new_empty(*gu.shape[:-1], gu.shape[-1] // 2)
    lib.swiglu_bf16(gu.data_ptr(), a.data_ptr(), a.numel() // a.shape[-1], a.shape[-1])
    return a


def logsumexp(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp in float32, argmax) over the last axis of float32 or bfloat16 logits (..., V): a few
    passes over each row, no temporary copy (a bf16 input is never widened)."""
    lib = _get()
    if lib is None or z.dtype not in (torch.float32, torch.bfloat16) or z.device.type != "cpu":
        return z.float().logsumexp(-1), z.argmax(-1)
    z = z.contiguous()
    out, arg = torch.empty(z.shape[:-1], dtype=torch.float32), torch.empty(z.shape[:-1], dtype=torch.int64)
    fn = lib.lse_f32 if z.dtype == torch.float32 else lib.lse_bf16
    fn(z.data_ptr(), out.data_ptr(), arg.data_ptr(), out.numel(), z.shape[-1])
    return out, arg


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    m = x.shape[-1] // 2
    return torch.cat((-x[..., m:], x[..., :m]), -1)


def _rotate_half_t(x: torch.Tensor) -> torch.Tensor:  # the transpose of _rotate_half
    m = x.shape[-1] // 2
    return torch.cat((x[..., m:], -x[..., :m]), -1)


def _rope_ok(x: torch.Tensor, cos: torch.Tensor) -> bool:
    return _ok(x, cos) and x.stride(-1) == 1 and cos.is_contiguous() and x.shape[-1] % 2 == 0


def _rope(lib, src: torch.Tensor, dst: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, back: bool) -> torch.Tensor:
    lib.rope(src.data_ptr(), src.stride(0), src.stride(1), dst.data_ptr(), dst.stride(0), dst.stride(1),
             cos.data_ptr(), sin.data_ptr(), *src.shape, int(back))
    return dst


def rotary_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, in place; x (L, heads, d), cos and sin (L, d)."""
    lib = _get()
    if lib is None or not _rope_ok(x, cos) or not sin.is_contiguous():
        return x.copy_(x * cos[:, None] + _rotate_half(x) * sin[:, None])
    return _rope(lib, x, x, cos, sin, back=False)


def rotary_backward(dy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The gradient at x of rotary_ given the output gradient dy (L, heads, d, any row/head strides);
    returns a contiguous (L, heads, d)."""
    lib = _get()
    if lib is None or not _rope_ok(dy, cos) or not sin.is_contiguous():
        return (dy * cos[:, None] + _rotate_half_t(dy * sin[:, None])).contiguous()
    return _rope(lib, dy, dy.new_empty(dy.shape), cos, sin, back=True)


def _rows(g: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """g and u with contiguous rows and the same row stride (the two halves of one matmul output
    as they are, anything else copied)."""
    if g.stride(-1) == 1 and u.stride(-1) == 1 and g.stride(0) == u.stride(0) and g.shape == u.shape:
        return g, u
    return g.contiguous(), u.contiguous()


def swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u, g and u (L, F)."""
    lib = _get()
    if lib is None or not _ok(g, u):
        return F.silu(g) * u
    g, u = _rows(g, u)
    a = g.new_empty(g.shape)
    lib.swiglu_fwd(g.data_ptr(), u.data_ptr(), g.stride(0), a.data_ptr(), g.shape[0], g.shape[1])
    return a


def swiglu_backward(da: torch.Tensor, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The gradients at g and u of silu(g) * u given the output gradient da (L, F), side by side
    in one (L, 2F) tensor."""
    lib = _get()
    if lib is None or not _ok(da, g, u):
        return torch.cat([torch.ops.aten.silu_backward(da * u, g), da * F.silu(g)], -1)
    (g, u), da = _rows(g, u), da.contiguous()
    L, F_ = g.shape
    dgu = g.new_empty(L, 2 * F_)
    du = dgu[:, F_:]  # the right half: rows of stride 2F
    lib.swiglu_bwd(da.data_ptr(), g.data_ptr(), u.data_ptr(), g.stride(0), dgu.data_ptr(), du.data_ptr(), 2 * F_, L, F_)
    return dgu


def cross_entropy_(logits: torch.Tensor, targets: torch.Tensor, grad: bool) -> torch.Tensor:
    """Mean cross-entropy of the rows of logits (M, V) against targets (M,); with `grad`, logits is
    overwritten by the loss's gradient at the logits, (softmax - onehot) / M."""
    lib, M = _get(), len(targets)
    if lib is None or not _ok(logits) or not logits.is_contiguous() or targets.dtype != torch.int64:
        lse = logits.logsumexp(-1)  # (M,)
        loss = (lse - logits.gather(1, targets[:, None])[:, 0]).mean()
        if grad:
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[torch.arange(M), targets] -= 1
            probs.div_(M)
        return loss
    if len(targets) and not (0 <= int(targets.min()) and int(targets.max()) < logits.shape[1]):
        raise IndexError(f"target ids must lie in [0, {logits.shape[1]}), got {targets.min()}..{targets.max()}")
    loss = logits.new_empty(M)
    targets = targets.contiguous()
    lib.xent(logits.data_ptr(), targets.data_ptr(), loss.data_ptr(), M, logits.shape[1], 1.0 / max(M, 1), int(grad))
    return loss.mean()


def _after(fn, z, t) -> torch.Tensor:  # the gradient cross_entropy_ leaves in its logits
    z = z.clone()
    fn(z, t, True)
    return z


def _probe(lib: ctypes.CDLL) -> bool:
    """Each kernel against its PyTorch formula on a small random input."""
    global _forced
    gen = torch.Generator().manual_seed(0)
    h, dy, dres = (torch.randn(5, 24, generator=gen) for _ in range(3))
    w = torch.randn(24, generator=gen)
    cos, sin, q = (torch.randn(*shape, generator=gen) for shape in ((5, 8), (5, 8), (5, 3, 8)))
    g, u, da = (torch.randn(5, 40, generator=gen) for _ in range(3))
    z, t = torch.randn(4, 50, generator=gen) * 5, torch.tensor([0, 7, 49, 3])

    def run_all(which) -> list[torch.Tensor]:
        global _forced
        _forced = which
        x, r = rms_norm(h, w, 1e-5)
        return [x, r, rms_norm_backward(dy, h, r, w, dres), rotary_(q.clone(), cos, sin),
                rotary_backward(q.transpose(0, 1).contiguous().transpose(0, 1), cos, sin), swiglu(g, u),
                swiglu_backward(da, g, u), cross_entropy_(z.clone(), t, False), _after(cross_entropy_, z, t),
                widen(g.bfloat16()), swiglu_bf16(torch.cat([g, u], -1).bfloat16()).float(),
                *logsumexp(z.bfloat16()), *logsumexp(z)]
    try:
        fused, ref = run_all(lib), run_all(_NONE)
    finally:
        _forced = None
    return all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(fused, ref))
