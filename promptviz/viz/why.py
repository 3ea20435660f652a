"""Why this prediction? The top classes of several methods on one image side by side, and
the patches each looked at.

Functions of plain arrays (:class:`promptviz.analysis.why.Why` holds them for a batch); the
confusion matrices are :func:`promptviz.viz.similarity.confusion_heatmap`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from promptviz.arrays import as_numpy, to_uint8_image
from promptviz.viz.patches import outline_patches, patch_grid

RIGHT, WRONG, OTHER = "#2e7d32", "#c62828", "#b0b7c3"


def _name(c: str) -> str:
    return str(c).replace("_", " ")


def top_classes(logits: Mapping[str, object], classnames: Sequence[str],
                true: str | None = None, k: int = 5, title: str = "") -> go.Figure:
    """One panel per method: its ``k`` highest-scoring classes and their logits as dots
    (``logits[method]`` is ``[C]`` over ``classnames``; the axis spans just those values,
    so close scores read apart), the true class in green, a wrong top-1 in red; the panel
    title says whether the method got it and the softmax probability of its pick."""
    if not logits:
        raise ValueError("top_classes needs the logits of at least one method")
    names = list(logits)
    k = min(k, len(classnames))
    scores = {}
    for n in names:
        scores[n] = as_numpy(logits[n], np.float64).ravel()
        if len(scores[n]) != len(classnames):
            raise ValueError(f"{n}: {len(scores[n])} logits for {len(classnames)} classes")
    label_px = int(6.5 * max(len(str(c)) for c in classnames)) + 16   # room for class names
    panel_px = 160
    width = len(names) * (panel_px + label_px) + 20
    heads = []
    for n in names:
        z = scores[n]
        p = np.exp(z - z.max())
        top = int(z.argmax())
        mark = "" if true is None else (" ✓" if classnames[top] == true else " ✗")
        heads.append(f"{n}{mark}<br><sub>p = {p[top] / p.sum():.2f}</sub>")
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=heads,
                        horizontal_spacing=label_px / width if len(names) > 1 else 0.0)
    for i, n in enumerate(names):
        z = scores[n]
        order = np.argsort(-z, kind="stable")[:k]
        colours = [RIGHT if classnames[j] == true else WRONG if r == 0 and true is not None
                   else OTHER for r, j in enumerate(order)]
        fig.add_trace(go.Scatter(x=z[order], y=[_name(classnames[j]) for j in order],
                                 mode="markers+text", marker=dict(color=colours, size=13),
                                 text=[f"{v:.2f}" for v in z[order]], textposition="top center",
                                 showlegend=False, cliponaxis=False,
                                 hovertemplate="%{y}: logit %{x:.3f}<extra>" + n + "</extra>"),
                      row=1, col=i + 1)
        lo, hi = float(z[order].min()), float(z[order].max())
        pad = 0.15 * (hi - lo) + 0.05
        fig.update_yaxes(autorange="reversed", row=1, col=i + 1)
        fig.update_xaxes(title="logit", range=[lo - pad, hi + pad], showgrid=True,
                         row=1, col=i + 1)
    fig.update_layout(title=dict(text=title or (f"top {k} classes" + (
                          f" (true: {_name(true)})" if true else "")), y=0.98, yanchor="top"),
                      width=max(420, width), height=220 + 34 * k, template="simple_white",
                      margin=dict(l=label_px, r=20, t=120, b=40))
    return fig


def looked_at_figure(image: np.ndarray, heat: Mapping[str, object],
                     marked: Mapping[str, Sequence[int]], looked: Mapping[str, str] | None = None,
                     title: str = "", cell: int = 200) -> go.Figure:
    """One panel per method: ``image`` under its patch map ``heat[method]`` (flat
    ``[g²]``, scaled to its own maximum so maps of different kinds share one colour bar)
    with ``marked[method]`` patches outlined; ``looked[method]`` names the map."""
    names = list(heat)
    if not names:
        raise ValueError("looked_at_figure needs the patch map of at least one method")
    image = to_uint8_image(image)
    values = []
    for n in names:
        v = as_numpy(heat[n], np.float64).ravel()
        v = v - min(0.0, float(v.min()))                     # energies may be negative
        values.append(v / (float(v.max()) or 1.0))
    titles = [f"{n}<br><sub>{(looked or {}).get(n, '')}</sub>" for n in names]
    fig = patch_grid([image] * len(names), values=values, titles=titles, cols=len(names),
                     cell=cell,
                     title=title or "where each method looked (each map scaled to its maximum)")
    g = int(round(len(values[0]) ** 0.5))
    for i, n in enumerate(names):               # dark under light: visible on any colour
        for colour, width in (("#111111", 4), ("white", 1.5)):
            outline_patches(fig, list(marked[n]), g, image.shape[0], 1, i + 1, colour, width)
    fig.update_layout(margin=dict(l=10, r=10, t=110, b=10), height=cell + 150)
    return fig
