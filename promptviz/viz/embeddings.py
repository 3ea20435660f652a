"""Where class embeddings move: a shared 2-D projection of several stages of ``[C, d]`` points.

Prompt tuning changes each class's text feature: the hand-crafted ``t0``, the
learned ``t``, TextRefiner's refined ``t̂``. To *see* how far each class moved
and in which direction, all stages are projected with **one** PCA basis fitted on
all of their rows together — separate projections would each have their own
axes and the arrows between them would mean nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from promptviz.arrays import as_numpy

STAGE_COLOURS = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _pca(rows: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, top-``n`` components ``[n, d]`` and explained-variance ratios of ``rows``.

    Signs are fixed so each component's largest-magnitude entry is positive (SVD
    alone may flip a component between runs or machines); missing components
    (fewer rows or dimensions than ``n``) are zero.
    """
    mean = rows.mean(axis=0)
    x = rows - mean
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    comps = np.zeros((n, rows.shape[1]))
    ratio = np.zeros(n)
    m = min(n, vt.shape[0])
    comps[:m] = vt[:m]
    total = float((s ** 2).sum())
    if total > 0:
        ratio[:m] = s[:m] ** 2 / total
    for i in range(m):
        j = int(np.argmax(np.abs(comps[i])))
        if comps[i, j] < 0:
            comps[i] = -comps[i]
    return mean, comps, ratio


def _stack(arrays: Mapping[str, object], normalize: bool) -> tuple[dict[str, np.ndarray],
                                                                      np.ndarray]:
    mats = {k: np.atleast_2d(as_numpy(v, np.float64)) for k, v in arrays.items()}
    if normalize:
        mats = {k: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                for k, v in mats.items()}
    dims = {v.shape[1] for v in mats.values()}
    if len(dims) != 1:
        raise ValueError(f"all stages need the same feature width; got {sorted(dims)}")
    return mats, np.concatenate(list(mats.values()), axis=0)


def project_2d(arrays: Mapping[str, object], method: str = "pca",
               normalize: bool = False) -> dict[str, np.ndarray]:
    """Project every ``[n_i, d]`` array to ``[n_i, 2]`` with one shared basis.

    The PCA is fitted on all rows of all arrays at once, so the same point in
    different arrays lands at the same place. ``normalize=True`` first puts every
    row on the unit sphere (the cosine geometry CLIP scores with).
    """
    if method != "pca":
        raise ValueError(f"method={method!r}; only 'pca' is available")
    mats, rows = _stack(arrays, normalize)
    mean, comps, _ = _pca(rows)
    return {k: (v - mean) @ comps.T for k, v in mats.items()}


def embedding_shift(points: Mapping[str, object], classnames: Sequence[str],
                    title: str = "How prompt tuning moves the class embeddings",
                    arrows: Sequence[tuple[str, str]] = (("t0", "t"), ("t", "t̂")),
                    normalize: bool = False, label_stage: str | None = None,
                    size: int = 560) -> go.Figure:
    """Each class as one point per stage (``points[stage]`` is ``[C, d]``) in a shared PCA plane.

    One scatter trace per stage (its legend entry), an arrow per class for every
    ``(from, to)`` pair in ``arrows`` whose stages are both present, and the class
    names written next to ``label_stage`` (default: the last stage).
    """
    if not points:
        raise ValueError("points is empty: pass e.g. {'t0': t0, 't': t}")
    proj = project_2d(points, normalize=normalize)
    _, rows = _stack(points, normalize)
    _, _, ratio = _pca(rows)
    stages = list(proj)
    label_stage = label_stage or stages[-1]
    names = [str(c).replace("_", " ") for c in classnames]
    fig = go.Figure()
    for i, stage in enumerate(stages):
        xy = proj[stage]
        if len(xy) != len(names):
            raise ValueError(f"stage {stage!r} has {len(xy)} rows for {len(names)} classes")
        fig.add_trace(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], name=stage, customdata=names,
            mode="markers+text" if stage == label_stage else "markers",
            text=names if stage == label_stage else None, textposition="top center",
            marker=dict(size=10, color=STAGE_COLOURS[i % len(STAGE_COLOURS)],
                        line=dict(color="white", width=1)),
            hovertemplate=f"<b>%{{customdata}}</b><br>{stage}<extra></extra>"))
    for a, b in arrows:
        if a not in proj or b not in proj:
            continue
        for (x0, y0), (x1, y1) in zip(proj[a], proj[b]):
            fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x",
                               ayref="y", showarrow=True, arrowhead=2, arrowsize=1,
                               arrowwidth=1.2, arrowcolor="rgba(60,60,60,0.55)", text="")
    fig.update_layout(title=title, width=size + 120, height=size, template="simple_white",
                      legend=dict(title="stage"), margin=dict(l=50, r=20, t=50, b=50))
    fig.update_xaxes(title=f"PC1 ({100 * ratio[0]:.0f}% of variance)", zeroline=False)
    fig.update_yaxes(title=f"PC2 ({100 * ratio[1]:.0f}% of variance)", zeroline=False,
                     scaleanchor="x")
    return fig
