"""outline_patches: the same rectangles as one fig.add_shape per patch, in one layout update."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from promptviz.viz.patches import outline_patches


def _one_by_one(fig: go.Figure, patches, grid: int, size: int, row=None, col=None) -> None:
    p = size / grid
    kw = {"row": row, "col": col} if row is not None else {}
    for idx in patches:
        r, c = divmod(int(idx), grid)
        fig.add_shape(type="rect", x0=c * p - 0.5, x1=(c + 1) * p - 0.5, y0=r * p - 0.5,
                      y1=(r + 1) * p - 0.5, line=dict(color="#ff2d2d", width=2), **kw)


def test_outlines_match_add_shape_single_and_subplots():
    fig, ref = go.Figure(), go.Figure()
    outline_patches(fig, [0, 5, 63], 8, 64)
    _one_by_one(ref, [0, 5, 63], 8, 64)
    assert fig.to_json() == ref.to_json()
    assert fig.layout.shapes[1].x0 == 5 * 8 - 0.5 and fig.layout.shapes[2].y1 == 64 - 0.5

    fig, ref = make_subplots(rows=2, cols=3), make_subplots(rows=2, cols=3)
    for f, add in ((fig, outline_patches), (ref, _one_by_one)):
        add(f, [1, 2], 4, 32, 2, 3)
        add(f, [7], 4, 32, 1, 1)
    assert fig.to_json() == ref.to_json()
    assert [s.xref for s in fig.layout.shapes] == ["x6", "x6", "x"]


def test_outlines_many_patches_and_none():
    fig = go.Figure()
    outline_patches(fig, [], 8, 64)
    assert len(fig.layout.shapes) == 0
    outline_patches(fig, range(64), 8, 64)          # hundreds stay cheap: one update per call
    outline_patches(fig, range(64), 8, 64, color="#000", width=1)
    assert len(fig.layout.shapes) == 128 and fig.layout.shapes[-1].line.color == "#000"
