"""The llama decoder stack over the flat training sequence, its backward pass written out.

With the base model frozen, the backward pass of a soft prompt needs only input gradients. Left
to autograd, a llama layer leaves about sixty graph nodes per step, and its elementwise parts
(RMSNorm, rotary, SwiGLU, the attention's slices and concatenations) run as one PyTorch op per
arithmetic step, each a pass over memory; the slices' backward even fills zeros to copy into.
Here one autograd node covers all layers: the forward pass keeps what the backward needs (each
layer's input, the norms' scales, the rotated queries and keys, the values, the gate and up
projections, the attention outputs with their log-sum-exps), and the backward pass runs the
layers in reverse with fused kernels (core/model/fused.py), the frozen matmuls on oneDNN with the
residual sums fused into them and the input gradients of q/k/v and of gate/up taken in one
matmul each (core/model/kernels.joined_weight), and PyTorch's own flash-attention backward. Two more
savings that autograd cannot see: the last layer's attention output projection and MLP run only
at the positions whose hidden state the loss reads (the labelled ones, a fifth of the tokens in
the benchmark batch), and the first layer's backward stops at the soft prompt (the text rows'
embeddings are frozen).

`bench/bench_train_step.py` measures the step on the bundled model against the transformers
layers. Same loss and gradients as PEFT's forward (tests/test_fastloss.py runs every layout). Used for
llama layers in float32 on the CPU without autocast, hooks, gradient checkpointing, biases or
attention dropout, and not with `WORKBENCH_FLATSTACK=0`; everything else takes the transformers
modules.
"""
from __future__ import annotations


import torch
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from core import settings
from core.model import fused
from core.model.kernels import frozen_matmul, joined_weight, own_weights

_FWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_BWD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


def supported(base) -> bool:
    """The stack can stand in for the model's own decoder layers in this pass."""
    cfg, decoder = base.config, base.get_decoder()
    if not settings.SETTINGS.flatstack or _FWD is None or _BWD is None:
        return False
    if cfg.model_type != "llama" or base.device.type != "cpu":
        return False
    if base.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False
    if getattr(decoder, "gradient_checkpointing", False):
        return False
    if cfg.hidden_act != "silu" or cfg.attention_bias or cfg.mlp_bias or getattr(cfg, "pretraining_tp", 1) != 1:
        return False
    if cfg.attention_dropout and base.training:
        return False
    if not all(type(layer) is LlamaDecoderLayer for layer in decoder.layers):  # no remote-code variants
        return False
    hooked = (torch.nn.modules.module._global_forward_hooks or torch.nn.modules.module._global_forward_pre_hooks
              or any(m._forward_hooks or m._forward_pre_hooks for m in decoder.layers.modules()))
    return not hooked and not any(p.requires_grad for p in decoder.layers.parameters())


def _outputs(x: torch.Tensor, *linears) -> list[torch.Tensor]:
    """The outputs of linear layers that read the same input x: column blocks of one matmul on their
    joined weights (core/model/kernels.joined_weight), else one matmul each."""
    joined = joined_weight(*linears)
    if joined is None:
        return [frozen_matmul(x, m.weight) for m in linears]
    return list(frozen_matmul(x, joined).split([m.weight.shape[0] for m in linears], dim=1))


def _input_grad(grads: torch.Tensor, *linears) -> torch.Tensor:
    """The input gradient of linear layers that read the same input, their output gradients side by
    side in `grads`: one matmul on their joined weights (core/model/kernels.joined_weight), else one each."""
    joined = joined_weight(*linears)
    if joined is not None:
        return frozen_matmul(grads, joined.t())
    out, start = None, 0
    for m in linears:
        width = m.weight.shape[0]
        out = frozen_matmul(grads[:, start:start + width], m.weight.t(), add=out)
        start += width
    return out


def _heads(x: torch.Tensor) -> torch.Tensor:  # (L, h, d) -> (1, h, L, d), a view
    return x.transpose(0, 1)[None]


