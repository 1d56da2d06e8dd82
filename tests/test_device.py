"""--device: what auto resolves to, a missing GPU named before anything is created, the CPU-only fast paths
reported off on other devices (runtime.json, the run's status and log), and on a CUDA machine a bf16 run
and the Compare generator on the GPU (skipped without one; `make gpu-check` runs them)."""
import json

import pytest
import torch

from core import settings
from core.config import ConfigError, TuneConfig
from core.errors import WorkbenchError
from core.model.device import resolve_device
from core.store.runs import list_runs, new_run
from core.train import training
from tests.conftest import peft_reference, tiny_config, use_settings
from workbench.cli import main

NO_GPU = not torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(NO_GPU, reason="no CUDA GPU here (make gpu-check runs this on one)")


def test_device_is_a_config_field_with_its_choices():
    assert TuneConfig().device.value == "auto" and TuneConfig(device="mps").device.value == "mps"
    with pytest.raises(ConfigError, match="'tpu' is not one of: auto, cpu, cuda, mps"):
        TuneConfig(device="tpu")


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU")
def test_auto_is_the_cpu_here_and_a_missing_gpu_is_named():
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(WorkbenchError, match="--device cuda: no CUDA GPU is available here .*Use --device cpu or auto"):
        resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(WorkbenchError, match="--device mps: .* not available here"):
            resolve_device("mps")


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU")
def test_cli_refuses_cuda_without_a_gpu_before_creating_a_run(home, capsys, tiny_model_dir, toy_data):
    assert main(["tune", "--model", tiny_model_dir, "--task", "toy", "--data-path", toy_data, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "error: --device cuda: no CUDA GPU is available here" in err and "Traceback" not in err
    assert list_runs() == []


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU")
def test_a_queued_run_asking_for_cuda_fails_with_the_message(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, device="cuda"))  # queued from the app, then no GPU
    st = training.train(run)
    assert st["state"] == "failed" and "no CUDA GPU is available" in st["error"]
    assert run.status()["state"] == "failed" and not run.adapter_dir.exists()


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_cpu_fast_paths_report_themselves_off_on_other_devices(device):
    paths = settings.fast_paths(device)
    assert set(paths) == {"flatstack", "onednn", "fused", "keep_heap"}
    kind = device.split(":")[0]
    assert all(why.startswith(f"off on {kind}: CPU only") for why in paths.values())
    note = settings.device_note(device)
    assert note.startswith(f"Training on {device}:") and all(name in note for name in paths)
    record = settings.runtime(device, "bf16", processes=2)
    assert record["device"] == device and record["processes"] == 2
    assert all(v.startswith("off on") for v in record["fast_paths"].values())


def test_cpu_fast_paths_are_on_on_the_cpu_unless_switched_off(monkeypatch):
    assert settings.fast_paths("cpu") == dict.fromkeys(["flatstack", "onednn", "fused", "keep_heap"])
    assert settings.device_note("cpu") is None
    use_settings(monkeypatch, fused=False)
    assert settings.fast_paths("cpu")["fused"] == f"off: WORKBENCH_FUSED=0 ({settings.SWITCHES['fused'][1]})"
    assert settings.fast_paths("cuda")["fused"].startswith("off: WORKBENCH_FUSED=0")  # the switch is named first
    assert settings.device_note("cpu") is None  # a switch the user set is in runtime.json, not a device note


@needs_gpu
def test_cuda_run_in_bf16_with_the_fast_paths_off_and_generation_on_the_gpu(home, tiny_model_dir, toy_data,
                                                                             tokenizer):
    from core.generate.generator import Decoding, Generator
    from core.generate.systems import run_system
    from core.model.loading import load_model

    run = new_run(tiny_config(tiny_model_dir, toy_data, device="cuda", precision="bf16", max_steps=3, eval_every=3))
    st = training.train(run)
    assert st["state"] == "completed" and st["step"] == 3, st.get("error")
    runtime = json.loads((run.path / "runtime.json").read_text())
    assert runtime["device"] == "cuda" and runtime["precision"] == "bf16"
    assert all(v.startswith("off on cuda") for v in runtime["fast_paths"].values())
    assert run.status()["note"].startswith("Training on cuda")
    losses = [m["loss"] for m in run.metrics() if m["kind"] == "train"]
    assert len(losses) == 3 and all(l == l for l in losses)
    lm = load_model(tiny_model_dir)
    gen = Generator(lm.model.to("cuda"), lm.tokenizer, batch_size=4)
    inputs = ["Say apple", "Say river", "x"]
    system = run_system(run.id)
    outs = gen.generate([(system, x) for x in inputs], Decoding(max_new_tokens=6))
    assert outs == peft_reference(tiny_model_dir, run.adapter_dir, system.template, system.prompt_format, tokenizer,
                                  inputs, n=6)


@pytest.mark.skipif(not NO_GPU, reason="checks a machine without a GPU")
def test_tune_page_names_a_missing_gpu_and_starts_nothing(home):
    from tests.conftest import open_page
    at = open_page("tune")
    assert at.selectbox(key="cfg_device").value == "auto" and "CPU fast paths" in at.selectbox(key="cfg_device").help
    at.selectbox(key="cfg_device").set_value("cuda")
    at.button(key="start").click().run()
    assert not at.exception
    assert any("--device cuda: no CUDA GPU is available here" in e.value for e in at.error)
    assert list_runs() == []


def test_generator_methods_create_their_tensors_on_the_model_device():
    import types

    from core.model.device import on_model_device

    class Holder:
        def __init__(self, device):
            self.model = types.SimpleNamespace(device=torch.device(device))

        @on_model_device
        def make(self):
            return torch.zeros(2).device, torch.arange(3).device

    assert Holder("meta").make() == (torch.device("meta"),) * 2  # a stand-in for cuda: tensors follow the model
    assert Holder("cpu").make() == (torch.device("cpu"),) * 2
    assert torch.zeros(1).device.type == "cpu"  # the default device is back after the call


def test_a_runs_device_note_shows_on_the_runs_page(home, tiny_model_dir, toy_data):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO
    run = new_run(tiny_config(tiny_model_dir, toy_data), run_id="on-gpu")
    run.set_status(state="completed", step=6, device="cuda", note=settings.device_note("cuda"))
    at = AppTest.from_file(str(REPO / "pages" / "runs.py"), default_timeout=60).run()
    at.multiselect(key="runs_pick").set_value(["on-gpu"]).run()
    assert not at.exception
    assert any("Training on cuda: the CPU-only fast paths are off" in c.value for c in at.caption)
