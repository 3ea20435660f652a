"""Views of deep prompts (IVLP, MaPLe, PromptSRC) from plain numbers: how far each block's
prompts moved in training, per tower, PromptSRC's epoch weights, and where PromptKD's student
and teacher agree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go


def prompt_shift(shift: Mapping[str, Sequence[float]], title: str = "How far training moved "
                 "each block's prompts") -> go.Figure:
    """Grouped bars, one group per prompted block, one bar per series in ``shift`` (e.g.
    ``{"MaPLe text": [...], "MaPLe vision": [...]}``): a number per block, such as the
    relative change ``‖P_trained − P_start‖ / ‖P_start‖`` of that block's prompt tokens."""
    fig = go.Figure()
    for name, values in shift.items():
        fig.add_bar(name=name, x=[f"block {i}" for i in range(len(values))], y=list(values),
                    hovertemplate=f"{name}<br>%{{x}}: %{{y:.3f}}<extra></extra>")
    fig.update_layout(title=title, barmode="group", yaxis_title="relative change",
                      template="plotly_white", height=360, legend=dict(orientation="h", y=-0.2))
    return fig


def epoch_weights(weights: Sequence[float], title: str = "GPA: each epoch's weight in the "
                  "final prompts") -> go.Figure:
    """Bars of the weight each training epoch (1-based) gets in PromptSRC's aggregate."""
    fig = go.Figure(go.Bar(x=list(range(1, len(weights) + 1)), y=list(weights),
                           hovertemplate="epoch %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="epoch", yaxis_title="weight",
                      template="plotly_white", height=320)
    return fig


def teacher_student(teacher: Sequence[int], student: Sequence[int], labels: Sequence[int],
                    classnames: Sequence[str], n_base: int = 0,
                    title: str = "Teacher's prediction against the student's") -> go.Figure:
    """Counts of (teacher's class, student's class) over the images, one cell per pair, the
    diagonal where they agree; the hover says how many of a cell's images are right. A line
    after the first ``n_base`` classes separates base from novel."""
    c = len(classnames)
    t, s, y = (np.asarray(v, dtype=int) for v in (teacher, student, labels))
    counts, right = np.zeros((c, c), dtype=int), np.zeros((c, c), dtype=int)
    np.add.at(counts, (t, s), 1)
    np.add.at(right, (t, s), (s == y).astype(int))
    names = list(classnames)
    fig = go.Figure(go.Heatmap(
        z=counts, x=names, y=names, colorscale="Blues", customdata=right,
        hovertemplate="teacher: %{y}<br>student: %{x}<br>%{z} images, %{customdata} right"
                      "<extra></extra>"))
    if 0 < n_base < c:
        for kind in ("x", "y"):
            fig.add_shape(type="line", xref="x" if kind == "x" else "paper",
                          yref="paper" if kind == "x" else "y",
                          x0=n_base - 0.5 if kind == "x" else 0,
                          x1=n_base - 0.5 if kind == "x" else 1,
                          y0=0 if kind == "x" else n_base - 0.5,
                          y1=1 if kind == "x" else n_base - 0.5,
                          line=dict(color="#d62728", width=1, dash="dot"))
    agree = float((t == s).mean()) if len(t) else 0.0
    fig.update_layout(title=f"{title} (agree on {100 * agree:.1f} %)",
                      xaxis_title="student", yaxis_title="teacher", template="plotly_white",
                      height=420, yaxis=dict(autorange="reversed"))
    return fig
