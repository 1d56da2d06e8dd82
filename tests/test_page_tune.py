"""Tune page with AppTest: the generated form, validation next to fields, start, status, cancel."""
import time

from core.store.runs import Run, list_runs
from tests.conftest import open_page


def page():
    return open_page("tune")


def test_form_is_generated_from_the_config_with_working_defaults(home):
    from core.config import TuneConfig
    at = page()
    assert not at.exception
    first = TuneConfig.for_task(task=at.selectbox(key="cfg_task").value)  # the first task's tuned defaults
    assert at.selectbox(key="cfg_method").value == first.method.value
    assert at.number_input(key="cfg_num_virtual_tokens").value == first.num_virtual_tokens
    assert at.selectbox(key="cfg_init").value == first.init.value
    assert float(at.text_input(key="cfg_learning_rate").value) == first.learning_rate
    assert "Number of virtual" in at.number_input(key="cfg_num_virtual_tokens").help
    at.selectbox(key="cfg_method").set_value("p-tuning").run()
    assert at.selectbox(key="cfg_encoder_type").value == "mlp"


def test_bad_values_are_reported_next_to_their_fields_and_nothing_starts(home):
    at = page()
    at.text_input(key="cfg_learning_rate").set_value("-1")
    at.text_area(key="cfg_input_template").set_value("no placeholder")
    at.button(key="start").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("Learning rate: -1" in e for e in errors)
    assert any("Input template" in e and "{input}" in e for e in errors)
    assert any("2 setting(s) need fixing" in e for e in errors)
    assert list_runs() == []


def test_start_runs_in_its_own_process_then_cancel(home, tiny_model_dir):
    at = page()
    at.radio(key="model_source").set_value("Local folder").run()
    at.text_input(key="model_folder").set_value(tiny_model_dir)
    at.radio(key="data_kind").set_value("My file").run()  # asks for an upload first
    assert any("Upload a file" in i.value for i in at.info)
    at.radio(key="data_kind").set_value("Built-in task").run()
    at.selectbox(key="cfg_task").set_value("sentiment").run()  # the task sets its tuned defaults, then the edits below
    at.number_input(key="cfg_num_virtual_tokens").set_value(2)
    at.selectbox(key="cfg_prompt_format").set_value("plain")
    at.number_input(key="cfg_max_steps").set_value(500)
    at.number_input(key="cfg_batch_size").set_value(2)
    at.number_input(key="cfg_eval_every").set_value(500)
    at.number_input(key="cfg_save_every").set_value(500)
    at.number_input(key="cfg_max_input_tokens").set_value(32)
    at.button(key="start").click().run()
    assert not at.exception, at.exception
    runs = list_runs()
    assert len(runs) == 1 and runs[0]["task"] == "sentiment"
    run = Run.open(runs[0]["id"])
    deadline = time.time() + 90
    while time.time() < deadline and (run.status().get("step") or 0) < 2:
        time.sleep(0.3)
    assert run.status()["state"] == "running"
    at.run()
    assert any(run.id in m.value for m in at.markdown)
    bars = [p.proto.text for p in at.get("progress")]
    assert any(t.startswith("step ") and "/500" in t and "loss" in t and "ETA" in t for t in bars), bars
    at.button(key=f"live_{run.id}_cancel").click().run()
    deadline = time.time() + 60
    while time.time() < deadline and run.status()["state"] != "cancelled":
        time.sleep(0.3)
    st = run.status()
    assert st["state"] == "cancelled" and run.last_checkpoint() is not None
    at.run()
    assert at.button(key=f"live_{run.id}_resume")


def test_picking_a_task_sets_its_tuned_defaults_and_own_data_the_general_ones(home):
    from core.tasks import TASK_DEFAULTS
    at = page()
    at.selectbox(key="cfg_task").set_value("sentiment").run()
    assert not at.exception
    preset = TASK_DEFAULTS["sentiment"]
    assert at.selectbox(key="cfg_init").value == preset["init"]
    assert at.number_input(key="cfg_max_steps").value == preset["max_steps"]
    assert at.text_input(key="cfg_label_words").value == ", ".join(preset["label_words"])
    assert at.text_area(key="cfg_input_template").value == preset["input_template"] == "{input}\nSentiment:"
    at.number_input(key="cfg_max_steps").set_value(33).run()  # the user's edit stays ...
    at.selectbox(key="cfg_method").set_value("p-tuning").run()
    assert at.number_input(key="cfg_max_steps").value == 33
    at.radio(key="data_kind").set_value("My file").run()  # ... until the data changes
    at.radio(key="data_kind").set_value("Built-in task").run()
    at.selectbox(key="cfg_task").set_value("qa").run()
    assert at.number_input(key="cfg_max_steps").value == TASK_DEFAULTS["qa"].get("max_steps", 200)
    assert at.selectbox(key="cfg_method").value == TASK_DEFAULTS["qa"].get("method", "prompt-tuning")


def test_own_file_keeps_working_defaults_and_starts(home, tiny_model_dir):
    """A user switches Data to their own CSV: the form holds TuneConfig's general defaults (not blanks
    left by the rerun that asked for the upload), the columns are guessed, and Start trains."""
    from core.config import TuneConfig
    general = TuneConfig()
    at = page()
    at.radio(key="model_source").set_value("Local folder").run()
    at.text_input(key="model_folder").set_value(tiny_model_dir)
    at.radio(key="data_kind").set_value("My file").run()
    rows = "".join(f"What is word {i}?,word{i}\n" for i in range(12))
    at.file_uploader(key="upload").upload("qa.csv", ("question,answer\n" + rows).encode()).run()
    assert not at.exception and not at.error
    assert at.text_input(key="cfg_task_name").value == "qa-own"  # never the built-in qa task's name
    assert (at.selectbox(key="cfg_input_column").value, at.selectbox(key="cfg_target_column").value) == (
        "question", "answer")
    assert at.number_input(key="cfg_num_virtual_tokens").value == general.num_virtual_tokens
    assert at.text_area(key="cfg_input_template").value == general.input_template
    assert at.selectbox(key="cfg_init").value == general.init.value
    at.radio(key="data_kind").set_value("Built-in task").run()  # away and back: the file stays
    at.radio(key="data_kind").set_value("My file").run()
    assert at.selectbox(key="cfg_target_column").value == "answer"
    for name, value in [("max_steps", 2), ("batch_size", 2), ("eval_every", 2), ("save_every", 2),
                        ("eval_examples", 2), ("num_virtual_tokens", 2)]:
        at.number_input(key=f"cfg_{name}").set_value(value)
    at.button(key="start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [summary] = list_runs()
    run = Run.open(summary["id"])
    assert run.config().task == "qa-own" and run.config().target_column == "answer"
    deadline = time.time() + 120
    while time.time() < deadline and run.status()["state"] not in ("completed", "failed"):
        time.sleep(0.3)
    assert run.status()["state"] == "completed", run.status()
    assert (run.path / "adapter" / "adapter_model.safetensors").exists()


def test_own_file_with_one_column_twice_is_refused_next_to_the_field(home):
    at = page()
    at.radio(key="data_kind").set_value("My file").run()
    at.file_uploader(key="upload").upload("notes.csv", b"text,label\na,b\nc,d\n").run()
    at.selectbox(key="cfg_target_column").set_value("text").run()
    assert any("same column as the input" in e.value for e in at.error)
    at.button(key="start").click().run()
    assert list_runs() == []
