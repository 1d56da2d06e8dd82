"""Reference log-likelihood on a causal LM through the generator's prefixes (Generator.log_likelihood).

Each row runs from its system's prefix (the token run all its rows share, cached once; the prefixes of
many in-memory prompts of one length, an importance pass's variants, in one batched pass); rows of all
systems are batched by the length of what follows, so batches carry little padding. The LM head runs
on the target positions alone (head_logprobs), in a bfloat16 block from the head's bf16 copy."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from core.generate.batching import common_prefix
from core.model import fused
from core.model.packed import bf16_head


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] along the last axis, without a second logits-sized tensor: (...)."""
    logits = logits.float()
    return logits.gather(-1, ids[..., None])[..., 0] - fused.logsumexp(logits)[0]


def log_likelihood(gen, rows: list) -> list[float]:
    """Mean log-probability per token of each reference (target + end marker) under each system;
    `gen` is the Generator (runs under its no-grad, model-device wrapper)."""
    out, seqs, targets, heads = [0.0] * len(rows), [], [], {}
    for system, x, target in rows:
        t = gen.formatter(system).target_ids(target)
        seqs.append(gen.prompt_ids(system, x) + t)
        targets.append(len(t))
        heads.setdefault(system.name, []).append(seqs[-1][:len(seqs[-1]) - len(t)])
    common = {name: common_prefix(group) for name, group in heads.items()}
    cut = [common[s.name] for s, _, _ in rows]
    probes = {s.name: i for i, (s, _, _) in enumerate(rows) if s.vectors is not None}  # a row of each in-memory
    gen.prefixes([(rows[i][0], tuple(seqs[i][:cut[i]])) for i in probes.values()])  # prompt; same lengths at once
    order = sorted(range(len(rows)), key=lambda i: (len(seqs[i]) - cut[i], targets[i], rows[i][0].name))
    for b in range(0, len(order), gen.batch_size):
        idx = order[b:b + gen.batch_size]
        # each row without its last token: no position reads it (causal), and nothing is predicted after it
        parts = [(gen.prefix(rows[i][0], tuple(seqs[i][:cut[i]])), seqs[i][cut[i]:-1]) for i in idx]
        ids, mask, pos, cache = gen._batch_inputs(parts)
        want = torch.tensor([targets[i] for i in idx])  # row r's last want[r] positions predict its targets
        K = int(want.max())
        real = torch.arange(K) >= K - want[:, None]  # (B, K) over the last K positions
        tokens = torch.tensor([t for i in idx for t in seqs[i][-targets[i]:]])  # (N,) every row's targets
        lp = target_logprobs(gen.model, dict(input_ids=ids, attention_mask=mask, position_ids=pos,
                                              past_key_values=cache, use_cache=False), real, tokens)
        for i, part in zip(idx, lp.split(want.tolist())):
            out[i] = float(part.mean())
    return out


