"""`make gpu-check`: the GPU path on a CUDA machine, checked and measured.

1. The tests that need a GPU (tests/test_device.py: a bf16 run on cuda with the CPU fast paths off, the
   Compare generator on the GPU against PEFT) and the integration tests (`device auto` trains them on
   the GPU), through pytest.
2. Figures on the bundled model: seconds per training step (prompt tuning, 20 virtual tokens, batch 8)
   on the CPU in fp32, on cuda in fp32 and in bf16 autocast; Compare generation (32 inputs, 32 new
   tokens, batch 8) in tokens per second on the CPU and on cuda.
Prints a table and writes bench-results/gpu-check.json. Without a CUDA GPU it says so and exits 2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STEPS, N_INPUTS, NEW = 12, 32, 32


def tests() -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "tests/test_device.py", "tests/test_integration.py",
           "tests/test_families.py"]
    print("==", " ".join(cmd[2:]), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def train_step_seconds(device: str, precision: str) -> float:
    from core.config import TuneConfig
    from core.store.runs import new_run
    from core.train.training import train

    cfg = TuneConfig.for_task(task="paraphrase", max_steps=STEPS, eval_every=STEPS, save_every=STEPS,
                              eval_examples=8, device=device, precision=precision, num_virtual_tokens=20)
    run = new_run(cfg, f"gpu-check-{device}-{precision}")
    t0 = time.perf_counter()
    status = train(run)
    if status["state"] != "completed":
        raise SystemExit(f"the {device} {precision} run ended {status['state']}: {status.get('error')}")
    return status.get("sec_per_step") or (time.perf_counter() - t0) / STEPS


def generate_tokens_per_second(device: str) -> float:
    from core.generate.generator import Decoding, Generator, System
    from core.model.loading import load_model
    from core.tasks import load_task

    lm = load_model("smollm2-135m-instruct")
    gen = Generator(lm.model.to(device), lm.tokenizer, batch_size=8)
    rows = [(System("hard", "Paraphrase: {input}", "chat"), r["input"]) for r in load_task("paraphrase").train[:N_INPUTS]]
    gen.generate(rows[:8], Decoding(max_new_tokens=4))  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = gen.generate(rows, Decoding(max_new_tokens=NEW))
    if device == "cuda":
        torch.cuda.synchronize()
    tokens = sum(len(lm.tokenizer(o)["input_ids"]) for o in outs) or 1
    return tokens / (time.perf_counter() - t0)


def main() -> int:
    if not torch.cuda.is_available():
        print(f"No CUDA GPU is visible to PyTorch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}): "
              "make gpu-check needs an NVIDIA GPU and a CUDA build of PyTorch "
              "(see pytorch.org for the pip command of your CUDA version).", file=sys.stderr)
        return 2
    failed = tests()
    os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="gpu-check-"))
    gpu = torch.cuda.get_device_name(0)
    figures = {"gpu": gpu, "torch": torch.__version__, "steps": STEPS,
               "train_sec_per_step": {f"{d} {p}": round(train_step_seconds(d, p), 4)
                                      for d, p in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "bf16"))},
               "generate_tokens_per_s": {d: round(generate_tokens_per_second(d), 1) for d in ("cpu", "cuda")},
               "tests_passed": failed == 0}
    print(f"\n{gpu}, torch {torch.__version__}")
    for name, value in figures["train_sec_per_step"].items():
        print(f"  training step ({name:>10}): {value:.3f} s")
    for name, value in figures["generate_tokens_per_s"].items():
        print(f"  Compare generation ({name:>4}): {value:.0f} tokens/s")
    print(f"  tests: {'passed' if failed == 0 else 'FAILED'}")
    out = REPO / "bench-results" / "gpu-check.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"-> {out.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