class _Attention:
    """Attention over the flat sequence: the N virtual tokens causally among themselves, and each of
    the B rows of T tokens over the virtual tokens and itself under `mask` (B, 1, T, N+T), additive."""

    def __init__(self, B: int, T: int, mask: torch.Tensor, scale: float):
        self.B, self.T, self.mask, self.scale = B, T, mask, scale

    def rows(self, x: torch.Tensor) -> torch.Tensor:  # (N+B*T, h, d) -> (B, h, T, d), a view
        return x[-self.B * self.T:].unflatten(0, (self.B, self.T)).transpose(1, 2)

    def with_prompt(self, x: torch.Tensor) -> torch.Tensor:  # (N+B*T, h, d) -> (B, h, N+T, d)
        N = x.shape[0] - self.B * self.T
        return torch.cat([x[:N].expand(self.B, -1, -1, -1), x[N:].unflatten(0, (self.B, self.T))], 1).transpose(1, 2)

    def forward(self, q, k, v):
        """q (L, H, d), k and v (L, Hkv, d) -> output (L, H, d) and what the backward needs."""
        N = q.shape[0] - self.B * self.T
        o_v, l_v = _FWD(_heads(q[:N]), _heads(k[:N]), _heads(v[:N]), 0.0, True, scale=self.scale)
        o_t, l_t = _FWD(self.rows(q), self.with_prompt(k), self.with_prompt(v), 0.0, False, attn_mask=self.mask,
                        scale=self.scale)
        out = torch.cat([o_v[0].transpose(0, 1), o_t.transpose(1, 2).flatten(0, 1)])
        return out, (o_v, l_v, o_t, l_t)  # the prompt-prefixed keys/values are rebuilt, not kept (2.5 MB a layer)

    def backward(self, dout, q, k, v, state):
        """Gradients at q, k, v given the output gradient dout (L, H, d)."""
        o_v, l_v, o_t, l_t = state
        N = q.shape[0] - self.B * self.T
        dq_v, dk_v, dv_v = _BWD(_heads(dout[:N]), _heads(q[:N]), _heads(k[:N]), _heads(v[:N]), o_v, l_v, 0.0, True,
                                scale=self.scale)
        dq_t, dk_t, dv_t = _BWD(self.rows(dout), self.rows(q), self.with_prompt(k), self.with_prompt(v), o_t, l_t,
                                0.0, False, attn_mask=self.mask, scale=self.scale)
        dq = torch.cat([dq_v[0].transpose(0, 1), dq_t.transpose(1, 2).flatten(0, 1)])
        # the virtual tokens' keys and values serve every row: their gradients sum over the rows
        dk, dv = (torch.cat([a[0].transpose(0, 1) + b[:, :, :N].sum(0).transpose(0, 1),
                             b[:, :, N:].transpose(1, 2).flatten(0, 1)]) for a, b in ((dk_v, dk_t), (dv_v, dv_t)))
        return dq, dk, dv


