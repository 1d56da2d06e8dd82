"""Load a run's soft prompt on its base model for generation."""
from __future__ import annotations

from peft import PeftModel

from core.generate.formatting import Formatter
from core.model.loading import freeze, load_model
from core.store.paths import WorkbenchError
from core.model.adapters import adapter_prompt, check_adapter_fits
from core.store.runs import Run


def load_run_model(run_id: str, which: str | None = None):
    """(PeftModel, Formatter) for a run's final adapter, or a checkpoint folder name (`which`)."""
    run = Run.open(run_id)
    cfg = run.config()
    if which is not None and not (which.startswith("checkpoint-") and which[len("checkpoint-"):].isdigit()):
        raise WorkbenchError(f"{which!r} is not a checkpoint name: use checkpoint-<step>, e.g. checkpoint-50.")
    folder = run.adapter_dir if which is None else run.checkpoints_dir / which
    if not (folder / "adapter_config.json").exists():
        raise WorkbenchError(f"Run {run_id!r} has no adapter yet ({folder.name}): wait for it to finish or resume it.")
    adapter_prompt(folder)  # safetensors only, and readable: a clear message for a corrupt file
    lm = load_model(cfg.model, cfg.trust_remote_code)
    check_adapter_fits(folder, lm.model.config, cfg.model)
    try:
        model = PeftModel.from_pretrained(lm.model, str(folder), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        raise WorkbenchError(
            f"The adapter of run {run_id!r} does not fit model {cfg.model!r}: {str(e).splitlines()[0][:200]}"
        ) from e
    freeze(model)
    fmt = Formatter(lm.tokenizer, cfg.prompt_format.value, cfg.input_template, cfg.max_input_tokens,
                    cfg.max_target_tokens)
    return model, fmt
