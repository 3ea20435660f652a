"""Values over image patches: attention maps, selected tokens, cache-slot assignments.

Every function takes plain arrays — an ``[H, W, 3]`` uint8 image and a
``[g, g]`` (or flat ``[g·g]``) array of per-patch values — and returns a plotly
figure, so the same view works for toyclip (8×8 patches) and ViT-B/16 (14×14).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from promptviz.arrays import to_uint8_image


def _grid(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        g = int(round(len(v) ** 0.5))
        if g * g != len(v):
            raise ValueError(f"{len(v)} patch values do not form a square grid")
        v = v.reshape(g, g)
    return v


def _add_patch_view(fig: go.Figure, image: np.ndarray, values: np.ndarray | None,
                    highlight: Sequence[int] | None, row: int | None, col: int | None,
                    opacity: float, colorscale: str, zmax: float | None,
                    showscale: bool, grid: int | None = None) -> None:
    h, w = image.shape[:2]
    if values is None and highlight and grid is None:
        raise ValueError("outlining patches without values needs the patch grid size (grid=)")
    kw = {"row": row, "col": col} if row is not None else {}
    fig.add_trace(go.Image(z=image, hoverinfo="skip"), **kw)
    if values is not None:
        v = _grid(values)
        g = v.shape[0]
        p = h / g
        fig.add_trace(go.Heatmap(z=v, x0=p / 2 - 0.5, dx=p, y0=p / 2 - 0.5, dy=p,
                                 colorscale=colorscale, opacity=opacity, zmin=0,
                                 zmax=zmax if zmax is not None else float(v.max() or 1.0),
                                 showscale=showscale, hovertemplate="patch value %{z:.3f}"
                                 "<extra></extra>"), **kw)
    if highlight is not None and len(highlight):
        g = _grid(values).shape[0] if values is not None else grid
        outline_patches(fig, highlight, g, h, row, col)


def outline_patches(fig: go.Figure, patches: Sequence[int], grid: int, image_size: int,
                    row: int | None = None, col: int | None = None, color: str = "#ff2d2d",
                    width: float = 2) -> None:
    """Outline patches (flat row-major indices, 0 = top-left) of a ``grid × grid`` image.

    The rectangles go into the layout in one update: ``fig.add_shape`` once per patch
    is quadratic (plotly re-validates every shape already there), which made a
    gallery of a few hundred outlined patches take minutes.
    """
    ref = {}
    if row is not None:
        sub = fig.get_subplot(row, col)
        ref = {"xref": sub.xaxis.plotly_name.replace("axis", ""),
               "yref": sub.yaxis.plotly_name.replace("axis", "")}
    p = image_size / grid
    new = []
    for idx in patches:
        r, c = divmod(int(idx), grid)
        new.append(dict(type="rect", x0=c * p - 0.5, x1=(c + 1) * p - 0.5, y0=r * p - 0.5,
                        y1=(r + 1) * p - 0.5, line=dict(color=color, width=width), **ref))
    if new:
        fig.layout.shapes = (*fig.layout.shapes, *new)


def patch_overlay(image: np.ndarray, values: np.ndarray | None = None,
                  highlight: Sequence[int] | None = None, title: str = "",
                  opacity: float = 0.55, colorscale: str = "Viridis",
                  size: int = 320, grid: int | None = None) -> go.Figure:
    """An image with per-patch ``values`` as a translucent heatmap; ``highlight`` outlines
    patches by flat index (row-major, 0 = top-left patch; pass ``grid`` without values)."""
    image = to_uint8_image(image)
    fig = go.Figure()
    _add_patch_view(fig, image, values, highlight, None, None, opacity, colorscale, None, True,
                    grid)
    fig.update_layout(title=title, width=size + 80, height=size + 60,
                      margin=dict(l=10, r=10, t=40 if title else 10, b=10))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    return fig


def patch_grid(images: Sequence[np.ndarray], values: Sequence[np.ndarray] | None = None,
               highlights: Sequence[Sequence[int]] | None = None,
               titles: Sequence[str] | None = None, cols: int = 4, opacity: float = 0.55,
               colorscale: str = "Viridis", cell: int = 180, title: str = "") -> go.Figure:
    """Several :func:`patch_overlay` views side by side (one shared colour range)."""
    n = len(images)
    rows = (n + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles or [""] * n),
                        horizontal_spacing=0.02, vertical_spacing=0.08)
    zmax = max(float(np.max(v)) for v in values) if values is not None else None
    for i, image in enumerate(images):
        _add_patch_view(fig, to_uint8_image(image), None if values is None else values[i],
                        None if highlights is None else highlights[i], i // cols + 1,
                        i % cols + 1, opacity, colorscale, zmax, i == 0)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(title=title, width=cols * cell + 60, height=rows * (cell + 30) + 60,
                      margin=dict(l=10, r=10, t=60 if title else 30, b=10))
    return fig
