"""The rows a generator is decoding, as one batch that rows leave and join (continuous batching).

Every row keeps its own attention mask over the shared key/value cache and its own next
position, so rows of different lengths, prefixes and systems sit in one batch and each
computes exactly what it would alone. Rows that end are sliced out (`keep`); rows prefilled
later are merged in (`merge`), the narrower cache left-padded to the wider one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from transformers import DynamicCache

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (B, H, L, d)


@dataclass
class ActiveRows:
    """The rows being decoded: their output row numbers, attention mask (b, W) over the cache,
    next positions (b, 1), the key/value cache (b, H, W, d) and each row's last token."""
    rows: torch.Tensor  # (b,) output row of each batch slot
    mask: torch.Tensor
    pos: torch.Tensor  # (b, 1) position of each row's next input token
    cache: DynamicCache
    stops: torch.Tensor
    kinds: tuple | None  # (breaks, texts) per vocabulary id when outputs end at a line break
    pad: int
    last: torch.Tensor = None  # (b,) last picked token
    done: torch.Tensor = None  # (b,)
    has_text: torch.Tensor = None  # (b,)

    def __post_init__(self):
        if self.done is None:
            self.done = torch.zeros(len(self.rows), dtype=torch.bool)
            self.has_text = torch.zeros(len(self.rows), dtype=torch.bool)

    def take(self, nxt: torch.Tensor, out: list[list[int]]) -> None:
        """Record the picked tokens of the rows still running and update their end flags."""
        for slot, r in enumerate(self.rows.tolist()):
            if not self.done[slot]:
                out[r].append(int(nxt[slot]))
        self.done = self.done | torch.isin(nxt, self.stops)
        if self.kinds is not None:  # a line break ends the output once it has some text
            breaks, texts = self.kinds
            self.done |= breaks[nxt] & (self.has_text | texts[nxt])
            self.has_text = self.has_text | texts[nxt]
        self.last = nxt

    def step(self, model, pick: Callable[[torch.Tensor], torch.Tensor], out: list[list[int]]) -> None:
        """One decode step: each running row's last token in, `pick` chooses the next from the logits."""
        ids = torch.where(self.done, torch.full_like(self.last, self.pad), self.last)[:, None]  # (b, 1)
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], dim=1)
        logits = model(input_ids=ids, attention_mask=self.mask, position_ids=self.pos, past_key_values=self.cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1]  # (b, V)
        self.pos = self.pos + 1
        self.take(pick(logits), out)

    def ended(self, max_new_tokens: int, out: list[list[int]]) -> torch.Tensor:
        """(b,) rows that stopped or hold max_new_tokens tokens (they take no more)."""
        self.done = self.done | torch.tensor([len(out[r]) >= max_new_tokens for r in self.rows.tolist()])
        return self.done

    def keep(self, slots: torch.Tensor) -> "ActiveRows":
        """Only these batch slots, with the cache columns no remaining row uses cut off."""
        mask = self.mask[slots]
        first = int(mask.any(0).nonzero()[0])  # leading columns that are padding for every row
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[slots, :, first:], layer.values[slots, :, first:]
        return replace(self, rows=self.rows[slots], mask=mask[:, first:], pos=self.pos[slots], last=self.last[slots],
                       done=self.done[slots], has_text=self.has_text[slots])

    def merge(self, other: "ActiveRows") -> "ActiveRows":
        """Both sets of rows in one batch: the narrower cache is left-padded to the wider one."""
        W = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, W), _left_pad(theirs.keys, W)])
            mine.values = torch.cat([_left_pad(mine.values, W), _left_pad(theirs.values, W)])
        cat = lambda a, b: torch.cat([a, b])  # noqa: E731
        return replace(self, rows=cat(self.rows, other.rows), mask=cat(_left_pad(self.mask, W), _left_pad(other.mask, W)),
                       pos=cat(self.pos, other.pos), last=cat(self.last, other.last), done=cat(self.done, other.done),
                       has_text=cat(self.has_text, other.has_text))


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero columns before t's sequence axis (the last for masks (b, W), the third for (b, H, W, d))."""
    axis = 1 if t.dim() == 2 else 2
    missing = width - t.shape[axis]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[axis] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype), t], dim=axis)


def kv_layers(cache) -> KV:
    return [(layer.keys, layer.values) for layer in cache.layers]


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the token run every sequence starts with, leaving each at least one own token."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        if any(s[i] != first[i] for s in seqs):
            return i
    return max(n, 0)


def stack_prefixes(prefixes: list, P: int) -> KV:
    """Left-pad every row's prefix cache to P positions and stack the rows: (B, H, P, d) per layer."""
    ref = next(p for p in prefixes if p.kv).kv
    full = all(p.kv and p.length == P for p in prefixes)  # nothing to pad: one concatenation per tensor
    layers = []
    for layer, (k0, v0) in enumerate(ref):
        if full:
            layers.append((torch.cat([p.kv[layer][0] for p in prefixes]), torch.cat([p.kv[layer][1] for p in prefixes])))
            continue
        ks, vs = (t.new_zeros(len(prefixes), t.shape[1], P, t.shape[3]) for t in (k0, v0))
        for r, p in enumerate(prefixes):
            if p.kv:
                ks[r, :, P - p.length:], vs[r, :, P - p.length:] = p.kv[layer][0][0], p.kv[layer][1][0]
        layers.append((ks, vs))
    return layers


def stop_ids(tokenizer) -> torch.Tensor:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return torch.tensor(sorted(i for i in ids if i is not None))


def pick(logits: torch.Tensor, d, gen: torch.Generator) -> torch.Tensor:
    """The next token per row under decoding `d` (generator.Decoding): argmax, or a top-p sample."""
    if d.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / d.temperature, dim=-1)  # (B, V)
    if d.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < d.top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, generator=gen)[:, 0]
