"""What a soft prompt means, measured, not only read off its nearest tokens.

- The projected prompt: each virtual token replaced by its nearest vocabulary token (exact cosine on
  mean-centred embeddings, as everywhere in Explore), decoded, and run as a hard prompt: the token
  ids go where the virtual tokens went (first, before the run's own formatted input), through the
  same batched generator. Its score beside the soft prompt's is the waywardness gap (Khashabi et
  al. 2022: a prompt can keep its score while its projection says something else); the distance
  between the prompt and its projection is reported beside it.
- Per-virtual-token importance: how much the reference log-likelihood on validation drops when one
  token is replaced by the vocabulary's mean embedding, or removed; and the log-likelihood of a
  shorter prompt that keeps the k most important tokens.
- Runs against runs: cosine of mean-pooled prompts and the best one-to-one token alignment
  (Hungarian) between prompts, SPoT's task similarity (Vu et al. 2022).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

from core.errors import WorkbenchError
from core.evaluate.compare import CompareSpec, cache_key, run_comparison, stored
from core.explore.neighbors import ExactCosine
from core.generate.generator import Generator, System
from core.generate.systems import run_system
from core.model.adapters import adapter_prompt
from core.model.packed import bf16_supported
from core.store.paths import read_json, workspace_dir, write_json_atomic
from core.store.runs import Run
from core.tasks import load_task

PREFIX_NOTE = ("Prefix tuning learns keys and values for every layer, not input embeddings: there are no virtual "
               "tokens in the vocabulary's space, so there is no projected prompt and no token importance to measure.")
MODES = ("mean", "remove")
PRECISIONS = ("bf16", "fp32")


@dataclass
class Projection:
    token_ids: list[int]  # (P,) nearest vocabulary token per virtual token
    text: str  # the ids decoded
    cosines: np.ndarray  # (P,) cosine of each virtual token to its nearest token (mean-centred)
    distance: float  # mean over tokens of |v - e(t)| / |v| (raw embeddings): how far the projection moved it


def project(vectors: np.ndarray, index: ExactCosine, embeddings: np.ndarray, tokenizer) -> Projection:
    """Nearest vocabulary token of each virtual token (vectors (P, D)); embeddings (V, D) are the raw rows."""
    ids, sims = index.query(vectors, 1)  # (P, 1)
    ids = ids[:, 0]
    moved = np.linalg.norm(vectors - embeddings[ids], axis=1) / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)
    return Projection([int(i) for i in ids], tokenizer.decode([int(i) for i in ids]), sims[:, 0], float(moved.mean()))


def run_vectors(run_id: str) -> tuple[Run, np.ndarray]:
    """A finished run and its input-space virtual tokens (P, D); a clear error for prefix tuning."""
    run = Run.open(run_id)
    system = run_system(run_id)  # names a missing adapter
    peft_type, vectors = adapter_prompt(system.adapter_dir)
    if peft_type == "PREFIX_TUNING":
        raise WorkbenchError(f"Run {run_id!r}: {PREFIX_NOTE}")
    return run, vectors


def projected_system(run_id: str, projection: Projection) -> System:
    """The projection as a hard prompt in the run's own prompt format and input template."""
    cfg = Run.open(run_id).config()
    return System(f"projected: {run_id}", cfg.input_template, cfg.prompt_format.value,
                  prefix_ids=tuple(projection.token_ids))


def validation_rows(run: Run, n: int) -> tuple[object, list[dict]]:
    """(task, the first n validation examples) of the run's task."""
    cfg = run.config()
    task = load_task(cfg.task, cfg.data_path, cfg.input_column, cfg.target_column)
    rows = task.validation[:n]
    if not rows:
        raise WorkbenchError(f"Task {cfg.task!r} has no validation examples to measure the prompt on.")
    return task, rows


