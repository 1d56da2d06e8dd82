"""Training loss of a soft prompt computed only where it is needed.

Two savings over PEFT's forward, with the same loss and gradients (tested):
- The virtual tokens are the same for every row and come first, so under causal attention
  their hidden states, keys and values are the same in every row too. They are computed once
  (batch 1) and their keys/values broadcast to the batch as a shared past; autograd sums the
  rows' gradients into that one copy. PEFT runs them once per row: with 20 virtual tokens
  before 80-token rows that is a fifth of the body's work spent eight times over.
  Prefix tuning's prompt already is a past of keys/values; it too is built once and broadcast.
- PEFT runs the LM head (576 x 49,152 for the bundled model, about a fifth of the forward
  cost) on every position and then ignores all but the target positions; here it runs only
  on the positions that predict a labelled token, fused with the cross-entropy: the forward
  pass also computes the gradient of the loss with respect to the hidden states, so the
  (tokens x vocabulary) logits live in one buffer for a moment instead of four that autograd
  keeps until the backward pass.
`bench/bench_train_step.py` measures both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.formatting import IGNORE
from core.kernels import frozen_matmul


def shared_prompt_cache(peft_model, batch_size: int):
    """The soft prompt as a key/value cache computed for one row and broadcast to `batch_size`
    rows (views, no copies), plus its length in positions."""
    cfg = peft_model.active_peft_config
    base = peft_model.get_base_model()
    if cfg.peft_type.value == "PREFIX_TUNING":
        cache = peft_model.get_prompt(1)  # per layer (1, H, N, d)
    else:
        prompt = peft_model.get_prompt(batch_size=1).to(base.dtype)  # (1, N, D)
        cache = base.get_decoder()(inputs_embeds=prompt, use_cache=True).past_key_values
    for layer in cache.layers:
        layer.keys = layer.keys.expand(batch_size, -1, -1, -1)  # (B, H, N, d)
        layer.values = layer.values.expand(batch_size, -1, -1, -1)
    return cache, cfg.num_virtual_tokens


def labelled_loss(peft_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled tokens; inputs (B, T) right-padded as in training."""
    base = peft_model.get_base_model()
    B = input_ids.shape[0]
    cache, N = shared_prompt_cache(peft_model, B)
    mask = torch.cat([torch.ones(B, N, dtype=attention_mask.dtype, device=attention_mask.device),
                      attention_mask], dim=1)  # (B, N+T)
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=mask, past_key_values=cache,
                                use_cache=True).last_hidden_state  # (B, T, D) at positions N..N+T-1
    # position t predicts token t+1: keep the positions whose next token carries a label
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != IGNORE  # (B, T-1)
    head = base.get_output_embeddings()
    picked = hidden[:, :-1][keep]  # (M, D) with M = number of labelled tokens
    if head.bias is not None or torch.is_autocast_enabled(picked.device.type) or not len(picked):
        return F.cross_entropy(head(picked).float(), targets[keep])
    return _HeadCrossEntropy.apply(picked, head.weight, targets[keep])


class _HeadCrossEntropy(torch.autograd.Function):
    """mean cross-entropy of softmax(hidden @ W.T) against targets, W frozen; the gradient for
    `hidden` is computed in the forward pass, (softmax - onehot) / M @ W, reusing the logits buffer."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        logits = frozen_matmul(hidden, weight)  # (M, V)
        lse = logits.logsumexp(-1)  # (M,)
        loss = (lse - logits.gather(1, targets[:, None])[:, 0]).mean()
        if ctx.needs_input_grad[0]:
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[torch.arange(len(targets)), targets] -= 1
            ctx.save_for_backward(frozen_matmul(probs.div_(len(targets)), weight.t()))  # (M, D)
        return loss

    @staticmethod
    def backward(ctx, grad):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad, None, None
