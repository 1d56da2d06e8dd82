"""Home: what the workbench does, a guided start (workbench/home_view.py), the built-in tasks and the latest runs."""
import pandas as pd
import streamlit as st

from core.model.loading import DEFAULT_MODEL
from core.errors import WorkbenchError
from core.store.paths import workspace
from workbench.home_view import guided_start, three_steps
from workbench.state import builtin_tasks, runs_table, task_preview

st.title("Soft Prompt Workbench")
st.write(
    "Train soft prompts for a frozen language model (prompt tuning, P-tuning, prefix tuning), "
    "compare them with hand-written prompts, and see where the learned prompt vectors sit among "
    "the model's vocabulary embeddings."
)
st.caption(f"Bundled model: **{DEFAULT_MODEL}** (SmolLM2-135M-Instruct, runs offline on CPU). "
           f"Workspace: `{workspace()}`")

st.subheader("Start here")
st.write("Three steps show what a soft prompt buys over a hand-written one. Or press the button: it trains the "
         "sentiment task's soft prompt, shows when it passes the best hand-written prompt, then opens the "
         "comparison.")
three_steps()
guided_start()
st.caption("From a terminal: `python -m workbench tune --task sentiment` (the task's tuned defaults).")

st.subheader("Built-in tasks")
rows = []
for name in builtin_tasks():
    try:
        info = task_preview(name)
    except WorkbenchError as e:
        st.warning(f"Task {name}: {e}")
        continue
    rows.append({"task": name, "train": info["train"], "validation": info["validation"], "test": info["test"],
                 "metric": info["metric"], "example input": info["example"]["input"][:80],
                 "example target": info["example"]["target"][:60]})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="home_tasks")

st.subheader("Runs")
runs = runs_table()
if not runs:
    st.info("No runs yet: start with the button above, or on the Tune page.")
else:
    st.dataframe(pd.DataFrame(runs), hide_index=True, width="stretch", key="home_runs")
