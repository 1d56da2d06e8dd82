"""Helpers the benchmark scripts share: a median timer, the process's peak memory and the bundled model as
stock transformers runs it."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.model.loading import load_model  # noqa: E402


def timed(fn, reps: int = 5, warmup: int = 2) -> float:
    """Median seconds of `reps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def own_peak_gib() -> float:
    """This process's peak resident memory so far (VmHWM), in GiB."""
    kib = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])
    return kib / 2 ** 20


def stock_model():
    """The bundled model with PyTorch's default CPU matmul (no oneDNN kernels, core/model/kernels.py)."""
    import dataclasses
    from core import settings
    kept = settings.SETTINGS
    settings.SETTINGS = dataclasses.replace(kept, onednn=False)
    try:
        return load_model("smollm2-135m-instruct").model
    finally:
        settings.SETTINGS = kept
