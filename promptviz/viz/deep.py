"""Views of deep prompts (IVLP, MaPLe, PromptSRC) from plain numbers: how far each block's
prompts moved in training, per tower, and PromptSRC's epoch weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
