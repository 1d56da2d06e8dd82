"""Results: what prompt tuning buys on the bundled model. The soft prompt of each task's defaults
against its hard prompts (bench/results.py), and prompt length x init strategy (core/evaluate/report.py),
as shipped with the project and as run on this machine."""
import time

import pandas as pd
import streamlit as st

from core.evaluate import report as rep
from workbench.charts import report_figure
from core.tasks import BUILTIN

st.title("Results")

st.subheader("Soft prompt against hard prompts, with each task's defaults")
table = rep.results_table()
if not table:
    st.info("No results table yet: `make results` trains each task's defaults and writes it.")
else:
    st.dataframe(pd.DataFrame(table["rows"]), hide_index=True, width="stretch", key="results_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("soft prompt", "best hard prompt", "bare model", "soft, shifted",
                                          "best hard, shifted")} |
                 {"train min": st.column_config.NumberColumn(format="%.1f")})
    st.caption(f"Soft prompt ahead on {table['wins']} of {len(table['rows'])} tasks (test split; defaults chosen on "
               "validation). Hard prompts: the task's prompt zero-shot and 4-shot, chat and plain format, the best "
               f"one counted. Measured on {table['machine']}.")
    if table["wins_shifted"] is None:
        st.warning("Measured only on inputs laid out like the training data: `make results` also scores the shifted "
                   "split (each input in a random format variant), where a soft prompt can fall behind.")
    else:
        st.caption(f"On the shifted test split (each input in a random format variant: line breaks, field names, "
                   f"casing, spacing, quotes, a preface; the mean of three seeded draws) the soft prompt is ahead on "
                   f"{table['wins_shifted']} of "
                   f"{len(table['rows'])} tasks. Try your own layouts on Compare with \"also on format variants\".")
        st.markdown(f"**Where the soft prompt does not hold:** {table['losses']}.")

st.subheader("Prompt length and init strategy")
st.caption("How long a soft prompt, started from what? Each point is a run trained with the task's defaults "
           "except its length and init, scored on the validation split.")
reports = {r["path"]: r for r in rep.reports()}  # picked by path: a new report must not shift the pick
labels = {p: f"{r['task']} ({'shipped' if r['shipped'] else 'this workspace'}, {len(r['points'])} points"
          f"{', running' if r.get('state') == 'running' else ''})" for p, r in reports.items()}
left, right = st.columns([3, 2])
with right.container(border=True):
    st.markdown("**Run a report on this machine**")
    task = st.selectbox("Task", list(BUILTIN), index=list(BUILTIN).index("sentiment"), key="rep_task")
    lengths = st.multiselect("Prompt lengths", [1, 2, 5, 10, 20, 50, 100, 200], list(rep.LENGTHS), key="rep_lengths")
    usable = [i for i in rep.INITS if rep.init_values(BUILTIN[task], i) is not None]  # class labels: label tasks
    inits = st.multiselect("Init strategies", usable, usable, key=f"rep_inits_{task}")
    steps = st.number_input("Steps per point (0 = the task's default)", 0, 10_000, 0, key="rep_steps")
    running = [r for r in reports.values() if not r["shipped"] and r["task"] == task and r.get("state") == "running"]
    if st.button("Start report", key="rep_start", disabled=not (lengths and inits) or bool(running),
                 help="Trains one run per point in its own process (runs are kept and reused)."):
        log = rep.start_report(task, lengths, inits, steps)
        st.success(f"Report on {task} started: {len(lengths) * len(inits)} points; its log is {log}.")
        time.sleep(1)
if not reports:
    left.info("No report yet: start one on the right, or run `python -m workbench report --task sentiment`.")
    st.stop()
with left:
    pick = st.selectbox("Report", list(reports), format_func=labels.__getitem__, key="rep_pick")
    value = st.radio("Show", ["validation metric", "validation loss"], horizontal=True, key="rep_value")


@st.fragment(run_every=5 if reports[pick].get("state") == "running" else None)
def show(pick: str) -> None:
    r = next((r for r in rep.reports() if r["path"] == pick), None)
    if r is None:
        st.info("This report is gone: pick another.")
        return
    if not r["points"]:
        st.info("The report has no points yet: the first run is training.")
        return
    st.plotly_chart(report_figure(r, "metric" if value == "validation metric" else "eval_loss"), key="rep_chart")
    points = pd.DataFrame(r["points"])[["init", "num_virtual_tokens", "metric", "low", "high", "eval_loss",
                                        "seconds", "run_id"]]
    st.dataframe(points.rename(columns={"metric": r["metric"], "num_virtual_tokens": "tokens"}), hide_index=True,
                 width="stretch", key="rep_points")
    skipped = "; ".join(f"{s['init']}: {s['why']}" for s in r.get("skipped", []))
    st.caption(f"{r['task']}, validation split (n={r['n']}), {r['machine']}"
               + (f"; settings changed: {r['overrides']}" if r.get("overrides") else "")
               + (f"; skipped {skipped}" if skipped else ""))


with left:
    show(pick)
