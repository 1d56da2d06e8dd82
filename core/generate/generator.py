"""Batched, KV-cached generation for every system of a comparison, on one frozen base model.

A system is the bare model, a hard prompt (a template around `{input}`, optionally after token
ids in the virtual tokens' place) or a soft prompt (a PEFT adapter folder, or vectors in memory). Rows of a batch that belong to one system share a prefix: the soft
prompt's virtual tokens plus the longest run of prompt tokens common to those rows (the chat
template's head and the template text before `{input}`). That prefix's key/value cache is
computed once (batch 1) and reused for every row and every batch, instead of once per row.
Rows of different systems (several soft prompts too) run in the same batch: each row's prefix
cache is left-padded to the longest one, its own tokens follow, and position ids are given
explicitly, so every row sees exactly the positions it would see alone.

Soft prompts are read straight from the adapter file (`prompt_embeddings`, see
core/model/adapters.py): input-space vectors for prompt tuning / P-tuning, per-layer keys and
values for prefix tuning, laid out as PEFT's `get_prompt` lays them out.
Encoder-decoder models (T5) take the same calls; core/generate/seq2seq.py serves them.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import DynamicCache

from core.generate.batching import KV, ActiveRows, common_prefix, kv_layers, pick, stack_prefixes, stop_ids
from core.generate.formatting import Formatter
from core.store.paths import read_json
from core.model.adapters import adapter_prompt, check_adapter_fits
from core.model.memory import release_freed
from core.model.packed import on_model, packed_weights
from core.model.loading import is_seq2seq



@dataclass
class System:
    name: str
    template: str = "{input}"
    prompt_format: str = "chat"
    adapter_dir: str | None = None  # a soft prompt: PEFT adapter folder
    prefix_ids: tuple = ()  # a hard prompt as token ids, where a soft prompt's virtual tokens go (first)
    vectors: Any = field(default=None, repr=False, compare=False)  # virtual tokens (N, D) in memory, no file


@dataclass
class Decoding:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop_at_newline: bool = False  # end an output at its first line break after some text


@dataclass
class _Prefix:
    kv: KV  # (1, H, L, d) per layer
    length: int


@dataclass
class Generator:
    model: torch.nn.Module  # frozen base causal LM or encoder-decoder model
    tokenizer: object
    max_input_tokens: int = 2048  # whole few-shot prompts; longer ones lose their middle (see Formatter)
    batch_size: int = 32  # a decode step reads every weight once: 32 rows cost ~2x of 8, not 4x
    _soft: dict = field(default_factory=dict)
    _prefix: dict = field(default_factory=dict)
    _token_kinds: tuple | None = None

    @property
    def seq2seq(self) -> bool:
        return is_seq2seq(self.model)

    def formatter(self, system: System) -> Formatter:
        return Formatter(self.tokenizer, system.prompt_format, system.template, self.max_input_tokens,
                         seq2seq=self.seq2seq)

    def prompt_ids(self, system: System, text: str) -> list[int]:
        """The system's prefix ids (if any), then the formatted input's ids."""
        return list(system.prefix_ids) + self.formatter(system).prompt_ids(text)

    # ---- prefixes -------------------------------------------------------------------------
    def _soft_prompt(self, adapter_dir: str):
        """('embeds', (1, N, D)) or ('kv', KV with N positions) for an adapter folder, cached
        until its weights file changes (a resumed run rewrites it)."""
        stamp = os.stat(os.path.join(adapter_dir, "adapter_model.safetensors")).st_mtime_ns
        if self._soft.get(adapter_dir, (None,))[0] != stamp:
            self._prefix = {k: v for k, v in self._prefix.items() if k[0] != adapter_dir}
            peft_type, arr = adapter_prompt(adapter_dir)
            check_adapter_fits(adapter_dir, self.model.config, self.model.config.name_or_path)
            t = torch.from_numpy(arr).to(self.model.device, self.model.dtype)  # (N, width)
            if peft_type == "PREFIX_TUNING":
                conf = read_json(f"{adapter_dir}/adapter_config.json")
                n, layers, heads = t.shape[0], conf["num_layers"], conf["num_attention_heads"]
                sub = conf.get("num_transformer_submodules") or 1  # 2 for encoder-decoder models
                kv = t.view(1, n, layers * 2, heads, conf["token_dim"] // heads)  # as PEFT's get_prompt
                kv = torch.cat([kv] * sub, dim=2).permute(2, 0, 3, 1, 4).split(2 * sub)  # layers x (2*sub, 1, H, N, d)
                self._soft[adapter_dir] = (stamp, ("kv", [(x[0], x[1]) for x in kv]))  # (decoder) self-attention
            else:
                self._soft[adapter_dir] = (stamp, ("embeds", t[None]))  # (1, N, D)
        return self._soft[adapter_dir][1]

    def _prefix_source(self, system: System, ids: tuple[int, ...]) -> tuple[tuple, tuple | None]:
        """(cache key, soft prompt as _soft_prompt gives it or None) of a system's shared prefix."""
        soft, key = self._soft_prompt(system.adapter_dir) if system.adapter_dir else None, (system.adapter_dir, ids)
        if system.vectors is not None:  # (N, D) input-space vectors held in memory: keyed by their content
            t = torch.as_tensor(system.vectors, dtype=torch.float32).contiguous()  # (N, D)
            soft = ("embeds", t.to(self.model.dtype)[None])
            key = ("mem:" + hashlib.blake2b(t.numpy().tobytes(), digest_size=16).hexdigest(), ids)
        return key, soft

    def prefixes(self, pairs: list[tuple[System, tuple[int, ...]]]) -> None:
        """Same-length prefixes in one pass: for probes used once (a batch's rounding may differ from batch 1's)."""
        self._embedded_prefixes([(*self._prefix_source(system, ids), ids) for system, ids in pairs])

    @torch.no_grad()
    def _embedded_prefixes(self, sources: list[tuple[tuple, tuple | None, tuple[int, ...]]]) -> None:
        """Of (key, soft, ids) from _prefix_source, those of input-space tokens not cached yet: one pass per length."""
        todo: dict[int, dict] = {}
        for key, soft, ids in sources:
            if key not in self._prefix and soft and soft[0] == "embeds":
                embeds = torch.cat([soft[1], self.model.get_input_embeddings()(torch.tensor([ids], dtype=torch.long))], dim=1)
                todo.setdefault(embeds.shape[1], {})[key] = embeds  # (1, N+L, D)
        for length, group in todo.items():
            out = self.model(inputs_embeds=torch.cat(list(group.values())), use_cache=True, logits_to_keep=1)
            for r, key in enumerate(group):
                self._prefix[key] = _Prefix([(k[r:r + 1], v[r:r + 1]) for k, v in kv_layers(out.past_key_values)], length)

    @torch.no_grad()
    def prefix(self, system: System, ids: tuple[int, ...]) -> _Prefix:
        """Key/value cache of a system's shared prefix (virtual tokens + `ids`), computed once."""
        key, soft = self._prefix_source(system, ids)
        self._embedded_prefixes([(key, soft, ids)])
        if key not in self._prefix:  # token ids alone, or after a prefix-tuning prompt's keys and values
            kv = [(k.clone(), v.clone()) for k, v in soft[1]] if soft else None
            n = kv[0][0].shape[2] if kv else 0
            if ids:
                out = self.model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, n + len(ids), dtype=torch.long),
                                 position_ids=torch.arange(n, n + len(ids))[None], use_cache=True, logits_to_keep=1,
                                 past_key_values=DynamicCache(ddp_cache_data=kv) if kv else DynamicCache())
                kv = kv_layers(out.past_key_values)
            self._prefix[key] = _Prefix(kv or [], n + len(ids))
        return self._prefix[key]

    def forget_memory_prompts(self) -> None:
        """Drop the prefix caches of in-memory prompts (System.vectors): probes, each used once."""
        self._prefix = {k: v for k, v in self._prefix.items() if not str(k[0]).startswith("mem:")}

    @contextlib.contextmanager
    def in_precision(self, dtype: torch.dtype):
        """Inside the block the model's matmuls run through weights reordered once, in `dtype`
        (core/model/packed.py); bf16 prefix caches computed there are dropped at its end, never served
        to a later float32 pass. Yields the dtype in use (float32 where bf16 was asked on a CPU without
        it; None where nothing changed)."""
        kept, used = set(self._prefix), None
        try:
            with packed_weights(self.model, dtype) as used:
                yield used
        finally:
            if used not in (None, torch.float32):  # float32 through the packed weights: bitwise the same
                self._prefix = {k: v for k, v in self._prefix.items() if k in kept}

    # ---- generation ---------------------------------------------------------------------
    def generate(self, rows: list[tuple[System, str]], decoding: Decoding = Decoding(),
                 progress: Callable[[int, int], None] | None = None) -> list[str]:
        """One output text per (system, input) row, in order."""
        return self._generate(rows, decoding, progress)[0]

    def generate_scored(self, rows: list[tuple[System, str, str]], decoding: Decoding = Decoding(),
                        progress: Callable[[int, int], None] | None = None) -> tuple[list[str], list[float]]:
        """generate() on (system, input, reference) rows, and each reference's log_likelihood() read off
        the same prefill (causal LMs: the prompts go through the model once, not twice)."""
        if self.seq2seq:
            return self.generate([r[:2] for r in rows], decoding, progress), self.log_likelihood(rows)
        targets = [self.formatter(s).target_ids(t) for s, _, t in rows]
        return self._generate([r[:2] for r in rows], decoding, progress, targets)

    @on_model
    def _generate(self, rows, decoding, progress, targets=None) -> tuple[list[str], list[float] | None]:
        encoded = [(s, self.prompt_ids(s, x)) for s, x in rows]
        order = sorted(range(len(rows)), key=lambda i: (rows[i][0].name, len(encoded[i][1])))
        run, lls = self._generate_batch, None
        if self.seq2seq:
            from core.generate import seq2seq
            run = functools.partial(seq2seq.generate, self)
        elif targets is not None:
            lls = [0.0] * len(rows)
            run = functools.partial(run, scored=([targets[i] for i in order], lls))
        tokens = run([encoded[i] for i in order], decoding, torch.Generator(self.model.device).manual_seed(decoding.seed),
                     progress)
        outs: list[str] = [""] * len(rows)
        scores = None if lls is None else [0.0] * len(rows)
        for k, (i, toks) in enumerate(zip(order, tokens)):  # back in row order
            text = self.formatter(rows[i][0]).clean_output(self.tokenizer.decode(toks))
            outs[i] = text.split("\n")[0].strip() if decoding.stop_at_newline else text
            if scores is not None:
                scores[i] = lls[k]
        release_freed()  # the batches' activations and caches, back to the system (core/model/memory.py)
        return outs, scores

    def _split(self, batch: list[tuple[System, list[int]]], own: list[int] | None = None):
        """Per row: the prefix cache of its system's common token run, and the row's own tokens
        (at least `own[r]` + 1 of them stay with row r)."""
        by_system: dict[str, list[list[int]]] = {}
        for r, (s, ids) in enumerate(batch):
            by_system.setdefault(s.name, []).append(ids[:len(ids) - own[r]] if own else ids)
        common = {name: common_prefix(group) for name, group in by_system.items()}
        return [(self.prefix(s, tuple(ids[:common[s.name]])), ids[common[s.name]:]) for s, ids in batch]

    def _batch_inputs(self, parts: list[tuple[_Prefix, list[int]]]):
        """Left-padded ids, attention mask, explicit positions and the stacked prefix cache."""
        B = len(parts)
        P = max(p.length for p, _ in parts)
        S = max(len(s) for _, s in parts)
        ids = torch.full((B, S), self.tokenizer.pad_token_id, dtype=torch.long)  # (B, S)
        mask = torch.zeros((B, P + S), dtype=torch.long)  # (B, P+S)
        pos = torch.zeros((B, S), dtype=torch.long)  # (B, S)
        for r, (p, s) in enumerate(parts):
            ids[r, S - len(s):] = torch.tensor(s)
            mask[r, P - p.length:P] = 1
            mask[r, P + S - len(s):] = 1
            pos[r, S - len(s):] = torch.arange(p.length, p.length + len(s))
        cache = DynamicCache(ddp_cache_data=stack_prefixes([p for p, _ in parts], P)) if P else DynamicCache()
        return ids, mask, pos, cache

    @torch.no_grad()
    def _generate_batch(self, batch, decoding: Decoding, gen: torch.Generator | None,
                        progress: Callable[[int, int], None] | None = None, scored=None) -> list[list[int]]:
        """Output token ids for every encoded (system, prompt ids) row, at most `batch_size` rows at once.

        Greedy decoding batches continuously: a row that ends leaves the batch at once, and when
        a quarter of the slots are free the next waiting rows are prefilled together and join it, so
        decode steps run on full batches instead of waiting for a batch's longest row. Every row
        keeps its own positions and mask, so what it generates does not depend on its neighbours.
        Sampling runs fixed batches (each batch's random stream independent of when rows end).
        `scored` (target ids per row, a list to fill): each target's mean log-probability, from the prefill."""
        parts = self._split(batch)
        ends = (stop_ids(self.tokenizer), self.token_kinds() if decoding.stop_at_newline else None)
        greedy = decoding.temperature <= 0
        refill_at = max(1, self.batch_size // 4) if greedy else self.batch_size
        out: list[list[int]] = [[] for _ in batch]
        waiting, active, finished = list(range(len(batch))), None, 0
        while waiting or active is not None:
            free = self.batch_size - (len(active.rows) if active is not None else 0)
            if waiting and free >= refill_at:
                take, waiting = waiting[:free], waiting[free:]
                new = self._prefill([parts[r] for r in take], torch.tensor(take), ends, decoding, gen, out, scored)
                active = new if active is None else active.merge(new)
            else:
                active.step(self.model, lambda logits: pick(logits, decoding, gen), out)
            ended = active.ended(decoding.max_new_tokens, out)
            if ended.any() and (greedy or ended.all()):
                finished += int(ended.sum())
                active = active.keep((~ended).nonzero().squeeze(1)) if not ended.all() else None
                if progress:
                    progress(finished, len(batch))
        return out

    def _prefill(self, parts, rows: torch.Tensor, ends: tuple, decoding: Decoding, gen, out,
                 scored=None) -> ActiveRows:
        """The rows' prompts through the model at once; their first tokens picked. `ends`: stop ids, token kinds;
        `scored` as in _generate_batch."""
        ids, mask, pos, cache = self._batch_inputs(parts)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1]  # (b, V)
        if scored is not None:
            from core.generate.loglik import after_prompt
            lls = after_prompt(self.model, logits, cache, mask, pos, [scored[0][r] for r in rows.tolist()])
            for r, ll in zip(rows.tolist(), lls):
                scored[1][r] = ll
        active = ActiveRows(rows, mask, pos[:, -1:] + 1, cache, *ends, self.tokenizer.pad_token_id)
        active.take(pick(logits, decoding, gen), out)
        return active

    def token_kinds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per vocabulary id: does its text hold a line break; does it hold anything but whitespace."""
        if self._token_kinds is None:
            words = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
            size = max(len(words), self.model.get_output_embeddings().weight.shape[0])
            words += [""] * (size - len(words))  # ids the tokenizer does not know (padded LM heads)
            self._token_kinds = (torch.tensor(["\n" in w for w in words]),
                                 torch.tensor([bool(w.strip()) for w in words]))
        return self._token_kinds

    @on_model
    @torch.no_grad()
    def log_likelihood(self, rows: list[tuple[System, str, str]]) -> list[float]:
        """Mean log-probability per token of each reference (target + end marker) under each system
        (core/generate/loglik.py for causal LMs, seq2seq.py for encoder-decoder models)."""
        from core.generate import loglik, seq2seq
        out = (seq2seq if self.seq2seq else loglik).log_likelihood(self, rows)
        release_freed()
        return out

