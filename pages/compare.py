"""Compare: the same inputs through soft prompts, hard prompts and the bare model, side by side."""
import streamlit as st

from core.evaluate.compare import CompareSpec, hard_systems, run_comparison, soft_system, stored
from core.evaluate.robustness import run_robustness
from core.generate.variants import TRANSFORMS
from core.generate.generator import Decoding
from core.model.loading import DEFAULT_MODEL, model_is_seq2seq
from core.errors import WorkbenchError
from core.store.runs import FINISHED, list_runs, newest_finished
from core.tasks import BUILTIN, guess_columns, load_records, load_task, peek, save_upload
from workbench.compare_view import count_key, keep_choices, render_metrics, render_robustness, render_rows
from workbench.meaning_view import PROJECTED_HELP, projected_systems
from workbench.rating_view import render_rating
from workbench.state import generator, sentence_embedder

st.title("Compare soft and hard prompts")
keep_choices()
all_runs = list_runs()


def follow_context() -> None:
    """A selection follows the context it was made for: a new task or model picks its own run."""
    st.session_state.cmp_runs = newest_finished(all_runs, st.session_state.cmp_model, st.session_state.cmp_task)


with st.sidebar:
    model = st.selectbox("Model", sorted({DEFAULT_MODEL} | {r["model"] for r in all_runs if r["model"]}),
                         key="cmp_model", on_change=follow_context,
                         help="Soft prompts are listed for the runs trained on this model.")
    st.header("Inputs")
    task = load_task(st.selectbox("Task", list(BUILTIN), key="cmp_task", on_change=follow_context,
                                  help="Switching the task selects its newest trained run as the soft prompt."))
    source = st.radio("Inputs from", ["test split", "validation split", "pasted text", "a file"], key="cmp_source")
    if source == "pasted text":
        lines = st.text_area("One input per line", key="cmp_pasted", height=150).splitlines()
        inputs = [{"input": x.strip(), "target": ""} for x in lines if x.strip()]
    elif source == "a file":
        upload = st.file_uploader("CSV, JSONL or Parquet", type=["csv", "jsonl", "json", "parquet"], key="cmp_upload")
        inputs = []
        if upload is not None:
            try:
                path = save_upload(upload.name, upload.getvalue())
                columns, head = peek(path)
                guess_in, guess_ref = guess_columns(columns)
                col_in = st.selectbox("Input column", columns, key="cmp_col_in", index=columns.index(guess_in))
                col_ref = st.selectbox("Reference column", columns, key="cmp_col_ref",
                                       index=columns.index(guess_ref))
                st.dataframe(head, hide_index=True, key="cmp_upload_preview")
                if col_in == col_ref:
                    st.error("Reference column: the same column as the input, so every metric would score the "
                             "input against itself. Pick the column with the expected output.")
                else:
                    inputs = load_records(path, col_in, col_ref)
            except WorkbenchError as e:
                st.error(str(e))
    else:
        split = task.split(source.split()[0])
        n = st.slider("How many", 1, len(split), min(24, len(split)), key=count_key(len(split)))
        inputs = split[:n]
    st.header("Decoding")
    max_new = st.number_input("Max new tokens", 1, 256, 48, key="cmp_max_new")
    temperature = st.slider("Temperature (0 = greedy)", 0.0, 2.0, 0.0, 0.05, key="cmp_temp")
    top_p = st.slider("Top-p", 0.05, 1.0, 1.0, 0.05, key="cmp_top_p", disabled=temperature == 0)
    seed = st.number_input("Seed", 0, 2**31 - 1, 0, key="cmp_seed")
    one_line = st.checkbox("Stop at the first line break", key="cmp_one_line",
                           value=bool(inputs) and not any("\n" in x.get("target", "").strip() for x in inputs),
                           help="Each output ends at its first line break after some text, for every system alike. "
                                "On by default when no reference spans several lines (all built-in tasks): "
                                "few-shot prompts otherwise run on into the next made-up example.")
    prompt_format = "plain" if model_is_seq2seq(model) else st.radio(  # an encoder-decoder model has no chat
        "Hard prompt format", ["chat", "plain"], horizontal=True, key="cmp_format")

