"""The settings of one comparison, as the Compare page's form offers them: one dataclass that the
`python -m workbench compare` flags are generated from (as the tune flags come from TuneConfig).

The inputs come from a built-in task's split (the first `n`), from a data file (`data_path`, its
columns guessed when not given) or from typed inputs; the task also gives the default hard prompt,
the metrics and the few-shot examples. Defaults are the page's.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from core.config import ConfigError, PromptFormat, known_fields
from core.generate.variants import TRANSFORMS
from core.tasks import BUILTIN

SPLITS = ("test", "validation")


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class CompareOptions:
    # systems
    runs: list = _f([], "A trained run to compare as a soft prompt; repeat for several.", flag="run")
    model: Optional[str] = _f(None, "Base model (default: the model of the first --run, else the bundled one); "
                              "every run must be trained on it.", kind=str)
    # inputs
    task: str = _f(next(iter(BUILTIN)), "Built-in task: its hard prompt, metrics and few-shot examples, and the "
                   "inputs unless --data-path or --input gives them.", choices=tuple(BUILTIN))
    split: str = _f("test", "Split of the task to compare on.", choices=SPLITS)
    n: int = _f(24, "The first n inputs of the split (at most its size).", min=1, flag="n")
    data_path: Optional[str] = _f(None, "CSV, JSONL or Parquet file of inputs and references instead of the split.",
                                  kind=str, metavar="FILE")
    input_column: Optional[str] = _f(None, "Column of --data-path holding the input (default: guessed from the "
                                     "column names).", kind=str)
    target_column: Optional[str] = _f(None, "Column of --data-path holding the reference (default: guessed).",
                                      kind=str)
    inputs: list = _f([], "An input typed in (no reference, so outputs only); repeat for several.", flag="input")
    # hard prompts
    shots: int = _f(3, "Add a k-shot hard prompt from the task's training split (0 = none).", min=0, max=8,
                   metavar="K")
    template: Optional[str] = _f(None, "An edited hard prompt template with {input}, compared besides the task's "
                                 "default one.", kind=str)
    prompt_format: str = _f(PromptFormat.CHAT.value, "Hard prompt format: the model's chat template, or plain text.",
                            choices=tuple(p.value for p in PromptFormat))
    # decoding (the same for every system)
    max_new_tokens: int = _f(48, "Max new tokens per output.", min=1, max=256)
    temperature: float = _f(0.0, "Sampling temperature (0 = greedy).", lo=0.0, hi=2.0)
    top_p: float = _f(1.0, "Top-p (nucleus) sampling; used when temperature > 0.", lo=0.05, hi=1.0)
    seed: int = _f(0, "Sampling seed.", min=0, max=2**31 - 1)
    stop_at_newline: Optional[bool] = _f(None, "End each output at its first line break (default: on when no "
                                         "reference spans several lines).", kind=bool)
    # robustness
    variants: int = _f(0, "Also run every system on K format variants of the inputs, plus a shifted copy "
                       "(0 = off; needs references).", min=0, max=len(TRANSFORMS), metavar="K")

    def __post_init__(self):
        errors: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if "choices" in meta and value not in meta["choices"]:
                errors[f.name] = f"{value!r} is not one of: {', '.join(meta['choices'])}."
            elif "min" in meta:
                hi = meta.get("max", math.inf)
                if not isinstance(value, int) or isinstance(value, bool):
                    errors[f.name] = f"{value!r} is not a whole number."
                elif not meta["min"] <= value <= hi:
                    rng = f"between {meta['min']} and {hi}" if hi != math.inf else f"at least {meta['min']}"
                    errors[f.name] = f"{value!r} is out of range: use a value {rng}."
            elif "lo" in meta:
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                    errors[f.name] = f"{value!r} is not a finite number."
                elif not meta["lo"] <= value <= meta["hi"]:
                    errors[f.name] = f"{value!r} is out of range: use a value between {meta['lo']} and {meta['hi']}."
        if self.data_path and self.inputs:
            errors["inputs"] = (f"{len(self.inputs)} typed input(s) and a data file {self.data_path!r}: "
                                "compare on one source, the file or the typed inputs.")
        if self.inputs and not any(str(x).strip() for x in self.inputs):
            errors["inputs"] = "are all empty: type some text to compare on."
        if (self.input_column or self.target_column) and not self.data_path:
            name = "input_column" if self.input_column else "target_column"
            errors[name] = f"{getattr(self, name)!r} maps a column of a data file, but no data file is given: " \
                           "add --data-path FILE."
        if self.data_path and self.input_column and self.input_column == self.target_column:
            errors["target_column"] = (f"{self.target_column!r}: the same column as the input, so every metric would "
                                       "score the input against itself. Pick the column with the expected output.")
        if self.template is not None and "{input}" not in self.template:
            errors["template"] = (f"{self.template!r}: the edited template has no {{input}} placeholder: add {{input}} "
                                  "where the input goes.")
        if self.model is not None and not self.model.strip():
            errors["model"] = "is empty: name the bundled model or give a model folder."
        if errors:
            raise ConfigError(errors)

    @classmethod
    def from_dict(cls, data: dict) -> "CompareOptions":
        return cls(**known_fields(cls, data, "comparison setting"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
