"""Init "from a run": a new prompt-tuning run starts from an earlier run's trained prompt (prompt
transfer); the config, the store's check, the method, the CLI and the Tune form."""
import time

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from core.config import ConfigError, TuneConfig
from core.model.adapters import adapter_prompt
from core.model.loading import freeze
from core.store.runs import Run, list_runs, new_run
from core.train import training
from core.train.methods import build_peft_model
from tests.conftest import open_page, tiny_config
from workbench import cli


@pytest.fixture
def earlier(home, tiny_model_dir, toy_data):
    """run "a": prompt tuning, 4 tokens; run "p": prefix tuning; both finished."""
    for rid, kw in (("a", {}), ("p", {"method": "prefix-tuning"})):
        assert training.train(new_run(tiny_config(tiny_model_dir, toy_data, max_steps=1, **kw), rid))["state"] \
            == "completed"
    return adapter_prompt(Run.open("a").adapter_dir)[1]  # (4, D)


def test_the_config_names_what_init_run_needs():
    with pytest.raises(ConfigError) as e:
        TuneConfig(init="run")
    assert "init_run" in e.value.errors and "finished prompt-tuning run" in e.value.errors["init_run"]
    with pytest.raises(ConfigError) as e:
        TuneConfig(init="run", init_run="a", method="p-tuning")
    assert "init" in e.value.errors and "prompt tuning only" in e.value.errors["init"]
    with pytest.raises(ConfigError) as e:
        TuneConfig(init_run="a")
    assert "set init to run" in e.value.errors["init_run"]
    assert TuneConfig(init="run", init_run="a").to_dict()["init_run"] == "a"


@pytest.mark.parametrize("tokens", [4, 6, 2])
def test_the_new_prompt_starts_as_the_earlier_runs_adapter(earlier, tiny_model_dir, toy_data, tokenizer, tokens):
    cfg = tiny_config(tiny_model_dir, toy_data, init="run", init_run="a", num_virtual_tokens=tokens)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    freeze(base)
    model = build_peft_model(base, tokenizer, cfg, tiny_model_dir)
    start = model.prompt_encoder[model.active_adapter].embedding.weight.detach().numpy()  # (tokens, D)
    kept = min(tokens, 4)
    assert np.array_equal(start[:kept], earlier[:kept])
    if tokens > 4:  # the rest are vocabulary tokens, as sample-vocab draws them
        emb = base.get_input_embeddings().weight.detach().numpy()
        assert all((emb == row).all(axis=1).any() for row in start[4:])


def test_a_run_started_from_a_run_trains(earlier, tiny_model_dir, toy_data):
    run = new_run(tiny_config(tiny_model_dir, toy_data, init="run", init_run="a", max_steps=1), "b")
    assert training.train(run)["state"] == "completed"
    assert run.config().init_run == "a"


@pytest.mark.parametrize("init_run, model, message", [
    ("p", None, "is prefix-tuning"),
    ("a", "smollm2-135m-instruct", "was trained on"),
    ("nope", None, "does not exist"),
])
def test_an_unfit_run_is_refused_and_nothing_is_created(earlier, tiny_model_dir, toy_data, init_run, model,
                                                         message, capsys):
    before = len(list_runs())
    cfg = tiny_config(tiny_model_dir, toy_data, init="run", init_run=init_run, **({"model": model} if model else {}))
    with pytest.raises(ConfigError) as e:
        new_run(cfg, "c")
    assert message in e.value.errors["init_run"]
    code = cli.main(["tune", "--model", cfg.model, "--task", "toy", "--data-path", toy_data, "--init", "run",
                     "--init-run", init_run, "--steps", "1"])
    assert code == 2 and "--init-run: " in capsys.readouterr().err and message in e.value.errors["init_run"]
    assert len(list_runs()) == before


def test_the_tune_form_offers_from_a_run_only_when_one_fits(home, tiny_model_dir, toy_data):
    at = open_page("tune")
    assert "run" not in at.selectbox(key="cfg_init").options  # no finished run yet
    training.train(new_run(tiny_config(tiny_model_dir, toy_data, max_steps=1), "a"))
    at = open_page("tune")
    at.radio(key="model_source").set_value("Local folder").run()
    at.text_input(key="model_folder").set_value(tiny_model_dir).run()
    at.selectbox(key="cfg_method").set_value("prompt-tuning").run()
    at.selectbox(key="cfg_init").set_value("run").run()
    assert at.selectbox(key="cfg_init_run").options == ["a"]
    for name, value in [("max_steps", 1), ("batch_size", 2), ("eval_every", 1), ("save_every", 1),
                        ("eval_examples", 2), ("num_virtual_tokens", 4)]:
        at.number_input(key=f"cfg_{name}").set_value(value)
    at.button(key="start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [new] = [Run.open(r["id"]) for r in list_runs() if r["id"] != "a"]
    assert new.config().init.value == "run" and new.config().init_run == "a"
    deadline = time.time() + 180
    while time.time() < deadline and new.status()["state"] not in ("completed", "failed"):
        time.sleep(0.5)
    assert new.status()["state"] == "completed", new.status()
