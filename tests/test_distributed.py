"""Two processes training one run (`accelerate launch --multi_gpu --num_processes 2 ... --device cpu`, gloo on
this CPU machine): each records its rank, both end with the same prompt, only rank 0 writes the run's files,
and the adapter loads in PEFT with that prompt."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from core.store.runs import Run
from core.train.distributed import prompt_fingerprint
from tests.conftest import REPO
from workbench.cli import one_process_under_accelerate_cpu

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_two_processes_train_one_prompt_and_rank_0_writes_the_run(home, tiny_model_dir, toy_data):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "workbench", "tune", "--device", "cpu", "--run-id", "two", "--model", tiny_model_dir,
           "--task", "toy", "--data-path", toy_data, "--steps", str(STEPS), "--eval-every", "2", "--save-every", "2",
           "--batch-size", "2", "--eval-examples", "2", "--virtual-tokens", "4", "--max-input-tokens", "32",
           "--max-target-tokens", "6", "--warmup-steps", "0", "--prompt-format", "plain", "--learning-rate", "0.3"]
    env = {**os.environ, "WORKBENCH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    print(f"two-process run: {time.time() - t0:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    run = Run.open("two")

    ranks = [json.loads((run.path / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"] and all(r["step"] == STEPS for r in ranks)
    assert ranks[0]["prompt_sha256"] == ranks[1]["prompt_sha256"]  # the gradients were averaged every step

    # only rank 0 wrote the run: one line per step, one status, runtime.json saying two processes
    assert [m["step"] for m in run.metrics() if m["kind"] == "train"] == list(range(1, STEPS + 1))
    assert run.status()["state"] == "completed" and run.status()["step"] == STEPS
    assert json.loads((run.path / "runtime.json").read_text())["processes"] == 2
    assert [step for step, _ in run.checkpoints()] == [2, 4]

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.adapter_dir))
    assert prompt_fingerprint(peft) == ranks[0]["prompt_sha256"]  # the saved prompt is the one both ranks hold


def test_accelerate_cpu_with_several_processes_is_spotted():
    # `accelerate launch --cpu --num_processes 2` starts one plain process (it sets MASTER_ADDR, no WORLD_SIZE)
    assert one_process_under_accelerate_cpu({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"})
    assert not one_process_under_accelerate_cpu({"ACCELERATE_USE_CPU": "True"})  # --num_processes 1
    assert not one_process_under_accelerate_cpu({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1",
                                                 "WORLD_SIZE": "2"})
