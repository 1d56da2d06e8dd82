"""Sweep: prompt lengths x learning rates on one base config, one run per pair (Optuna grid,
median pruning), trained by one or several worker processes; table and plot live."""
from functools import partial

import pandas as pd
import streamlit as st

from core.train import sweep as sweeps
from workbench.charts import sweep_figure
from core.config import ConfigError, with_task_defaults
from core.model.loading import DEFAULT_MODEL, model_is_seq2seq
from core.errors import WorkbenchError
from core.tasks import BUILTIN
from workbench.config_form import FIELDS, apply_defaults, field_widget, key
from workbench.keep import keep_widgets
from workbench.run_view import STATE_ICONS

ERRORS = "sweep_errors"
FORM = "sweep_cfg"  # its own widget keys: a task picked here must not set the Tune page's form
KEPT = ("sweep_model_source", "sweep_model_folder", "sweep_task", "sweep_tokens", "sweep_lrs", "sweep_startup",
        "sweep_workers", "sweep_storage")  # the page's own input widgets
FORM_FIELDS = ("method", "prompt_format", "max_steps", "batch_size", "eval_every", "max_input_tokens")
LABELS = {"num_virtual_tokens": "Prompt lengths", "learning_rate": "Learning rates"}


def numbers(raw: str, kind) -> list:
    """Comma-separated numbers; a part that is not one is kept as text so that validation names it."""
    out = []
    for part in (p.strip() for p in raw.split(",")):
        if part:
            try:
                out.append(kind(part))
            except ValueError:
                out.append(part)
    return out


st.title("Sweep prompt length × learning rate")
st.caption("Every pair of values is a normal run, trained one after another by each worker. Optuna's median "
           "pruner stops a trial whose validation loss is worse than the median of the finished trials at the same "
           "step.")
keep_widgets(KEPT + tuple(key(name, FORM) for name in FORM_FIELDS))  # as the user left them (workbench/keep.py)
values: dict = {}
left, right = st.columns(2)
source = left.radio("Model", ["Bundled", "Local folder"], horizontal=True, key="sweep_model_source",
                    help=FIELDS["model"].metadata["help"])
values["model"] = DEFAULT_MODEL if source == "Bundled" else left.text_input(
    "Model folder", key="sweep_model_folder", placeholder="/path/to/hf-model-folder") or ""
values["task"] = right.selectbox("Task", list(BUILTIN), key="sweep_task",
                                 format_func=lambda t: f"{t} - {BUILTIN[t].title}",
                                 on_change=lambda: apply_defaults(st.session_state["sweep_task"], FORM),
                                 help="Fields not shown (init, label words, target length) take the task's "
                                      "tuned defaults.")
field_widget = partial(field_widget, task=values["task"], form=FORM)  # noqa: F811 (fields start at the task's defaults)
c1, c2, c3 = st.columns(3)
values["method"] = field_widget("method", c1)
values["prompt_format"] = "plain" if model_is_seq2seq(values["model"]) else field_widget("prompt_format", c2)
values["max_steps"] = field_widget("max_steps", c3, "Steps per trial")
values["batch_size"] = field_widget("batch_size", c1)
values["eval_every"] = field_widget("eval_every", c2, "Evaluate every N steps")
values["max_input_tokens"] = field_widget("max_input_tokens", c3)
values["save_every"] = values["eval_every"]  # a checkpoint at each evaluation: a cancelled trial keeps its last one

g1, g2, g3 = st.columns([2, 2, 1])
grid = {
    "num_virtual_tokens": numbers(g1.text_input(LABELS["num_virtual_tokens"], "5, 20, 50, 100", key="sweep_tokens",
                                                help="Virtual tokens to try, comma-separated."), int),
    "learning_rate": numbers(g2.text_input(LABELS["learning_rate"], "0.3, 0.03, 0.003", key="sweep_lrs",
                                           help="Learning rates to try, comma-separated."), float),
}
startup = g3.number_input("Prune after", 0, 100, sweeps.DEFAULT_PRUNER["n_startup_trials"], key="sweep_startup",
                          help="Finished trials needed before the median pruner may stop a trial.")
