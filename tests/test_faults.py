"""The fault suite: every bad input and failure the workbench is known to meet, in one place.

Each fault is answered with a message that names the problem and the fix (asserted on the
text), nothing already in the workspace is lost, and the app stays usable (pages show
st.error, never an exception). Sections: data files, config values, models, adapters, run ids
and upload names, training faults, process faults (SIGKILL, full disk, restarts), pages, and
the security defaults. Everything runs on the tiny llama from conftest.py.
"""
import ast
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformers import LlamaConfig, LlamaForCausalLM, Trainer

import core.generate.systems as generation
import core.model.loading as loading
import core.train.training as training
from core.evaluate.compare import CompareSpec, run_comparison, soft_system
from core.config import ConfigError, TuneConfig
from core.generate.formatting import Formatter
from core.generate.generator import Decoding, Generator
from core.train.methods import build_peft_model
from core.model.loading import load_model, resolve_model_dir
from core.explore.neighbors import ExactCosine
from core.errors import WorkbenchError
from core.store.paths import run_path, safe_filename
from core.explore.neighbors import nearest_tokens
from core.model.adapters import input_space_vectors
from core.model.adapters import import_adapter
from core.store.runs import Run, _alive, list_runs, new_run
from core.tasks import load_records, load_task, peek, save_upload
from tests.conftest import REPO, tiny_config
from workbench.cli import main

PAGES = REPO / "pages"
SOURCES = [p for d in ("core", "workbench", "pages") for p in sorted((REPO / d).rglob("*.py"))]


def wait(pred, timeout=120.0, every=0.1) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(every)
    return False


def page(name: str) -> AppTest:
    return AppTest.from_file(str(PAGES / name), default_timeout=90).run()


def errors(at) -> str:
    assert not at.exception, at.exception
    return "\n".join(e.value for e in at.error)


