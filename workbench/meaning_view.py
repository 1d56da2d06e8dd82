"""Explore's Meaning tab: a run's projected prompt (nearest tokens run as a hard prompt) scored beside
the soft prompt, each virtual token's importance, a shorter prompt, and runs against runs."""
from __future__ import annotations

import contextlib

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.errors import WorkbenchError
from core.explore.meaning import (PREFIX_NOTE, default_precision, importance_table, project, projected_system,
                                  projection_scores, run_vectors, shorter_prompt_loglik, similarity_frames, token_importance,
                                  top_k_tokens)
from core.explore.neighbors import nearest_tokens
from core.model.loading import embedding_matrix
from workbench.state import base_model, generator, vocab_index

RESULTS_KEY = "meaning_results"  # session state: (run, n, modes, precision) -> scores and importance
PROJECTED_HELP = ("Each picked run's virtual tokens replaced by their nearest vocabulary tokens, run as a hard prompt "
                  "in the run's own format (Explore > Meaning): does the prompt mean what its nearest words say? "
                  "Off by default: one more system to generate per run.")
EXACT_HELP = ("Off: the importance pass multiplies in bfloat16 (float32 sums; norms, attention and the residual "
              "stream stay float32), 1.5-2.5x faster (the most where the CPU has AMX); the drops then differ from float32's by up to "
              "0.004 on paraphrase, 0.007 on sentiment (docs/performance.md). The scores above are always float32, as on Compare. "
              "Greyed out where the CPU has no native bfloat16: the pass is float32 there.")
WAYWARD_HELP = ("Khashabi et al. 2022 ('Prompt Waywardness'): a soft prompt can keep its score while its nearest "
                "tokens say something unrelated. A large gap means the words below are not what the prompt does.")


def _key(run_id: str, n: int, modes: tuple, precision: str, vectors: np.ndarray) -> tuple:
    return run_id, n, modes, precision, hash(vectors.tobytes())


def projection_of(model: str, vectors: np.ndarray):
    """A prompt's projection onto the model's whole vocabulary (exact cosine)."""
    lm = base_model(model)
    return project(vectors, vocab_index(model), embedding_matrix(lm.model).numpy(), lm.tokenizer)


def projected_systems(model: str, run_ids: list[str]) -> list:
    """Each run's projected prompt as a system (Compare); a prefix-tuning run has none: a note says so."""
    out = []
    for rid in run_ids:
        try:
            out.append(projected_system(rid, projection_of(model, run_vectors(rid)[1])))
        except WorkbenchError as e:
            st.caption(str(e))
    return out


def _measure(model: str, run_id: str, vectors: np.ndarray, projection, n: int, modes: tuple, precision: str,
             stored_only: bool) -> dict | None:
    """Scores and importance of one run, kept for the session (they take seconds to tens of seconds); with
    `stored_only`, those measured before (in the workspace) or None: nothing runs."""
    store = st.session_state.setdefault(RESULTS_KEY, {})
    key = _key(run_id, n, modes, precision, vectors)
    if key not in store:
        gen, mean = generator(model), vocab_index(model).mean_
        spin = (lambda text: contextlib.nullcontext()) if stored_only else st.spinner
        with spin(f"Generating with the soft and the projected prompt on up to {n} validation examples…"):
            scores = projection_scores(gen, run_id, projection, n, stored_only)
        if scores is None:
            return None
        with spin(f"Measuring {len(vectors)} virtual tokens' importance ({', '.join(modes)})…"):
            importance = token_importance(gen, run_id, vectors, mean, n, modes, scores["soft_loglik"], precision,
                                          stored_only)
        if importance is None:
            return None
        store[key] = {"scores": scores, "importance": importance, "shorter": {}}
    return store[key]


def importance_figure(frame, column: str) -> go.Figure:
    x = [f"{j}: {w.split(',')[0]}" for j, w in zip(frame["virtual token"], frame["nearest words"])]
    fig = go.Figure(go.Bar(x=x, y=frame[column], hovertext=frame["nearest words"],
                           marker_color=np.where(frame[column] >= 0, "#2563EB", "#DC2626")))
    fig.update_layout(height=360, margin=dict(l=10, r=10, t=30, b=10), yaxis_title=column,
                      xaxis_title="virtual token: its nearest word")
    return fig


