"""Matmul kernels for the frozen model: PyTorch's default CPU path (MKL sgemm) against oneDNN
(core/model/kernels.py) on the bundled model's own linear layers, float32 both.

Shapes: 8 rows (one decode step of a batch of 8), 160 (a prefill), 640 (a training batch of
8 x 80 tokens), forward and, for 640, the input-gradient matmul of the backward pass. Also the
largest difference between the two kernels' outputs. Then the fused elementwise kernels of the
training step (core/model/fused.py) against their PyTorch formulas, at the step's shapes (660 rows: 20
virtual tokens and 8 x 80 text tokens; 128 labelled rows for the LM head's cross-entropy).
Then each layer through weights reordered once into oneDNN's layout (core/model/packed.py), float32 and
bf16, at 8, 32 and 704 rows. Writes bench-results/kernels.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import timed  # noqa: E402
from core.model import fused
from core.model import packed  # noqa: E402
from core.model.kernels import _OP, _mm, available  # noqa: E402
from core.model.loading import load_model  # noqa: E402


def main() -> dict:
    assert available(), "this PyTorch build has no oneDNN"
    model = load_model("smollm2-135m-instruct").model
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # 7 per block + the LM head
    res = {"threads": torch.get_num_threads(), "layers": len(layers), "cpu": _cpu()}
    with torch.no_grad():
        for rows in (8, 160, 640):
            xs = {n: torch.randn(rows, n) for n in {m.in_features for m in layers}}
            mkl = timed(lambda: [F.linear(xs[m.in_features], m.weight) for m in layers], 7, 1)
            dnn = timed(lambda: [_mm(xs[m.in_features], m.weight, None) for m in layers], 7, 1)
            res[f"forward_{rows}_rows"] = {"mkl_s": mkl, "onednn_s": dnn, "speedup": mkl / dnn}
        gs = {n: torch.randn(640, n) for n in {m.out_features for m in layers}}
        mkl = timed(lambda: [gs[m.out_features] @ m.weight for m in layers], 7, 1)
        dnn = timed(lambda: [_mm(gs[m.out_features], m.weight.t(), None) for m in layers], 7, 1)
        res["input_grad_640_rows"] = {"mkl_s": mkl, "onednn_s": dnn, "speedup": mkl / dnn}
        x = torch.randn(640, 576)
        head = layers[-1].weight
        res["max_abs_diff_lm_head"] = float((F.linear(x, head) - _mm(x, head, None)).abs().max())
        res["max_abs_lm_head"] = float(F.linear(x, head).abs().max())
        res["reordered"] = reordered(layers)
    res["fused"] = fused_kernels(model.config) if fused.available() else "not built (no C compiler?)"
    return res


def reordered(layers: list) -> dict:
    """Every linear layer once, through weights reordered into oneDNN's layout (core/model/packed.py)
    against the plain weights: float32 (bitwise the same) and, where the CPU has it, bf16 matmuls."""
    reorder, out = torch.ops.mkldnn._reorder_linear_weight, {}
    dtypes = [torch.float32] + ([torch.bfloat16] if packed.bf16_supported() else [])
    for dtype in dtypes:
        ws = [reorder(m.weight.detach().to(dtype), packed.HINT) for m in layers]
        for rows in (8, 32, 704):  # decode steps of 8 and 32 rows; an importance batch (32 x 22 tokens)
            xs = {n: torch.randn(rows, n) for n in {m.in_features for m in layers}}
            plain = timed(lambda: [_mm(xs[m.in_features], m.weight, None) for m in layers], 7, 1)
            fast = timed(lambda: [_OP(xs[m.in_features].to(dtype), w, None, "none", [], "")
                                  for m, w in zip(layers, ws)], 7, 1)
            same = all(torch.equal(_OP(xs[m.in_features], w, None, "none", [], ""), _mm(xs[m.in_features], m.weight, None))
                       for m, w in zip(layers[:3], ws[:3])) if dtype == torch.float32 else None
            out[f"{str(dtype).split('.')[-1]}_{rows}_rows"] = {"plain_float32_s": plain, "reordered_s": fast,
                                                               "speedup": plain / fast, "bitwise_same": same}
    return out


def fused_kernels(cfg, rows: int = 660, labelled: int = 128) -> dict:
    """Seconds of each fused kernel and of the PyTorch ops computing the same formula."""
    torch.manual_seed(0)
    D, Fd, d, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim, cfg.num_attention_heads
    h, dy, w = torch.randn(rows, D), torch.randn(rows, D), torch.rand(D) + 0.5
    g, u = torch.randn(rows, 2 * Fd).split(Fd, dim=1)  # the halves of the joined gate/up matmul
    da, q = torch.randn(rows, Fd), torch.randn(rows, H, d)
    cos, sin = torch.randn(rows, d), torch.randn(rows, d)
    z, t = torch.randn(labelled, cfg.vocab_size), torch.randint(0, cfg.vocab_size, (labelled,))
    _, r = fused.rms_norm(h, w, 1e-5)
    cases = {"rms_norm": lambda: fused.rms_norm(h, w, 1e-5),
             "rms_norm_backward": lambda: fused.rms_norm_backward(dy, h, r, w, dy),
             "rotary": lambda: fused.rotary_(q, cos, sin), "rotary_backward": lambda: fused.rotary_backward(q, cos, sin),
             "swiglu": lambda: fused.swiglu(g, u), "swiglu_backward": lambda: fused.swiglu_backward(da, g, u),
             "cross_entropy_with_grad": lambda: fused.cross_entropy_(z.clone(), t, True)}  # both time the copy
    out = {}
    for name, fn in cases.items():
        c = timed(fn, 30, 3)
        fused._forced = fused._NONE  # the PyTorch formulas
        try:
            ref = timed(fn, 30, 3)
        finally:
            fused._forced = None
        out[name] = {"fused_s": c, "pytorch_s": ref, "speedup": ref / c}
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    r = main()
    for key in ("forward_8_rows", "forward_160_rows", "forward_640_rows", "input_grad_640_rows"):
        v = r[key]
        print(f"{key:22s} MKL {1000 * v['mkl_s']:7.1f} ms  oneDNN {1000 * v['onednn_s']:7.1f} ms  = {v['speedup']:.2f}x")
    for name, v in (r["fused"].items() if isinstance(r["fused"], dict) else []):
        print(f"fused {name:22s} {1000 * v['fused_s']:6.3f} ms  PyTorch ops {1000 * v['pytorch_s']:6.3f} ms"
              f"  = {v['speedup']:.1f}x")
    print(f"LM head outputs: largest difference {r['max_abs_diff_lm_head']:.2e} on values up to {r['max_abs_lm_head']:.1f}")
    for key, v in r["reordered"].items():
        print(f"reordered {key:18s} plain float32 {1000 * v['plain_float32_s']:7.1f} ms  reordered "
              f"{1000 * v['reordered_s']:7.1f} ms  = {v['speedup']:.2f}x" + ("  bitwise the same" if v["bitwise_same"] else ""))
    Path("bench-results").mkdir(exist_ok=True)
    Path("bench-results/kernels.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r))
