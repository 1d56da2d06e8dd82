"""Several processes training one run (`accelerate launch --multi_gpu`, torchrun): which process writes what.

Every process trains; Trainer wraps the PEFT model in DistributedDataParallel, whose backward
pass averages the prompt's gradients over the processes, so the prompt stays the same on all of
them. Only the main process (rank 0) writes the run's status, metrics, checkpoints, runtime.json
and adapter. Each process writes its own ranks/rank-<n>.json at the end: its rank, pid, device,
steps and a fingerprint of the prompt it holds, so a run shows that its processes trained and
ended with one prompt.
"""
from __future__ import annotations

import hashlib
import os

from core.store.paths import write_json_atomic
from core.store.runs import Run


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes training this run together (`accelerate launch` / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def prompt_fingerprint(model) -> str:
    """sha256 over a PEFT model's prompt parameters (its prompt encoder, the only ones that train), by name:
    equal on every process that holds the same prompt, and for the adapter loaded from the run."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if ".prompt_encoder." in f".{name}":
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def record_rank(run: Run, trainer, device: str) -> dict:
    """ranks/rank-<n>.json: what this process of a several-process run did (each process writes its own)."""
    row = {"rank": int(os.environ.get("RANK", "0")), "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
           "world_size": world_size(), "pid": os.getpid(), "device": str(trainer.args.device), "requested": device,
           "step": trainer.state.global_step, "prompt_sha256": prompt_fingerprint(trainer.model)}
    folder = run.path / "ranks"
    folder.mkdir(exist_ok=True)
    write_json_atomic(folder / f"rank-{row['rank']}.json", row)
    return row