runs = {r["id"]: r for r in all_runs if r["model"] == model and r["state"] in FINISHED}
kept = st.session_state.get("cmp_runs", newest_finished(all_runs, model, task.spec.name))
st.session_state["cmp_runs"] = [r for r in kept if r in runs]  # deleted runs drop out
st.subheader("Systems")
c1, c2 = st.columns(2)
picked = c1.multiselect("Soft prompts (trained runs)", list(runs), key="cmp_runs",
                        format_func=lambda r: r if runs[r]["task"] == task.spec.name
                        else f"{r} (trained on {runs[r]['task']})",
                        help="The task's newest run is picked for you; runs of other tasks are marked.")
if other := [r for r in picked if runs[r]["task"] != task.spec.name]:
    c1.warning(f"{', '.join(other)} was trained on another task; it is compared on {task.spec.name} inputs as is.")
shots = c2.slider("Few-shot examples (0 = none)", 0, 8, 3, key="cmp_shots")
projected = c1.checkbox("Also each run's projected prompt", key="cmp_projected", help=PROJECTED_HELP)
template = st.text_area("Hard prompt template (edit to add a second hard prompt)", task.spec.hard_prompt,
                        key=f"cmp_template_{task.spec.name}", height=90)
decoding = Decoding(int(max_new), float(temperature), float(top_p), int(seed), bool(one_line))
try:
    systems = [soft_system(r, model) for r in picked] + (projected_systems(model, picked) if projected else []) \
        + hard_systems(task, prompt_format, shots, template)
except WorkbenchError as e:
    st.error(str(e))
    st.stop()
if not picked:
    st.info("No soft prompt picked: train one on the Tune page to see what it buys over the hard prompts.")
spec = CompareSpec(inputs, systems, decoding, task.spec.kind, task.spec.labels, task.spec.main_metric)
c3, c4 = st.columns(2)
robust = c3.checkbox("also on format variants", key="cmp_variants",
                     help="Run every system again on copies of the inputs with the same meaning but another "
                          "layout (line breaks, field names, casing, spacing, quotes, a preface): a prompt that "
                          "leans on the exact format of its training data drops here.")
k = c4.slider("Format variants", 1, len(TRANSFORMS), 3, key="cmp_k", disabled=not robust,
              help="How many transforms, besides a mixed 'shifted' copy (one random transform per input).")

if st.button("Compare", type="primary", key="cmp_go"):
    st.session_state["cmp_robust"] = None
    bar = st.progress(0.0, text="starting…")
    try:
        embedder = sentence_embedder() if all(x["target"] for x in inputs) else None
        result = run_comparison(generator(model), spec, model, embedder,
                                progress=lambda f, msg: bar.progress(f, text=msg))
        st.session_state["cmp_key"] = result["key"]
        if robust:
            st.session_state["cmp_robust"] = run_robustness(generator(model), spec, model, int(k),
                                                            progress=lambda f, msg: bar.progress(f, text=msg))
    except WorkbenchError as e:
        st.error(str(e))
    bar.empty()

result = stored(st.session_state["cmp_key"]) if st.session_state.get("cmp_key") else None
if result:
    st.caption(f"{len(result['inputs'])} inputs × {len(result['systems'])} systems, "
               f"generated in {result['seconds']:.1f} s · same decoding for every system: {result['decoding']}")
    robustness = st.session_state.get("cmp_robust")
    robustness = robustness if robustness and robustness["keys"]["original"] == result["key"] else None
    tabs = st.tabs(["Metrics", "Outputs", "Blind rating"] + (["Robustness"] if robustness else []),
                   key="cmp_tabs", on_change="rerun")  # the open tab stays open after a vote
    with tabs[0]:
        render_metrics(result)
    with tabs[1]:
        render_rows(result)
    with tabs[2]:
        render_rating(result)
    if robustness:
        with tabs[3]:
            render_robustness(robustness)

st.subheader("Playground")
text = st.text_input("Type one input: every system above answers it", key="cmp_play")
if text:
    try:
        outs = generator(model).generate([(s, text) for s in systems], decoding)
    except WorkbenchError as e:
        st.error(str(e))
        st.stop()
    for s, out in zip(systems, outs):
        st.markdown(f"**{s.name}**: {out or '(empty)'}")
