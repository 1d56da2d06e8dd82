"""Process-wide settings, read once from the environment when the process starts, and the record
of them (with library versions and the machine) that each run keeps as runtime.json.

Locations stay plain environment variables read where they are used (WORKBENCH_HOME,
WORKBENCH_MODEL_CACHE: core/store/paths.py). The switches here change a run's numbers, speed or
memory, so a result must say which were on: `runtime()` is written into every run folder.
docs/configuration.md lists every variable.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from typing import Mapping

from core.errors import WorkbenchError

SWITCHES = {  # field -> (variable, what it turns off when set to 0)
    "flatstack": ("WORKBENCH_FLATSTACK", "the written-out llama decoder stack in training (core/train/flatstack.py)"),
    "onednn": ("WORKBENCH_ONEDNN", "oneDNN matmuls for the frozen linear layers (core/model/kernels.py)"),
    "fused": ("WORKBENCH_FUSED", "the fused C kernels (core/model/fused.py)"),
    "keep_heap": ("WORKBENCH_KEEP_HEAP", "keeping freed memory between training steps (core/model/heap.py)"),
}
CPU_ONLY = ("flatstack", "onednn", "fused", "keep_heap")  # the fast paths that apply to training on the CPU only
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "numpy")


@dataclass(frozen=True)
class Settings:
    flatstack: bool = True
    onednn: bool = True
    fused: bool = True
    keep_heap: bool = True
    max_data_mb: float = 100.0  # WORKBENCH_MAX_DATA_MB: data files over this are refused unread
    step_tokens: int = 1024  # WORKBENCH_STEP_TOKENS: larger training batches run in pieces (core/train/pieces.py)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values: dict = {}
        for name, (var, _) in SWITCHES.items():
            raw = env.get(var, "1").strip()
            if raw not in ("0", "1"):
                raise WorkbenchError(f"{var}={raw!r} is not 0 or 1: set it to 0 to turn off {SWITCHES[name][1]}.")
            values[name] = raw == "1"
        raw = env.get("WORKBENCH_MAX_DATA_MB", "100")
        try:
            values["max_data_mb"] = float(raw)
            assert values["max_data_mb"] > 0
        except (ValueError, AssertionError):
            raise WorkbenchError(f"WORKBENCH_MAX_DATA_MB={raw!r} is not a positive number of megabytes.") from None
        raw = env.get("WORKBENCH_STEP_TOKENS", "1024").strip()
        if not raw.isdigit():
            raise WorkbenchError(f"WORKBENCH_STEP_TOKENS={raw!r} is not a whole number of tokens: use e.g. 1024, "
                                 "or 0 to run every training batch whole.")
        values["step_tokens"] = int(raw)
        return cls(**values)


SETTINGS = Settings.from_env()  # read once; tests swap it with dataclasses.replace


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo, or "?" where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


def fast_paths(device: str) -> dict[str, str | None]:
    """Per CPU fast path: None where it is on for a run on `device` ("cpu", "cuda", "cuda:1", "mps"),
    else why it is off."""
    kind = device.split(":")[0]
    out: dict[str, str | None] = {}
    for name in CPU_ONLY:
        var, what = SWITCHES[name]
        if not getattr(SETTINGS, name):
            out[name] = f"off: {var}=0 ({what})"
        elif kind != "cpu":
            out[name] = f"off on {kind}: CPU only ({what})"
        else:
            out[name] = None
    return out


def device_note(device: str) -> str | None:
    """One line for the run's log and status when the CPU fast paths step aside on `device`."""
    off = [name for name, why in fast_paths(device).items() if why and " on " in why]
    if not off:
        return None
    return (f"Training on {device}: the CPU-only fast paths are off ({', '.join(off)}); the model runs its own "
            "transformers layers there.")


def runtime(device: str = "cpu", precision: str = "fp32", processes: int = 1) -> dict:
    """How a result was made: the switches in force (and the fast paths on `device`), library versions
    and the machine."""
    return {
        "settings": dataclasses.asdict(SETTINGS),
        "device": device, "precision": precision, "processes": processes,
        "fast_paths": {name: why or "on" for name, why in fast_paths(device).items()},
        "versions": {"python": sys.version.split()[0], **{lib: _version(lib) for lib in LIBRARIES}},
        "machine": {"platform": platform.platform(), "cpu": cpu_name(), "cores": os.cpu_count()},
    }