w1, w2 = st.columns([1, 4])
workers = w1.number_input("Workers", 1, sweeps.MAX_WORKERS, 1, key="sweep_workers",
                          help="Trials trained at once on this machine, each in its own process.")
storage = w2.text_input("Study storage", key="sweep_storage", placeholder="SQLite in the sweep folder",
                        help="An SQLAlchemy URL (e.g. postgresql://user@host/db) to share the study with workers "
                             "on other machines: `python -m workbench sweep --sweep ID --storage URL`.")
st.caption(f"{len(grid['num_virtual_tokens']) * len(grid['learning_rate'])} trials of {values['max_steps']} steps.")

if st.button("Start sweep", type="primary", key="sweep_start"):
    try:
        sweep = sweeps.new_sweep(with_task_defaults(values), grid, pruner={"n_startup_trials": int(startup)},
                                 storage=storage)
        sweeps.launch(sweep, int(workers))
        st.session_state[ERRORS] = {}
        st.session_state["sweep_pick"] = sweep.id
        st.success(f"Started sweep {sweep.id}")
    except ConfigError as e:
        st.session_state[ERRORS] = e.errors
    except WorkbenchError as e:
        st.error(str(e))
errors = st.session_state.get(ERRORS) or {}
for name, msg in errors.items():
    label = LABELS.get(name) or name.replace("_", " ").capitalize()
    st.error(f"{label}: {msg}", icon=":material/error:")
if errors:
    st.error(f"Nothing started: {len(errors)} setting(s) need fixing.", icon=":material/error:")


@st.fragment(run_every=2.0)
def live_sweep(sweep_id: str) -> None:
    try:
        sweep = sweeps.Sweep.open(sweep_id)
        status, rows = sweep.status(), sweep.results()
    except WorkbenchError as e:
        st.info(str(e))
        return
    state, done, total = status.get("state", "unknown"), status.get("trials") or 0, status.get("total") or 1
    cur = status.get("current") if state == "running" else None
    now = f" · training trial {cur['number']}: {cur['params']['num_virtual_tokens']} tokens, lr " \
          f"{cur['params']['learning_rate']:g}" if cur else ""
    st.markdown(f"**{STATE_ICONS.get(state, '')} {sweep_id}** · state **{state}**")
    st.progress(min(done / total, 1.0), text=f"{done}/{total} trials finished{now}")
    if status.get("error"):
        st.error(status["error"])
    best = sweeps.best_trial(rows)
    if best:
        st.success(f"Best so far: {best['num_virtual_tokens']} tokens, lr {best['learning_rate']:g}: validation "
                   f"loss {best['eval_loss']:.4f} (run {best['run_id']})", icon=":material/trophy:")
    st.plotly_chart(sweep_figure(rows), key=f"sweep_chart_{sweep_id}", config={"displaylogo": False})
    table = pd.DataFrame(rows).rename(columns={"num_virtual_tokens": "tokens", "learning_rate": "lr"})
    st.dataframe(table, hide_index=True, width="stretch", key=f"sweep_table_{sweep_id}")
    try:
        if state in sweeps.ACTIVE and st.button("Cancel sweep", key="sweep_cancel",
                                                help="The current trial saves a checkpoint and stops"):
            st.toast(f"{sweep_id}: {sweeps.cancel(sweep_id)}")
        if state in ("cancelled", "interrupted", "failed") and done < total and st.button(
                "Continue", key="sweep_continue", help="Train the trials not finished yet"):
            sweeps.launch(sweep, status.get("workers") or 1)
            st.toast(f"{sweep_id}: continuing")
    except WorkbenchError as e:
        st.error(str(e))


st.subheader("Sweeps")
listed = sweeps.list_sweeps()
if not listed:
    st.info("No sweep yet: choose the values above and press Start sweep.")
    st.stop()
ids = [r["id"] for r in listed]
if st.session_state.get("sweep_pick") not in ids:
    st.session_state["sweep_pick"] = ids[0]
picked = st.selectbox("Sweep", ids, key="sweep_pick", format_func=lambda i: f"{i} ({listed[ids.index(i)]['state']})")
with st.container(border=True):
    live_sweep(picked)
