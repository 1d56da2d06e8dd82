"""Explore: learned prompt tokens on the vocabulary tree (kNN graph -> spanning tree -> tmap layout), on a
fixed UMAP map of the model's vocabulary embeddings, and each virtual token's nearest tokens (exact cosine
against the LSH forest)."""
import streamlit as st

from core.explore.prompts import map_settings, neighbour_table, prompt_runs, run_prompts, search_tokens
from core.errors import WorkbenchError
from core.store.runs import Run, list_runs
from core.explore.vocabgraph import prompt_points
from workbench.explore_view import (P_TUNING_NOTE, PREFIX_MESSAGE, labels, lsh_forest, lsh_settings, map_figure,
                                    run_colors, token_norm, vocab_map)
from workbench.meaning_view import meaning_tab
from workbench.state import base_model
from workbench.tree_view import tree_tab

st.title("Explore prompt tokens")
runs = prompt_runs(list_runs())
if not runs:
    st.info("No trained prompts yet: train one on the Tune page, then see where its virtual tokens sit here.")
    st.stop()
with st.sidebar:
    model = st.selectbox("Model", sorted({r["model"] for r in runs}), key="exp_model")
    ids = [r["id"] for r in runs if r["model"] == model]
    picked = st.multiselect("Runs", ids, default=ids[:1], key="exp_runs", help="One colour per run.")
    if picked:  # the sidebar's chips cut long run ids short
        st.caption("Picked: " + ", ".join(f"`{rid}`" for rid in picked))
    steps = {f"{rid} @ {step}": (rid, step) for rid in picked for step, _ in Run.open(rid).checkpoints()}
    chosen = st.multiselect("Checkpoints (drawn as trajectories)", list(steps), key="exp_checkpoints",
                            help="Lines run from the first picked checkpoint to the final adapter, per virtual token.")
    k = st.slider("Nearest tokens per virtual token", 1, 20, 5, key="exp_k")
    query = st.text_input("Find a word", key="exp_search", placeholder="e.g. positive", help="On the tree and the map.")
if not picked:
    st.info("Pick one or more runs in the sidebar.")
    st.stop()

try:
    vmap = vocab_map(model)
    lm = base_model(model)
except WorkbenchError as e:
    st.error(str(e))
    st.stop()
V = vmap.embedding_.shape[0]
names = labels(model, V)
limit, _ = map_settings()
st.caption(f"A fixed UMAP map (cosine, seed {vmap.params_['seed']}) of {V:,} input embeddings of {model}, mean-"
           "centred; built once per model and cached on disk. Prompt vectors are placed on it without moving any "
           "token, so runs and checkpoints are comparable." + (f" Map limited to the first {limit:,} token ids "
                                                               "(WORKBENCH_MAP_TOKENS)." if limit else ""))

placed, vectors, prefix, ptuning = [], {}, [], False
for rid in picked:
    try:
        peft_type, prompts = run_prompts(Run.open(rid), [s for c, (r, s) in steps.items() if r == rid and c in chosen])
        prefix += [rid] if peft_type == "PREFIX_TUNING" else []
        ptuning |= peft_type == "P_TUNING"
        for src, vecs in prompts:
            placed.append((src, prompt_points(src.label, vecs, vmap, k=min(k, 5))))
            vectors[src.label] = vecs
    except (WorkbenchError, ValueError) as e:  # unreadable adapter, or one trained on another model width
        st.error(f"{rid}: {e}")
for rid in prefix:
    st.info(f"{rid}: {PREFIX_MESSAGE}, so its virtual tokens are not drawn on the map.")
if ptuning:
    st.caption(P_TUNING_NOTE)
colors = run_colors([s.run_id for s, _ in placed])

tab_tree, tab_map, tab_nn, tab_meaning = st.tabs(["Tree", "Map", "Neighbours", "Meaning"], key="exp_view",
                                                 on_change="rerun")
if tab_map.open:
    with tab_map:
        found = search_tokens(query, lm.tokenizer, names) if query else []
        if query:
            st.caption(f"'{query}': " + (", ".join(f"{names[i]} (id {i})" for i in found) if len(found)
                                         else "no token on this map"))
        st.plotly_chart(map_figure(vmap.embedding_, names, placed, colors, found, query), key="exp_map",
                        config={"scrollZoom": True})

if tab_tree.open:
    with tab_tree:
        tree_tab(model, names, [(s, vectors[s.label]) for s, _ in placed], colors, query, lm.tokenizer)

if tab_nn.open:
    with tab_nn:
        params, cand = lsh_settings(model, k)
        if not vectors:
            st.info("No input-space prompt vectors among the picked runs.")
        else:
            try:
                forest = lsh_forest(model, params)
            except ValueError as e:
                st.error(f"LSH forest parameters: {e}")
                st.stop()
            table, recall = neighbour_table(list(vectors.items()), vmap.index_, forest, names, k,
                                            candidates=max(cand, k), token_norm=token_norm(model))
            st.metric(f"LSH forest recall@{k} against exact cosine", f"{recall:.1%}",
                      help="Share of the exact top-k that the forest finds, over these virtual tokens. Raise "
                      "'Candidates' (slower) when it is low.")
            st.caption("Cosine similarity of mean-centred embeddings. Exact (brute force) is the reference; the "
                       "LSH forest (datasketch MinHashLSHForest over paths down k-means trees, then a walk on the "
                       "vocabulary's kNN graph) scores its candidates by exact cosine; ✓ marks an answer exact "
                       "search agrees with, ✗ one it does not. "
                       f"Index: {forest!r}, {cand} candidates per virtual token.")
            floats = {c: st.column_config.NumberColumn(format="%.3f") for c in table.columns if table[c].dtype == float}
            st.dataframe(table, hide_index=True, width="stretch", column_config=floats, key="exp_table")

if tab_meaning.open:
    with tab_meaning:
        meaning_tab(model, vectors, {s.label: s.run_id for s, _ in placed if s.step is None}, prefix)
