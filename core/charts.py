"""Plotly figures built from run files (no Streamlit: pages only display them)."""
from __future__ import annotations

import plotly.graph_objects as go


def loss_series(rows: list[dict]) -> dict[str, tuple[list, list]]:
    """(steps, values) for the training loss and the validation loss of one run's metrics.jsonl."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train" and "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("kind") == "eval" and "eval_loss" in r]
    return {"train": tuple(map(list, zip(*train))) or ([], []), "eval": tuple(map(list, zip(*evals))) or ([], [])}


def loss_figure(runs: dict[str, list[dict]], height: int = 320) -> go.Figure:
    """Training (lines) and validation (markers) loss for one or several runs, one colour per run."""
    fig = go.Figure()
    palette = ["#4F46E5", "#DC2626", "#059669", "#D97706", "#7C3AED", "#0891B2", "#DB2777", "#65A30D"]
    for i, (name, rows) in enumerate(runs.items()):
        color = palette[i % len(palette)]
        series = loss_series(rows)
        label = "" if len(runs) == 1 else f"{name} "
        fig.add_scatter(x=series["train"][0], y=series["train"][1], mode="lines", name=f"{label}train",
                        line=dict(color=color, width=1.5), opacity=0.6)
        fig.add_scatter(x=series["eval"][0], y=series["eval"][1], mode="lines+markers", name=f"{label}validation",
                        line=dict(color=color, width=2, dash="dot"), marker=dict(size=7))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="step",
                      yaxis_title="loss", legend=dict(orientation="h", y=1.12))
    return fig
