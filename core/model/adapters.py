"""Read learned prompt vectors from PEFT adapter files and name their nearest vocabulary tokens.

PEFT saves every soft-prompt adapter as `prompt_embeddings` (N, width) in
adapter_model.safetensors: for prompt tuning the embedding table, for P-tuning the encoder's
output (input-space vectors either way), for prefix tuning the per-layer keys/values (width =
2 x layers x key/value size), which are not input embeddings.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from core.explore.neighbors import ExactCosine
from core.store.paths import WorkbenchError, read_json

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
    return conf.get("peft_type", ""), tensors["prompt_embeddings"].astype(np.float32)


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
    expected = _prepare_prompt_learning_config(
        PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](task_type="CAUSAL_LM", num_virtual_tokens=conf["num_virtual_tokens"]),
        model_config)
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


def nearest_tokens(vectors: np.ndarray, index: ExactCosine, tokenizer, k: int = 5) -> list[dict]:
    """One row per virtual token: its k nearest vocabulary tokens by exact cosine (mean-centred)."""
    if vectors.shape[1] != index.mean_.shape[0]:
        raise WorkbenchError(f"The prompt vectors have width {vectors.shape[1]} but the model's embeddings have "
                             f"{index.mean_.shape[0]}: the adapter belongs to another base model; open it with "
                             "that one.")
    idx, sims = index.query(vectors, k)
    rows = []
    for i, (ids, ss) in enumerate(zip(idx, sims)):
        toks = tokenizer.convert_ids_to_tokens([int(t) for t in ids])
        rows.append({"virtual token": i, "nearest": ", ".join(f"{t!r} ({s:.2f})" for t, s in zip(toks, ss)),
                     "top cosine": float(ss[0])})
    return rows


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
