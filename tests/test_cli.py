"""The headless CLI: flags generated from the config, clear errors, runs listing, generate."""
import json

import pytest

from core.store.runs import list_runs
from workbench.cli import main, parser
from tests.conftest import peft_reference, tiny_config


def test_tune_flags_mirror_the_config_with_aliases():
    a = parser().parse_args(["tune", "--task", "qa", "--method", "p-tuning", "--virtual-tokens", "30",
                             "--steps", "5", "--learning-rate", "0.01", "--label-words", "yes", "no",
                             "--prefix-projection", "true"])
    assert (a.task, a.method, a.num_virtual_tokens, a.max_steps) == ("qa", "p-tuning", 30, 5)
    assert a.learning_rate == 0.01 and a.label_words == ["yes", "no"] and a.prefix_projection is True


def test_bad_config_exits_2_naming_every_bad_flag(home, capsys):
    assert main(["tune", "--learning-rate", "-1", "--virtual-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert "--learning-rate: -1" in err and "--num-virtual-tokens: 0" in err
    assert list_runs() == []  # nothing was created


def test_missing_model_folder_fails_the_run_with_the_fix(home, capsys, toy_data):
    assert main(["tune", "--model", "/no/such/model", "--task", "toy", "--data-path", toy_data,
                 "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "bundled model" in err
    assert list_runs()[0]["state"] == "failed"


def test_tune_runs_then_lists_then_generates(home, capsys, tiny_model_dir, toy_data, tokenizer):
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=2, eval_every=2, save_every=2)
    args = ["tune", "--run-id", "cli-run"] + _flags(cfg)
    assert main(args) == 0
    assert "cli-run: completed at step 2" in capsys.readouterr().out
    assert main(["runs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["id"] == "cli-run" and rows[0]["state"] == "completed"
    assert main(["generate", "--run", "cli-run", "--input", "Say apple", "--max-new-tokens", "3"]) == 0
    from core.store.runs import Run
    cfg = Run.open("cli-run").config()  # the batched generator answers as plain PEFT does
    final = capsys.readouterr().out
    assert final == peft_reference(tiny_model_dir, Run.open("cli-run").adapter_dir, cfg.input_template,
                                   cfg.prompt_format.value, tokenizer, ["Say apple"], 3)[0] + "\n"
    assert main(["generate", "--run", "cli-run", "--checkpoint", "checkpoint-2", "--input", "Say apple",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == final  # the last checkpoint holds the final prompt
    assert main(["generate", "--run", "cli-run", "--checkpoint", "checkpoint-9", "--input", "x"]) != 0
    assert "not a checkpoint of run 'cli-run'" in capsys.readouterr().err


def test_tune_on_a_built_in_task_takes_its_tuned_defaults(home, capsys, tiny_model_dir):
    from core.store.runs import Run
    from core.tasks import TASK_DEFAULTS
    assert main(["tune", "--run-id", "preset", "--model", tiny_model_dir, "--task", "sentiment", "--steps", "1",
                 "--virtual-tokens", "2", "--batch-size", "2", "--eval-examples", "2"]) == 0
    cfg = Run.open("preset").config().to_dict()
    assert (cfg["max_steps"], cfg["num_virtual_tokens"], cfg["batch_size"]) == (1, 2, 2)  # the flags given win
    rest = {k: v for k, v in TASK_DEFAULTS["sentiment"].items()
            if k not in ("max_steps", "num_virtual_tokens", "batch_size", "eval_examples")}
    assert rest and {k: cfg[k] for k in rest} == rest  # the others come from the task's defaults


@pytest.mark.parametrize("cmd", [["generate", "--run", "../etc", "--input", "x"], ["resume", "--run", "nope"],
                                 ["cancel", "--run", "nope"], ["delete", "--run", "a/b"]])
def test_bad_run_ids_get_a_message_not_a_traceback(home, capsys, cmd):
    assert main(cmd) == 2
    assert "error:" in capsys.readouterr().err


def test_import_adapter_round_trip(home, capsys, tiny_model_dir, toy_data, tmp_path):
    assert main(["tune", "--run-id", "src"] + _flags(tiny_config(tiny_model_dir, toy_data, max_steps=1))) == 0
    from core.store.runs import Run
    src = Run.open("src").adapter_dir
    assert main(["import-adapter", str(src), "--model", tiny_model_dir, "--task", "toy"]) == 0
    imported = [r for r in list_runs() if r["id"] != "src"][0]
    assert imported["state"] == "completed" and imported["tokens"] == 4
    assert main(["import-adapter", str(tmp_path)]) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err


def _flags(cfg):
    return [f"--{k.replace('_', '-')}={v}" for k, v in cfg.to_dict().items() if v is not None and not isinstance(v, list)]


def test_robustness_prints_the_spread_per_system(home, capsys, tiny_model_dir):
    args = ["robustness", "--task", "qa", "-n", "2", "--model", tiny_model_dir, "--k", "1",
            "--max-new-tokens", "2", "--shots", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "qa test, 2 inputs, token_f1" in out and "line_breaks" in out and "worst" in out
    assert all(s in out for s in ("hard: default", "hard: 1-shot", "bare model"))
    assert main(args + ["--json"]) == 0  # read back from the stored comparisons
    result = json.loads(capsys.readouterr().out)
    assert result["variants"] == ["original", "shifted", "line_breaks"] and len(result["systems"]) == 3
    assert main(["robustness", "--task", "qa", "--model", tiny_model_dir, "--variants", "upside_down"]) == 2


@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory, tokenizer):
    """The tiny llama with a wider init (std 0.3): its greedy output depends on the whole prompt.
    (The default tiny model mostly repeats the prompt's last token, a line break, which cleans to "".)"""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                      tie_word_embeddings=True, initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("sharp-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_an_adapter_trained_with_plain_peft_answers_as_peft_does(home, capsys, sharp_model_dir, tokenizer, tmp_path):
    """Imported as its trainer used it (PEFT's convention: the raw text, no chat template), the
    adapter gives through `generate` the greedy tokens PeftModel.generate gives on that text."""
    import torch
    from transformers import AutoModelForCausalLM
    from core.config import TuneConfig
    from core.store.runs import Run
    from core.train.methods import build_peft_model
    model_dir, adapter = sharp_model_dir, tmp_path / "adapter"
    torch.manual_seed(0)
    peft = build_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer,
                            TuneConfig(model=model_dir, num_virtual_tokens=4), model_dir)
    peft.save_pretrained(adapter)
    assert main(["import-adapter", str(adapter), "--model", model_dir, "--task", "toy", "--run-id", "peft-plain"]) == 0
    run = Run.open("peft-plain")
    assert (run.config().prompt_format.value, run.config().input_template) == ("plain", "{input}")
    assert run.status()["imported_from"] == str(adapter)
    assert run.status()["imported_format"] == {"prompt_format": "plain", "input_template": "{input}"}
    assert main(["import-adapter", str(adapter), "--model", model_dir, "--run-id", "peft-chat",
                 "--prompt-format", "chat", "--input-template", "Q: {input}"]) == 0
    assert Run.open("peft-chat").status()["imported_format"] == {"prompt_format": "chat",
                                                                 "input_template": "Q: {input}"}
    capsys.readouterr()
    for text in ("Say apple", "Say forest"):
        plain = peft_reference(model_dir, adapter, "{input}", "plain", tokenizer, [text], 5)[0]
        chat = peft_reference(model_dir, adapter, "Q: {input}", "chat", tokenizer, [text], 5)[0]
        assert plain and plain != chat  # the format decides what the adapter says
        assert main(["generate", "--run", "peft-plain", "--input", text, "--max-new-tokens", "5"]) == 0
        assert capsys.readouterr().out == plain + "\n"
        assert main(["generate", "--run", "peft-chat", "--input", text, "--max-new-tokens", "5"]) == 0
        assert capsys.readouterr().out == chat + "\n"
    assert main(["import-adapter", str(adapter), "--model", model_dir, "--prompt-format", "xml",
                 "--input-template", "no placeholder"]) == 2
    err = capsys.readouterr().err
    assert "--prompt-format: 'xml' is not one of: chat, plain." in err and "--input-template:" in err
    assert {r["id"] for r in list_runs()} == {"peft-plain", "peft-chat"}  # the bad call created nothing


def test_a_reader_that_stops_reading_does_not_stop_the_run(home, tiny_model_dir, toy_data):
    """`python -m workbench tune ... 2>&1 | head -1`: the pipe closes after the first line; the progress
    bar has nowhere to go, but the run trains to the end, completes and the command exits 0."""
    import os
    import subprocess
    import sys
    from core.store.runs import Run
    from tests.conftest import REPO
    cfg = tiny_config(tiny_model_dir, toy_data, max_steps=4, eval_every=2, save_every=2)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}  # the first line comes at once
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "tune", "--run-id", "piped"] + _flags(cfg),
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert b"piped" in proc.stdout.readline()
    proc.stdout.close()  # the reader is gone before training starts
    assert proc.wait(timeout=240) == 0
    st = Run.open("piped").status()
    assert (st["state"], st["step"]) == ("completed", 4)
    assert Run.open("piped").adapter_dir.exists()
