"""A llama decoder layer's forward for a bfloat16 block (core/model/packed.py), in fewer passes over memory.

Through transformers' layer, everything between the matmuls is one PyTorch op per arithmetic step: an
RMSNorm is six passes over the activations, rotary on q and k ten (with two concatenations), and q, k
and v each cast the same input to bf16. In an importance pass (bf16 matmuls) those took about as long
as the matmuls themselves. Inside a bf16 block each transformers `LlamaDecoderLayer` instead runs:
RMSNorm in one C loop (fused.rms_norm), q, k and v in one bf16 matmul on their joined weights (one
cast), rotary on q and k in place in one C loop (fused.rotary_), the cache and attention through
transformers' own functions, o_proj and the MLP through their packed weights. The formula is the
layer's; only the float32 rounding of the norm and rotary differs. Float32 blocks never use it, so
Compare's outputs stay bitwise the same. Any other layer class keeps its own forward.
"""
from __future__ import annotations

import types

import torch

from core.model import fused, kernels


def _llama():
    try:
        from transformers.models.llama import modeling_llama
    except ImportError:  # pragma: no cover - transformers always ships llama
        return None
    return modeling_llama


def eligible(layer: torch.nn.Module, linears: set[int]) -> bool:
    """transformers' own llama decoder layer (forward, attention and norms unchanged) whose q, k, v and
    o projections are frozen bias-free layers among `linears` (ids), where the C kernels are on
    (WORKBENCH_FUSED=0 keeps transformers' layers)."""
    ml = _llama()
    at = getattr(layer, "self_attn", None)
    if ml is None or at is None or not fused.available() or type(layer).forward is not ml.LlamaDecoderLayer.forward:
        return False
    norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    projections = [getattr(at, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    return (type(at).forward is ml.LlamaAttention.forward
            and all(type(n).forward is ml.LlamaRMSNorm.forward for n in norms)
            and all(id(p) in linears and p.bias is None for p in projections))


def install(layer: torch.nn.Module, dtype: torch.dtype, reorder, hint: int) -> None:
    """q, k and v joined and reordered in `dtype`; the layer's forward replaced until `remove`."""
    at = layer.self_attn
    joined = torch.cat([at.q_proj.weight.detach(), at.k_proj.weight.detach(), at.v_proj.weight.detach()])
    layer._qkv = reorder(joined.to(dtype), hint)
    layer.forward = types.MethodType(_forward, layer)


def remove(layer: torch.nn.Module) -> None:
    layer.__dict__.pop("forward", None)
    layer.__dict__.pop("_qkv", None)


def _norm(norm: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    return fused.rms_norm(h, norm.weight, norm.variance_epsilon)[0]


def _forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
             position_embeddings=None, **kwargs):
    """LlamaDecoderLayer.forward, as transformers computes it, with the passes above."""
    if (torch.is_grad_enabled() or hidden_states.dtype != torch.float32 or hidden_states.device.type != "cpu"
            or position_embeddings is None or position_embeddings[0].shape[-1] != self.self_attn.head_dim):
        return type(self).forward(self, hidden_states, attention_mask, position_ids, past_key_values, use_cache,
                                  position_embeddings, **kwargs)
    ml, at = _llama(), self.self_attn
    (B, L, D), d, H = hidden_states.shape, at.head_dim, at.config.num_attention_heads
    h = hidden_states.reshape(B * L, D)
    x = _norm(self.input_layernorm, h)
    qkv = fused.widen(kernels._OP(x.to(self._qkv.dtype), self._qkv, None, "none", [], "")).view(B * L, -1, d)
    kv_heads = (qkv.shape[1] - H) // 2
    cos, sin = (t.expand(B, L, d).reshape(B * L, d).contiguous() for t in position_embeddings)
    fused.rotary_(qkv[:, :H + kv_heads], cos, sin)  # q and k heads, in place
    heads = qkv.view(B, L, -1, d).transpose(1, 2)  # (B, heads, L, d)
    q, k, v = heads[:, :H], heads[:, H:H + kv_heads].contiguous(), heads[:, H + kv_heads:].contiguous()
    if past_key_values is not None:
        k, v = past_key_values.update(k, v, at.layer_idx)
    attend = ml.ALL_ATTENTION_FUNCTIONS.get_interface(at.config._attn_implementation, ml.eager_attention_forward)
    a, _ = attend(at, q, k, v, attention_mask, dropout=0.0, scaling=at.scaling, position_ids=position_ids,
                  use_cache=use_cache, **kwargs)
    h1 = h + at.o_proj(a.reshape(B * L, -1))
    return (h1 + self.mlp(_norm(self.post_attention_layernorm, h1))).view(B, L, D)
