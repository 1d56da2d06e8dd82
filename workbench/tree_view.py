"""Explore page, Tree tab: the vocabulary's minimum spanning tree laid out by tmap (core/explore/vocabtree.py),
each virtual token hanging off its nearest token; search, downloads and Graphistry."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.errors import WorkbenchError
from core.explore.prompts import (PromptSource, graphistry_settings, graphistry_upload, map_cache_dir, map_settings,
                                  search_tokens, table_bytes)
from core.explore.vocabgraph import PromptPoints, graph_tables
from core.explore.vocabtree import VocabTree, check_params, load_or_fit
from workbench.explore_view import EDGE_COLOR, GRAPHISTRY_HELP, anchors, built, map_figure, vocab_map


def vocab_tree(spec: str) -> VocabTree:
    """The model's VocabTree: from memory, else the disk cache, else a build shown with a progress bar.

    A build takes its exact kNN from the model's map (the page builds that first) when the map has enough."""
    limit, _ = map_settings()
    vmap = vocab_map(spec)  # first, and outside `built`: it holds the store's lock while building

    def build(report):
        k = check_params()["k"]
        knn = (vmap.knn_indices_[:, 1:], vmap.knn_sims_[:, 1:]) if vmap.params_["n_neighbors"] > k else None
        return load_or_fit(map_cache_dir(spec, limit, "vocab_trees"), anchors(spec), progress=report, knn=knn)

    return built(("tree", spec, limit), "Opening the vocabulary tree (built once per model, about 20 s, then read "
                 "from disk)…", build)


def _segments(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Line segments a[i] -> b[i] ((E, 2) each) as one trace's x, y with a gap (NaN) after each: (3E,)."""
    xs, ys = np.full(3 * len(a), np.nan, np.float32), np.full(3 * len(a), np.nan, np.float32)  # half of float64's bytes
    xs[0::3], xs[1::3], ys[0::3], ys[1::3] = a[:, 0], b[:, 0], a[:, 1], b[:, 1]
    return xs, ys


def tree_figure(tree: VocabTree, names: list[str], placed: list[tuple[PromptSource, PromptPoints]],
                colors: dict[str, str], highlight=(), query: str = "", height: int = 720) -> go.Figure:
    """The map's figure drawn at the tree's positions (tokens, prompts, checkpoint trajectories, search),
    over the tree's edges (one WebGL line trace) and a line from each virtual token to its nearest token."""
    fig = map_figure(tree.xy_, names, placed, colors, highlight, query, height)
    xs, ys = _segments(tree.xy_[tree.src_], tree.xy_[tree.dst_])
    under = [go.Scattergl(x=xs, y=ys, mode="lines", name=f"tree ({len(tree.src_):,} edges)", hoverinfo="skip",
                          line=dict(color=EDGE_COLOR, width=1))]
    for src, pts in placed:
        xs, ys = _segments(pts.xy, tree.xy_[pts.nearest[:, 0]])
        under.append(go.Scattergl(x=xs, y=ys, mode="lines", name=f"{src.label} → nearest", showlegend=False,
                                  hoverinfo="skip", line=dict(color=colors[src.run_id], width=1.5)))
    return go.Figure(under + list(fig.data), fig.layout).update_layout(uirevision="vocab-tree")  # edges below


def tree_tab(model: str, names: list[str], prompts: list[tuple[PromptSource, np.ndarray]], colors: dict[str, str],
             query: str, tokenizer) -> None:
    """The Tree tab. prompts: (source, vectors (P, D)) of every picked run and checkpoint."""
    try:
        tree = vocab_tree(model)
    except WorkbenchError as e:
        st.error(str(e))
        return
    attach = st.slider("Nearest tokens linked per virtual token", 1, 10, 3, key="exp_tree_attach",
                       help="Hover lists them; the downloads and Graphistry get one edge to each.")
    placed = [(src, tree.attach(src.label, vecs, k=attach)) for src, vecs in prompts]
    found = search_tokens(query, tokenizer, names) if query else []
    if query:
        st.caption(f"'{query}': " + (", ".join(f"{names[i]} (id {i})" for i in found) if len(found)
                                     else "no token in this tree"))
    st.plotly_chart(tree_figure(tree, names, placed, colors, found, query), key="exp_tree",
                    config={"scrollZoom": True})
    p = tree.params_
    st.caption(f"The minimum spanning tree of the {p['k']}-nearest-neighbour graph of all {len(names):,} tokens "
               f"({'exact' if p['source'] == 'exact' else 'LSH forest'} cosine of mean-centred input embeddings), "
               f"laid out with tmap: built once per model ({tree.fit_seconds_:.0f} s) and cached on disk. Each virtual "
               "token hangs off its nearest token and no token moves, so runs and checkpoints are comparable. Scroll or drag "
               "a box to zoom into a branch; double-click to zoom out; hover names a token.")
    latest = {s.run_id: pts for s, pts in placed}  # per run: its final adapter, else its latest checkpoint
    label_colors = {s.label: colors[s.run_id] for s, _ in placed}
    nodes, edges = graph_tables(tree.xy_, names, tree.tree_matrix(), list(latest.values()))
    cols = st.columns(4)
    for i, (what, frame) in enumerate((("points", nodes), ("edges", edges))):
        for j, (fmt, mime) in enumerate((("CSV", "text/csv"), ("Parquet", "application/vnd.apache.parquet"))):
            cols[2 * j + i].download_button(  # the bytes are made only when clicked
                f"{what.capitalize()} ({fmt})", lambda frame=frame, fmt=fmt: table_bytes(frame, fmt.lower()),
                file_name=f"{model.rstrip('/').split('/')[-1]}-tree-{what}.{fmt.lower()}", mime=mime,
                on_click="ignore", key=f"exp_dl_{what}_{fmt.lower()}")
    try:
        secrets = dict(st.secrets.get("graphistry", {}))
    except Exception:  # no secrets.toml at all
        secrets = {}
    settings = graphistry_settings(secrets=secrets)
    if settings is None:
        st.info(GRAPHISTRY_HELP)
    elif st.button(f"Open in Graphistry ({settings['server']})", key="exp_graphistry"):
        try:
            with st.spinner("Uploading to Graphistry…"):
                url = graphistry_upload(nodes, edges, settings, label_colors, f"Prompt tokens on {model}")
            st.success(f"Uploaded: [{url}]({url})")
        except WorkbenchError as e:
            st.error(str(e))
