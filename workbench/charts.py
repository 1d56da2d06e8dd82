"""Plotly figures built from run files (no Streamlit: pages only display them)."""
from __future__ import annotations

import plotly.graph_objects as go

PALETTE = ["#4F46E5", "#DC2626", "#059669", "#D97706", "#7C3AED", "#0891B2", "#DB2777", "#65A30D"]


def loss_series(rows: list[dict]) -> dict[str, tuple[list, list]]:
    """(steps, values) for the training loss and the validation loss of one run's metrics.jsonl."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train" and "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("kind") == "eval" and "eval_loss" in r]
    return {"train": tuple(map(list, zip(*train))) or ([], []), "eval": tuple(map(list, zip(*evals))) or ([], [])}


def loss_figure(runs: dict[str, list[dict]], height: int = 320) -> go.Figure:
    """Training (lines) and validation (markers) loss for one or several runs, one colour per run."""
    fig = go.Figure()
    for i, (name, rows) in enumerate(runs.items()):
        color = PALETTE[i % len(PALETTE)]
        series = loss_series(rows)
        label = "" if len(runs) == 1 else f"{name} "
        fig.add_scatter(x=series["train"][0], y=series["train"][1], mode="lines", name=f"{label}train",
                        line=dict(color=color, width=1.5), opacity=0.6)
        fig.add_scatter(x=series["eval"][0], y=series["eval"][1], mode="lines+markers", name=f"{label}validation",
                        line=dict(color=color, width=2, dash="dot"), marker=dict(size=7))
    return _layout(fig, height, "step", "loss")


def _layout(fig: go.Figure, height: int, x: str, y: str) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), xaxis_title=x,
                      yaxis_title=y, legend=dict(orientation="h", y=1.12))
    return fig


def sweep_figure(rows: list[dict], height: int = 360) -> go.Figure:
    """Best validation loss (y) against prompt length (x) for a sweep's trials, one line per learning rate.

    rows: `Sweep.results()`; pruned trials are drawn as crosses (their best loss before the stop),
    pending and failed ones are left out.
    """
    fig = go.Figure()
    for i, lr in enumerate(sorted({r["learning_rate"] for r in rows})):
        pts = sorted((r for r in rows if r["learning_rate"] == lr and r.get("eval_loss") is not None),
                     key=lambda r: r["num_virtual_tokens"])
        pruned = [r["state"] == "pruned" for r in pts]
        states = [r["state"] + (f" at step {r['pruned_step']}" if p else "") for r, p in zip(pts, pruned)]
        fig.add_scatter(x=[r["num_virtual_tokens"] for r in pts], y=[r["eval_loss"] for r in pts],
                        mode="lines+markers", name=f"lr {lr:g}", line=dict(color=PALETTE[i % len(PALETTE)], width=2),
                        marker=dict(size=[12 if p else 8 for p in pruned],
                                    symbol=["x" if p else "circle" for p in pruned]),
                        customdata=states,
                        hovertemplate="%{x} tokens: %{y:.4f} (%{customdata})<extra>lr " + f"{lr:g}</extra>")
    if any(r["state"] == "pruned" for r in rows):  # a legend entry for the crosses
        fig.add_scatter(x=[None], y=[None], mode="markers", name="pruned", marker=dict(symbol="x", color="gray"))
    tokens = sorted({r["num_virtual_tokens"] for r in rows})
    fig.update_xaxes(tickvals=tokens, type="log" if tokens and tokens[-1] >= 8 * tokens[0] else "linear")
    return _layout(fig, height, "prompt length (virtual tokens)", "best validation loss")


def metric_figure(summary: list[dict], metric: str, height: int = 360) -> go.Figure:
    """One bar per system for `metric`, with its bootstrap confidence interval as error bars."""
    rows = [r for r in summary if r["metric"] == metric]
    fig = go.Figure(go.Bar(
        x=[r["system"] for r in rows], y=[r["mean"] for r in rows],
        marker_color=[PALETTE[0] if r["system"].startswith("soft:") else "#9CA3AF" for r in rows],
        error_y=dict(type="data", symmetric=False, array=[r["high"] - r["mean"] for r in rows],
                     arrayminus=[r["mean"] - r["low"] for r in rows]),
        hovertemplate="%{x}: %{y:.4f}<extra></extra>"))
    return _layout(fig, height, "system", metric)


def report_figure(report: dict, value: str = "metric", height: int = 380) -> go.Figure:
    """A length x init report: `value` (the validation metric, or "eval_loss") against prompt
    length, one line per init strategy; the metric's bootstrap CI as error bars."""
    fig = go.Figure()
    for i, init in enumerate(report["inits"]):
        pts = sorted((p for p in report["points"] if p["init"] == init and p.get(value) is not None),
                     key=lambda p: p["num_virtual_tokens"])
        if not pts:
            continue
        bars = dict(type="data", symmetric=False, array=[p["high"] - p["metric"] for p in pts],
                    arrayminus=[p["metric"] - p["low"] for p in pts], thickness=1) if value == "metric" else None
        fig.add_scatter(x=[p["num_virtual_tokens"] for p in pts], y=[p[value] for p in pts], mode="lines+markers",
                        name=init, line=dict(color=PALETTE[i % len(PALETTE)], width=2), marker=dict(size=8),
                        error_y=bars, customdata=[p["run_id"] for p in pts],
                        hovertemplate="%{x} tokens: %{y:.3f}<extra>" + init + " · %{customdata}</extra>")
    lengths = sorted(set(report["lengths"]))
    fig.update_xaxes(tickvals=lengths, type="log" if lengths and lengths[-1] >= 8 * lengths[0] else "linear")
    label = f"validation {report['metric']}" if value == "metric" else "best validation loss"
    return _layout(fig, height, "prompt length (virtual tokens)", label)


def robustness_figure(result: dict, height: int = 380) -> go.Figure:
    """One box per system over its score on each format variant (every variant a labelled point),
    the score on the original inputs as a diamond: a wide box or a low point is a fragile prompt.

    result: `core.evaluate.robustness.run_robustness`."""
    fig = go.Figure()
    shown = [v for v in result["variants"] if v != "original"]
    for i, (name, r) in enumerate(result["systems"].items()):
        color = PALETTE[0] if name.startswith("soft:") else PALETTE[1 + i % (len(PALETTE) - 1)]
        fig.add_box(x=[name] * len(shown), y=[r["scores"][v] for v in shown], name=name, boxpoints="all",
                    jitter=0.4, pointpos=0, marker=dict(color=color, size=8), line=dict(color=color),
                    customdata=shown, hovertemplate="%{customdata}: %{y:.3f}<extra>" + name + "</extra>",
                    showlegend=False)
        if "original" in r["scores"]:
            fig.add_scatter(x=[name], y=[r["scores"]["original"]], mode="markers", name="original inputs",
                            marker=dict(symbol="diamond", size=12, color="black"), legendgroup="original",
                            showlegend=i == 0, hovertemplate="original: %{y:.3f}<extra>" + name + "</extra>")
    return _layout(fig, height, "system", f"{result['metric']} per format variant")
