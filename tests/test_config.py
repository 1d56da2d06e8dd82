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