def target_logprobs(model, inputs: dict, real: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log-probabilities (N,) of `tokens` at the positions `real` (B, K: the last K of the pass `inputs`
    runs; row-major order). Where the logits are head(body), the head runs on those positions alone;
    otherwise the model's own logits for the last K, read row by row (no second logits-sized tensor)."""
    split = body_and_head(model)
    K = real.shape[1]
    if split:
        return head_logprobs(split[1], split[0](**inputs).last_hidden_state[:, -K:][real], tokens)
    logits = model(**inputs, logits_to_keep=K).logits  # (B, K, V)
    return torch.cat([token_logprobs(logits[r, real[r]], t) for r, t in enumerate(tokens.split(real.sum(1).tolist()))])


HEAD_ROWS = 128  # positions through the LM head at once: 25 MB of float32 logits for a 49,152-token vocabulary


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[tokens]: hidden (N, D), tokens (N,) -> (N,).

    Inside a bfloat16 block (core/model/packed.py) the normaliser comes from the head's bf16 copy, its
    logsumexp read straight off the bf16 products (fused.logsumexp): under half the float32 head's
    time here (docs/performance.md). The target's logit and the largest one are then recomputed in float32 from the
    head's own weights and swapped into the sum, so only the rest of the vocabulary keeps bf16 rounding."""
    if len(hidden) > HEAD_ROWS:  # a few rows of logits at a time: they stay in the heap, never mapped afresh
        return torch.cat([head_logprobs(head, h, t) for h, t in zip(hidden.split(HEAD_ROWS), tokens.split(HEAD_ROWS))])
    bf16 = bf16_head(head)
    if bf16 is None:
        return token_logprobs(head(hidden), tokens)
    z = bf16(hidden)  # (N, V) bf16
    lse, top = fused.logsumexp(z)
    at = torch.stack([tokens, top], 1)  # (N, 2)
    exact = torch.bmm(head.weight[at], hidden[:, :, None])[..., 0]  # (N, 2) float32 logits
    swap = (exact - lse[:, None]).exp() - (z.gather(1, at).float() - lse[:, None]).exp()  # (N, 2)
    swap[:, 1] *= tokens != top  # a target that is the largest counts once
    return exact[:, 0] - lse - swap.sum(1).log1p()


def body_and_head(model) -> tuple | None:
    """(the model's body, its output head) where the logits are nothing but head(body's last hidden state),
    checked once per model on a probe; None where the model does more (a logit scale or cap)."""
    if "_body_and_head" not in model.__dict__:
        body = getattr(model, getattr(model, "base_model_prefix", "") or "", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        ok = False
        if isinstance(body, torch.nn.Module) and body is not model and head is not None:
            try:
                ids = torch.arange(3, 8, device=model.device)[None] % model.config.vocab_size  # (1, 5)
                with torch.no_grad():
                    ok = torch.allclose(model(input_ids=ids).logits, head(body(input_ids=ids).last_hidden_state),
                                        atol=1e-5, rtol=1e-5)
            except (AttributeError, TypeError, RuntimeError, ValueError):
                ok = False
        model.__dict__["_body_and_head"] = (body, head) if ok else None
    return model.__dict__["_body_and_head"]


LOGITS_AT_ONCE = 2 ** 25  # floats of target logits in one pass (128 MB): a long reference runs a few rows at a time
CACHE_AT_ONCE = 2 ** 25  # floats of the prompts' keys/values copied for one pass: long (few-shot) prompts, fewer rows


def after_prompt(model, first: torch.Tensor, cache, mask: torch.Tensor, pos: torch.Tensor,
                 targets: list[list[int]]) -> list[float]:
    """Mean log-probability of each row's target ids, read off a generation prefill: `first` (b, V) are
    the logits after each (left-padded) prompt, `cache` its keys/values, `mask` (b, W) and `pos` (b, S)
    the prefill's. The first target token is scored from `first`; the rest in passes over the targets
    (right-padded) on copies of a few of the cache's rows at a time (a pass appends to the cache it is
    given); the cache stays as the prefill left it, for decoding."""
    (B, V), n = first.shape, max(len(t) for t in targets)
    total = token_logprobs(first, torch.tensor([t[0] for t in targets]))  # (b,)
    if n > 1:
        ids, nxt = torch.zeros(B, n - 1, dtype=torch.long), torch.zeros(B, n - 1, dtype=torch.long)
        own = torch.zeros(B, n - 1, dtype=mask.dtype)
        for r, t in enumerate(targets):
            ids[r, :len(t) - 1], nxt[r, :len(t) - 1], own[r, :len(t) - 1] = torch.tensor(t[:-1]), torch.tensor(t[1:]), 1
        per_row = sum(layer.keys[0].numel() + layer.values[0].numel() for layer in cache.layers)
        step = max(1, min(LOGITS_AT_ONCE // ((n - 1) * V), CACHE_AT_ONCE // max(per_row, 1)))
        for a in range(0, B, step):
            rows = slice(a, a + step)
            copy = DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in cache.layers])
            inputs = dict(input_ids=ids[rows], attention_mask=torch.cat([mask[rows], own[rows]], 1),
                          position_ids=pos[rows, -1:] + 1 + torch.arange(n - 1), past_key_values=copy, use_cache=True)
            real = own[rows].bool()  # (rows, n-1): the targets' own positions, not the padding after shorter ones
            lp = torch.zeros(real.shape)
            lp[real] = target_logprobs(model, inputs, real, nxt[rows][real])
            total[rows] += lp.sum(1)
    return (total / torch.tensor([len(t) for t in targets])).tolist()
