"""The live view of one run: progress, loss curve, sample generations, cancel/resume/delete.

Polled from the run's files by st.fragment(run_every=...): the training process writes them,
the page only reads, so closing the browser never touches the run.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.store import jobs
from workbench.charts import loss_figure
from core.errors import WorkbenchError
from core.store.runs import ACTIVE, Run, RunState, delete_run

POLL_SECONDS = 2.0
STATE_ICONS = {"queued": ":material/schedule:", "starting": ":material/rocket_launch:",
               "running": ":material/directions_run:", "completed": ":material/check_circle:",
               "cancelled": ":material/stop_circle:", "failed": ":material/error:", "interrupted": ":material/warning:"}


def beat_text(beat: dict | None) -> str | None:
    """The run against the best hard prompt on its validation sample (core/evaluate/beat.py), one line."""
    if not beat or beat.get("hard") is None:
        return None
    where = f"{beat['n']} validation examples, {beat['metric']}"
    if beat.get("passed"):
        p = beat["passed"]
        return (f"Passed the best hard prompt at step {p['step']}, {p['seconds'] / 60:.1f} min "
                f"({p['score']:.3f} vs {beat['hard']:.3f}; {where})")
    soft = f"{beat['soft']:.3f}" if beat.get("soft") is not None else "-"
    return (f"Not past the best hard prompt yet: {soft} vs {beat['hard']:.3f} at step {beat.get('step', 0)} "
            f"({beat['hard_system'].removeprefix('hard: ')}; {where})")


def fmt_eta(seconds) -> str:
    if seconds is None:
        return "estimating…"
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@st.fragment(run_every=POLL_SECONDS)
def live_run(run_id: str) -> None:
    """Progress and curves of a run, refreshed every POLL_SECONDS while the page is open."""
    summarise(run_id, key_prefix=f"live_{run_id}")


def summarise(run_id: str, key_prefix: str) -> Run | None:
    """The run's summary (run_summary), or a note when the run was deleted; the run, if it exists."""
    try:
        run = Run.open(run_id)
    except WorkbenchError:
        st.info(f"Run {run_id} no longer exists.")
        return None
    run_summary(run, key_prefix=key_prefix)
    return run


def run_summary(run: Run, key_prefix: str) -> None:
    st_ = run.status()
    cfg = run.config()
    state = st_.get("state", "unknown")
    st.markdown(f"**{STATE_ICONS.get(state, '')} {run.id}** · {cfg.task} · {cfg.method.value} · "
                f"{cfg.num_virtual_tokens} tokens · state **{state}**")
    step, total = st_.get("step") or 0, st_.get("total") or cfg.max_steps
    loss = st_.get("loss")
    eta = fmt_eta(st_.get("eta")) if state == RunState.RUNNING else "-"
    st.progress(min(step / total, 1.0) if total else 0.0,
                text=f"step {step}/{total} · loss {loss:.4f} · ETA {eta}" if loss is not None
                else f"step {step}/{total} · ETA {eta}")
    if text := beat_text(st_.get("beat")):
        (st.success if st_["beat"].get("passed") else st.info)(text, icon=":material/flag:")
    if st_.get("error"):
        st.error(st_["error"])
    if st_.get("note"):  # e.g. the CPU-only fast paths stepping aside on a GPU
        st.caption(f":material/info: {st_['note']}")
    rows = run.metrics()
    if rows:
        st.plotly_chart(loss_figure({run.id: rows}), key=f"{key_prefix}_chart", config={"displaylogo": False})
        samples = [r for r in rows if r.get("kind") == "samples"]
        if samples:
            with st.expander(f"Sample generations at step {samples[-1]['step']}"):
                st.dataframe(pd.DataFrame(samples[-1]["samples"]), hide_index=True, width="stretch")
    run_actions(run, state, key_prefix)


def run_actions(run: Run, state: str, key_prefix: str) -> None:
    cols = iter(st.columns(4))  # the buttons a state has, side by side from the left
    try:
        if state in ACTIVE:
            if next(cols).button("Cancel", key=f"{key_prefix}_cancel", help="Save a checkpoint and stop"):
                st.toast(f"{run.id}: {jobs.cancel(run.id)}")
        if state in (RunState.CANCELLED, RunState.FAILED, RunState.INTERRUPTED):
            if next(cols).button("Resume", key=f"{key_prefix}_resume", help="Continue from the last checkpoint"):
                jobs.resume(run.id)
                st.toast(f"{run.id}: resuming")
        if state not in ACTIVE:
            confirm_key = f"{key_prefix}_confirm_delete"
            if next(cols).button("Delete", key=f"{key_prefix}_delete"):
                st.session_state[confirm_key] = True
            if st.session_state.get(confirm_key):
                st.warning(f"Delete run {run.id} and all its files?")
                if st.button("Yes, delete it", key=f"{key_prefix}_delete_yes", type="primary"):
                    delete_run(run.id)
                    st.session_state.pop(confirm_key, None)
                    st.rerun()
    except WorkbenchError as e:
        st.error(str(e))

