"""Runs: every run in a sortable table; open one (config, curves, prompt tokens, adapter zip),
or select several to overlay their loss curves."""
import json

import pandas as pd
import streamlit as st

from workbench.charts import loss_figure
from core.errors import WorkbenchError
from core.explore.neighbors import nearest_tokens
from core.model.adapters import adapter_zip, input_space_vectors
from core.store.runs import Run, list_runs
from workbench.run_view import ACTIVE, live_run, run_summary
from workbench.state import base_model, vocab_index

st.title("Runs")
runs = list_runs()
if not runs:
    st.info("No runs yet: start one on the Tune page.")
    st.stop()

table = pd.DataFrame(runs)
table["duration"] = table["duration_s"].map(lambda s: f"{s / 60:.1f} min" if s == s and s is not None else "")
cols = ["id", "model", "task", "method", "tokens", "steps", "state", "best_eval_loss", "duration"]
st.dataframe(table[cols], hide_index=True, width="stretch", key="runs_table")

picked = st.multiselect("Open runs", table["id"].tolist(), key="runs_pick",
                        help="One run: its details. Several: their loss curves overlaid.")
if not picked:
    st.info("Pick one run to open it, or several to compare their curves.")
    st.stop()
if len(picked) > 1:
    st.subheader("Loss curves")
    st.plotly_chart(loss_figure({rid: Run.open(rid).metrics() for rid in picked}, height=420), key="overlay")
    st.stop()

run = Run.open(picked[0])
cfg = run.config()
with st.container(border=True):
    if run.status().get("state") in ACTIVE:  # polled, so that progress and a Cancel show as they happen
        live_run(run.id)
    else:
        run_summary(run, key_prefix=f"runs_{run.id}")
tab_cfg, tab_tokens, tab_download = st.tabs(["Config", "Prompt tokens", "Download"])
with tab_cfg:
    st.json(cfg.to_dict())
with tab_tokens:
    if not (run.adapter_dir / "adapter_model.safetensors").exists():
        st.info("This run has no final adapter yet: it appears when the run completes or is cancelled.")
    else:
        try:
            vectors = input_space_vectors(run.adapter_dir)
            if vectors is None:
                st.info("Prefix tuning learns per-layer keys and values, not input embeddings: its virtual "
                        "tokens have no place among the vocabulary embeddings.")
            else:
                k = st.slider("Neighbours per virtual token", 1, 10, 5, key="runs_k")
                lm = base_model(cfg.model, cfg.trust_remote_code)
                rows = nearest_tokens(vectors, vocab_index(cfg.model), lm.tokenizer, k)
                st.caption("Exact cosine similarity on mean-centred input embeddings.")
                st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="runs_tokens")
        except WorkbenchError as e:
            st.error(str(e))
with tab_download:
    if (run.adapter_dir / "adapter_config.json").exists():
        data = adapter_zip(run.adapter_dir, {"config.json": json.dumps(cfg.to_dict(), indent=2)})
        st.download_button("Download the PEFT adapter (zip)", data, file_name=f"{run.id}-adapter.zip",
                           mime="application/zip", key="runs_download")
        st.caption("Unzip and load with `PeftModel.from_pretrained(base_model, 'adapter')`.")
    else:
        st.info("No adapter to download yet.")
