"""Soft-prompt methods, all done by PEFT: prompt tuning, P-tuning, prefix tuning.

PEFT's own init covers RANDOM and TEXT. Two inits go beyond it and are applied to the prompt
embedding after `get_peft_model`:
- sample-vocab: virtual tokens start as embeddings of tokens drawn from the `top_k` most
  frequent tokens (Lester et al. 2021 use 5,000). Frequency is the BPE merge rank: in a
  byte-level BPE vocabulary a lower id was merged earlier, i.e. is more frequent in the
  tokenizer's training corpus. Special tokens are excluded.
- class-label: the first virtual tokens are the mean embedding of each label word's tokens;
  the rest are sampled as in sample-vocab.
- run: the trained prompt of an earlier prompt-tuning run on the same model (prompt transfer,
  SPoT). A longer new prompt keeps all its tokens and fills the rest as sample-vocab does; a
  shorter one keeps its first tokens.

Encoder-decoder models (T5, FLAN-T5) take PEFT's SEQ_2_SEQ_LM task: prompt tuning and P-tuning
put the virtual tokens in front of the encoder's input (PEFT keeps a second, unused set of N
rows for the decoder), prefix tuning gives the decoder's self-attention N keys/values per layer
(of the layer's own key/value width, heads x d_kv, which in FLAN-T5-small is not the hidden size).
"""
from __future__ import annotations

import torch
from peft import (PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig,
                  PromptTuningInit, TaskType, get_peft_model)

from core.config import Init, Method, TuneConfig
from core.errors import WorkbenchError
from core.model.adapters import adapter_prompt, prefix_width
from core.model.loading import is_seq2seq
from core.store.runs import Run, init_run_problem


def peft_config(cfg: TuneConfig, tokenizer_path: str, model_config=None):
    common = dict(task_type=TaskType.SEQ_2_SEQ_LM if is_seq2seq(model_config) else TaskType.CAUSAL_LM,
                  num_virtual_tokens=cfg.num_virtual_tokens)
    if cfg.method == Method.PROMPT_TUNING:
        if cfg.init == Init.TEXT:
            return PromptTuningConfig(**common, prompt_tuning_init=PromptTuningInit.TEXT,
                                      prompt_tuning_init_text=cfg.init_text, tokenizer_name_or_path=tokenizer_path)
        return PromptTuningConfig(**common, prompt_tuning_init=PromptTuningInit.RANDOM)
    if cfg.method == Method.P_TUNING:
        return PromptEncoderConfig(**common, encoder_reparameterization_type=cfg.encoder_type.value.upper(),
                                   encoder_hidden_size=cfg.encoder_hidden_size)
    width = prefix_width(model_config)  # T5: heads x d_kv
    return PrefixTuningConfig(**common, prefix_projection=cfg.prefix_projection,
                              encoder_hidden_size=cfg.encoder_hidden_size, **({"token_dim": width} if width else {}))


def frequent_token_ids(tokenizer, top_k: int) -> torch.Tensor:
    """Ids of the `top_k` most frequent ordinary tokens, by BPE merge rank (= id order)."""
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    ids = [i for i in range(len(tokenizer)) if i not in special][:top_k]
    return torch.tensor(ids, dtype=torch.long)


def label_vectors(tokenizer, embeddings: torch.Tensor, words: list[str]) -> torch.Tensor:
    """One vector per label word: the mean embedding of its tokens (with a leading space)."""
    rows = []
    for w in words:
        ids = tokenizer(" " + str(w).strip(), add_special_tokens=False)["input_ids"]
        rows.append(embeddings[ids].mean(0))
    return torch.stack(rows)  # (L, D)


def run_vectors(cfg: TuneConfig, width: int) -> torch.Tensor:
    """The trained prompt (P, D) of the run cfg.init_run, checked to fit (same model, prompt tuning, width)."""
    if problem := init_run_problem(cfg.init_run, cfg.model):
        raise WorkbenchError(f"init_run: {problem}")
    _, vectors = adapter_prompt(Run.open(cfg.init_run).adapter_dir)
    if vectors.shape[1] != width:
        raise WorkbenchError(f"init_run: run {cfg.init_run!r} has {vectors.shape[1]}-wide virtual tokens but the "
                             f"model's embeddings are {width} wide: pick a run of this model.")
    return torch.from_numpy(vectors)


def initial_prompt(cfg: TuneConfig, tokenizer, embeddings: torch.Tensor) -> torch.Tensor | None:
    """Start vectors (N, D) for the inits PEFT does not do itself, else None."""
    if cfg.method != Method.PROMPT_TUNING or cfg.init not in (Init.SAMPLE_VOCAB, Init.CLASS_LABEL, Init.RUN):
        return None
    gen = torch.Generator().manual_seed(cfg.seed)
    pool = frequent_token_ids(tokenizer, cfg.sample_vocab_top_k)
    picks = pool[torch.randint(len(pool), (cfg.num_virtual_tokens,), generator=gen)]
    vectors = embeddings[picks].clone()  # (N, D)
    if cfg.init == Init.CLASS_LABEL:
        labels = label_vectors(tokenizer, embeddings, cfg.label_words)[: cfg.num_virtual_tokens]
        vectors[: len(labels)] = labels
    if cfg.init == Init.RUN:
        earlier = run_vectors(cfg, embeddings.shape[1])[: cfg.num_virtual_tokens]  # (min(P, N), D)
        vectors[: len(earlier)] = earlier
    return vectors


def build_peft_model(base, tokenizer, cfg: TuneConfig, tokenizer_path: str) -> PeftModel:
    """Wrap the frozen base model; only the prompt parameters are trainable."""
    torch.manual_seed(cfg.seed)
    model = get_peft_model(base, peft_config(cfg, tokenizer_path, base.config))
    start = initial_prompt(cfg, tokenizer, base.get_input_embeddings().weight.detach())
    if start is not None:  # (N, D) into the encoder's rows (the first N; all of them for a causal LM)
        with torch.no_grad():
            model.prompt_encoder[model.active_adapter].embedding.weight[: len(start)].copy_(start)
    assert_frozen(model)
    return model


def assert_frozen(model: PeftModel) -> None:
    bad = [n for n, p in model.base_model.named_parameters() if p.requires_grad and "prompt_encoder" not in n]
    if bad:
        raise RuntimeError(f"base model parameters would be trained: {bad[:3]}")


def prompt_vectors(model: PeftModel) -> torch.Tensor | None:
    """The learned virtual-token input embeddings (N, D), or None for prefix tuning.

    Prompt tuning: the embedding table itself. P-tuning: the prompt encoder's output.
    Prefix tuning learns per-layer keys/values, which are not input embeddings.
    """
    cfg = model.peft_config[model.active_adapter]
    if cfg.peft_type.value == "PREFIX_TUNING":
        return None
    encoder = model.prompt_encoder[model.active_adapter]
    idx = torch.arange(cfg.num_virtual_tokens * (cfg.num_transformer_submodules or 1))  # an LSTM reads them all
    with torch.no_grad():
        return encoder(idx).detach().float()[: cfg.num_virtual_tokens]  # (N, D): the encoder's for a T5
