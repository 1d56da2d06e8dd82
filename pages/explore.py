"""Explore: learned prompt tokens on a fixed map of the model's vocabulary embeddings, the vocabulary
graph, and each virtual token's nearest tokens (exact cosine against the LSH forest)."""
import streamlit as st

from core.explore.prompts import (graphistry_settings, graphistry_upload, map_settings, neighbour_table,
                                  prompt_runs, run_prompts, search_tokens, table_bytes, vocab_graph)
from core.errors import WorkbenchError
from core.store.runs import Run, list_runs
from core.explore.vocabgraph import prompt_points
from workbench.explore_view import (GRAPHISTRY_HELP, P_TUNING_NOTE, PREFIX_MESSAGE, graph_figure, labels,
                                    lsh_forest, lsh_settings, map_figure, run_colors, token_norm, vocab_map)
from workbench.meaning_view import meaning_tab
from workbench.state import base_model

st.title("Explore prompt tokens")
runs = prompt_runs(list_runs())
if not runs:
    st.info("No trained prompts yet: train one on the Tune page, then see where its virtual tokens sit here.")
    st.stop()
with st.sidebar:
    model = st.selectbox("Model", sorted({r["model"] for r in runs}), key="exp_model")
    ids = [r["id"] for r in runs if r["model"] == model]
    picked = st.multiselect("Runs", ids, default=ids[:1], key="exp_runs", help="One colour per run.")
    steps = {f"{rid} @ {step}": (rid, step) for rid in picked for step, _ in Run.open(rid).checkpoints()}
    chosen = st.multiselect("Checkpoints (drawn as trajectories)", list(steps), key="exp_checkpoints",
                            help="Lines run from the first picked checkpoint to the final adapter, per virtual token.")
    k = st.slider("Nearest tokens per virtual token", 1, 20, 5, key="exp_k")
    query = st.text_input("Find a word on the map", key="exp_search", placeholder="e.g. positive")
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
label_colors = {s.label: colors[s.run_id] for s, _ in placed}

tab_map, tab_graph, tab_nn, tab_meaning = st.tabs(["Map", "Graph", "Neighbours", "Meaning"], key="exp_view",
                                                  on_change="rerun")
if tab_map.open:
    with tab_map:
        found = search_tokens(query, lm.tokenizer, names) if query else []
        if query:
            st.caption(f"'{query}': " + (", ".join(f"{names[i]} (id {i})" for i in found) if len(found)
                                         else "no token on this map"))
        st.plotly_chart(map_figure(vmap.embedding_, names, placed, colors, found, query), key="exp_map",
                        config={"scrollZoom": True})

if tab_graph.open:
    with tab_graph:
        c1, c2, c3 = st.columns(3)
        sizes = [n for n in (250, 500, 1000, 2000, 3000, 5000, 10000) if n < V] + [V]
        first = c1.select_slider("Tokens in the graph", sizes, min(3000, V), key="exp_graph_n",
                                 format_func=lambda n: f"all {n:,}" if n == V else f"{n:,}",
                                 help="The first N token ids (BPE merge order: roughly the most frequent), plus "
                                 "each virtual token's nearest tokens. All: the full tree, from the map's kNN.")
        attach = c2.slider("Links per virtual token", 1, 10, 3, key="exp_graph_attach")
        kg = c3.slider("kNN for the tree", 2, 30, 10, key="exp_graph_k", help="Used for a subsample; the full "
                       "vocabulary uses the map's cached 15-NN graph.")
        latest = {s.run_id: s for s, _ in placed}  # per run: its final adapter, else its latest checkpoint
        points = [prompt_points(s.label, vectors[s.label], vmap, k=attach) for s in latest.values()]
        nodes, edges = vocab_graph(vmap, names, points, first, kg)
        st.plotly_chart(graph_figure(nodes, edges, label_colors), key="exp_graph")
        st.caption(f"{(nodes['kind'] == 'anchor').sum():,} tokens, {len(edges):,} edges: the minimum spanning "
                   "tree of the cosine kNN graph (mean-centred), at the map's fixed positions; one prompt per run "
                   "(the final adapter; checkpoints are on the Map tab).")
        cols = st.columns(4)
        for i, (what, frame) in enumerate((("points", nodes), ("edges", edges))):
            for j, (fmt, mime) in enumerate((("CSV", "text/csv"), ("Parquet", "application/vnd.apache.parquet"))):
                cols[2 * j + i].download_button(  # the bytes are made only when clicked
                    f"{what.capitalize()} ({fmt})", lambda frame=frame, fmt=fmt: table_bytes(frame, fmt.lower()),
                    file_name=f"{model.rstrip('/').split('/')[-1]}-{what}.{fmt.lower()}", mime=mime,
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