def _layers_forward(prompt, text, layers, cos, sin, attn, rows, keep: bool):
    """The layers over [prompt, text]; the last one only at the text rows `rows`. Returns the last
    hidden states and, with `keep`, what the backward needs from each layer."""
    h, saved = torch.cat([prompt, text]), []
    L, picked = h.shape[0], rows + prompt.shape[0]  # the positions whose last hidden state is asked for
    for i, layer in enumerate(layers):
        at, mlp, last = layer.self_attn, layer.mlp, i == len(layers) - 1
        d = at.head_dim
        x, r1 = fused.rms_norm(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        q, k, v = (y.view(L, -1, d) for y in _outputs(x, at.q_proj, at.k_proj, at.v_proj))
        q, k = fused.rotary_(q, cos, sin), fused.rotary_(k, cos, sin)
        a, state = attn.forward(q, k, v)
        a, res = (a[picked], h[picked]) if last else (a, h)  # the last layer's output only where it is used
        h1 = frozen_matmul(a.view(a.shape[0], -1), at.o_proj.weight, add=res)  # residual fused into the matmul
        norm = layer.post_attention_layernorm
        x2, r2 = fused.rms_norm(h1, norm.weight, norm.variance_epsilon)
        g, u = _outputs(x2, mlp.gate_proj, mlp.up_proj)
        if keep:
            saved.append((h, r1, q, k, v, state, h1, r2, g, u))
        h = frozen_matmul(fused.swiglu(g, u), mlp.down_proj.weight, add=h1)
    return h, saved, picked


class _Stack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, prompt, text, layers, cos, sin, attn, rows):
        h, saved, picked = _layers_forward(prompt, text, layers, cos, sin, attn, rows, keep=True)
        ctx.layers, ctx.saved, ctx.rotary, ctx.attn = layers, saved, (cos, sin), attn
        ctx.picked, ctx.N = picked, len(prompt)
        return h

    @staticmethod
    def backward(ctx, dh):
        if ctx.saved is None:
            raise RuntimeError("the flat decoder stack's backward ran twice; its saved tensors are freed")
        (cos, sin), attn, N = ctx.rotary, ctx.attn, ctx.N
        text_grad = ctx.needs_input_grad[1]
        for i in reversed(range(len(ctx.layers))):
            layer, (h, r1, q, k, v, state, h1, r2, g, u) = ctx.layers[i], ctx.saved.pop()  # freed layer by layer
            at, mlp, L = layer.self_attn, layer.mlp, h.shape[0]
            dgu = fused.swiglu_backward(frozen_matmul(dh.contiguous(), mlp.down_proj.weight.t()), g, u)  # (., 2F)
            dx2 = _input_grad(dgu, mlp.gate_proj, mlp.up_proj)
            norm = layer.post_attention_layernorm
            dh1 = fused.rms_norm_backward(dx2, h1, r2, norm.weight, dh)
            dout = frozen_matmul(dh1, at.o_proj.weight.t()).view(-1, *q.shape[1:])
            if i == len(ctx.layers) - 1:  # back from the picked positions to all
                dout = dout.new_zeros(q.shape).index_copy_(0, ctx.picked, dout)
                dh1 = dh1.new_zeros(L, dh1.shape[1]).index_copy_(0, ctx.picked, dh1)
            dq, dk, dv = attn.backward(dout, q, k, v, state)
            rows = L if i or text_grad else N  # the text rows' embeddings are frozen: only the prompt's gradient
            dq, dk = (fused.rotary_backward(g[:rows], cos[:rows], sin[:rows]) for g in (dq, dk))
            dx = _input_grad(torch.cat([dq.view(rows, -1), dk.view(rows, -1), dv[:rows].reshape(rows, -1)], 1),
                             at.q_proj, at.k_proj, at.v_proj)
            dh = fused.rms_norm_backward(dx, h[:rows], r1[:rows], layer.input_layernorm.weight, dh1[:rows])
        ctx.saved = None
        return dh[:N], (dh[N:] if text_grad else None), None, None, None, None, None


def _own_joined_weights(base, layers) -> None:
    """Once per model: join each layer's q/k/v and gate/up weights (kernels.joined_weight), then copy
    the other weights off the safetensors file mapping (kernels.own_weights), so the process holds
    one copy of the model (279 MB less for the bundled model than mapped originals plus joined copies)."""
    if getattr(base, "_owns_weights", False):
        return
    for layer in layers:
        at, mlp = layer.self_attn, layer.mlp
        joined_weight(at.q_proj, at.k_proj, at.v_proj)
        joined_weight(mlp.gate_proj, mlp.up_proj)
    own_weights(base)


def decoder_stack(base, prompt: torch.Tensor, text: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
                  rows: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states, final norm applied, at the text rows `rows` (M,) of the flat
    sequence [prompt (N, D), text (B*T, D)] at `positions` (1, N+B*T); `keys` (B, 1, T, N+T) marks what
    each text token may attend to. Returns (M, D)."""
    decoder = base.get_decoder()
    flat = torch.cat([prompt, text])
    cos, sin = (c[0].contiguous() for c in decoder.rotary_emb(flat[None], positions))  # (L, d) each
    mask = torch.zeros(keys.shape, dtype=flat.dtype, device=flat.device).masked_fill_(~keys, float("-inf"))
    attn = _Attention(keys.shape[0], keys.shape[2], mask, decoder.layers[0].self_attn.scaling)
    layers = list(decoder.layers[: base.config.num_hidden_layers])
    _own_joined_weights(base, layers)
    if torch.is_grad_enabled() and (prompt.requires_grad or text.requires_grad):
        return decoder.norm(_Stack.apply(prompt, text, layers, cos, sin, attn, rows))
    return decoder.norm(_layers_forward(prompt, text, layers, cos, sin, attn, rows, keep=False)[0])  # evaluation
