"""The one config dataclass that drives the tune form, the CLI and the saved run."""
from __future__ import annotations

import dataclasses
import enum
import json
import math
from dataclasses import dataclass, field
from typing import Optional

from core.errors import WorkbenchError


_DEFAULT_MODEL = "smollm2-135m-instruct"  # core.model.loading.DEFAULT_MODEL (not imported: it loads torch)


class Method(str, enum.Enum):
    PROMPT_TUNING = "prompt-tuning"
    P_TUNING = "p-tuning"
    PREFIX_TUNING = "prefix-tuning"


class Init(str, enum.Enum):
    RANDOM = "random"
    SAMPLE_VOCAB = "sample-vocab"
    TEXT = "text"
    CLASS_LABEL = "class-label"
    RUN = "run"


class EncoderType(str, enum.Enum):
    MLP = "mlp"
    LSTM = "lstm"


class PromptFormat(str, enum.Enum):
    CHAT = "chat"
    PLAIN = "plain"


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"


class Device(str, enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class ConfigError(WorkbenchError, ValueError):
    """All problems of a config at once: `errors` maps each field to its message."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def known_fields(cls, data: dict, what: str) -> dict:
    """`data`, when every key is a field of the dataclass `cls`; else a ConfigError naming each other key."""
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ConfigError({k: f"is not a {what} (check its spelling)." for k in unknown})
    return data


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TuneConfig:
    # what to tune
    model: str = _f(_DEFAULT_MODEL, "Bundled model name, local Hugging Face folder, or hub id.")
    task: str = _f("paraphrase", "Built-in task name, or a name for your own data when data_path is set.")
    data_path: Optional[str] = _f(None, "CSV, JSONL or Parquet file with your own examples (optional).")
    input_column: str = _f("input", "Column of data_path holding the model input.")
    target_column: str = _f("target", "Column of data_path holding the expected output.")
    # method
    method: Method = _f(Method.PROMPT_TUNING, "Soft-prompt method (all through PEFT).")
    num_virtual_tokens: int = _f(20, "Number of virtual (soft) tokens.", min=1, max=512)
    init: Init = _f(Init.SAMPLE_VOCAB, "Prompt-tuning init: random vectors, vocabulary sample, text, class labels, "
                    "or an earlier run's prompt (run).")
    init_run: Optional[str] = _f(None, "Run whose trained prompt starts this one (init=run): a finished "
                                 "prompt-tuning run on the same model. A longer new prompt keeps all its tokens and "
                                 "fills the rest as sample-vocab does; a shorter one keeps its first tokens.")
    init_text: Optional[str] = _f(None, "Text whose token embeddings start the prompt (init=text).")
    sample_vocab_top_k: int = _f(5000, "Sample init tokens from the k most frequent tokens (BPE merge rank).", min=1)
    label_words: list = _f([], "Label words whose embeddings start the prompt (init=class-label).")
    encoder_type: EncoderType = _f(EncoderType.MLP, "P-tuning prompt encoder.")
    encoder_hidden_size: int = _f(128, "Hidden size of the P-tuning encoder / prefix projection.", min=1)
    prefix_projection: bool = _f(False, "Prefix tuning: reparameterise the prefix through an MLP.")
    # formatting
    prompt_format: PromptFormat = _f(PromptFormat.CHAT, "Wrap examples in the model's chat template, or plain text.")
    input_template: str = _f("{input}", "Text around each input; must contain {input}.")
    # training
    max_steps: int = _f(200, "Optimizer steps to train.", min=1)
    batch_size: int = _f(8, "Examples per step.", min=1)
    learning_rate: float = _f(3e-2, "AdamW learning rate for the prompt parameters.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_steps: int = _f(10, "Linear warm-up steps.", min=0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    max_input_tokens: int = _f(256, "Inputs are truncated to this many tokens.", min=8)
    max_target_tokens: int = _f(64, "Targets are truncated to this many tokens.", min=1)
    eval_every: int = _f(50, "Evaluate on the validation split every N steps.", min=1)
    eval_examples: int = _f(64, "Validation examples used at each evaluation.", min=1)
    beat_examples: int = _f(0, "Validation examples on which every evaluation also scores the task's main metric, to "
                            "find the step where the soft prompt passes the best hard prompt (0 = off; the built-in "
                            "tasks use 16). Costs a short greedy generation at each evaluation (a few seconds on "
                            "the bundled model), and once per task the hard prompts' scores on them (cached).",
                            min=0)
    save_every: int = _f(50, "Save a checkpoint every N steps.", min=1)
    early_stopping_patience: int = _f(0, "Stop after N evaluations without improvement (0 = off).", min=0)
    train_examples: int = _f(0, "Use at most N training examples (0 = all).", min=0)
    format_augmentation: float = _f(0.0, "Share of training examples also given in a random format variant "
                                    "(line breaks, field names, casing, punctuation spacing, quotes, a preface), so "
                                    "the prompt holds up when inputs are laid out differently: 0 = off, 0.5 adds a "
                                    "reworded copy of half of them.")
    precision: Precision = _f(Precision.FP32, "Training arithmetic of the frozen model: fp32, or bf16 autocast "
                              "(the soft prompt stays fp32; about 2x faster on CPUs with AVX512-BF16/AMX and on "
                              "recent GPUs, slower on CPUs without them).")
    device: Device = _f(Device.AUTO, "Where to train: auto (a CUDA GPU if PyTorch sees one, else the CPU), cpu, "
                        "cuda or mps. The CPU fast paths (oneDNN matmuls, fused C kernels, the written-out decoder "
                        "stack) run on the CPU only and step aside elsewhere.")
    seed: int = _f(42, "Random seed (data order, init, splits).")
    trust_remote_code: bool = _f(False, "Allow the model folder's own Python code to run (only for models you trust).")

    def __post_init__(self):
        errors: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            enum_type = f.type if isinstance(f.type, type) and issubclass(f.type, enum.Enum) else _ENUMS.get(f.name)
            if enum_type is not None:
                try:
                    setattr(self, f.name, enum_type(value))
                except ValueError:
                    choices = ", ".join(e.value for e in enum_type)
                    errors[f.name] = f"{value!r} is not one of: {choices}."
            elif "min" in f.metadata:
                if not isinstance(value, int) or isinstance(value, bool):
                    errors[f.name] = f"{value!r} is not a whole number."
                elif value < f.metadata["min"] or value > f.metadata.get("max", math.inf):
                    hi = f.metadata.get("max")
                    rng = f"between {f.metadata['min']} and {hi}" if hi else f"at least {f.metadata['min']}"
                    errors[f.name] = f"{value!r} is out of range: use a value {rng}."
        for name in ("learning_rate", "max_grad_norm", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                errors[name] = f"{value!r} is not a finite number."
            elif value < 0 or (name == "learning_rate" and value == 0) or (name == "learning_rate" and value > 10):
                errors[name] = f"{value!r} is out of range: use a positive value (typical: 1e-3 to 3e-1)." if name == "learning_rate" else f"{value!r} must not be negative."
        if "method" not in errors:
            self._reset_unused()
        share = self.format_augmentation
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            errors["format_augmentation"] = f"{share!r} is not a share between 0 and 1 (0 = off, 0.5 = half)."
        else:
            self.format_augmentation = float(share)  # 0 and 0.0 are one config (runs are named by it)
        if "{input}" not in (self.input_template or ""):
            errors["input_template"] = f"{self.input_template!r} has no {{input}} placeholder: add {{input}} where the example goes."
        if self.init == Init.TEXT and not (self.init_text or "").strip():
            errors["init_text"] = "init=text needs init_text: the words whose embeddings start the prompt."
        if self.init == Init.CLASS_LABEL and not [w for w in self.label_words if str(w).strip()]:
            errors["label_words"] = "init=class-label needs label_words, e.g. positive, negative."
        if self.init == Init.RUN and not (self.init_run or "").strip():
            errors["init_run"] = "init=run needs init_run: the id of a finished prompt-tuning run on the same model."
        elif self.init == Init.RUN and self.method != Method.PROMPT_TUNING:
            errors["init"] = (f"init=run starts prompt tuning only, not {getattr(self.method, 'value', self.method)}: "
                              "a saved P-tuning or prefix adapter holds the encoder's output, not its weights.")
        elif self.init_run and self.init != Init.RUN:
            errors["init_run"] = (f"{self.init_run!r} is set but init is {getattr(self.init, 'value', self.init)!r}: "
                                  "set init to run to start from it, or clear init_run.")
        if not (self.model or "").strip():
            errors["model"] = f"is empty: use the bundled model {_DEFAULT_MODEL!r} or give a model folder."
        if not (self.task or "").strip():
            errors["task"] = "is empty: name a built-in task or your dataset."
        if self.data_path and self.input_column == self.target_column:
            errors["target_column"] = (f"{self.target_column!r} is also the input column: map the target to the "
                                       "column that holds the expected output.")
        if errors:
            raise ConfigError(errors)

    def _reset_unused(self) -> None:
        """Fields the method does not read go back to their defaults, so a run's config.json shows only what
        shaped it, and two runs that train alike are one config (a prefix run's init_text did nothing)."""
        unused = {Method.PROMPT_TUNING: {"encoder_type", "encoder_hidden_size", "prefix_projection"},
                  Method.P_TUNING: {"init", "init_text", "label_words", "sample_vocab_top_k", "prefix_projection"},
                  Method.PREFIX_TUNING: {"init", "init_text", "label_words", "sample_vocab_top_k", "encoder_type"}
                  }[self.method]
        if self.method == Method.PREFIX_TUNING and not self.prefix_projection:
            unused.add("encoder_hidden_size")  # the prefix's MLP is the only reader of encoder_hidden_size
        if self.init == Init.RUN:
            unused.discard("init")  # init=run on P-tuning / prefix tuning is an error below, not a silent reset
        for f in dataclasses.fields(self):
            if f.name in unused:
                setattr(self, f.name, f.default_factory() if f.default is dataclasses.MISSING else f.default)

    def to_dict(self) -> dict:
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "TuneConfig":
        return cls(**known_fields(cls, data, "config field"))

    @classmethod
    def for_task(cls, **values) -> "TuneConfig":
        """A config with the built-in task's tuned defaults under `values` (see with_task_defaults)."""
        return cls.from_dict(with_task_defaults(values))

    def replace(self, **changes) -> "TuneConfig":
        return TuneConfig.from_dict({**self.to_dict(), **changes})


def with_task_defaults(values: dict) -> dict:
    """`values` over the tuned defaults of its built-in task (core.tasks.TASK_DEFAULTS); own data
    (data_path set) and unknown tasks keep TuneConfig's general defaults."""
    from core.tasks import task_defaults

    task = values.get("task") or TuneConfig.task
    return {**({} if values.get("data_path") else task_defaults(task)), **values}


_ENUMS = {"method": Method, "init": Init, "encoder_type": EncoderType, "prompt_format": PromptFormat,
          "precision": Precision, "device": Device}


def field_help(name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(TuneConfig) if f.name == name)
