"""Explore page helpers: the model's fixed map (built once, with a progress bar), the LSH forest,
token labels, and the plotly WebGL figure of the map (the tree's is in workbench/tree_view.py)."""
from __future__ import annotations

import html
import threading

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from workbench.charts import PALETTE
from core.explore.vocabmap import load_or_fit
from core.explore.prompts import PromptSource, map_cache_dir, map_settings, token_labels
from core.model.loading import embedding_matrix
from core.explore.lshforest import LSHForestIndex, default_lsh, load_or_fit as load_or_fit_forest
from core.explore.vocabgraph import PromptPoints
from workbench.state import base_model

PREFIX_MESSAGE = "Prefix tuning learns per-layer keys/values, not input embeddings"
P_TUNING_NOTE = ("P-tuning: the saved prompt_embeddings are the prompt encoder's output (what the model "
                 "receives), not the encoder's own parameters.")
GRAPHISTRY_HELP = (
    "Graphistry is not configured. Set GRAPHISTRY_SERVER (e.g. hub.graphistry.com) and one credential: "
    "GRAPHISTRY_USERNAME + GRAPHISTRY_PASSWORD, or GRAPHISTRY_PERSONAL_KEY_ID + GRAPHISTRY_PERSONAL_KEY_SECRET, "
    "or GRAPHISTRY_API_TOKEN (optional: GRAPHISTRY_PROTOCOL, default https); or put the same keys in lower case "
    "(server, username, password, ...) under [graphistry] in .streamlit/secrets.toml, then restart the app. "
    "GRAPHISTRY_API_KEY (the legacy api=1 key) is not supported by graphistry 0.61.")

ANCHOR_COLOR = "rgba(100, 116, 139, 0.35)"
EDGE_COLOR = "rgba(100, 116, 139, 0.30)"
SEARCH_COLOR = "#F59E0B"


def anchors(spec: str) -> np.ndarray:
    """The model's input embeddings (V, D), cut to WORKBENCH_MAP_TOKENS rows when that is set."""
    limit, _ = map_settings()
    a = embedding_matrix(base_model(spec).model).numpy()
    return a[:limit] if limit else a


@st.cache_resource(show_spinner=False)
def _map_store() -> dict:
    return {"lock": threading.Lock()}


def built(key: tuple, text: str, build):
    """build(progress) once per key for the app: from memory, else build() shown with a progress bar.

    A cache-decorated function would replay the progress bar's messages on every later rerun,
    so the result is kept in a dict that st.cache_resource holds instead.

    The progress callback never raises into the build: umap reports through tqdm, which holds its
    global lock around the write without try/finally, so a stop or rerun request (the user closes
    the tab or touches a widget) raised there would leave that lock held by a finished thread and
    hang every later fit in the process. The request is kept, the build finishes and is cached, and
    the request is raised afterwards. One lock serves every key: build must not call `built` itself.
    """
    store = _map_store()
    with store["lock"]:
        if key not in store:
            bar = st.progress(0.0, text=text)
            held: list[BaseException] = []

            def report(fraction, message) -> None:
                if held:
                    return
                try:
                    bar.progress(min(max(float(fraction), 0.0), 1.0), text=message)
                except BaseException as e:  # noqa: B036 (Streamlit's stop/rerun requests are BaseExceptions)
                    held.append(e)

            try:
                store[key] = build(report)
            finally:
                bar.empty()
            if held:
                raise held[0]
    return store[key]


def vocab_map(spec: str):
    """The model's VocabMap: from memory, else the disk cache, else a fit shown with a progress bar."""
    limit, params = map_settings()
    return built(("map", spec, limit, tuple(sorted(params.items()))),
                 "Opening the vocabulary map (laid out once per model, then read from disk)…",
                 lambda report: load_or_fit(map_cache_dir(spec, limit), anchors(spec), **params, progress=report))


@st.cache_data(show_spinner=False)
def labels(spec: str, n: int) -> list[str]:
    return token_labels(base_model(spec).tokenizer, n)


@st.cache_data(show_spinner=False)
def token_norm(spec: str) -> float:
    """Median L2 norm of the vocabulary embeddings (raw, not centred)."""
    return float(np.median(np.linalg.norm(anchors(spec), axis=1)))


@st.cache_resource(show_spinner="Building the LSH forest over the vocabulary (once per model; cached on disk)…")
def lsh_forest(spec: str, params: tuple) -> LSHForestIndex:
    """The forest with these parameters ((name, value) pairs): from the disk cache beside the map's,
    else fitted, reusing the map's cached kNN as its graph when it has enough neighbours."""
    limit, _ = map_settings()
    params = dict(params)
    knn = vocab_map(spec).knn_indices_[:, 1:]  # (V, n_neighbors - 1): column 0 is the token itself
    return load_or_fit_forest(map_cache_dir(spec, limit), anchors(spec), params,
                              knn=knn if knn.shape[1] >= params["graph_k"] else None)


def run_colors(run_ids: list[str]) -> dict[str, str]:
    return {rid: PALETTE[i % len(PALETTE)] for i, rid in enumerate(dict.fromkeys(run_ids))}


def _prompt_hover(label: str, pts: PromptPoints, names: list[str]) -> list[str]:
    return [f"<b>{html.escape(label)}</b> · virtual token {j}<br>nearest: "
            + ", ".join(f"{html.escape(names[i])} ({s:.2f})" for i, s in zip(pts.nearest[j], pts.sims[j]) if i >= 0)
            for j in range(len(pts.xy))]


def _layout(fig: go.Figure, height: int, revision: str) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=10), plot_bgcolor="white", hovermode="closest",
                      legend=dict(orientation="h", y=0, yanchor="top", x=0), uirevision=revision)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x", scaleratio=1)
    return fig


