"""Soft-prompt adapters in PEFT's own format: read their prompt vectors, check that one fits a
base model, import one trained elsewhere as a run, pack one as a zip.

PEFT saves every soft-prompt adapter as `prompt_embeddings` (N, width) in
adapter_model.safetensors: for prompt tuning the embedding table, for P-tuning the encoder's
output (input-space vectors either way), for prefix tuning the per-layer keys/values (width =
2 x layers x key/value size), which are not input embeddings. For an encoder-decoder model
(T5) PEFT saves 2N input-space rows, of which the first N go in front of the encoder's input;
only those are read.
"""
from __future__ import annotations

import io
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from core.errors import WorkbenchError
from core.config import TuneConfig
from core.store.paths import read_json
from core.store.runs import PROMPT_PEFT_TYPES, Run, RunState, new_run

INPUT_SPACE = {"PROMPT_TUNING", "P_TUNING"}


def adapter_prompt(adapter_dir: str | Path) -> tuple[str, np.ndarray]:
    """(PEFT type, prompt_embeddings (N, width)) of an adapter folder."""
    adapter_dir = Path(adapter_dir)
    conf = read_json(adapter_dir / "adapter_config.json")
    weights = adapter_dir / "adapter_model.safetensors"
    if conf is None or not weights.exists():
        raise WorkbenchError(f"{adapter_dir} holds no PEFT adapter (adapter_config.json + adapter_model.safetensors).")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise WorkbenchError(f"{weights} is not a readable safetensors file ({e}); re-train or re-import it.") from e
    if "prompt_embeddings" not in tensors:
        raise WorkbenchError(f"{weights} has no prompt_embeddings: it is not a soft-prompt adapter.")
    prompt = tensors["prompt_embeddings"].astype(np.float32)
    if conf.get("peft_type") in INPUT_SPACE and conf.get("num_virtual_tokens"):
        prompt = prompt[: conf["num_virtual_tokens"]]  # encoder-decoder: PEFT keeps N more, unused, rows
    return conf.get("peft_type", ""), prompt


def prefix_width(model_config) -> int | None:
    """One layer's key/value width where a T5-style config gives it (heads x d_kv): FLAN-T5-small's is
    6 x 64 = 384 beside a hidden size of 512, which PEFT would take by default. None elsewhere."""
    heads, d_kv = getattr(model_config, "num_heads", None), getattr(model_config, "d_kv", None)
    return heads * d_kv if isinstance(heads, int) and isinstance(d_kv, int) else None


def check_adapter_fits(adapter_dir: str | Path, model_config, model_name: str) -> None:
    """Raise a WorkbenchError naming the mismatch when an adapter's shapes do not fit a base model.

    The expected shapes are the ones PEFT itself derives from the model config when it builds
    a soft prompt: the token width (hidden size; per-layer key/value width for prefix tuning),
    and for prefix tuning the number of layers and key/value heads.
    """
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils.other import _prepare_prompt_learning_config

    conf = read_json(Path(adapter_dir) / "adapter_config.json") or {}
    peft_type = conf.get("peft_type")
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING or "num_virtual_tokens" not in conf:
        raise WorkbenchError(f"{adapter_dir} holds no soft-prompt adapter_config.json: re-train or re-import it.")
    width = prefix_width(model_config) if peft_type == "PREFIX_TUNING" else None
    expected = _prepare_prompt_learning_config(
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](task_type="CAUSAL_LM", num_virtual_tokens=conf["num_virtual_tokens"],
                                               **({"token_dim": width} if width else {})), model_config)
    checked = {"token_dim": "key/value width", "num_layers": "layers", "num_attention_heads": "key/value heads"} \
        if peft_type == "PREFIX_TUNING" else {"token_dim": "hidden size"}
    wrong = [f"{label} {conf.get(k)} where the model has {getattr(expected, k)}"
             for k, label in checked.items() if conf.get(k) is not None and conf.get(k) != getattr(expected, k)]
    if wrong:
        raise WorkbenchError(
            f"The adapter in {adapter_dir} (trained on {conf.get('base_model_name_or_path')!r}) does not fit model "
            f"{model_name!r}: {'; '.join(wrong)}. Use it with the base model it was trained on."
        )


def input_space_vectors(adapter_dir: str | Path) -> np.ndarray | None:
    """The prompt's virtual-token input embeddings (N, D), or None for prefix tuning."""
    peft_type, vectors = adapter_prompt(adapter_dir)
    return vectors if peft_type in INPUT_SPACE else None


def adapter_zip(adapter_dir: str | Path, extra: dict[str, str] | None = None) -> bytes:
    """A zip of the adapter folder (loadable with PeftModel.from_pretrained once unpacked)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(Path(adapter_dir).iterdir()):
            if p.is_file():
                z.write(p, f"adapter/{p.name}")
        for name, text in (extra or {}).items():
            z.writestr(name, text)
    return buf.getvalue()


def import_adapter(src: str | Path, model: str = "smollm2-135m-instruct", task: str = "imported",
                   run_id: str | None = None, prompt_format: str = "plain", input_template: str = "{input}") -> Run:
    """Copy a PEFT soft-prompt adapter trained elsewhere into a new run (state: completed).

    The run formats inputs the way the adapter's trainer did: by default PEFT's own convention,
    the raw input text with no chat template (`plain`, template "{input}"). An adapter trained on
    chat-formatted or templated examples is imported with that `prompt_format` / `input_template`.
    """
    from core.model.loading import model_config  # loads transformers: only when importing

    src = Path(src).expanduser()
    try:
        conf = read_json(src / "adapter_config.json")
    except ValueError:
        conf = None
    if not isinstance(conf, dict) or not (src / "adapter_model.safetensors").exists():
        raise WorkbenchError(
            f"{str(src)!r} is not a PEFT adapter folder: it needs adapter_config.json and "
            "adapter_model.safetensors (save with model.save_pretrained(folder))."
        )
    method = PROMPT_PEFT_TYPES.get(conf.get("peft_type"))
    if method is None:
        raise WorkbenchError(
            f"Adapter type {conf.get('peft_type')!r} is not a soft prompt: import prompt tuning, "
            "P-tuning or prefix tuning adapters."
        )
    adapter_prompt(src)  # the weights are a readable safetensors file
    cfg = TuneConfig(model=model, task=task, method=method, num_virtual_tokens=int(conf["num_virtual_tokens"]),
                     init="random", max_steps=1, prompt_format=prompt_format, input_template=input_template)
    check_adapter_fits(src, model_config(model), model)
    run = new_run(cfg, run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-imported-{method}")
    run.adapter_dir.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(src / name, run.adapter_dir / name)
    run.set_status(state=RunState.COMPLETED, step=0, total=0, imported_from=str(src),
                   imported_format={"prompt_format": cfg.prompt_format.value, "input_template": cfg.input_template})
    return run
