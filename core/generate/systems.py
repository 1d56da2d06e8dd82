"""A run's soft prompt as a generator system, and text generated for a run from the CLI.

Every path that writes text goes through the batched generator (core/generate/generator.py):
the Compare page, `python -m workbench generate` and the sample generations logged while a run
trains. Its greedy output is tested equal to PEFT's own `generate` (tests/test_generator.py).
"""
from __future__ import annotations

from core.errors import WorkbenchError
from core.generate.generator import Decoding, Generator, System
from core.model.adapters import adapter_prompt
from core.store.runs import Run


def run_system(run_id: str, which: str | None = None, model: str | None = None) -> System:
    """A run's final adapter, or one of its checkpoints (`checkpoint-<step>`), as a system with the
    run's own input template and prompt format. With `model`, the run must be trained on it."""
    run = Run.open(run_id)
    cfg = run.config()
    if model is not None and cfg.model != model:
        raise WorkbenchError(f"Run {run_id!r} was trained on {cfg.model!r}, not on {model!r}: compare runs "
                             "of the model you picked, or pick that model.")
    if which is not None and run.checkpoint(which) is None:
        raise WorkbenchError(f"{which!r} is not a checkpoint of run {run_id!r}: use checkpoint-<step>, one of "
                             f"{[p.name for _, p in run.checkpoints()] or 'none yet'}.")
    folder = run.adapter_dir if which is None else run.checkpoint(which)
    if not (folder / "adapter_model.safetensors").exists():
        raise WorkbenchError(f"Run {run_id!r} has no adapter yet ({folder.name}): wait for it to finish or resume it.")
    adapter_prompt(folder)  # safetensors only, and readable: a corrupt file is named now
    name = f"soft: {run_id}" if which is None else f"soft: {run_id} @ {which}"
    return System(name, cfg.input_template, cfg.prompt_format.value, str(folder))


def generate_for_run(run_id: str, inputs: list[str], max_new_tokens: int = 64, which: str | None = None,
                     generator: Generator | None = None) -> list[str]:
    """Greedy outputs of a run's soft prompt for `inputs`, on the run's base model (loaded here
    unless a generator for it is given). Inputs are truncated as in training."""
    from core.model.loading import load_model  # loads torch/transformers: only when generating

    system = run_system(run_id, which)
    cfg = Run.open(run_id).config()
    if generator is None:
        lm = load_model(cfg.model, cfg.trust_remote_code)
        generator = Generator(lm.model, lm.tokenizer, max_input_tokens=cfg.max_input_tokens)
    return generator.generate([(system, x) for x in inputs], Decoding(max_new_tokens=max_new_tokens))
