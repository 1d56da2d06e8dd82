"""Blind pairwise rating of a stored comparison: two outputs side by side, names hidden, random
order; votes saved with the comparison; the ranking they add up to."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.evaluate.ratings import load_votes, next_pair, rating_summary, record_vote

BUTTONS = [("A is better", "left", "A"), ("B is better", "right", "B"), ("Tie", "tie", "T"),
           ("Both bad", "both_bad", "X")]


def render_rating(result: dict) -> None:
    votes = load_votes(result["key"])
    pair = next_pair(result, votes)
    if pair is None:
        st.info("Blind rating needs at least two systems and one input.")
        return
    st.caption("Which answer is better? The systems are not named and their order is random. "
               "Keys: A, B, T (tie), X (both bad). Votes are saved with this comparison.")
    with st.container(border=True):
        st.markdown(f"**Input**\n\n{pair['input']}")
    left, right = st.columns(2)
    for col, name, text in ((left, "A", pair["left_output"]), (right, "B", pair["right_output"])):
        with col.container(border=True):
            st.markdown(f"**{name}**")
            st.text(text or "(empty)")
    for col, (label, choice, key) in zip(st.columns(4), BUTTONS):
        if col.button(label, key=f"rate_{choice}", shortcut=key, width="stretch"):
            record_vote(result["key"], pair["row"], pair["left"], pair["right"], choice)
            st.rerun()
    if not votes:
        return
    summary = rating_summary(votes, [s["name"] for s in result["systems"]])
    st.markdown(f"**Ranking** from {summary['votes']} votes (Bradley-Terry strength, 95% interval)")
    if summary["votes"] < 20:
        st.caption("Few votes yet: the intervals (votes resampled) mean little until there are a few dozen.")
    st.dataframe(pd.DataFrame(summary["ranking"]), hide_index=True, width="stretch", key="rate_ranking",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in ("strength", "low", "high")})
    if summary["pairs"]:
        st.dataframe(pd.DataFrame(summary["pairs"]), hide_index=True, width="stretch", key="rate_pairs")
    bias = summary["position_bias"]
    st.caption("Position bias: " + ("no decisive votes yet." if bias is None else
                                    f"the left-hand output won {bias:.0%} of decisive votes (50% = none)."))