def _points(fig: go.Figure, x, y, name: str, hover: list[str], marker: dict, opacity: float = 1.0,
            **shown) -> None:
    """A WebGL trace that draws the points above the vocabulary, plus an invisible SVG twin that takes
    the hover: SVG hover counts a marker's radius, WebGL hover only the distance to point centres, so
    the dense tokens under a big marker would win it. (SVG is drawn below WebGL, hence the two.)"""
    fig.add_trace(go.Scattergl(x=x, y=y, name=name, legendgroup=name, marker=marker, opacity=opacity,
                               hoverinfo="skip", **{"mode": "markers", **shown}))
    fig.add_trace(go.Scatter(x=x, y=y, mode="markers", name=name, legendgroup=name, showlegend=False, text=hover,
                             hovertemplate="%{text}<extra></extra>",
                             marker=dict(size=marker["size"], color=marker["color"], opacity=0)))


def map_figure(xy: np.ndarray, names: list[str], placed: list[tuple[PromptSource, PromptPoints]],
               colors: dict[str, str], highlight=(), query: str = "", height: int = 720) -> go.Figure:
    """Every token a faint point (one WebGL trace); prompts as large markers, one colour per run;
    checkpoints small, joined per virtual token into a trajectory ending at the final adapter."""
    fig = go.Figure(go.Scattergl(
        x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"vocabulary ({len(xy):,} tokens)",
        marker=dict(size=3, color=ANCHOR_COLOR), text=token_hover(names),
        hovertemplate="%{text}<extra></extra>"))
    by_run: dict[str, list[PromptPoints]] = {}
    for src, pts in placed:
        by_run.setdefault(src.run_id, []).append(pts)
    for run_id, steps in by_run.items():
        if len(steps) > 1:
            path = np.stack([p.xy for p in steps], axis=1)  # (P, S, 2): one polyline per virtual token
            gaps = np.full((path.shape[0], 1, 2), np.nan)  # (P, 1, 2) breaks the line between tokens
            line = np.concatenate([path, gaps], axis=1).reshape(-1, 2)  # (P * (S + 1), 2)
            fig.add_trace(go.Scattergl(x=line[:, 0], y=line[:, 1], mode="lines", name=f"{run_id} trajectory",
                                       line=dict(color=colors[run_id], width=1.5), opacity=0.6, hoverinfo="skip"))
    for src, pts in sorted(placed, key=lambda item: item[0].step is not None):  # finals win hover ties
        final = src.step is None
        _points(fig, pts.xy[:, 0], pts.xy[:, 1], src.label, _prompt_hover(src.label, pts, names),
                dict(size=15 if final else 8, color=colors[src.run_id], line=dict(color="white", width=1.5)),
                opacity=1.0 if final else 0.6)
    search_marks(fig, xy, names, highlight, query)
    return _layout(fig, height, "vocab-map")


def token_hover(names: list[str]) -> list[str]:
    return [f"{html.escape(t)} · id {i}" for i, t in enumerate(names)]


def search_marks(fig: go.Figure, xy: np.ndarray, names: list[str], highlight, query: str) -> None:
    """The searched word's tokens as labelled stars (trace "search: <query>")."""
    hl = np.asarray(highlight, dtype=np.int64)
    if len(hl):
        found = [names[i] for i in hl]
        hover = [f"{html.escape(t)} · id {i}" for t, i in zip(found, hl)]
        _points(fig, xy[hl, 0], xy[hl, 1], f"search: {query}", hover,
                dict(size=14, symbol="star", color=SEARCH_COLOR, line=dict(color="black", width=1)),
                mode="markers+text", text=found, textposition="top center")


def lsh_settings(model: str, k: int) -> tuple[tuple, int]:
    """The LSH forest's parameters from the Neighbours tab's expander, starting at the model's
    defaults (core/explore/lshforest.default_lsh, read off bench/bench_lsh.py's curve):
    ((name, value) pairs for `lsh_forest`, candidates per virtual token for k neighbours)."""
    d = default_lsh(model)
    with st.expander("LSH forest parameters"):
        c1, c2, c3, c4, c5, c6 = st.columns(6)
        trees = c1.number_input("Trees (l)", 1, 16, d["trees"], key="exp_lsh_trees",
                                help="k-means trees, one prefix tree of the forest each (different seeds).")
        branching = c2.selectbox("Clusters per node", [16, 32, 64, 128], [16, 32, 64, 128].index(d["branching"]),
                                 key="exp_lsh_branching", help="A token's hash values are its path down the tree.")
        depth = c3.number_input("Depth", 1, 3, d["depth"], key="exp_lsh_depth",
                                help="Levels of the tree: clusters per node ** depth leaves.")
        graph_k = c4.number_input("Graph neighbours", 0, 64, d["graph_k"], key="exp_lsh_graph_k",
                                  help="Each token's nearest tokens for the graph walk (0: no walk). Up to 14 "
                                  "come from the map's cached kNN; more cost an exact all-pairs search.")
        ef = c5.number_input("Walk width (ef)", 0, 512, d["ef"] if graph_k else 0, key="exp_lsh_ef",
                             help="The walk expands the best unexpanded of the ef best tokens found so far, until "
                             "all ef are expanded. 0: the forest's candidates alone.")
        cand = c6.number_input("Candidates", 10, 50000, k * d["candidates_per_k"], key="exp_lsh_cand",
                               help="Tokens the forest proposes per virtual token (nearest leaves first), scored "
                               "by exact cosine before the walk. More finds more of the exact top-k, slower.")
    params = dict(d, trees=int(trees), branching=int(branching), depth=int(depth), graph_k=int(graph_k),
                  ef=int(ef) if graph_k else 0)
    return tuple(sorted(params.items())), int(cand)
