import math

import pytest

from core.config import ConfigError, Init, Method, TuneConfig


def test_defaults_are_valid_and_round_trip():
    cfg = TuneConfig()
    assert cfg.method is Method.PROMPT_TUNING
    again = TuneConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict()["method"] == "prompt-tuning"


def test_every_problem_is_reported_at_once_naming_field_and_value():
    with pytest.raises(ConfigError) as e:
        TuneConfig(learning_rate=-1, num_virtual_tokens=0, max_steps=0, input_template="no placeholder",
                   method="lora")
    errs = e.value.errors
    assert set(errs) == {"learning_rate", "num_virtual_tokens", "max_steps", "input_template", "method"}
    assert "-1" in errs["learning_rate"]
    assert "'lora'" in errs["method"] and "prompt-tuning" in errs["method"]
    assert "{input}" in errs["input_template"]


@pytest.mark.parametrize("lr", [math.nan, math.inf, 0, "fast"])
def test_bad_learning_rates(lr):
    with pytest.raises(ConfigError) as e:
        TuneConfig(learning_rate=lr)
    assert "learning_rate" in e.value.errors


@pytest.mark.parametrize("n", [0, 100000, 2.5, True])
def test_virtual_token_bounds(n):
    with pytest.raises(ConfigError) as e:
        TuneConfig(num_virtual_tokens=n)
    assert "num_virtual_tokens" in e.value.errors


def test_init_requirements():
    with pytest.raises(ConfigError) as e:
        TuneConfig(init="text")
    assert "init_text" in e.value.errors
    with pytest.raises(ConfigError) as e:
        TuneConfig(init="class-label", label_words=[" "])
    assert "label_words" in e.value.errors
    assert TuneConfig(init="class-label", label_words=["positive", "negative"]).init is Init.CLASS_LABEL


def test_unknown_fields_are_named():
    with pytest.raises(ConfigError) as e:
        TuneConfig.from_dict({"lerning_rate": 0.1})
    assert "lerning_rate" in e.value.errors


def test_built_in_tasks_start_from_their_tuned_defaults():
    from core.tasks import BUILTIN, TASK_DEFAULTS
    assert set(TASK_DEFAULTS) == set(BUILTIN)
    for name in BUILTIN:  # every preset is a valid config, and says something beyond the general defaults
        cfg = TuneConfig.for_task(task=name)
        assert cfg.task == name and any(getattr(cfg, k) != getattr(TuneConfig(), k) for k in TASK_DEFAULTS[name])
    sentiment = TuneConfig.for_task(task="sentiment")
    assert sentiment.init.value == TASK_DEFAULTS["sentiment"]["init"]
    assert TuneConfig.for_task(task="sentiment", max_steps=7, init="random").max_steps == 7  # the user's values win
    own = TuneConfig.for_task(task="sentiment", data_path="mine.csv")  # own data: the general defaults
    assert own.to_dict() == TuneConfig(task="sentiment", data_path="mine.csv").to_dict()
    assert TuneConfig.for_task(task="unknown").to_dict() == TuneConfig(task="unknown").to_dict()


def test_fields_a_method_does_not_read_are_not_saved_with_it():
    """A prefix / P-tuning run's config shows no prompt-tuning init, and two runs differing only there are
    one config; each method keeps the fields it does read."""
    init = dict(init="class-label", label_words=["yes", "no"], sample_vocab_top_k=50)
    a = TuneConfig(method="prefix-tuning", init="text", init_text="Answer the question")
    b = TuneConfig(method="prefix-tuning", **init)
    assert a == b and a.to_dict() == TuneConfig(method="prefix-tuning").to_dict()
    assert (a.init, a.init_text, a.label_words, a.sample_vocab_top_k) == (Init.SAMPLE_VOCAB, None, [], 5000)
    p = TuneConfig(method="p-tuning", encoder_type="lstm", encoder_hidden_size=64, prefix_projection=True, **init)
    assert (p.encoder_type.value, p.encoder_hidden_size, p.prefix_projection) == ("lstm", 64, False)
    assert p.to_dict() == TuneConfig(method="p-tuning", encoder_type="lstm", encoder_hidden_size=64).to_dict()
    assert TuneConfig(method="prefix-tuning", encoder_hidden_size=64).encoder_hidden_size == 128  # no MLP reads it
    both = TuneConfig(method="prefix-tuning", prefix_projection=True, encoder_hidden_size=64, encoder_type="lstm")
    assert (both.prefix_projection, both.encoder_hidden_size, both.encoder_type.value) == (True, 64, "mlp")
    pt = TuneConfig(encoder_type="lstm", encoder_hidden_size=64, prefix_projection=True, **init)
    assert (pt.init, pt.label_words, pt.sample_vocab_top_k) == (Init.CLASS_LABEL, ["yes", "no"], 50)
    assert pt.to_dict() == TuneConfig(**init).to_dict()
    assert TuneConfig.for_task(task="sentiment", method="p-tuning").init is Init.SAMPLE_VOCAB  # the preset's labels
    with pytest.raises(ConfigError) as e:  # init=run elsewhere stays an error that says why
        TuneConfig(method="p-tuning", init="run", init_run="a")
    assert "prompt tuning only" in e.value.errors["init"]