def projection_scores(gen: Generator, run_id: str, projection: Projection, n: int = 32,
                      stored_only: bool = False) -> dict | None:
    """Soft prompt and projected prompt on the first n validation examples (a stored comparison):
    {metric, soft, projected, gap (soft - projected), soft_loglik, projected_loglik, outputs, seconds};
    with `stored_only`, None where they were not measured before (nothing runs)."""
    run = Run.open(run_id)
    task, rows = validation_rows(run, n)
    soft, hard = run_system(run_id), projected_system(run_id, projection)
    spec = dataclasses.replace(CompareSpec.for_task(task, "validation", [soft, hard]), inputs=rows)
    t0 = time.perf_counter()
    if stored_only:
        result = stored(cache_key(spec, run.config().model, gen.max_input_tokens))
        if result is None:
            return None
    else:
        result = run_comparison(gen, spec, run.config().model)
    mean = {name: {m: float(np.mean(v)) for m, v in per.items()} for name, per in result["scores"].items()}
    metric = spec.main_metric
    return {"metric": metric, "soft": mean[soft.name][metric], "projected": mean[hard.name][metric],
            "gap": mean[soft.name][metric] - mean[hard.name][metric],
            "soft_loglik": mean[soft.name]["ref_loglik"], "projected_loglik": mean[hard.name]["ref_loglik"],
            "outputs": result["outputs"], "names": (soft.name, hard.name), "seconds": time.perf_counter() - t0}


def _variant(vectors: np.ndarray, j: int, mode: str, mean: np.ndarray) -> np.ndarray:
    if mode == "mean":
        out = vectors.copy()
        out[j] = mean
        return out
    return np.delete(vectors, j, axis=0)


def _loglik(gen: Generator, prompts: dict[str, np.ndarray], base: System, rows: list[dict],
            precision: str = "fp32") -> tuple[dict[str, float], str]:
    """Mean reference log-likelihood (per token, over rows) of each in-memory prompt in base's format,
    and the precision it was measured in ("bf16" asked on a CPU without it runs in float32)."""
    systems = {name: dataclasses.replace(base, name=name, adapter_dir=None, vectors=v if len(v) else None)
               for name, v in prompts.items()}
    todo = [(s, x["input"], x["target"]) for s in systems.values() for x in rows]
    with gen.in_precision(torch.bfloat16 if precision == "bf16" else torch.float32) as dtype:
        lls = gen.log_likelihood(todo)  # float32 reordered: bitwise the plain weights' results
    precision = "bf16" if dtype == torch.bfloat16 else "fp32"
    gen.forget_memory_prompts()
    n = len(rows)
    return {name: float(np.mean(lls[i * n:(i + 1) * n])) for i, name in enumerate(systems)}, precision


def default_precision() -> str:
    """"bf16" where the CPU multiplies bfloat16 natively (about 1.5x faster here), else "fp32"."""
    return "bf16" if bf16_supported() else "fp32"


