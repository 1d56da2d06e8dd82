"""Format variants: deterministic, not no-ops on the built-in tasks, references kept valid."""
import pytest

from core.generate.variants import TRANSFORMS, applicable, shifted, transform_input, variants
from core.errors import WorkbenchError
from core.tasks import BUILTIN, load_task

EVERY_TASK = {"casing", "punct_spacing", "whitespace", "quotes", "preface"}
FIELDED = {"line_breaks", "field_names"}  # only inputs with fields (qa among the built-in tasks)


def rows(task: str) -> list[dict]:
    data = load_task(task)
    return data.train + data.validation + data.test


def test_registry_names_and_describes_every_transform():
    assert set(TRANSFORMS) == EVERY_TASK | FIELDED
    for name, t in TRANSFORMS.items():
        assert t.name == name and t.description and "\n" not in t.description


@pytest.mark.parametrize("task", list(BUILTIN))
def test_transforms_change_the_tasks_they_apply_to_and_keep_targets(task):
    data = rows(task)
    shifted_by = variants(data)
    expected = EVERY_TASK | (FIELDED if task == "qa" else set())
    assert set(applicable(data)) == expected
    for name, out in shifted_by.items():
        assert len(out) == len(data)
        assert [x["target"] for x in out] == [x["target"] for x in data], name
        changed = sum(x["input"] != y["input"] for x, y in zip(data, out))
        if name in expected:  # a few sentiment lines have no punctuation at all
            assert changed >= 0.95 * len(data), (task, name, changed)
        else:
            assert changed == 0, (task, name)


def test_each_transform_is_deterministic_under_its_seed():
    data = rows("qa")[:30] + rows("sentiment")[:30]
    assert variants(data, seed=3) == variants(data, seed=3)
    other = variants(data, seed=4)
    for name in ("field_names", "whitespace", "quotes", "preface"):  # the ones that draw choices
        assert variants(data, [name], seed=3)[name] != other[name], name


def test_qa_answers_stay_in_the_context():
    data = rows("qa")
    for name, out in variants(data).items():
        for x, y in zip(data, out):
            context, _, question = x["input"].rpartition("Question:")
            need = context.count(x["target"])
            assert need >= 1
            # the answer is still written out, exactly (casing goes around it) and case-insensitively
            assert y["input"].count(x["target"]) >= need + question.count(x["target"]), (name, y["input"])
            assert x["target"].lower() in y["input"].lower()


def test_casing_keeps_the_answer_span_as_written():
    x = {"input": "Context: The kites flew on Sandpiper Beach.\nQuestion: Where did the kites fly?",
         "target": "Sandpiper Beach"}
    out = transform_input(x, "casing")
    assert out == "context: the kites flew on Sandpiper Beach.\nquestion: where did the kites fly?"


def test_transforms_on_other_data():
    """Inputs that are not built in: inline fields, short labels, quoted and padded text."""
    inline = {"input": "Passage: Rain fell all day. Question: What fell?", "target": "Rain"}
    assert transform_input(inline, "line_breaks") == "Passage: Rain fell all day.\nQuestion: What fell?"
    short = {"input": "C: It rained.\nQ: What happened?", "target": "It rained"}
    assert transform_input(short, "field_names", seed=0) in ("Context: It rained.\nQuestion: What happened?",
                                                             "It rained.\nWhat happened?")
    assert transform_input({"input": '"a quiet film"', "target": "positive"}, "quotes") == "a quiet film"
    assert transform_input({"input": "  padded\n", "target": "x"}, "whitespace") == "padded"
    assert transform_input({"input": "Good film, and fun.", "target": "x"}, "punct_spacing") == "Good film , and fun ."
    assert transform_input({"input": "a film ( sort of ) .", "target": "x"}, "punct_spacing") == "a film (sort of)."
    with pytest.raises(WorkbenchError, match="Unknown format variant"):
        variants([inline], ["upside_down"])


def test_shifted_split():
    data = rows("qa")[:40] + rows("sentiment")[:40]
    out = shifted(data, seed=0)
    assert len(out) == len(data) and [x["target"] for x in out] == [x["target"] for x in data]
    assert all(x["input"] != y["input"] for x, y in zip(data, out))
    assert out == shifted(data, seed=0) and out != shifted(data, seed=1)
    by_name = variants(data)
    used = {n for i, y in enumerate(out) for n in by_name if by_name[n][i]["input"] == y["input"]}
    assert len(used) >= 5  # a mix of transforms, not one


def test_augment_keeps_every_example_and_adds_shifted_copies_of_a_share():
    from core.generate.variants import augment
    rows = load_task("qa").train
    assert augment(rows, 0.0) == rows
    half, full = augment(rows, 0.5, seed=3), augment(rows, 1.0, seed=3)
    assert half[:len(rows)] == rows and full[:len(rows)] == rows  # the originals, in order
    copies = full[len(rows):]
    assert len(rows) * 0.9 <= len(copies) <= len(rows)  # nearly every qa example has a transform that changes it
    assert 0.3 * len(rows) <= len(half) - len(rows) <= 0.7 * len(rows)
    originals = {r["target"]: r for r in rows}
    assert all(c["target"] in c["input"] for c in copies)  # the answer is still in its context
    assert all(c["input"] != originals[c["target"]]["input"] for c in copies if c["target"] in originals)
    assert augment(rows, 0.5, seed=3) == half  # seeded


def test_augment_draws_new_variants_for_each_pass_a_run_makes():
    from core.generate.variants import augment, passes
    rows = load_task("qa").train
    assert passes(len(rows), 0.5, steps=150, batch_size=8) == -(-1200 // round(len(rows) * 1.5))
    assert passes(len(rows), 0.5, steps=1, batch_size=1) == 1
    assert passes(10, 0.5, steps=100_000, batch_size=8) == 32  # bounded on a tiny dataset
    once, three = augment(rows, 0.5, seed=3), augment(rows, 0.5, seed=3, rounds=3)
    assert three[:len(once)] == once  # round 0 is the single draw
    assert three.count(rows[0]) == 3  # each original once a round
    variants_of = {}
    for r in three:
        if r not in rows:
            variants_of.setdefault(r["target"], set()).add(r["input"])
    assert max(len(v) for v in variants_of.values()) >= 2  # an example seen in more than one layout
    assert all(r["target"] in r["input"] for r in three)  # answers still in their context
    assert augment(rows, 0.5, seed=3, rounds=3) == three  # seeded: a resumed run sees the same data


def test_augmentation_share_is_checked_by_the_config():
    from core.config import ConfigError, TuneConfig
    assert TuneConfig(format_augmentation=0.5).format_augmentation == 0.5
    assert TuneConfig(format_augmentation=0).to_json() == TuneConfig(format_augmentation=0.0).to_json()  # one run name
    with pytest.raises(ConfigError, match="format_augmentation.*between 0 and 1"):
        TuneConfig(format_augmentation=1.5)
