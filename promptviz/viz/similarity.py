"""Scores between images and texts: cosine-similarity and confusion heatmaps, and the
softmax probabilities CLIP's temperature turns them into.

Pure functions from plain arrays to plotly figures (as every view in :mod:`promptviz.viz`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from promptviz.arrays import as_numpy
from promptviz.viz.embeddings import STAGE_COLOURS


def _labels(names: Sequence[str]) -> list[str]:
    return [str(n).replace("_", " ") for n in names]


def similarity_heatmap(sim: object, rows: Sequence[str], cols: Sequence[str],
                       title: str = "Cosine similarity", fmt: str = ".2f",
                       colorscale: str = "RdBu_r", cell: int = 46,
                       mark_max: bool = False) -> go.Figure:
    """A ``[R, K]`` score matrix as an annotated heatmap (rows: e.g. images, columns:
    captions), the colour range centred on 0 so that positive and negative read apart.
    ``mark_max`` outlines each row's largest cell (the caption an image would pick)."""
    z = as_numpy(sim, np.float64)
    if z.shape != (len(rows), len(cols)):
        raise ValueError(f"sim is {z.shape}, labels give {(len(rows), len(cols))}")
    zmax = float(np.abs(z).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=_labels(cols), y=_labels(rows), colorscale=colorscale, zmin=-zmax, zmax=zmax,
        text=[[format(v, fmt) for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="%{y} · %{x}: %{z:.3f}<extra></extra>"))
    if mark_max:
        for i, j in enumerate(z.argmax(axis=1)):     # cells are centred on integer positions
            fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                          line=dict(color="black", width=3), fillcolor="rgba(0,0,0,0)",
                          opacity=1)
    longest = max((len(str(c)) for c in cols), default=0)
    top = 60 + int(4.5 * longest)                  # room for the title above slanted labels
    fig.update_layout(title=dict(text=title, y=0.99, yanchor="top"),
                      width=max(420, 160 + cell * len(cols)),
                      height=max(300, top + 90 + cell * len(rows)), template="simple_white",
                      margin=dict(l=10, r=10, t=top, b=10))
    fig.update_xaxes(side="top", tickangle=-30)
    fig.update_yaxes(autorange="reversed")
    return fig


def confusion_heatmap(cm: object, classnames: Sequence[str], title: str = "Confusion matrix",
                      normalize: bool = True, size: int = 560) -> go.Figure:
    """Rows = true class, columns = predicted class; ``normalize`` shows percent of each
    row (each true class's test images), otherwise raw counts."""
    counts = as_numpy(cm, np.float64)
    n = len(classnames)
    if counts.shape != (n, n):
        raise ValueError(f"cm is {counts.shape} for {n} classes")
    z = 100.0 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize \
        else counts
    names = _labels(classnames)
    unit = "%" if normalize else ""
    fig = go.Figure(go.Heatmap(
        z=z, x=names, y=names, colorscale="Blues", zmin=0,
        zmax=100.0 if normalize else float(z.max() or 1.0),
        colorbar=dict(title="% of row" if normalize else "count"),
        hovertemplate=f"true %{{y}} → predicted %{{x}}: %{{z:.1f}}{unit}<extra></extra>"))
    fig.update_layout(title=title, width=size + 140, height=size + 60, template="simple_white",
                      margin=dict(l=10, r=10, t=50, b=10))
    fig.update_xaxes(title="predicted", tickangle=-45)
    fig.update_yaxes(title="true", autorange="reversed")
    return fig


def probability_bars(probs: Mapping[str, object], labels: Sequence[str],
                     title: str = "Class probabilities") -> go.Figure:
    """Grouped bars: for every setting (``probs[name]`` is ``[K]``, e.g. the softmax at
    one temperature), the probability of each of the ``K`` ``labels``."""
    if not probs:
        raise ValueError("probs is empty: pass e.g. {'s = 1': p1, 's = 100': p100}")
    fig = go.Figure()
    for i, (name, p) in enumerate(probs.items()):
        y = as_numpy(p, np.float64).ravel()
        if len(y) != len(labels):
            raise ValueError(f"setting {name!r} has {len(y)} values for {len(labels)} labels")
        fig.add_bar(name=str(name), x=_labels(labels), y=y,
                    marker_color=STAGE_COLOURS[i % len(STAGE_COLOURS)],
                    hovertemplate="%{x}: %{y:.3f}<extra>" + str(name) + "</extra>")
    fig.update_layout(title=title, barmode="group", template="plotly_white", height=380,
                      yaxis=dict(range=[0, 1.02], title="probability"),
                      margin=dict(t=60, b=40))
    return fig
