"""Where a run trains: `auto` (a CUDA GPU when PyTorch sees one, else the CPU), `cpu`, `cuda` or `mps`.

A device that is asked for but not there is an error naming what is missing and the way out,
never a silent fall back to the CPU. What the CPU-only fast paths do on each device is
decided in core/settings.fast_paths (and recorded in every run's runtime.json).
"""
from __future__ import annotations

import contextlib
import functools

import torch

from core.errors import WorkbenchError

CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(requested: str) -> str:
    """The device a run asking for `requested` trains on: "cpu", "cuda" or "mps"."""
    requested = str(getattr(requested, "value", requested) or "auto")
    if requested not in CHOICES:
        raise WorkbenchError(f"device {requested!r} is not one of: {', '.join(CHOICES)}.")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        build = f"this PyTorch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None else \
            f"this PyTorch (CUDA {torch.version.cuda}) finds no GPU (check the driver and CUDA_VISIBLE_DEVICES)"
        raise WorkbenchError(f"--device cuda: no CUDA GPU is available here ({build}). Use --device cpu or auto, "
                             "or install a CUDA build of PyTorch on a machine with an NVIDIA GPU.")
    if requested == "mps" and not _mps_available():
        raise WorkbenchError("--device mps: Apple's Metal (MPS) backend is not available here (it needs an Apple "
                             "silicon Mac and a PyTorch built with MPS). Use --device cpu or auto.")
    return requested


def on_model_device(method):
    """Decorate a method of an object with a `model`: new tensors go to the model's device while it runs.
    On the CPU nothing changes (the device context would intercept every torch call of a decode loop)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        device = self.model.device
        with contextlib.nullcontext() if device.type == "cpu" else torch.device(device):
            return method(self, *args, **kwargs)
    return wrapper
