"""Generation and reference log-likelihood for encoder-decoder models (T5, FLAN-T5), served by the
batched generator (core/generate/generator.py) when its model is one.

A batch holds rows of one system. The encoder runs once per batch over all its rows (right-padded),
a prompt-tuning or P-tuning prompt's virtual tokens in front of each row's input, as PEFT puts
them. The encoder is bidirectional, so there the prompt's hidden states depend on the input and
cannot be shared between rows; what is shared is what PEFT's prefix tuning adds, the decoder's
self-attention keys/values, read from the adapter once and broadcast to the batch. The decoder
then picks one token per step on its key/value cache (the cross-attention keys/values computed
from the encoder output at the first step and reused), each row from the model's decoder start
token, exactly as PEFT's `generate` runs one row.
"""
from __future__ import annotations

from typing import Callable

import torch
from transformers import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from core.generate.batching import ActiveRows, pick, stop_ids
from core.generate.generator import Decoding, Generator, System


def _groups(systems: list[System], size: int) -> list[list[int]]:
    """Row indices in batches of at most `size`, each batch of one system (rows arrive sorted by system)."""
    out: list[list[int]] = []
    for i, s in enumerate(systems):
        if out and len(out[-1]) < size and systems[out[-1][0]].name == s.name:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _soft(gen: Generator, system: System):
    return gen._soft_prompt(system.adapter_dir) if system.adapter_dir else None


def encode(gen: Generator, system: System, rows: list[list[int]]) -> tuple[BaseModelOutput, torch.Tensor]:
    """The encoder's output for rows of one system and their attention mask (B, S): each row is the
    soft prompt's virtual tokens (if it has input-space ones) followed by its input ids."""
    soft = _soft(gen, system)
    front = soft[1][0] if soft and soft[0] == "embeds" else None  # (N, D)
    embed = gen.model.get_input_embeddings()
    seqs = [embed(torch.tensor(ids)) for ids in rows]  # (T_r, D) each
    if front is not None:
        seqs = [torch.cat([front, x]) for x in seqs]
    S = max(len(x) for x in seqs)
    embeds = torch.zeros(len(seqs), S, seqs[0].shape[-1], dtype=seqs[0].dtype)  # (B, S, D)
    mask = torch.zeros(len(seqs), S, dtype=torch.long)  # (B, S)
    for r, x in enumerate(seqs):
        embeds[r, :len(x)] = x
        mask[r, :len(x)] = 1
    hidden = gen.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (B, S, D)
    return BaseModelOutput(last_hidden_state=hidden), mask


def decoder_cache(gen: Generator, system: System, batch_size: int) -> EncoderDecoderCache:
    """An empty decoder cache, or one whose self-attention starts with a prefix-tuning prompt's
    keys/values (per layer (1, H, N, d), broadcast to the batch as views)."""
    soft = _soft(gen, system)
    if soft and soft[0] == "kv":
        kv = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in soft[1]]
        return EncoderDecoderCache(DynamicCache(ddp_cache_data=kv), DynamicCache())
    return EncoderDecoderCache(DynamicCache(), DynamicCache())


def _start(gen: Generator) -> int:
    cfg = gen.model.config
    return cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else gen.tokenizer.pad_token_id


@torch.no_grad()
def generate(gen: Generator, batch: list[tuple[System, list[int]]], decoding: Decoding, rng: torch.Generator | None,
             progress: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Output token ids for every encoded (system, encoder input ids) row, `gen.batch_size` rows at once."""
    stops, kinds = stop_ids(gen.tokenizer), gen.token_kinds() if decoding.stop_at_newline else None
    pad = gen.tokenizer.pad_token_id
    out: list[list[int]] = [[] for _ in batch]
    done_rows = 0
    for idx in _groups([s for s, _ in batch], gen.batch_size):
        system = batch[idx[0]][0]
        encoded, mask = encode(gen, system, [batch[i][1] for i in idx])
        cache = decoder_cache(gen, system, len(idx))
        rows = ActiveRows(torch.tensor(idx), mask, None, cache, stops, kinds, pad)
        ids = torch.full((len(idx), 1), _start(gen), dtype=torch.long)  # (b, 1)
        while True:
            logits = gen.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=ids,
                               past_key_values=cache, use_cache=True).logits[:, -1]  # (b, V)
            rows.take(pick(logits, decoding, rng), out)
            if rows.ended(decoding.max_new_tokens, out).all():
                break
            ids = torch.where(rows.done, torch.full_like(rows.last, pad), rows.last)[:, None]  # (b, 1)
        done_rows += len(idx)
        if progress:
            progress(done_rows, len(batch))
    return out


@torch.no_grad()
def log_likelihood(gen: Generator, rows: list[tuple[System, str, str]]) -> list[float]:
    """Mean log-probability per token of each reference (target + end marker) decoded after its input."""
    out = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: rows[i][0].name)
    for group in _groups([rows[i][0] for i in order], gen.batch_size):
        idx = [order[g] for g in group]
        system = rows[idx[0]][0]
        fmt = gen.formatter(system)
        targets = [fmt.target_ids(rows[i][2]) for i in idx]
        encoded, mask = encode(gen, system, [fmt.prompt_ids(rows[i][1]) for i in idx])
        T = max(len(t) for t in targets)
        dec = torch.full((len(idx), T), gen.tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
        dec[:, 0] = _start(gen)
        for r, t in enumerate(targets):  # each target token is predicted from the one before it
            dec[r, 1:len(t)] = torch.tensor(t[:-1], dtype=torch.long)
        logits = gen.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=dec, use_cache=True,
                           past_key_values=decoder_cache(gen, system, len(idx))).logits  # (B, T, V)
        logp = logits.float().log_softmax(-1)
        for r, (i, t) in enumerate(zip(idx, targets)):
            out[i] = float(logp[r, :len(t)].gather(-1, torch.tensor(t)[:, None]).mean())
    return out
