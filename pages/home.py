"""Home: what the workbench does, the bundled model, the built-in tasks and the latest runs."""
import pandas as pd
import streamlit as st

from core.model.loading import DEFAULT_MODEL
from core.errors import WorkbenchError
from core.store.paths import workspace
from workbench.links import page_link
from workbench.state import builtin_tasks, runs_table, task_preview

st.title("Soft Prompt Workbench")
st.write(
    "Train soft prompts for a frozen language model (prompt tuning, P-tuning, prefix tuning), "
    "compare them with hand-written prompts, and see where the learned prompt vectors sit among "
    "the model's vocabulary embeddings."
)
st.caption(f"Bundled model: **{DEFAULT_MODEL}** (SmolLM2-135M-Instruct, runs offline on CPU). "
           f"Workspace: `{workspace()}`")

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
    st.info("No runs yet. Three steps to see what a soft prompt buys over a hand-written one:")
    page_link("tune", "1. Tune: train a soft prompt on a built-in task or your own file", ":material/model_training:")
    page_link("compare", "2. Compare: its answers beside the hard prompts' on the same inputs", ":material/compare:")
    page_link("explore", "3. Explore: where its vectors sit among the vocabulary", ":material/scatter_plot:")
    st.caption("From a terminal: `python -m workbench tune --task sentiment` (the task's tuned defaults).")
else:
    st.dataframe(pd.DataFrame(runs), hide_index=True, width="stretch", key="home_runs")