def run_meaning(model: str, run_id: str, vectors: np.ndarray) -> None:
    """The projected prompt, its score against the soft prompt's, token importance and a shorter prompt."""
    projection = projection_of(model, vectors)
    near = [r["nearest"] for r in nearest_tokens(vectors, vocab_index(model), base_model(model).tokenizer, 3)]
    st.markdown("**Projected prompt**: each virtual token replaced by its nearest vocabulary token (exact cosine, "
                "mean-centred embeddings), run as a hard prompt where the virtual tokens were.")
    st.code(projection.text or "(empty)", language=None)
    c1, c2 = st.columns(2)
    c1.metric("Mean cosine to the nearest token", f"{float(np.mean(projection.cosines)):.2f}")
    c2.metric("Distance to the projection", f"{projection.distance:.2f}",
              help="Mean over virtual tokens of |prompt vector - nearest token's embedding| / |prompt vector| "
                   "(raw embeddings): 0 when the prompt is made of vocabulary tokens.")
    c1, c2, c3, c4 = st.columns(4)
    n = c1.number_input("Validation examples", 1, 512, 32, key="mean_n")
    removal = c2.checkbox("Also measure removal", key="mean_remove",
                          help="Besides replacing each token by the vocabulary's mean embedding, drop it from the "
                               "prompt (twice the passes).")
    modes = ("mean", "remove") if removal else ("mean",)
    fast = default_precision() == "bf16"
    exact = c3.checkbox("Exact (float32) importance", not fast, key="mean_exact", disabled=not fast, help=EXACT_HELP)
    precision = "fp32" if exact else "bf16"
    clicked = c4.button("Score and measure", type="primary", key="mean_go")
    try:  # shown at once where measured before (this session or stored); measured on a click
        found = _measure(model, run_id, vectors, projection, int(n), modes, precision, stored_only=not clicked)
    except WorkbenchError as e:
        st.error(str(e))
        return
    if found is None:
        st.caption("Scores the soft and the projected prompt on the task's metric and measures each token's "
                   "importance (20 tokens on 32 paraphrase examples: 23-39 s on 2 cores, more in exact float32; docs/performance.md).")
        return
    s, imp = found["scores"], found["importance"]
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Soft prompt {s['metric']}", f"{s['soft']:.3f}")
    c2.metric(f"Projected prompt {s['metric']}", f"{s['projected']:.3f}", f"{-s['gap']:+.3f}")
    c3.metric("Waywardness gap (soft - projected)", f"{s['gap']:+.3f}", help=WAYWARD_HELP)
    st.caption(f"Reference log-likelihood per token: soft {s['soft_loglik']:.3f}, projected "
               f"{s['projected_loglik']:.3f}. {'Stored: measured earlier' if imp.get('stored') else 'Measured'} "
               f"in {s['seconds'] + imp['seconds']:.1f} s on "
               f"{imp['examples']} validation examples (importance in "
               f"{'bfloat16 matmuls' if imp['precision'] == 'bf16' else 'float32'}).")
    frame = importance_table(imp, projection, near)
    column = [c for c in frame.columns if c.startswith("log-lik drop")][0]
    st.plotly_chart(importance_figure(frame, column), key="mean_importance")
    st.caption("Drop in the reference log-likelihood (per token, mean over examples) when the virtual token is "
               "replaced by the vocabulary's mean embedding: high = the prompt needs it; below 0 = it hurts.")
    st.dataframe(frame, hide_index=True, width="stretch", key="mean_table")
    k = st.slider("Shorter prompt: keep the k most important tokens", 1, len(vectors), max(1, len(vectors) // 2),
                  key="mean_k")
    keep = top_k_tokens(imp["mean"], k)
    if k not in found["shorter"]:
        found["shorter"][k] = shorter_prompt_loglik(generator(model), run_id, vectors, keep, imp["examples"])
    st.write(f"Keeping tokens {keep}: reference log-likelihood {found['shorter'][k]:.3f} "
             f"(full prompt {imp['base']:.3f}).")


def runs_against_runs(prompts: dict[str, np.ndarray], model: str) -> None:
    """Heatmaps of prompt similarity between the picked runs (SPoT's task similarity)."""
    st.subheader("Runs against runs")
    if len(prompts) < 2:
        st.info("Pick two or more runs (or checkpoints) with input-space prompts to compare them.")
        return
    pooled, aligned = similarity_frames(prompts, vocab_index(model).mean_)
    c1, c2 = st.columns(2)
    for col, frame, title in ((c1, pooled, "Cosine of mean-pooled prompts"),
                              (c2, aligned, "Best token-to-token alignment")):
        fig = px.imshow(frame.round(3), text_auto=True, zmin=-1, zmax=1, color_continuous_scale="RdBu",
                        title=title)
        fig.update_layout(height=420, margin=dict(l=10, r=10, t=40, b=10))
        col.plotly_chart(fig, key=f"mean_sim_{title[:4]}")
    st.caption("Vectors centred by the vocabulary mean. Alignment: the mean cosine of the token pairs a one-to-one "
               "(Hungarian) matching picks. Similar prompts suggest related tasks, and a run worth starting from "
               "(Tune: init 'run'; Vu et al. 2022, SPoT).")


def meaning_tab(model: str, vectors: dict[str, np.ndarray], sources: dict[str, str], prefix_runs: list[str]) -> None:
    """vectors: label -> (P, D); sources: label -> run id, for final adapters only."""
    for rid in prefix_runs:
        st.info(f"{rid}: {PREFIX_NOTE}")
    finals = [label for label in vectors if label in sources]
    if finals:
        label = st.selectbox("Run", finals, key="mean_run")
        run_meaning(model, sources[label], vectors[label])
    elif not prefix_runs:
        st.info("None of the picked runs has a final prompt yet.")
    runs_against_runs(vectors, model)
