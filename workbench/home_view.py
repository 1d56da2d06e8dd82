"""The Home page's guided start: the three steps as links, and one button that trains the sentiment
default, shows it pass the best hard prompt live (core/evaluate/beat.py), then opens the comparison."""
from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.config import TuneConfig
from core.errors import WorkbenchError
from core.store import jobs
from core.store.runs import Run, RunState
from workbench.links import PAGES_DIR, page_link
from workbench.run_view import POLL_SECONDS, summarise

QUICK_TASK = "sentiment"
RUN_KEY = "home_quick_run"  # the guided run's id, for this browser session
OPENED_KEY = "home_quick_opened"  # False: finished, the comparison opens at the next poll; True: opened


def quickstart_config() -> TuneConfig:
    """The run the button starts: the sentiment task's tuned defaults (core/tasks.py)."""
    return TuneConfig.for_task(task=QUICK_TASK)


def three_steps() -> None:
    c1, c2, c3 = st.columns(3)
    page_link("tune", "1. Tune: train a soft prompt on a built-in task or your own file", ":material/model_training:", c1)
    page_link("compare", "2. Compare: its answers beside the hard prompts' on the same inputs", ":material/compare:", c2)
    page_link("explore", "3. Explore: where its vectors sit among the vocabulary", ":material/scatter_plot:", c3)


def guided_start() -> None:
    """The button, then the guided run's live view until it opens the comparison."""
    cfg = quickstart_config()
    if st.button(f"Train a soft prompt for {QUICK_TASK} and compare it", type="primary", key="home_quickstart",
                 icon=":material/play_arrow:",
                 help=f"Starts a run with the {QUICK_TASK} task's tuned defaults ({cfg.max_steps} steps; about a "
                      "minute on a laptop's CPU), shows when it passes the best hand-written prompt, then opens the "
                      "Compare page with it picked."):
        try:
            run = jobs.submit(cfg, queue=False)
        except WorkbenchError as e:
            st.error(str(e))
            return
        st.session_state[RUN_KEY] = run.id
        st.session_state.pop(OPENED_KEY, None)
        st.session_state.setdefault("watching", []).insert(0, run.id)  # the Tune page lists it too
    if st.session_state.get(RUN_KEY):
        with st.container(border=True):
            guided_run(st.session_state[RUN_KEY])


@st.fragment(run_every=POLL_SECONDS)
def guided_run(run_id: str) -> None:
    run = summarise(run_id, key_prefix=f"home_{run_id}")
    if run is None or run.status().get("state") != RunState.COMPLETED:
        return
    if OPENED_KEY not in st.session_state:  # just finished: its result stays in view for one more poll
        st.session_state[OPENED_KEY] = False
        st.caption("Done: opening the comparison…")
        return
    if st.button("Open the comparison", type="primary", key="home_open_compare", icon=":material/compare:") or \
            not st.session_state[OPENED_KEY]:
        open_comparison(run)


def open_comparison(run: Run) -> None:
    """The Compare page with this run picked, on its task's test split."""
    st.session_state[OPENED_KEY] = True
    cfg = run.config()
    st.session_state.update(cmp_model=cfg.model, cmp_task=cfg.task, cmp_runs=[run.id], cmp_source="test split")
    try:
        st.switch_page(str(PAGES_DIR / "compare.py"))
    except StreamlitAPIException:  # a page run on its own (AppTest) has no navigation to switch into
        st.success(f"Run {run.id} is picked on the Compare page.")
