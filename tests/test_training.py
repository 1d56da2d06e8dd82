"""End-to-end training on a tiny llama: asserts on the files a run writes."""
import json
import os
import signal
import subprocess
import sys
import time

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback

import core.train.training as training
from core.store.runs import Run, list_runs, new_run
from tests.conftest import REPO, tiny_config


def test_run_writes_status_metrics_checkpoints_and_a_peft_adapter(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data))
    seen = []
    st = training.train(run, progress=seen.append)
    assert st["state"] == "completed" and st["step"] == 6 and st["error"] is None
    assert seen and seen[-1]["step"] <= 6
    assert json.loads((run.path / "config.json").read_text())["num_virtual_tokens"] == 4
    kinds = [m["kind"] for m in run.metrics()]
    assert kinds.count("train") == 6
    assert [m["step"] for m in run.metrics() if m["kind"] == "eval"] == [0, 3, 6]  # before training, then every 3
    assert kinds.count("samples") == 3
    assert [step for step, _ in run.checkpoints()] == [3, 6]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(run.adapter_dir))
    runtime = json.loads((run.path / "runtime.json").read_text())  # how its numbers were made
    assert runtime["settings"]["flatstack"] is True and runtime["device"] == "cpu"
    assert runtime["versions"]["torch"] == torch.__version__ and runtime["versions"]["peft"]
    samples = [m for m in run.metrics() if m["kind"] == "samples"][-1]["samples"]
    assert samples and all(isinstance(r["output"], str) for r in samples)
    # plain PEFT loads the adapter folder
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = PeftModel.from_pretrained(base, str(run.adapter_dir))
    assert peft.peft_config["default"].num_virtual_tokens == 4
    assert list_runs()[0]["id"] == run.id and list_runs()[0]["best_eval_loss"] is not None


def test_bf16_precision_trains_in_autocast_and_keeps_an_fp32_prompt(home, tiny_model_dir, toy_data, monkeypatch):
    seen = []
    real = training.labelled_loss

    def spy(model, *args, **kw):
        loss = real(model, *args, **kw)
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return loss
    monkeypatch.setattr(training, "labelled_loss", spy)
    run = new_run(tiny_config(tiny_model_dir, toy_data, precision="bf16", max_steps=3, eval_every=3))
    st = training.train(run)
    assert st["state"] == "completed" and st["step"] == 3
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    losses = [m["loss"] for m in run.metrics() if m["kind"] == "train"]
    assert len(losses) == 3 and all(l == l and l < 100 for l in losses)  # finite
    from safetensors.torch import load_file
    weights = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    assert weights and all(w.dtype == torch.float32 for w in weights.values())


def test_resume_continues_from_the_saved_step(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=3))
    assert training.train(run)["step"] == 3
    # extend the run: resume must start at step 3, not at 0
    (run.path / "config.json").write_text(json.dumps({**run.config().to_dict(), "max_steps": 6}))
    st = training.train(run, resume=True)
    assert st["state"] == "completed" and st["step"] == 6
    steps = [m["step"] for m in run.metrics() if m["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_the_run_with_a_message(home, tiny_model_dir, toy_data, monkeypatch):
    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    for p in model.parameters():
                        if p.requires_grad:
                            p.fill_(float("nan"))

    real_setup = training.setup

    def setup(*a, **kw):
        trainer, cb = real_setup(*a, **kw)
        trainer.add_callback(Poison())
        return trainer, cb
    monkeypatch.setattr(training, "setup", setup)
    run = new_run(tiny_config(tiny_model_dir, toy_data))
    st = training.train(run)
    assert st["state"] == "failed" and "nan" in st["error"].lower() and "learning rate" in st["error"]
    assert st["step"] < 6
    assert Run.open(run.id).status()["state"] == "failed"


def test_sigterm_saves_a_checkpoint_and_ends_cancelled(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=400, eval_every=400, save_every=400))
    env = {**os.environ, "WORKBENCH_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "tune", "--run-dir", str(run.path)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and (run.status().get("step") or 0) < 3:
        time.sleep(0.2)
    assert run.status()["state"] == "running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()[-2000:]
    st = run.status()
    assert st["state"] == "cancelled" and 3 <= st["step"] < 400
    assert run.last_checkpoint().name == f"checkpoint-{st['step']}"
    assert (run.adapter_dir / "adapter_model.safetensors").exists()


def test_killed_run_shows_as_interrupted(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run.set_status(state="running", pid=dead.pid)
    assert run.status()["state"] == "interrupted"


def test_format_augmentation_adds_shifted_copies_to_the_training_set(home, tiny_model_dir, tmp_path):
    rows = [{"input": f"Context: the {w} is red.\nQuestion: what is red?", "target": w}
            for w in ["apple", "rose", "brick", "cherry", "ruby", "flag", "lobster", "tomato", "heart", "wine"]]
    data = tmp_path / "red.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    plain = training.setup(new_run(tiny_config(tiny_model_dir, str(data))), tiny_config(tiny_model_dir, str(data)),
                           None)[0].train_dataset
    cfg = tiny_config(tiny_model_dir, str(data), format_augmentation=1.0)
    augmented = training.setup(new_run(cfg), cfg, None)[0].train_dataset
    # every training example also in a format variant, drawn afresh for each of the run's passes
    # (6 steps x 4 rows over 16 augmented rows: 2 passes)
    assert len(plain) == 8 and len(augmented) == 32
