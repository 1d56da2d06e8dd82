"""Training loss of a soft prompt computed only where it is needed.

Two savings over PEFT's forward, with the same loss and gradients (tested):
- The virtual tokens are the same for every row and come first, so under causal attention
  their hidden states, keys and values are the same in every row too. PEFT runs them once per
  row: with 20 virtual tokens before 80-token rows that is a fifth of the body's work spent
  eight times over. Here they run once per batch. For llama-family models the batch goes
  through the decoder as one flat sequence, the virtual tokens followed by every text row
  (positions restart per row), so each linear layer is one matmul over N + B*T rows instead of
  a second pass over all the weights for N rows; a registered attention function splits the
  sequence back into rows that attend to the shared virtual keys/values and to themselves.
  Other models get the virtual tokens' keys/values computed at batch 1 and broadcast to the
  batch as a past. Either way autograd sums the rows' gradients into the one copy.
  Prefix tuning's prompt already is a past of keys/values; it too is built once and broadcast.
- PEFT runs the LM head (576 x 49,152 for the bundled model, about a fifth of the forward
  cost) on every position and then ignores all but the target positions; here it runs only
  on the positions that predict a labelled token, fused with the cross-entropy: the forward
  pass also computes the gradient of the loss with respect to the hidden states, so the
  (tokens x vocabulary) logits live in one buffer for a moment instead of four that autograd
  keeps until the backward pass.
In float32 on the CPU the flat pass of a llama model goes through the decoder stack written out
in core/train/flatstack.py (same results, its own backward), which also runs the last layer only where
the loss reads it. `bench/bench_train_step.py` measures all of it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from core.train import flatstack
from core.train.pieces import bucket_width

from core.model import fused
from core.generate.formatting import IGNORE
from core.model.kernels import frozen_matmul

FLAT_ATTENTION = "workbench_flat_prompt"
_FLAT_MODELS = {"llama"}  # rotary positions from position_ids, attention through the attention interface


def _flat_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention over one flat sequence [N virtual tokens, B rows of T tokens] (queries (1, H, N+B*T, d),
    keys/values (1, Hkv, N+B*T, d)); `attention_mask` is the rows' (B, 1, T, N+T) boolean mask."""
    B, _, T, NT = attention_mask.shape
    N, (H, d), Hkv = NT - T, query.shape[1::2], key.shape[1]
    opts = dict(scale=scaling, dropout_p=dropout, enable_gqa=H != Hkv)
    virt = F.scaled_dot_product_attention(query[:, :, :N], key[:, :, :N], value[:, :, :N], is_causal=True, **opts)

    def rows(x):  # (1, h, N+B*T, d) -> (B, h, T, d)
        return x[0, :, N:].unflatten(1, (B, T)).transpose(0, 1)

    def with_prompt(x):  # the virtual tokens' keys/values in front of every row: (B, Hkv, N+T, d)
        return torch.cat([x[:, :, :N].expand(B, -1, -1, -1), rows(x)], dim=2)

    text = F.scaled_dot_product_attention(rows(query), with_prompt(key), with_prompt(value),
                                          attn_mask=attention_mask, **opts)  # (B, H, T, d)
    return torch.cat([virt[0].transpose(0, 1), text.transpose(1, 2).flatten(0, 1)])[None], None  # (1, N+B*T, H, d)


AttentionInterface.register(FLAT_ATTENTION, _flat_attention)


def _can_flatten(base) -> bool:
    cfg = base.config
    return (cfg.model_type in _FLAT_MODELS and cfg._attn_implementation in ("sdpa", "eager")
            and getattr(cfg, "sliding_window", None) is None)


def _soft_prompt(peft_model) -> torch.Tensor:
    """The virtual tokens' input embeddings for one row, (1, N, D)."""
    return peft_model.get_prompt(batch_size=1).to(peft_model.get_base_model().dtype)


