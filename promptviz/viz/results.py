"""Result tables and accuracy charts from plain result dicts (``results.json`` rows)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

METRIC_NAMES = {"base_acc": "base", "new_acc": "novel", "hm": "HM", "acc": "accuracy"}


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return ""
    std = row.get(f"{key}_std")
    return f"{row[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def results_table_html(rows: Sequence[dict], label: str = "method",
                       metrics: Sequence[str] = ("base_acc", "new_acc", "hm"),
                       caption: str = "", header: str | None = None) -> str:
    """An HTML table: one row per result dict, columns ``label`` then ``metrics``; the first
    column is headed ``header`` (default: ``"method"`` for a ``"label"`` key, else ``label``)."""
    header = header or ("method" if label == "label" else label)
    head = "".join(f"<th>{html.escape(METRIC_NAMES.get(m, m))}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{html.escape(str(r.get(label, '')))}</td>"
        + "".join(f"<td>{_cell(r, m)}</td>" for m in metrics) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f"<table>{cap}<thead><tr><th>{html.escape(header)}</th>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def accuracy_bars(rows: Sequence[dict], label: str = "method",
                  metrics: Sequence[str] = ("base_acc", "new_acc", "hm"),
                  title: str = "Accuracy (%)", y_range: tuple[float, float] | None = None,
                  values: bool | None = None) -> go.Figure:
    """Grouped bars: one group per metric, one bar per row in the rows' order (error bars
    from ``*_std``).

    The y axis starts 10 points below the lowest bar (rounded down to a multiple of 10),
    not at 0, so gaps of a few points stay visible; pass ``y_range`` to fix it. Each bar
    is labelled with its value when there are at most four bars per group (``values``
    forces it on or off); with more, the labels would overlap and the value is in the hover.
    """
    fig = go.Figure()
    shown = [r.get(m) for r in rows for m in metrics if r.get(m) is not None]
    if y_range is None:
        low = min(shown, default=0.0) - 10
        y_range = (max(0.0, 10 * (low // 10)), 105.0)
    if values is None:
        values = len(rows) <= 4
    for r in rows:
        ys = [r.get(m) for m in metrics]
        errs = [r.get(f"{m}_std") for m in metrics]
        fig.add_bar(name=str(r.get(label, "")), x=[METRIC_NAMES.get(m, m) for m in metrics], y=ys,
                    error_y=dict(type="data", array=errs, visible=any(e for e in errs)),
                    text=[f"{y:.1f}" if y is not None and values else "" for y in ys],
                    textposition="outside",
                    hovertemplate=f"{r.get(label, '')}<br>%{{x}}: %{{y:.1f}}<extra></extra>")
    fig.update_layout(title=title, barmode="group", yaxis=dict(range=list(y_range), title="%"),
                      template="plotly_white", height=420, margin=dict(t=60, b=40))
    return fig


def intervention_bars(tables: Mapping[str, Sequence[Mapping]],
                      title: str = "Accuracy change under each intervention (points)"
                      ) -> go.Figure:
    """Horizontal bars of ``delta`` per intervention, one colour per table (e.g. ``{"base":
    rows, "novel": rows}`` from :func:`promptviz.analysis.interventions.intervention_table`); the
    untouched row is left out, a line marks zero and each bar is labelled with its value."""
    fig = go.Figure()
    for name, rows in tables.items():
        shown = [r for r in rows if r["intervention"] != "none"]
        untouched = next((r["acc"] for r in rows if r["intervention"] == "none"), None)
        fig.add_bar(name=f"{name} (untouched {untouched:.1f})" if untouched is not None else name,
                    y=[r["intervention"] for r in shown], x=[r["delta"] for r in shown],
                    orientation="h", text=[f"{r['delta']:+.1f}" for r in shown],
                    textposition="outside", customdata=[r["acc"] for r in shown],
                    hovertemplate="%{y}: %{x:+.2f} points (accuracy %{customdata:.2f})"
                                  "<extra>" + name + "</extra>")
    n = max((sum(r["intervention"] != "none" for r in rows) for rows in tables.values()),
            default=1)
    fig.add_vline(x=0, line=dict(color="#444", width=1))
    fig.update_layout(title=dict(text=title, y=0.97), barmode="group", template="plotly_white",
                      height=140 + 38 * n * max(1, len(tables)), width=720,
                      xaxis=dict(title="accuracy change (points)", zeroline=False),
                      yaxis=dict(autorange="reversed"), margin=dict(l=10, r=30, t=60, b=40),
                      legend=dict(orientation="h", y=-0.18))
    return fig


CURVE_NAMES = {"loss": "training loss", "train_acc": "training accuracy (%)",
               "val_acc": "validation accuracy (%)"}


def learning_curves(histories: Mapping[str, Sequence[Mapping[str, float]]],
                    metrics: Sequence[str] = ("loss", "train_acc"),
                    title: str = "Learning curves") -> go.Figure:
    """One panel per metric, one line per run, over epochs: ``histories[label]`` is a run's
    ``results.json`` ``history`` (a dict per epoch). Runs without epochs (zero-shot) and
    metrics a run did not log are left out."""
    metrics = [m for m in metrics if any(m in h for hist in histories.values() for h in hist)]
    if not metrics:
        raise ValueError(f"no run logged any of {list(CURVE_NAMES)}: nothing to plot")
    fig = make_subplots(rows=1, cols=len(metrics), horizontal_spacing=0.12,
                        subplot_titles=[CURVE_NAMES.get(m, m) for m in metrics])
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    shown = [(name, hist) for name, hist in histories.items() if hist]
    for i, (name, hist) in enumerate(shown):
        for j, m in enumerate(metrics):
            points = [(h["epoch"], h[m]) for h in hist if m in h]
            fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=name,
                            mode="lines+markers" if len(points) < 15 else "lines",
                            line=dict(color=palette[i % len(palette)]), legendgroup=name,
                            showlegend=j == 0, row=1, col=j + 1,
                            hovertemplate=f"{name}<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>")
            fig.update_xaxes(title_text="epoch", row=1, col=j + 1)
    fig.update_layout(title=title, template="plotly_white", height=360,
                      width=max(520, 380 * len(metrics)), margin=dict(t=80, b=40),
                      legend=dict(orientation="h", y=-0.22))
    return fig
