"""Results: what prompt tuning buys on the bundled model. The soft prompt of each task's defaults
against its hard prompts (bench/results.py), and prompt length x init strategy (core/report.py),
as shipped with the project and as run on this machine."""
import time

import pandas as pd
import streamlit as st

from core import report as rep
from core.charts import report_figure
from core.jobs import spawn
from core.paths import REPO_ROOT, read_json
from core.tasks import BUILTIN

st.title("Results")

st.subheader("Soft prompt against hard prompts, with each task's defaults")
table = read_json(REPO_ROOT / "bench-results" / "results-test.json", default=None)
if not table:
    st.info("No results table yet: `make results` trains each task's defaults and writes it.")
else:
    rows = [{"task": r["task"], "metric": r["metric"], "n (test)": r["n"], "soft prompt": r["soft"],
             "best hard prompt": r["best_hard"], "which hard prompt": r["best_hard_system"].removeprefix("hard: "),
             "bare model": r["bare"], "soft ahead": r["soft"] > r["best_hard"],
             "train min": (r["train_s"] or 0) / 60} for r in table["rows"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="results_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("soft prompt", "best hard prompt", "bare model")} |
                 {"train min": st.column_config.NumberColumn(format="%.1f")})
    wins = sum(r["soft ahead"] for r in rows)
    st.caption(f"Soft prompt ahead on {wins} of {len(rows)} tasks (test split; defaults chosen on validation). "
               f"Hard prompts: the task's prompt zero-shot and 4-shot, chat and plain format, the best one counted. "
               f"Measured on {table['machine']}.")

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
    log = rep.report_path(task).with_suffix(".log")
    running = [r for r in reports.values() if not r["shipped"] and r["task"] == task and r.get("state") == "running"]
    if st.button("Start report", key="rep_start", disabled=not (lengths and inits) or bool(running),
                 help="Trains one run per point in its own process (runs are kept and reused)."):
        args = ["report", "--task", task, "--lengths", *map(str, sorted(lengths)), "--inits", *inits]
        spawn(args + (["--steps", str(steps)] if steps else []), log)
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
