"""Robustness: every system of a comparison on its inputs and on format variants of them.

Each variant is an ordinary comparison (same systems, same decoding, stored and reopened like any
other); this module only builds the variant inputs and reads the main metric back, per system:
the score on the original inputs, on each variant, and the spread over the variants (min, mean,
max, the worst variant and the drop from the original to it).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from core.evaluate.compare import CompareSpec, run_comparison
from core.generate.variants import SHIFTED, TRANSFORMS, applicable, shifted, variants
from core.generate.generator import Generator
from core.errors import WorkbenchError

ORIGINAL = "original"
NEEDS_REFERENCES = ("Robustness needs a reference for every input: pick a split or a file with "
                    "a reference column (pasted text has none).")


def variant_inputs(inputs: list[dict], k: int = 3, names: list[str] | None = None, seed: int = 0,
                   with_shifted: bool = True) -> dict[str, list[dict]]:
    """The original inputs, the shifted split (one random transform per input) and K variants: the
    named transforms, else the first K that change these inputs."""
    names = list(names) if names else applicable(inputs, seed)[:k]
    out = {ORIGINAL: inputs}
    if with_shifted:
        out[SHIFTED] = shifted(inputs, seed)
    out.update(variants(inputs, names, seed) if names else {})
    return out


def describe(name: str) -> str:
    """One line on what a variant does to the inputs."""
    if name == ORIGINAL:
        return "the inputs as given"
    if name == SHIFTED:
        return "each input through one transform drawn at random (seeded)"
    return TRANSFORMS[name].description


def run_robustness(gen: Generator, spec: CompareSpec, model: str, k: int = 3, names: list[str] | None = None,
                   seed: int = 0, embedder=None, with_shifted: bool = True,
                   progress: Callable[[float, str], None] | None = None) -> dict:
    """Run `spec` on its inputs and on their variants (see `variant_inputs`) with `run_comparison`;
    per system, the main metric's mean on each and the spread over the variants."""
    if not spec.inputs or not all(x.get("target") for x in spec.inputs):
        raise WorkbenchError(NEEDS_REFERENCES)
    sets = variant_inputs(spec.inputs, k, names, seed, with_shifted)
    comparisons = {}
    for i, (name, inputs) in enumerate(sets.items()):
        def step(f: float, msg: str, i=i, name=name) -> None:
            progress((i + f) / len(sets), f"{name} ({i + 1}/{len(sets)}): {msg}")
        comparisons[name] = run_comparison(gen, dataclasses.replace(spec, inputs=inputs), model, embedder,
                                           progress=step if progress else None)
    return summarize_robustness(comparisons, spec.main_metric)


def summarize_robustness(comparisons: dict[str, dict], metric: str) -> dict:
    """Per system: the mean of `metric` on each comparison (keyed by variant name, "original" first)
    and min / mean / max / worst / drop over the variants other than the original."""
    first = next(iter(comparisons.values()))
    if metric not in next(iter(first["scores"].values()), {}):
        metric = "token_f1"  # a data file whose task's main metric was not computed
    systems = {}
    for s in (s["name"] for s in first["systems"]):
        scores = {v: _mean(c["scores"][s][metric]) for v, c in comparisons.items()}
        shifted_scores = {v: x for v, x in scores.items() if v != ORIGINAL}
        worst = min(shifted_scores, key=shifted_scores.get) if shifted_scores else None
        values = list(shifted_scores.values())
        systems[s] = {"scores": scores, "min": min(values, default=None), "max": max(values, default=None),
                      "mean": _mean(values) if values else None, "worst": worst,
                      "drop": scores[ORIGINAL] - shifted_scores[worst] if worst and ORIGINAL in scores else None}
    return {"metric": metric, "variants": list(comparisons), "descriptions": {v: describe(v) for v in comparisons},
            "keys": {v: c["key"] for v, c in comparisons.items()}, "systems": systems}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def robustness_rows(result: dict) -> list[dict]:
    """One row per system: the score on each variant, then min / mean / max, the worst variant and
    the drop from the original to it (for tables and the CLI)."""
    return [{"system": s, **{v: r["scores"][v] for v in result["variants"]},
             "min": r["min"], "mean": r["mean"], "max": r["max"], "worst": r["worst"], "drop": r["drop"]}
            for s, r in result["systems"].items()]
