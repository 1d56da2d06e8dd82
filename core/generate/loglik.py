"""Reference log-likelihood on a causal LM through the generator's prefixes (Generator.log_likelihood).

Each row runs from its system's prefix (the token run all its rows share, cached once); rows of all
systems are batched by the length of what follows, so batches carry little padding."""
from __future__ import annotations

from core.generate.generator import _common_prefix


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
    order = sorted(range(len(rows)), key=lambda i: (len(seqs[i]) - cut[i], rows[i][0].name))
    for b in range(0, len(order), gen.batch_size):
        idx = order[b:b + gen.batch_size]
        parts = [(gen.prefix(rows[i][0], tuple(seqs[i][:cut[i]])), seqs[i][cut[i]:]) for i in idx]
        ids, mask, pos, cache = gen._batch_inputs(parts)
        logp = gen.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                          use_cache=False, logits_to_keep=max(targets[i] for i in idx) + 1  # targets only
                          ).logits.float().log_softmax(-1)  # (B, max target + 1, V)
        for r, i in enumerate(idx):
            n = targets[i]  # the last n tokens are the target, each predicted from the position before it
            out[i] = float(logp[r, -n - 1:-1].gather(-1, ids[r, -n:, None]).mean())
    return out

