"""`python -m workbench compare`: the Compare page's form as flags, on the tiny model."""
import dataclasses
import json

import pytest
import torch

from core.evaluate.compare_options import CompareOptions
from workbench.cli import main, parser


@pytest.fixture
def soft_run(home, tiny_model_dir, tokenizer, tmp_path):
    """A prompt-tuning adapter for the tiny model, imported as run 'tiny-soft'."""
    from transformers import AutoModelForCausalLM
    from core.config import TuneConfig
    from core.model.adapters import import_adapter
    from core.train.methods import build_peft_model
    torch.manual_seed(0)
    peft = build_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer,
                            TuneConfig(model=tiny_model_dir, num_virtual_tokens=3), tiny_model_dir)
    peft.save_pretrained(tmp_path / "adapter")
    return import_adapter(tmp_path / "adapter", model=tiny_model_dir, task="sentiment", run_id="tiny-soft").id


def test_every_option_has_a_flag_and_the_page_defaults():
    p = parser()
    sub = next(a for a in p._actions if a.dest == "cmd").choices["compare"]
    dests = {a.dest for a in sub._actions}
    assert {f.name for f in dataclasses.fields(CompareOptions)} <= dests
    a = p.parse_args(["compare", "--run", "a", "--run", "b", "-n", "5", "--input", "x", "--stop-at-newline",
                      "--temperature", "0.7", "--variants", "2"])
    assert (a.runs, a.n, a.inputs, a.stop_at_newline, a.temperature, a.variants) == (["a", "b"], 5, ["x"], True,
                                                                                      0.7, 2)
    assert p.parse_args(["compare", "--stop-at-newline", "false"]).stop_at_newline is False
    d = CompareOptions()
    assert (d.n, d.shots, d.max_new_tokens, d.prompt_format, d.variants, d.stop_at_newline) == (24, 3, 48, "chat", 0,
                                                                                                 None)


def test_compare_prints_metrics_and_paired_tests_and_writes_files(soft_run, capsys, tmp_path):
    out = tmp_path / "out"
    args = ["compare", "--run", soft_run, "--task", "sentiment", "-n", "3", "--max-new-tokens", "2", "--shots", "1",
            "--template", "Review: {input}\nSentiment:", "--prompt-format", "plain", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "sentiment test, 3 inputs x 5 systems" in text and "mean over inputs [95% bootstrap interval]" in text
    for name in ("soft: tiny-soft", "hard: default", "hard: edited", "hard: 1-shot", "bare model"):
        assert f"] {name}" in text  # the matrix legend
    assert text.index("accuracy") < text.index("token_f1")  # the main metric first
    assert "paired tests on accuracy" in text and "\nsoft: tiny-soft " in text and "(McNemar exact)" in text
    saved = {p.suffix: p for p in out.iterdir()}
    result = json.loads(saved[".json"].read_text())
    assert len(result["inputs"]) == 3 and result["decoding"]["max_new_tokens"] == 2
    assert saved[".json"].name == f"comparison-{result['key']}.json"
    assert "soft: tiny-soft | accuracy" in saved[".csv"].read_text().splitlines()[0]
    assert main(args + ["--variants", "1"]) == 0  # the comparison itself is reopened from the store
    text = capsys.readouterr().out
    assert "robustness: accuracy on format variants" in text and "shifted" in text
    assert json.loads((out / f"robustness-{result['key']}.json").read_text())["keys"]["original"] == result["key"]


def test_compare_on_a_file_guesses_its_columns(home, capsys, tiny_model_dir, tmp_path):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\nWhat is two plus two?,four\nCapital of France?,Paris\n")
    assert main(["compare", "--model", tiny_model_dir, "--task", "qa", "--data-path", str(data), "--shots", "0",
                 "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "qa.csv, 2 inputs x 2 systems" in text and "token_f1" in text
    assert main(["compare", "--model", tiny_model_dir, "--input", "hello there", "--input", "good morning",
                 "--shots", "0", "--max-new-tokens", "2"]) == 0
    text = capsys.readouterr().out
    assert "no references: outputs only" in text and "> good morning" in text and "  bare model: " in text


@pytest.mark.parametrize("args, message", [
    (["-n", "0", "--temperature", "3"], ["-n: 0 is out of range", "--temperature: 3.0 is out of range"]),
    (["--prompt-format", "xml"], ["--prompt-format: 'xml' is not one of: chat, plain."]),
    (["--template", "no placeholder"], ["has no {input} placeholder: add {input} where the input goes."]),
    (["--run", "nope"], ["Run 'nope' does not exist"]),
    (["--input", "x", "--variants", "1"], ["Robustness needs a reference for every input"]),
    (["--input", "x", "--data-path", "f.csv"], ["--input: 1 typed input(s) and a data file"]),
    (["--data-path", "{one}"], ["the same column as the input"]),
    (["--data-path", "{two}", "--input-column", "q", "--target-column", "q"],
     ["--target-column: 'q': the same column"]),
    (["--data-path", "{two}", "--input-column", "zzz"], ["has no column 'zzz'"]),
    (["--data-path", "/no/such/file.csv"], ["does not exist"]),
    (["--input", "x", "--out", "{one}"], ["Cannot write the results to", "Pick a folder you can write to"]),
])
def test_bad_input_exits_2_with_the_pages_message(home, capsys, tmp_path, args, message):
    (tmp_path / "one.csv").write_text("text\nhello\n")
    (tmp_path / "two.csv").write_text("q,a\nhi,there\n")
    args = [x.format(one=tmp_path / "one.csv", two=tmp_path / "two.csv") for x in args]
    assert main(["compare"] + args) == 2
    err = capsys.readouterr().err
    assert all(m in err for m in message), err
    assert "Traceback" not in err


def test_a_run_of_another_model_is_named(soft_run, capsys):
    assert main(["compare", "--run", soft_run, "--model", "smollm2-135m-instruct"]) == 2
    assert "was trained on" in capsys.readouterr().err


def test_the_page_form_starts_from_the_same_defaults(home):
    from tests.conftest import open_page
    at = open_page("compare")
    d = CompareOptions()
    assert not at.exception
    assert at.selectbox(key="cmp_task").value == d.task and at.radio(key="cmp_source").value == f"{d.split} split"
    assert (at.slider(key="cmp_n").value, at.slider(key="cmp_shots").value) == (d.n, d.shots)
    assert (at.number_input(key="cmp_max_new").value, at.slider(key="cmp_temp").value, at.slider(key="cmp_top_p").value,
            at.number_input(key="cmp_seed").value) == (d.max_new_tokens, d.temperature, d.top_p, d.seed)
    assert at.radio(key="cmp_format").value == d.prompt_format and at.checkbox(key="cmp_variants").value is False