def token_importance(gen: Generator, run_id: str, vectors: np.ndarray, mean: np.ndarray, n: int = 32,
                     modes: tuple = ("mean",), base: float | None = None, precision: str | None = None,
                     stored_only: bool = False) -> dict | None:
    """Per virtual token and mode, the drop in the reference log-likelihood on the first n validation
    examples when that token is replaced by the vocabulary mean (mode "mean") or removed ("remove").

    `base`: the whole prompt's float32 log-likelihood on those examples where already measured
    (projection_scores' soft_loglik), reused; else measured in the pass. precision "fp32": exact.
    "bf16" (the default where the CPU has it): the model's matmuls in bfloat16 with float32 accumulation
    (core/model/packed.py), everything else float32, and the LM head's target and largest logits
    recomputed in float32 (loglik.head_logprobs): a bf16 measurement of the whole prompt lands within
    6e-4 of the float32 one on the shipped tasks, well inside the drops' own bf16 error (docs/performance.md),
    so drops are taken from the float32 base.
    A result is stored in the workspace (importance/) and read back, marked `stored`, when the same prompt
    is measured again on the same examples (importance_key); with `stored_only`, None where there is none.
    {base, <mode>: (P,) drops (positive: the token helps), precision, examples, seconds}."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"modes must be some of {MODES}, got {modes!r}")
    precision = precision or default_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    run = Run.open(run_id)
    _, rows = validation_rows(run, n)
    key = importance_key(run, vectors, rows, modes, precision, base, gen.max_input_tokens)
    if (hit := stored_importance(key)) is not None or stored_only:
        return hit
    t0 = time.perf_counter()
    prompts = {"base": vectors} if base is None else {}
    for mode in modes:
        prompts.update({f"{mode}@{j:04d}": _variant(vectors, j, mode, mean) for j in range(len(vectors))})
    ll, used = _loglik(gen, prompts, run_system(run_id), rows, precision)
    ll = {"base": base, **ll}
    out = {"base": ll["base"], "seconds": 0.0, "examples": len(rows), "precision": used}
    for mode in modes:
        out[mode] = np.array([ll["base"] - ll[f"{mode}@{j:04d}"] for j in range(len(vectors))])
    out["seconds"] = time.perf_counter() - t0
    _store(key, {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in out.items()})
    return out


def importance_key(run: Run, vectors: np.ndarray, rows: list[dict], modes: tuple, precision: str,
                   base: float | None, max_input_tokens: int | None) -> str:
    """What an importance result depends on: the model, the run's format, the prompt's vectors, the examples."""
    cfg = run.config()
    blob = json.dumps({"model": cfg.model, "template": cfg.input_template, "format": cfg.prompt_format.value,
                       "max_input_tokens": max_input_tokens, "rows": rows, "modes": list(modes),
                       "precision": precision, "base": base}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode())
    digest.update(np.ascontiguousarray(vectors, np.float32).tobytes())
    return digest.hexdigest()[:24]


def stored_importance(key: str) -> dict | None:
    """An importance result measured before (workspace/importance/<key>.json), marked `stored`; None if none."""
    found = read_json(workspace_dir("importance") / f"{key}.json")
    if found is None:
        return None
    return {**found, **{m: np.asarray(found[m]) for m in MODES if m in found}, "stored": True}


def _store(key: str, result: dict) -> None:
    write_json_atomic(workspace_dir("importance") / f"{key}.json", result)


def top_k_tokens(importance: np.ndarray, k: int) -> list[int]:
    """The k most important positions, in prompt order."""
    if not 1 <= k <= len(importance):
        raise ValueError(f"k must be between 1 and {len(importance)}, got {k}")
    return sorted(int(j) for j in np.argsort(-importance, kind="stable")[:k])


def shorter_prompt_loglik(gen: Generator, run_id: str, vectors: np.ndarray, keep: list[int], n: int = 32) -> float:
    """Reference log-likelihood (float32, as the base beside it) of the prompt cut down to the positions `keep`;
    stored with the importance results and read back."""
    run = Run.open(run_id)
    _, rows = validation_rows(run, n)
    key = importance_key(run, vectors[keep], rows, ("shorter",), "fp32", None, gen.max_input_tokens)
    if (hit := stored_importance(key)) is not None:
        return hit["loglik"]
    loglik = _loglik(gen, {"shorter": vectors[keep]}, run_system(run_id), rows)[0]["shorter"]
    _store(key, {"loglik": loglik})
    return loglik


def importance_table(importance: dict, projection: Projection, neighbours: list[str]) -> pd.DataFrame:
    """One row per virtual token: its nearest words and its importance under each measured mode."""
    frame = pd.DataFrame({"virtual token": range(len(projection.token_ids)), "nearest words": neighbours,
                          "cosine to nearest": projection.cosines})
    for mode in MODES:
        if mode in importance:
            frame[f"log-lik drop ({'replaced by mean' if mode == 'mean' else 'removed'})"] = importance[mode]
    return frame


def prompt_similarity(a: np.ndarray, b: np.ndarray, mean: np.ndarray) -> tuple[float, float]:
    """(cosine of the mean-pooled prompts, best one-to-one token alignment): a (Pa, D), b (Pb, D).

    Both on vectors centred by the vocabulary mean (as every cosine in Explore). The alignment is the
    mean cosine of the token pairs a Hungarian matching picks (min(Pa, Pb) pairs); 1 for a prompt
    against itself, symmetric in a and b."""
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    ca, cb = np.asarray(a, np.float64) - mean, np.asarray(b, np.float64) - mean
    pooled = float(unit(ca.mean(0)) @ unit(cb.mean(0)))
    sims = unit(ca) @ unit(cb).T  # (Pa, Pb)
    r, c = linear_sum_assignment(sims, maximize=True)
    return pooled, float(sims[r, c].mean())


def similarity_frames(prompts: dict[str, np.ndarray], mean: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run x run tables of pooled cosine and token alignment (label -> vectors (P, D))."""
    names = list(prompts)
    pooled, aligned = np.zeros((len(names), len(names))), np.zeros((len(names), len(names)))
    for i, x in enumerate(names):
        for j in range(i, len(names)):
            pooled[i, j], aligned[i, j] = prompt_similarity(prompts[x], prompts[names[j]], mean)
            pooled[j, i], aligned[j, i] = pooled[i, j], aligned[i, j]
    return pd.DataFrame(pooled, names, names), pd.DataFrame(aligned, names, names)
