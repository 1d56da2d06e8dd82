"""Tune: configure a soft-prompt run, start it in its own process, watch it live."""
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from core.config import Init
from core.store import jobs
from core.store.runs import init_runs, list_runs
from core.model.device import resolve_device
from core.model.loading import DEFAULT_MODEL, model_is_seq2seq, resolve_model_dir
from core.errors import WorkbenchError
from core.tasks import BUILTIN, guess_columns, peek, save_upload

from workbench.config_form import ERRORS_KEY, FIELDS, apply_defaults, build_config, field_widget, keep_form_state
from workbench.run_view import live_run

st.title("Tune a soft prompt")
keep_form_state()
values: dict = {}

st.subheader("Model and data")
left, right = st.columns(2)
source = left.radio("Model", ["Bundled", "Local folder"], horizontal=True, key="model_source",
                    help=FIELDS["model"].metadata["help"])
values["model"] = DEFAULT_MODEL if source == "Bundled" else left.text_input(
    "Model folder", key="model_folder", placeholder="/path/to/hf-model-folder") or ""
seq2seq = source == "Local folder" and model_is_seq2seq(values["model"])
if seq2seq:
    left.caption("An encoder-decoder model (T5 family): the input goes to its encoder with the soft prompt in "
                 "front (prefix tuning: in the decoder), the target is decoded; plain text, no chat template.")
for name, where in (("model", left), ("task", right)):  # fields without a generated widget
    if err := st.session_state.get(ERRORS_KEY, {}).get(name):
        where.error(f"{name.capitalize()}: {err}", icon=":material/error:")


def builtin_task() -> str | None:
    return st.session_state.get("cfg_task", next(iter(BUILTIN))) if st.session_state["data_kind"] == "Built-in task" else None


data_kind = right.radio("Data", ["Built-in task", "My file"], horizontal=True, key="data_kind",
                        on_change=lambda: apply_defaults(builtin_task()))
if data_kind == "Built-in task":
    values["task"] = right.selectbox("Task", list(BUILTIN), key="cfg_task",
                                     format_func=lambda t: f"{t} - {BUILTIN[t].title}",
                                     on_change=lambda: apply_defaults(builtin_task()),
                                     help="Picking a task sets the method and training settings to the task's "
                                          "tuned defaults (see the README's results table).")
else:
    upload = right.file_uploader("CSV, JSONL or Parquet", type=["csv", "jsonl", "json", "parquet"], key="upload")
    earlier = st.session_state.get("tune_upload_path")  # the uploader forgets its file when Data switches away
    if upload is None and not earlier:
        st.info("Upload a file with one example per row, then map its input and target columns.")
        st.stop()
    try:
        path = save_upload(upload.name, upload.getvalue()) if upload is not None else Path(earlier)
        columns, head = peek(path)
        st.session_state["tune_upload_path"] = str(path)
        if upload is None:
            right.caption(f"Using **{path.name}**, uploaded earlier. Upload another file to replace it.")
    except WorkbenchError as e:
        st.error(str(e))
        st.stop()
    name = path.stem if path.stem not in BUILTIN else f"{path.stem}-own"  # never taken for a built-in task
    values["task"] = right.text_input("Task name", value=name, key="cfg_task_name")
    values["data_path"] = str(path)
    guess_in, guess_target = guess_columns(columns)
    c1, c2 = st.columns(2)
    values["input_column"] = c1.selectbox("Input column", columns, key="cfg_input_column",
                                          index=columns.index(guess_in))
    values["target_column"] = c2.selectbox("Target column", columns, key="cfg_target_column",
                                           index=columns.index(guess_target))
    if values["input_column"] == values["target_column"]:
        c2.error("Target column: the same column as the input. Pick the column with the expected output.",
                 icon=":material/error:")
    st.dataframe(pd.DataFrame(head), hide_index=True, width="stretch", key="upload_preview")

field_widget = partial(field_widget, task=builtin_task())  # noqa: F811 (fields start at the task's defaults)

st.subheader("Method")
c1, c2, c3 = st.columns(3)
values["method"] = field_widget("method", c1)
values["num_virtual_tokens"] = field_widget("num_virtual_tokens", c2, "Virtual tokens")
values["prompt_format"] = "plain" if seq2seq else field_widget("prompt_format", c3)  # chat: causal LMs only
if values["method"] == "prompt-tuning":
    starts = init_runs(list_runs(), values["model"])  # finished prompt-tuning runs of this model: "from a run"
    values["init"] = field_widget("init", c1, options=[i.value for i in Init if i != Init.RUN or starts])
    if values["init"] == "run":
        values["init_run"] = field_widget("init_run", c2, "Start from run", options=starts)
    if values["init"] == "text":
        values["init_text"] = field_widget("init_text", c2)
    if values["init"] in ("sample-vocab", "class-label"):
        values["sample_vocab_top_k"] = field_widget("sample_vocab_top_k", c2)
    if values["init"] == "class-label":
        values["label_words"] = field_widget("label_words", c3)
elif values["method"] == "p-tuning":
    values["encoder_type"] = field_widget("encoder_type", c1)
    values["encoder_hidden_size"] = field_widget("encoder_hidden_size", c2)
else:
    values["prefix_projection"] = field_widget("prefix_projection", c1)
    values["encoder_hidden_size"] = field_widget("encoder_hidden_size", c2)
values["input_template"] = field_widget("input_template")

with st.expander("Training settings", expanded=False):
    cols = st.columns(3)
    training_fields = ["max_steps", "batch_size", "learning_rate", "max_input_tokens", "max_target_tokens",
                       "eval_every", "save_every", "eval_examples", "beat_examples", "early_stopping_patience",
                       "warmup_steps", "max_grad_norm", "weight_decay", "train_examples", "format_augmentation",
                       "precision", "device", "seed"]
    for i, name in enumerate(training_fields):
        values[name] = field_widget(name, cols[i % 3])
    values["trust_remote_code"] = field_widget("trust_remote_code")

queue = st.toggle("Queue mode: one run at a time", value=jobs.settings()["queue"], key="queue_mode",
                  help="On: new runs wait until the running one ends. Off: runs start at once, side by side.")
if queue != jobs.settings()["queue"]:
    jobs.save_settings(queue=queue)

if st.button("Start", type="primary", key="start"):
    cfg = build_config(values)
    if cfg is None:
        st.rerun()  # draw each message next to its field
    try:
        if source == "Local folder":
            resolve_model_dir(cfg.model, cfg.trust_remote_code)  # a missing folder is named now, not by the run
        resolve_device(cfg.device)  # so is a missing GPU
        run = jobs.submit(cfg)
        st.session_state.setdefault("watching", []).insert(0, run.id)
        st.success(f"Started run {run.id}")
    except WorkbenchError as e:
        st.error(str(e))

if st.session_state.get(ERRORS_KEY):
    st.error(f"Nothing started: {len(st.session_state[ERRORS_KEY])} setting(s) need fixing, "
             "see the messages next to the fields.", icon=":material/error:")

st.subheader("Active and recent runs")
active = [r["id"] for r in jobs.active_runs()]
watching = list(dict.fromkeys(active + st.session_state.get("watching", [])))
if not watching:
    st.info("No run is active. Configure one above and press Start.")
for run_id in watching[:4]:
    with st.container(border=True):
        live_run(run_id)