# ---- fixtures: a second base model and soft-prompt adapters made for the tiny one -------------
@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, tokenizer):
    """Another llama: hidden size 32 and 3 layers (the tiny one has 16 and 2)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("other-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir, tokenizer):
    """{method: adapter folder} trained nowhere, shaped for the tiny model."""
    out = {}
    for method in ("prompt-tuning", "prefix-tuning"):
        cfg = TuneConfig(model=tiny_model_dir, method=method, init="random", num_virtual_tokens=3)
        model = build_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir), tokenizer, cfg, tiny_model_dir)
        out[method] = str(tmp_path_factory.mktemp(f"adapter-{method}"))
        model.save_pretrained(out[method])
    return out


def run_with_adapter(model_dir: str, adapter_dir: str, run_id: str, corrupt: bool = False) -> Run:
    """A completed run whose adapter/ was put there by hand (the import checks bypassed)."""
    run = new_run(TuneConfig(model=model_dir, task="toy", num_virtual_tokens=3, init="random", max_steps=1), run_id)
    shutil.copytree(adapter_dir, run.adapter_dir)
    if corrupt:
        (run.adapter_dir / "adapter_model.safetensors").write_bytes(b"\x00\x01garbage" * 8)
    run.set_status(state="completed")
    return run


# ---- 1. data files --------------------------------------------------------------------------------
DATA_FAULTS = [  # file name, content, words the message must hold (the problem, then the fix)
    ("empty.csv", b"", ["is empty", "at least one row"]),
    ("binary.csv", bytes(range(256)) * 8, ["is binary", "export it as"]),
    ("binary.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, ["is binary", "JSONL"]),
    ("latin1.csv", "input,target\ncafé crème,ok\n".encode("latin-1"), ["not UTF-8", "re-save it as UTF-8"]),
    ("header-only.csv", b"input,target\n", ["has no rows", "add examples below the header"]),
    ("columns.csv", b"text,label\nhello,pos\n", ["no column 'input', 'target'", "['text', 'label']",
                                                 "Map the input and target"]),
    ("broken.jsonl", b'{"input": "a", "target": "b"}\n{"input": "broken\n', ["could not be read as JSON",
                                                                              "every line/row is well formed"]),
    ("fake.parquet", b"PAR1 this is not parquet", ["could not be read as PARQUET", "well formed"]),
    ("notes.txt", b"input,target\na,b\n", ["unsupported type '.txt'", "use .csv, .jsonl or .parquet"]),
    ("blank.csv", b"input,target\n ,\n,x\n", ["no rows with both a non-empty input and target"]),
]


@pytest.mark.parametrize("name,content,needles", DATA_FAULTS, ids=[f[0] for f in DATA_FAULTS])
def test_bad_data_files_are_refused_naming_the_fix(home, tmp_path, name, content, needles):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WorkbenchError) as e:
        load_records(path)
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    assert path.read_bytes() == content  # the file is left as it was


def test_a_missing_data_file_is_named(home):
    with pytest.raises(WorkbenchError, match="'/no/such/data.csv' does not exist: check the path"):
        load_records("/no/such/data.csv")


def test_a_200_mb_file_is_refused_without_reading_it(home, tmp_path, monkeypatch):
    path = tmp_path / "huge.csv"
    with open(path, "wb") as f:  # sparse: 200 MB long, nothing written after the header
        f.write(b"input,target\n")
        f.truncate(200 * 1024 * 1024)
    monkeypatch.setattr("core.tasks._read_dataset", lambda *a: pytest.fail("the big file was parsed"))
    t0 = time.perf_counter()
    for read in (load_records, peek):
        with pytest.raises(WorkbenchError) as e:
            read(path)
        assert "200 MB, over the 100 MB limit" in str(e.value) and "use a sample" in str(e.value)
    assert time.perf_counter() - t0 < 2
    upload_limit = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert upload_limit <= 100  # an upload is refused by Streamlit before it reaches the loader


def test_parquet_with_non_string_columns_is_read_as_text(home, tmp_path):
    import pandas as pd
    pd.DataFrame({"q": [1, 2, 3], "a": [1.5, None, 3.0], "tags": [[1], [2], [3]]}).to_parquet(tmp_path / "n.parquet")
    assert load_records(tmp_path / "n.parquet", "q", "a") == [{"input": "1", "target": "1.5"},
                                                            {"input": "3", "target": "3.0"}]
    assert load_records(tmp_path / "n.parquet", "tags", "q")[0] == {"input": "[1]", "target": "1"}


# ---- 2. config values -----------------------------------------------------------------------------
CONFIG_FAULTS = [  # changes, field at fault, words of its message
    ({"num_virtual_tokens": 0}, "num_virtual_tokens", "0 is out of range: use a value between 1 and 512"),
    ({"num_virtual_tokens": 100000}, "num_virtual_tokens", "100000 is out of range: use a value between 1 and 512"),
    ({"learning_rate": -0.1}, "learning_rate", "-0.1 is out of range: use a positive value"),
    ({"learning_rate": math.nan}, "learning_rate", "nan is not a finite number"),
    ({"learning_rate": "fast"}, "learning_rate", "'fast' is not a finite number"),
    ({"max_steps": 0}, "max_steps", "0 is out of range: use a value at least 1"),
    ({"batch_size": 0}, "batch_size", "0 is out of range: use a value at least 1"),
    ({"input_template": "Review: text"}, "input_template", "has no {input} placeholder: add {input}"),
    ({"method": "lora"}, "method", "'lora' is not one of: prompt-tuning, p-tuning, prefix-tuning"),
    ({"model": " "}, "model", "is empty: use the bundled model"),
    ({"init": "text"}, "init_text", "init=text needs init_text"),
]


@pytest.mark.parametrize("changes,field,needle", CONFIG_FAULTS, ids=[f[1] + "-" + str(list(f[0].values())[0])
                                                                    for f in CONFIG_FAULTS])
def test_bad_config_values_name_the_field_value_and_range(changes, field, needle):
    with pytest.raises(ConfigError) as e:
        TuneConfig(**changes)
    assert needle in e.value.errors[field], e.value.errors


def test_the_cli_reports_every_bad_flag_and_creates_nothing(home, capsys):
    assert main(["tune", "--virtual-tokens", "100000", "--learning-rate", "nan", "--steps", "0",
                 "--input-template", "no slot"]) == 2
    err = capsys.readouterr().err
    for flag in ("--num-virtual-tokens: 100000", "--learning-rate: nan", "--max-steps: 0", "--input-template"):
        assert flag in err, err
    assert list_runs() == []


# ---- 3. models ------------------------------------------------------------------------------------
def _model_folder(kind: str, tmp_path: Path, tiny_model_dir: str) -> str:
    folder = tmp_path / kind
    if kind == "missing":
        return str(folder)
    if kind == "no-model":
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
    elif kind == "non-causal":
        from transformers import DistilBertConfig, DistilBertModel
        config = DistilBertConfig(dim=16, hidden_dim=32, n_layers=1, n_heads=2, vocab_size=100)
        DistilBertModel(config).save_pretrained(folder)
    else:
        shutil.copytree(tiny_model_dir, folder)
        if kind == "corrupt-weights":
            (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken")
        elif kind == "pickle-weights":
            state = LlamaForCausalLM.from_pretrained(tiny_model_dir).state_dict()
            (folder / "model.safetensors").unlink()
            torch.save(state, folder / "pytorch_model.bin")
        elif kind == "no-tokenizer":
            for f in folder.iterdir():
                if "token" in f.name or f.suffix == ".jinja":
                    f.unlink()
        elif kind == "corrupt-config":
            (folder / "config.json").write_text("{not json")
    return str(folder)


MODEL_FAULTS = [
    ("missing", ["does not exist", "use the bundled model"]),
    ("no-model", ["holds no config.json", "save_pretrained(folder)"]),
    ("non-causal", ["not a causal language model"]),
    ("corrupt-weights", ["no readable safetensors weights", "safe_serialization=True"]),
    ("pickle-weights", ["no readable safetensors weights", "reads safetensors only"]),
    ("no-tokenizer", ["has no usable tokenizer", "tokenizer.save_pretrained(folder)"]),
    ("corrupt-config", ["Could not read the model config", "not a valid JSON"]),
]


@pytest.mark.parametrize("kind,needles", MODEL_FAULTS, ids=[f[0] for f in MODEL_FAULTS])
def test_bad_model_folders_are_refused_naming_the_fix(tmp_path, tiny_model_dir, monkeypatch, kind, needles):
    spec = _model_folder(kind, tmp_path, tiny_model_dir)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle file was opened"))
    with pytest.raises(WorkbenchError) as e:
        load_model(spec)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_an_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkbenchError, match="cannot be reached.*pass its local folder"):
        load_model("someone/not-cached-anywhere")


# ---- 4. adapters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,needle", [
    ("prompt-tuning", "hidden size 16 where the model has 32"),
    ("prefix-tuning", "layers 2 where the model has 3"),
])
def test_importing_an_adapter_for_another_base_model_says_so(home, adapters, other_model_dir, method, needle):
    with pytest.raises(WorkbenchError) as e:
        import_adapter(adapters[method], model=other_model_dir, task="toy")
    msg = str(e.value)
    assert needle in msg and "does not fit model" in msg and "Use it with the base model it was trained on" in msg
    assert list_runs() == []  # nothing half-imported


def test_importing_a_corrupt_adapter_is_refused(home, adapters, tmp_path, tiny_model_dir):
    bad = tmp_path / "bad"
    shutil.copytree(adapters["prompt-tuning"], bad)
    (bad / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WorkbenchError, match="not a readable safetensors file.*re-train or re-import"):
        import_adapter(bad, model=tiny_model_dir)
    (bad / "adapter_config.json").write_text("{cut")
    with pytest.raises(WorkbenchError, match="not a PEFT adapter folder.*save_pretrained"):
        import_adapter(bad, model=tiny_model_dir)
    assert list_runs() == []


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_generate_and_compare_with_a_mismatched_adapter_say_so(home, adapters, other_model_dir, method):
    run = run_with_adapter(other_model_dir, adapters[method], "mismatch")
    with pytest.raises(WorkbenchError, match="does not fit model.*trained on"):
        generation.generate_for_run(run.id, ["Say apple"], 2)
    lm = load_model(other_model_dir)
    system = soft_system(run.id, other_model_dir)
    with pytest.raises(WorkbenchError, match="does not fit model"):
        Generator(lm.model, lm.tokenizer).generate([(system, "Say apple")])
    with pytest.raises(WorkbenchError, match="does not fit model"):
        run_comparison(Generator(lm.model, lm.tokenizer), CompareSpec([{"input": "x", "target": ""}], [system],
                                                                      Decoding(max_new_tokens=2)), other_model_dir)
    if method == "prompt-tuning":  # the Runs page's nearest tokens
        index = ExactCosine().fit(lm.model.get_input_embeddings().weight.detach().numpy())
        with pytest.raises(WorkbenchError, match="width 16 but the model's embeddings have 32.*another base model"):
            nearest_tokens(input_space_vectors(run.adapter_dir), index, lm.tokenizer)


def test_a_corrupt_adapter_file_is_named_by_generate_compare_and_runs(home, adapters, tiny_model_dir):
    run = run_with_adapter(tiny_model_dir, adapters["prompt-tuning"], "corrupt", corrupt=True)
    lm = load_model(tiny_model_dir)
    calls = [lambda: generation.run_system(run.id), lambda: input_space_vectors(run.adapter_dir),
             lambda: Generator(lm.model, lm.tokenizer).generate([(soft_system(run.id, tiny_model_dir), "x")])]
    for call in calls:
        with pytest.raises(WorkbenchError, match="not a readable safetensors file.*re-train or re-import"):
            call()
    with pytest.raises(WorkbenchError, match="not a checkpoint of run.*use checkpoint-<step>"):
        generation.run_system(run.id, which="../../adapter")


# ---- 5. run ids and uploaded file names -----------------------------------------------------------
BAD_IDS = ["../x", "../../etc/passwd", "/etc/passwd", "a/../../b", "..", "a\\..\\b", ".hidden", "x" * 101, ""]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_run_ids_never_leave_the_workspace(home, bad):
    for call in (run_path, Run.open):
        with pytest.raises(WorkbenchError, match="is not valid: use 1-100 letters.*no '/' and no '..'"):
            call(bad)


@pytest.mark.parametrize("name", ["../../x.csv", "/etc/passwd", "a\\..\\b.csv", "..", "C:\\Users\\me\\d.csv",
                                  "dir/sub/../d.jsonl", "évil name;rm -rf.csv"])
def test_uploaded_names_stay_in_the_uploads_folder(home, name):
    path = save_upload(name, b"input,target\na,b\n")
    uploads = (home / "uploads").resolve()
    assert path.resolve().parent.parent == uploads and path.read_bytes() == b"input,target\na,b\n"
    base = safe_filename(name)
    assert "/" not in base and "\\" not in base and not base.startswith(".")


def test_a_second_upload_with_the_same_name_keeps_the_first(home):
    first, second = save_upload("data.csv", b"input,target\na,b\n"), save_upload("data.csv", b"input,target\nc,d\n")
    assert first != second and first.read_bytes() == b"input,target\na,b\n"  # a run using the first is unchanged


# ---- 6. training faults -------------------------------------------------------------------------
def _rows(tmp_path, rows, name="rows.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("changes,rows,needles", [
    ({"batch_size": 64}, 20, ["batch_size 64 is larger than the 16 training examples", "at most 16"]),
    ({"batch_size": 1}, 2, ["has only 2 example(s)", "give at least 3"]),
    ({"max_input_tokens": 480, "max_target_tokens": 64}, 20, ["= 549 tokens do not fit the model's context of 512",
                                                             "lower max_input_tokens or max_target_tokens"]),
    ({"model": "/no/such/model"}, 20, ["does not exist", "bundled model"]),
], ids=["batch-larger-than-data", "too-few-examples", "longer-than-context", "missing-model"])
def test_runs_that_cannot_train_fail_with_the_fix(home, tmp_path, tiny_model_dir, changes, rows, needles):
    data = _rows(tmp_path, [{"input": f"Say w{i}", "target": f"w{i}"} for i in range(rows)])
    run = new_run(tiny_config(tiny_model_dir, data, **changes))
    st = training.train(run)
    assert st["state"] == "failed" and Run.open(run.id).status()["state"] == "failed"
    for needle in needles:
        assert needle in st["error"], st["error"]
    assert run.config().to_dict() == tiny_config(tiny_model_dir, data, **changes).to_dict()  # nothing lost


def test_non_ascii_very_long_inputs_and_targets_longer_than_the_context_train_and_generate(home, tmp_path,
                                                                                          tiny_model_dir):
    odd = ["Übersetze: «naïve café» — 東京タワー 🚀", "مرحبا بالعالم", "e\u0301\u200d\U0001F469\u200d\U0001F4BB"]
    long_input, long_target = "lang " * 6000, "cible " * 3000  # both far beyond the 512-token context
    rows = [{"input": f"{odd[i % 3]} {i}", "target": odd[(i + 1) % 3]} for i in range(9)]
    rows += [{"input": f"{i} {long_input}", "target": long_target} for i in range(3)]
    data = _rows(tmp_path, rows)
    train_rows = load_task("toy", data).train
    assert any(len(r["input"]) > 20000 for r in train_rows) and any("東京" in r["input"] for r in train_rows)
    run = new_run(tiny_config(tiny_model_dir, data, max_steps=2, eval_every=2, save_every=2))
    st = training.train(run)  # batches are grouped by length: the long rows are in the first one
    assert st["state"] == "completed", st.get("error")
    cfg, lm = run.config(), load_model(tiny_model_dir)
    fmt = Formatter(lm.tokenizer, cfg.prompt_format.value, cfg.input_template, cfg.max_input_tokens,
                    cfg.max_target_tokens)
    enc = fmt.encode({"input": long_input, "target": long_target})
    assert len(enc["input_ids"]) == fmt.max_input_tokens + fmt.max_target_tokens + 1  # truncated, not refused
    inputs = odd + ["ünïcödé " * 4000]
    outs = generation.generate_for_run(run.id, inputs, max_new_tokens=3)
    assert len(outs) == len(inputs) and all(isinstance(o, str) for o in outs)
    rows_out = Generator(lm.model, lm.tokenizer).generate([(soft_system(run.id, tiny_model_dir), x) for x in inputs],
                                                          Decoding(max_new_tokens=3))
    assert len(rows_out) == len(inputs) and all(isinstance(o, str) for o in rows_out)


# ---- 7. process faults: SIGKILL, restarts, half-written files, a full disk ------------------------
def test_a_run_outlives_the_app_and_a_sigkill_loses_at_most_one_checkpoint_interval(home, tiny_model_dir, toy_data):
    every = 2
    run = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=3000, save_every=every, eval_every=5000))
    env = {**os.environ, "WORKBENCH_HOME": str(home), "PYTHONPATH": str(REPO)}

    def py(code: str) -> str:  # a fresh process: no module state shared with this one
        return subprocess.run([sys.executable, "-c", code, run.id], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()
    # the "app" starts the run (python -m workbench tune --run-dir ...) and exits; the run goes on
    pid = int(py("import sys; from core.store import jobs; from core.store.runs import Run; "
                 "print(jobs.launch(Run.open(sys.argv[1])))"))
    try:
        assert wait(lambda: len(run.checkpoints()) >= 2, 150), (run.path / "log.txt").read_text()[-2000:]
        assert py("import sys; from core.store.runs import Run; print(Run.open(sys.argv[1]).status()['state'])") == "running"
        at = page("runs.py")  # a restarted app lists it as running
        assert dict(zip(at.dataframe[0].value["id"], at.dataframe[0].value["state"]))[run.id] == "running"
    finally:
        os.kill(pid, signal.SIGKILL)
    assert wait(lambda: not _alive(pid), 30)
    st = run.status()
    assert st["state"] == "interrupted" and "resume it from its last checkpoint" in st["error"]
    done = max(m["step"] for m in run.metrics() if m["kind"] == "train")
    last = int(run.last_checkpoint().name.split("-")[1])
    assert 0 <= done - last <= every  # at most one checkpoint interval lost

    n = len(run.metrics())
    (run.path / "config.json").write_text(json.dumps({**run.config().to_dict(), "max_steps": last + 2}))
    st = training.train(run, resume=True)
    assert st["state"] == "completed" and st["step"] == last + 2
    assert [m["step"] for m in run.metrics()[n:] if m["kind"] == "train"] == [last + 1, last + 2]


def test_incomplete_checkpoints_are_ignored(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data))
    layout = {"checkpoint-2": {"adapter_model.safetensors": "x", "trainer_state.json": '{"global_step": 2}'},
              "checkpoint-4": {"adapter_model.safetensors": "x"},  # cut before trainer_state.json
              "checkpoint-6": {"trainer_state.json": '{"global_step": 6}'},  # no adapter file
              "checkpoint-8": {"adapter_model.safetensors": "x", "trainer_state.json": '{"global_st'},  # cut mid-write
              "checkpoint-last": {"adapter_model.safetensors": "x", "trainer_state.json": "{}"}}
    for folder, files in layout.items():
        (run.checkpoints_dir / folder).mkdir(parents=True)
        for name, text in files.items():
            (run.checkpoints_dir / folder / name).write_text(text)
    assert run.last_checkpoint().name == "checkpoint-2"
    shutil.rmtree(run.checkpoints_dir / "checkpoint-2")
    with pytest.raises(WorkbenchError, match="no complete checkpoint to resume from: start it again"):
        training.train(run, resume=True)


def test_status_and_metrics_survive_a_cut_write(home, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data))
    run.log_metrics({"kind": "train", "step": 1, "loss": 1.0})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # the process died mid-line
    assert run.metrics() == [{"kind": "train", "step": 1, "loss": 1.0}]
    run.set_status(state="running", step=1)
    assert sorted(os.listdir(run.path)) == ["config.json", "metrics.jsonl", "status.json"]  # no temp files left
    broken = run_path("broken-run")
    broken.mkdir()
    (broken / "config.json").write_text("{cut")
    assert [r["id"] for r in list_runs()] == [run.id]  # the broken folder is skipped, not fatal


def test_a_full_disk_fails_the_run_keeps_the_last_checkpoint_and_resumes(home, tiny_model_dir, toy_data,
                                                                         monkeypatch):
    real, saves = Trainer._save_checkpoint, []

    def save(self, model, trial):
        saves.append(self.state.global_step)
        if len(saves) == 2:  # the second checkpoint: the disk fills up half-way through the adapter file
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, model, trial)
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    run = new_run(tiny_config(tiny_model_dir, toy_data, max_steps=6, save_every=2, eval_every=100))
    st = training.train(run)
    assert st["state"] == "failed" and saves == [2, 4]
    assert "No space left on the disk while saving" in st["error"] and "free space on that disk, then resume" \
        in st["error"] and "checkpoint-2, which is kept" in st["error"]
    assert run.last_checkpoint().name == "checkpoint-2" and not run.adapter_dir.exists()

    monkeypatch.setattr(Trainer, "_save_checkpoint", real)  # space freed
    n = len(run.metrics())
    st = training.train(run, resume=True)
    assert st["state"] == "completed" and st["step"] == 6
    assert [m["step"] for m in run.metrics()[n:] if m["kind"] == "train"] == [3, 4, 5, 6]


# ---- 8. pages: a bad value shows st.error, never an exception -------------------------------------
TUNE_FAULTS = [
    ("number_input", "cfg_num_virtual_tokens", 0, "Virtual tokens: 0 is out of range"),
    ("number_input", "cfg_num_virtual_tokens", 100000, "Virtual tokens: 100000 is out of range"),
    ("text_input", "cfg_learning_rate", "nan", "Learning rate: nan is not a finite number"),
    ("text_input", "cfg_learning_rate", "-1e-3", "Learning rate: -0.001 is out of range: use a positive value"),
    ("number_input", "cfg_max_steps", 0, "Max steps: 0 is out of range: use a value at least 1"),
    ("text_area", "cfg_input_template", "Review: text", "add {input} where the example goes"),
]


@pytest.mark.parametrize("kind,key,value,needle", TUNE_FAULTS, ids=[f"{f[1]}={f[2]}" for f in TUNE_FAULTS])
def test_tune_page_shows_bad_values_as_errors(home, kind, key, value, needle):
    at = page("tune.py")
    getattr(at, kind)(key=key).set_value(value)
    at.button(key="start").click().run()
    text = errors(at)
    assert needle in text and "1 setting(s) need fixing" in text, text
    assert list_runs() == []


@pytest.mark.parametrize("folder,needle", [("/no/such/model", "does not exist"), ("", "Model: is empty")])
def test_tune_page_names_a_bad_model_folder_before_starting(home, folder, needle):
    at = page("tune.py")
    at.radio(key="model_source").set_value("Local folder").run()
    at.text_input(key="model_folder").set_value(folder)
    at.button(key="start").click().run()
    assert needle in errors(at) and list_runs() == []


UPLOAD_FAULTS = [f for f in DATA_FAULTS if f[0] in ("empty.csv", "binary.csv", "binary.jsonl", "latin1.csv",
                                                     "header-only.csv", "broken.jsonl", "fake.parquet")]


@pytest.mark.parametrize("name,content,needles", UPLOAD_FAULTS, ids=[f[0] for f in UPLOAD_FAULTS])
def test_tune_page_shows_a_bad_upload_as_an_error_and_stays_usable(home, name, content, needles):
    at = page("tune.py")
    at.radio(key="data_kind").set_value("My file").run()
    at.file_uploader(key="upload").upload(name, content, "text/csv").run()
    assert all(needle in errors(at) for needle in needles)
    at.radio(key="data_kind").set_value("Built-in task").run()
    assert not at.exception and at.button(key="start")


def test_tune_page_upload_with_path_parts_lands_in_the_workspace(home):
    at = page("tune.py")
    at.radio(key="data_kind").set_value("My file").run()
    at.file_uploader(key="upload").upload("../../../etc/evil.csv", b"question,answer\nq1,a1\nq2,a2\nq3,a3\n").run()
    assert not at.exception and not at.error
    assert at.text_input(key="cfg_task_name").value == "evil"
    [saved] = (home / "uploads").rglob("*.csv")
    assert saved.name == "evil.csv" and saved.resolve().is_relative_to((home / "uploads").resolve())
    assert at.selectbox(key="cfg_input_column").options == ["question", "answer"]


def test_runs_page_shows_a_corrupt_or_mismatched_adapter_as_an_error(home, adapters, tiny_model_dir,
                                                                      other_model_dir):
    run_with_adapter(tiny_model_dir, adapters["prompt-tuning"], "corrupt", corrupt=True)
    run_with_adapter(other_model_dir, adapters["prompt-tuning"], "mismatch")
    (run_path("broken") / "config.json").parent.mkdir()
    (run_path("broken") / "config.json").write_text("{cut")
    at = page("runs.py")
    assert set(at.dataframe[0].value["id"]) == {"corrupt", "mismatch"}
    at.multiselect(key="runs_pick").set_value(["corrupt"]).run()
    assert "not a readable safetensors file" in errors(at)
    at.multiselect(key="runs_pick").set_value(["mismatch"]).run()
    assert "another base model" in errors(at)


def test_compare_page_shows_bad_templates_and_mismatched_adapters_as_errors(home, adapters, other_model_dir):
    run_with_adapter(other_model_dir, adapters["prompt-tuning"], "mismatch")
    at = page("compare.py")
    at.text_area(key="cmp_template_paraphrase").set_value("Rewrite this.").run()
    assert "no {input} placeholder: add {input}" in errors(at)
    at.text_area(key="cmp_template_paraphrase").set_value("Rewrite: {input}")
    at.selectbox(key="cmp_model").set_value(other_model_dir).run()
    at.radio(key="cmp_source").set_value("pasted text").run()
    at.text_area(key="cmp_pasted").set_value("Say apple")
    at.multiselect(key="cmp_runs").set_value(["mismatch"])
    at.button(key="cmp_go").click().run()
    assert "does not fit model" in errors(at)
    at.text_input(key="cmp_play").set_value("Say river").run()
    assert "does not fit model" in errors(at)


def test_sweep_page_shows_bad_values_as_errors(home):
    at = page("sweep.py")
    at.radio(key="sweep_model_source").set_value("Local folder").run()
    at.text_input(key="sweep_tokens").set_value("0, 100000")
    at.button(key="sweep_start").click().run()
    text = errors(at)
    assert "Model: is empty" in text and "0 is out of range" in text and "100000 is out of range" in text, text


# ---- 9. security defaults ---------------------------------------------------------------------------
def test_server_binds_to_localhost_with_xsrf_and_an_upload_limit():
    conf = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]
    assert conf["address"] == "localhost"
    assert conf["enableXsrfProtection"] is True
    assert 1 <= conf["maxUploadSize"] <= 100


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def test_no_pickle_anywhere_in_the_app():
    banned = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in banned]
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and "load" in [a.name for a in node.names]:
                offenders.append(f"{path.name}: from torch import load")
        for func, kw in _calls(tree):
            if func.endswith("torch.load") and not (isinstance(kw.get("weights_only"), ast.Constant)
                                                    and kw["weights_only"].value is True):
                offenders.append(f"{path.name}: {func}( without weights_only=True")
            if func.endswith(("np.load", "numpy.load")) and getattr(kw.get("allow_pickle"), "value", False):
                offenders.append(f"{path.name}: {func}(allow_pickle=True)")
            if func.endswith(("read_pickle", "to_pickle")):
                offenders.append(f"{path.name}: {func}(")
    assert len(SOURCES) >= 20 and offenders == []


def test_trust_remote_code_is_off_by_default_and_comes_only_from_the_config(home, tiny_model_dir, toy_data,
                                                                            adapters, monkeypatch):
    import inspect
    import core.model.loading as models
    assert TuneConfig().trust_remote_code is False
    assert resolve_model_dir(tiny_model_dir)[1]["trust_remote_code"] is False
    for fn in (models.load_model, models.resolve_model_dir, models.model_config):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False
    literal_true = [f"{p.name}: {func}" for p in SOURCES for func, kw in _calls(ast.parse(p.read_text()))
                    if isinstance(kw.get("trust_remote_code"), ast.Constant) and kw["trust_remote_code"].value]
    assert literal_true == []
    seen = []

    def fake_load(spec, trust_remote_code=False):
        seen.append(trust_remote_code)
        raise WorkbenchError("stop here")
    monkeypatch.setattr(training, "load_model", fake_load)
    monkeypatch.setattr(loading, "load_model", fake_load)
    for flag in (False, True):
        run = new_run(tiny_config(tiny_model_dir, toy_data, trust_remote_code=flag))
        assert training.train(run)["error"] == "stop here"
        shutil.copytree(adapters["prompt-tuning"], run.adapter_dir)
        with pytest.raises(WorkbenchError, match="stop here"):
            generation.generate_for_run(run.id, ["x"], 2)
    assert seen == [False, False, True, True]
