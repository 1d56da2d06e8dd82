"""Rendering of a stored comparison: metrics with CIs, paired tests, the side-by-side table, row details,
and the scores on format variants of the inputs."""
from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from workbench.charts import metric_figure, robustness_figure
from core.evaluate.compare import disagreeing, soft_loses, table_rows, to_csv, to_json
from core.evaluate.robustness import robustness_rows
from core.evaluate.metrics import token_f1
from core.evaluate.paired import focus_pair, pair_cell, pair_matrix, pair_row, pair_sentence, paired_metrics
from core.tasks import BUILTIN
from workbench.keep import at_most, keep_widgets

CHOICES = ["cmp_model", "cmp_task", "cmp_source", "cmp_pasted", "cmp_col_in", "cmp_col_ref", "cmp_n", "cmp_max_new",
           "cmp_temp", "cmp_top_p", "cmp_seed", "cmp_one_line", "cmp_format", "cmp_runs", "cmp_shots",
           "cmp_projected", "cmp_variants", "cmp_k", "cmp_play", "cmp_chart_metric", "cmp_pair_metric",
           "cmp_filter"] + [f"cmp_template_{t}" for t in BUILTIN]  # the Compare page's input widgets


def keep_choices() -> None:
    """Call first on the Compare page: its choices keep their values while another page is shown."""
    keep_widgets(CHOICES)


def count_key(most: int) -> str:
    """The key of the "How many" slider, its kept value lowered to `most` (its range follows the split)."""
    return at_most("cmp_n", most)


def summary_table(result: dict) -> pd.DataFrame:
    df = pd.DataFrame(result["summary"])
    df["value"] = df.apply(lambda r: f"{r['mean']:.3f} [{r['low']:.3f}, {r['high']:.3f}]", axis=1)
    return df.pivot(index="metric", columns="system", values="value")


def render_metrics(result: dict) -> None:
    if not result["summary"]:
        st.info("These inputs have no references: outputs only, no metrics.")
        return
    st.caption("Mean over inputs with a 95% bootstrap confidence interval. ref_loglik: the base model's mean "
               "log-probability per token of the reference under each prompt (higher is better).")
    st.dataframe(summary_table(result), width="stretch", key="cmp_summary")
    metrics = sorted({r["metric"] for r in result["summary"]})
    main = result["main_metric"] if result["main_metric"] in metrics else metrics[0]
    metric = st.selectbox("Chart metric", metrics, index=metrics.index(main), key="cmp_chart_metric")
    st.plotly_chart(metric_figure(result["summary"], metric), key="cmp_chart")
    render_paired(result)


def pair_table(rows: list[dict], names: list[str]) -> pd.DataFrame:
    """Rows A, columns B, each cell 'A - B [interval] p' (empty on the diagonal)."""
    cells = {(r["a"], r["b"]): pair_cell(r) for r in rows}
    return pd.DataFrame([[cells.get((a, b), "") for b in names] for a in names],
                        index=pd.Index(names, name="A \\ B"), columns=names)


@st.cache_data(show_spinner=False, max_entries=32)
def _pair_rows(key: str, metric: str, _result: dict) -> list[dict]:
    """pair_matrix, once per stored comparison (its key names its content) and metric: not on every rerun."""
    return pair_matrix(_result, metric)


def paired_summary(result: dict, metric: str, rows: list[dict] | None = None) -> tuple[pd.DataFrame, str | None]:
    """The pair table and the sentence on the pair that matters most (None with a single system)."""
    rows = pair_matrix(result, metric) if rows is None else rows
    names = [s["name"] for s in result["systems"]]
    focus = focus_pair(result, metric)
    return pair_table(rows, names), pair_sentence(pair_row(rows, *focus), metric) if focus else None


def render_paired(result: dict) -> None:
    metrics = paired_metrics(result)
    if not metrics or len(result["systems"]) < 2:
        return
    st.subheader("Paired tests")
    st.caption("Every system answered the same inputs, so each pair is compared example by example. Cell: mean "
               "difference row minus column, its 95% paired bootstrap interval and a two-sided p-value (McNemar "
               "exact for 0/1 metrics, approximate randomisation otherwise). bleu/chrf: sentence-level scores.")
    main = result["main_metric"] if result["main_metric"] in metrics else metrics[0]
    metric = st.selectbox("Paired test metric", metrics, index=metrics.index(main), key="cmp_pair_metric")
    table, sentence = paired_summary(result, metric, _pair_rows(result["key"], metric, result))
    st.dataframe(table, width="stretch", key="cmp_pairs")
    if sentence:
        st.markdown(sentence)


def _overlap_style(table: pd.DataFrame, names: list[str]):
    def shade(row):
        return [f"background-color: rgba(5, 150, 105, {0.5 * token_f1(str(row[c]), str(row['reference'])):.2f})"
                if c in names and row["reference"] else "" for c in row.index]
    return table.style.apply(shade, axis=1)


def render_rows(result: dict) -> None:
    names = [s["name"] for s in result["systems"]]
    table = pd.DataFrame(table_rows(result))
    view = st.radio("Rows", ["all", "systems disagree", "soft prompt loses"], horizontal=True, key="cmp_filter")
    keep = {"all": list(range(len(table))), "systems disagree": disagreeing(result),
            "soft prompt loses": soft_loses(result)}[view]
    shown = table.iloc[keep]
    st.caption(f"{len(shown)} of {len(table)} rows. Cell shade: word overlap with the reference (token F1).")
    st.dataframe(_overlap_style(shown, names), hide_index=True, width="stretch", key="cmp_rows")
    if len(shown):
        i = st.selectbox("Show a row in full", shown["#"].tolist(), key="cmp_row_pick")
        row = table.iloc[i]
        ref_words = set(re.findall(r"\w+", str(row["reference"]).lower()))
        with st.container(border=True):
            st.markdown(f"**Input**\n\n{row['input']}")
            st.markdown(f"**Reference**\n\n{row['reference'] or '(none)'}")
            for n in names:
                bolded = re.sub(r"\w+", lambda m: f"**{m.group(0)}**" if m.group(0).lower() in ref_words
                                else m.group(0), str(row[n]))
                st.markdown(f"**{n}**\n\n{bolded or '(empty)'}")
    c1, c2 = st.columns(2)
    c1.download_button("Export CSV", to_csv(result), file_name=f"comparison-{result['key']}.csv",
                       mime="text/csv", key="cmp_csv")
    c2.download_button("Export JSON", to_json(result), file_name=f"comparison-{result['key']}.json",
                       mime="application/json", key="cmp_json")


def render_robustness(result: dict) -> None:
    """Per system: the main metric on the original inputs and on each format variant, the spread
    over the variants (worst one named) as a table, and a box per system."""
    st.caption(f"{result['metric']} (mean over inputs) with the same systems and decoding on format variants "
               "of the inputs: the meaning is unchanged, only the layout. drop: original minus the worst variant.")
    table = pd.DataFrame(robustness_rows(result)).set_index("system")
    st.dataframe(table.style.format(precision=3, subset=[c for c in table.columns if c != "worst"]),
                 width="stretch", key="cmp_robust_table")
    st.plotly_chart(robustness_figure(result), key="cmp_robust_chart")
    st.dataframe(pd.DataFrame([{"variant": v, "what it does": d} for v, d in result["descriptions"].items()]),
                 hide_index=True, width="stretch", key="cmp_robust_variants")
