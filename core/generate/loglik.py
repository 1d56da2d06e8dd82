"""Reference log-likelihood on a causal LM through the generator's prefixes (Generator.log_likelihood).

Each row runs from its system's prefix (the token run all its rows share, cached once); rows of all
systems are batched by the length of what follows, so batches carry little padding."""
from __future__ import annotations

import torch
from transformers import DynamicCache

from core.generate.generator import _common_prefix


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] along the last axis, without a second logits-sized tensor: (...)."""
    logits = logits.float()
    return logits.gather(-1, ids[..., None])[..., 0] - logits.logsumexp(-1)


def log_likelihood(gen, rows: list) -> list[float]:
    """Mean log-probability per token of each reference (target + end marker) under each system;
    `gen` is the Generator (runs under its no-grad, model-device wrapper)."""
    out, seqs, targets, heads = [0.0] * len(rows), [], [], {}
    for system, x, target in rows:
        t = gen.formatter(system).target_ids(target)
        seqs.append(gen.prompt_ids(system, x) + t)
        targets.append(len(t))
        heads.setdefault(system.name, []).append(seqs[-1][:len(seqs[-1]) - len(t)])
    common = {name: _common_prefix(group) for name, group in heads.items()}
    cut = [common[s.name] for s, _, _ in rows]
    order = sorted(range(len(rows)), key=lambda i: (len(seqs[i]) - cut[i], targets[i], rows[i][0].name))
    for b in range(0, len(order), gen.batch_size):
        idx = order[b:b + gen.batch_size]
        # each row without its last token: no position reads it (causal), and nothing is predicted after it
        parts = [(gen.prefix(rows[i][0], tuple(seqs[i][:cut[i]])), seqs[i][cut[i]:-1]) for i in idx]
        ids, mask, pos, cache = gen._batch_inputs(parts)
        logits = gen.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                           use_cache=False, logits_to_keep=max(targets[i] for i in idx)  # targets only
                           ).logits  # (B, max target, V)
        for r, i in enumerate(idx):  # row by row: no second (B, T, V) tensor for the log-softmax
            n = targets[i]  # the row's last n positions predict its n target tokens
            out[i] = float(token_logprobs(logits[r, -n:], torch.tensor(seqs[i][-n:])).mean())
    return out


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
            logits = model(input_ids=ids[rows], attention_mask=torch.cat([mask[rows], own[rows]], 1),
                           position_ids=pos[rows, -1:] + 1 + torch.arange(n - 1), past_key_values=copy,
                           use_cache=True).logits  # (rows, n-1, V)
            total[rows] += (token_logprobs(logits, nxt[rows]) * own[rows]).sum(1)
    return (total / torch.tensor([len(t) for t in targets])).tolist()
