"""A page's settings survive a visit to another page.

Streamlit drops the state of every widget that a run does not draw: after a run of another page, or
of the same page while a choice hides the widget, it comes back at its default. keep_widgets keeps a
copy of each value under a key no widget owns, and puts it back before the widget is drawn again.
"""
from __future__ import annotations

import streamlit as st

COPY = "kept::"  # prefix of the copies; no widget key starts with it


def keep_widgets(keys) -> None:
    """Call at the top of a page, before its widgets, with the keys of the input widgets it draws
    (never buttons, file uploaders or download buttons: Streamlit does not let a script set those)."""
    state = st.session_state
    for k in keys:
        if k in state:  # written back, so that it also outlives a run of this page that hides it
            state[k] = state[COPY + k] = state[k]
        elif COPY + k in state:
            state[k] = state[COPY + k]


def at_most(k: str, most) -> str:
    """`k`, a slider's key, after a kept value above `most` (its range follows the data) is lowered to it."""
    if st.session_state.get(k, most) > most:
        st.session_state[k] = most
    return k
