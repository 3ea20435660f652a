"""Result tables and accuracy charts from plain result dicts (``results.json`` rows)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

METRIC_NAMES = {"base_acc": "base", "new_acc": "novel", "hm": "HM", "acc": "accuracy"}


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return ""
    std = row.get(f"{key}_std")
    return f"{row[key]:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def results_table_html(rows: Sequence[dict], label: str = "method",
                       metrics: Sequence[str] = ("base_acc", "new_acc", "hm"),
                       caption: str = "") -> str:
    """An HTML table: one row per result dict, columns ``label`` then ``metrics``."""
    head = "".join(f"<th>{html.escape(METRIC_NAMES.get(m, m))}</th>" for m in metrics)
    body = "".join(
        f"<tr><td>{html.escape(str(r.get(label, '')))}</td>"
        + "".join(f"<td>{_cell(r, m)}</td>" for m in metrics) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f"<table>{cap}<thead><tr><th>{html.escape(label)}</th>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def accuracy_bars(rows: Sequence[dict], label: str = "method",
                  metrics: Sequence[str] = ("base_acc", "new_acc", "hm"),
                  title: str = "Accuracy (%)") -> go.Figure:
    """Grouped bars: one group per metric, one bar per row (error bars from ``*_std``)."""
    fig = go.Figure()
    for r in rows:
        ys = [r.get(m) for m in metrics]
        errs = [r.get(f"{m}_std") for m in metrics]
        fig.add_bar(name=str(r.get(label, "")), x=[METRIC_NAMES.get(m, m) for m in metrics], y=ys,
                    error_y=dict(type="data", array=errs, visible=any(e for e in errs)),
                    text=[f"{y:.1f}" if y is not None else "" for y in ys],
                    textposition="outside")
    fig.update_layout(title=title, barmode="group", yaxis=dict(range=[0, 105], title="%"),
                      template="plotly_white", height=420, margin=dict(t=60, b=40))
    return fig


def intervention_bars(tables: Mapping[str, Sequence[Mapping]],
                      title: str = "Accuracy change under each intervention (points)"
                      ) -> go.Figure:
    """Horizontal bars of ``delta`` per intervention, one colour per table (e.g. ``{"base":
    rows, "novel": rows}`` from :func:`promptviz.interventions.intervention_table`); the
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