def _flat_hidden(base, prompt: torch.Tensor, input_ids: torch.Tensor, keys: torch.Tensor,
                 keep: torch.Tensor) -> torch.Tensor:
    """Last hidden states of the text rows after the soft prompt (1, N, D) at the positions `keep`
    (B, T-1) marks, (M, D) in row order, from one flat pass; `keys` (B, N+T) marks the positions a
    row may attend to (prompt and its unpadded tokens)."""
    decoder = base.get_decoder()
    (B, T), N = input_ids.shape, prompt.shape[1]
    embeds = decoder.embed_tokens(input_ids).flatten(0, 1)  # (B*T, D)
    dev = input_ids.device
    positions = torch.cat([torch.arange(N, device=dev), torch.arange(N, N + T, device=dev).repeat(B)])[None]
    causal = torch.ones(T, N + T, dtype=torch.bool, device=dev).tril(N)  # row token t sees the prompt and tokens <= t
    mask = (causal[None] & keys.bool()[:, None])[:, None]  # (B, 1, T, N+T): a 4D mask reaches the attention as it is
    if flatstack.supported(base) and keep.any():  # the layers' forward and backward written out, same results
        flat_keep = F.pad(keep, (0, 1)).flatten()  # (B*T,)
        rows = flat_keep.nonzero()[:, 0]  # (M,) indices into the B*T text rows
        extra = bucket_width(len(rows)) - len(rows)  # a few unlabelled positions after them: M on a ladder of sizes
        rows = torch.cat([rows, (~flat_keep).nonzero()[:extra, 0]])  # (M',) core/train/pieces.py says why
        return flatstack.decoder_stack(base, prompt[0], embeds, positions, mask, rows)  # the M labelled rows first
    cfg, impl = base.config, base.config._attn_implementation
    cfg._attn_implementation = FLAT_ATTENTION
    try:
        hidden = decoder(inputs_embeds=torch.cat([prompt[0], embeds])[None], attention_mask=mask,
                         position_ids=positions, use_cache=False)
    finally:
        cfg._attn_implementation = impl
    return hidden.last_hidden_state[0, N:].unflatten(0, (B, T))[:, :-1][keep]


def shared_prompt_cache(peft_model, batch_size: int):
    """The soft prompt as a key/value cache computed for one row and broadcast to `batch_size`
    rows (views, no copies)."""
    if peft_model.active_peft_config.peft_type.value == "PREFIX_TUNING":
        cache = peft_model.get_prompt(1)  # per layer (1, H, N, d)
    else:
        cache = peft_model.get_base_model().get_decoder()(inputs_embeds=_soft_prompt(peft_model),
                                                          use_cache=True).past_key_values
    for layer in cache.layers:
        layer.keys = layer.keys.expand(batch_size, -1, -1, -1)  # (B, H, N, d)
        layer.values = layer.values.expand(batch_size, -1, -1, -1)
    return cache


def labelled_loss(peft_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled tokens; inputs (B, T) right-padded as in training."""
    base, cfg = peft_model.get_base_model(), peft_model.active_peft_config
    B, N = input_ids.shape[0], cfg.num_virtual_tokens
    mask = torch.cat([torch.ones(B, N, dtype=attention_mask.dtype, device=attention_mask.device),
                      attention_mask], dim=1)  # (B, N+T): the prompt, then each row's own tokens
    # position t predicts token t+1: keep the positions whose next token carries a label
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    if cfg.peft_type.value != "PREFIX_TUNING" and _can_flatten(base):
        picked = _flat_hidden(base, _soft_prompt(peft_model), input_ids, mask, keep)  # (M, D), M labelled tokens
    else:
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=mask, past_key_values=shared_prompt_cache(
            peft_model, B), use_cache=True).last_hidden_state  # (B, T, D) at positions N..N+T-1
        picked = hidden[:, :-1][keep]  # (M, D)
    head = base.get_output_embeddings()
    if head.bias is not None or torch.is_autocast_enabled(picked.device.type) or not len(picked):
        return F.cross_entropy(head(picked[:int(keep.sum())]).float(), targets[keep])
    return _HeadCrossEntropy.apply(picked, head.weight, targets[keep])  # picked: the labelled rows, then padding


class _HeadCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of softmax(hidden @ W.T) against targets, W frozen; the gradient for
    `hidden` is computed in the forward pass, (softmax - onehot) / M @ W, reusing the logits buffer."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        """hidden (M', D): the M = len(targets) labelled rows first, then rows that only pad M' to a size
        seen before (their logits are computed, not scored; their gradient is zero)."""
        M = len(targets)
        logits = frozen_matmul(hidden, weight)[:M]  # (M, V), a view of the (M', V) block
        grad = ctx.needs_input_grad[0]
        loss = fused.cross_entropy_(logits, targets, grad)  # with grad, logits now holds (softmax - onehot) / M
        if grad:
            ctx.save_for_backward(F.pad(frozen_matmul(logits, weight.t()), (0, 0, 0, len(hidden) - M)))  # (M', D)
        return loss

    @staticmethod
    def backward(ctx, grad):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad, None, None
