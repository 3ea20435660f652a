"""TextRefiner's local cache, made visible.

TextRefiner keeps ``M`` cache slots in the joint embedding space. Image patch
tokens are *written* into their nearest slot; class text features *read* a
softmax-weighted mix of slots. These views answer three questions:

* which slots does each class read? — :func:`read_weights_heatmap`;
* what is in a slot? — :func:`cache_gallery` (the patches written to it, the
  classes that read it, the words nearest to it, from :func:`slot_words`);
* which patches feed the local loss? — :func:`topk_patches_figure`.

Inputs are plain arrays, e.g. from ``m.read_weights()`` and ``m.local_tokens(images)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from promptviz.arrays import as_numpy, to_uint8_image
from promptviz.viz.patches import outline_patches, patch_overlay

OUTLINE = "#ff2d2d"


def _names(classnames: Sequence[str]) -> list[str]:
    return [str(c).replace("_", " ") for c in classnames]


def add_outlines(fig: go.Figure, patches: Sequence[int], grid: int, image_size: int,
                 row: int | None = None, col: int | None = None, color: str = OUTLINE,
                 width: float = 2) -> None:
    """Outline patches (flat row-major indices, 0 = top-left) of a ``grid × grid`` image."""
    outline_patches(fig, patches, grid, image_size, row, col, color, width)


def read_weights_heatmap(weights: object, classnames: Sequence[str],
                         title: str = "How each class reads the cache (softmax over slots)",
                         cell: int = 22, zmid: float | None = None,
                         zmax: float | None = None) -> go.Figure:
    """Classes × slots heatmap of ``read_weights()`` ``[C, M]`` (each row sums to 1).

    By default a sequential scale from 0. Given ``zmid`` (e.g. the uniform weight ``1/M``),
    a diverging scale centred there, from ``2·zmid − zmax`` to ``zmax``; ``zmax`` defaults to
    ``zmid`` plus this matrix's largest ``|w − zmid|``. Pass the same ``zmid`` and ``zmax``
    to two heatmaps to compare them on one colour scale."""
    w = as_numpy(weights, np.float64)
    c, m = w.shape
    if zmid is None:
        scale = dict(colorscale="Blues", zmin=0)
        if zmax is not None:
            scale["zmax"] = zmax
    else:
        top = zmid + float(np.abs(w - zmid).max()) if zmax is None else float(zmax)
        half = max(top - zmid, 1e-12)
        scale = dict(colorscale="RdBu_r", zmid=zmid, zmin=zmid - half, zmax=zmid + half)
    fig = go.Figure(go.Heatmap(
        z=w, x=[f"slot {j}" for j in range(m)], y=_names(classnames), **scale,
        colorbar=dict(title="weight"),
        hovertemplate="%{y} reads %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, width=max(420, m * cell + 260),
                      height=max(260, c * cell + 140), margin=dict(l=10, r=10, t=50, b=10))
    fig.update_yaxes(autorange="reversed")
    return fig


def slot_words(cache: object, word_features: object, words: Sequence[str],
               k: int = 3) -> list[list[str]]:
    """The ``k`` candidate words whose text features are most cosine-similar to each slot.

    The cache lives in the joint embedding space (where ``encode_text`` ends), not
    in token-embedding space, so compare with *encoded* words: ``word_features``
    ``[W, d]`` is e.g. ``backbone.encode_text(backbone.tokenize(words))`` for a small
    candidate vocabulary such as ToyWorld's attribute names.
    """
    a = as_numpy(cache, np.float64)
    f = as_numpy(word_features, np.float64)
    if f.shape[0] != len(words):
        raise ValueError(f"{f.shape[0]} word features for {len(words)} words")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = a @ f.T                                                   # [M, W]
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return [[str(words[i]) for i in row] for row in order]


def slot_usage(slots: object, n_slots: int) -> np.ndarray:
    """How many tokens (CLS included) each slot got: ``[n_slots]`` from ``slots`` ``[B, N]``."""
    return np.bincount(as_numpy(slots, np.int64).ravel(), minlength=n_slots)[:n_slots]


def cache_gallery(images: object, slots: object, read_weights: object,
                  classnames: Sequence[str], slot_words: Sequence[Sequence[str]] | None = None,
                  per_slot: int = 4, slots_to_show: Sequence[int] | None = None,
                  top_classes: int = 3, max_rows: int = 8, cell: int = 130,
                  title: str = "What is in each cache slot") -> go.Figure:
    """One row per slot: where it is written from, and who reads it.

    ``images`` ``[B, H, W, 3]`` uint8; ``slots`` ``[B, N]`` is each token's slot
    (token 0 = CLS); ``read_weights`` ``[C, M]``. A row shows the ``per_slot``
    images that send the most patches to the slot, those patches outlined (the
    cell title says whether the CLS token went there too), then a bar chart of the
    ``top_classes`` classes that read the slot most. ``slot_words`` (from
    :func:`slot_words`) names each row. By default the most-used slots are shown,
    at most ``max_rows``.
    """
    imgs = [to_uint8_image(im) for im in as_numpy(images)]
    s = as_numpy(slots, np.int64)
    w = as_numpy(read_weights, np.float64)
    n_slots = w.shape[1]
    g = int(round((s.shape[1] - 1) ** 0.5))
    if g * g != s.shape[1] - 1:
        raise ValueError(f"slots has {s.shape[1]} tokens per image: expected CLS + a square grid")
    usage = slot_usage(s, n_slots)
    if slots_to_show is None:
        used = [j for j in np.argsort(-usage, kind="stable") if usage[j] > 0]
        slots_to_show = used[:max_rows]
    rows_slots = [int(j) for j in slots_to_show]
    names = _names(classnames)
    n_rows, n_cols = max(1, len(rows_slots)), per_slot + 1
    titles: list[str] = []
    picks: list[list[int]] = []
    for j in rows_slots:
        per_image = (s[:, 1:] == j).sum(axis=1)
        order = [int(b) for b in np.argsort(-per_image, kind="stable") if per_image[b] > 0]
        picks.append(order[:per_slot])
        for col in range(per_slot):
            if col < len(picks[-1]):
                b = picks[-1][col]
                cls = " +CLS" if s[b, 0] == j else ""
                titles.append(f"img {b}: {per_image[b]} patch{'es' if per_image[b] != 1 else ''}"
                              f"{cls}")
            else:
                titles.append("")
        titles.append("read most by")
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles or None,
                        horizontal_spacing=0.02, vertical_spacing=0.3 / n_rows,
                        column_widths=[1.0] * per_slot + [1.4])
    for r, (j, chosen) in enumerate(zip(rows_slots, picks), start=1):
        for col, b in enumerate(chosen, start=1):
            img = imgs[b]
            fig.add_trace(go.Image(z=img, hoverinfo="skip"), row=r, col=col)
            add_outlines(fig, np.flatnonzero(s[b, 1:] == j), g, img.shape[0], r, col)
        top = np.argsort(-w[:, j], kind="stable")[:top_classes]
        # class names inside the bars: tick labels would run over the images to the left
        fig.add_trace(go.Bar(x=w[top, j], y=[names[c] for c in top], orientation="h",
                             text=[names[c] for c in top], textposition="inside",
                             insidetextanchor="start", textfont=dict(color="white", size=11),
                             marker_color="#1f77b4", showlegend=False,
                             hovertemplate="%{y}: %{x:.3f}<extra></extra>"), row=r, col=n_cols)
        fig.update_yaxes(autorange="reversed", showticklabels=False, ticks="", row=r,
                         col=n_cols)
        label = f"slot {j}<br>{usage[j]} tokens"
        if slot_words is not None:
            label += "<br><i>" + ", ".join(slot_words[j]) + "</i>"
        fig.update_yaxes(title_text=label, row=r, col=1)
    for r in range(1, n_rows + 1):
        for col in range(1, per_slot + 1):
            fig.update_xaxes(visible=False, row=r, col=col)
            fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False,
                             showline=False, ticks="", row=r, col=col)
            fig.update_yaxes(autorange="reversed", visible=col == 1, row=r, col=col)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=title, width=per_slot * cell + 2 * cell + 100,
                      height=n_rows * (cell + 30) + 70, template="simple_white",
                      margin=dict(l=90, r=10, t=70, b=10))
    return fig


def topk_patches_figure(image: object, cls_attention: object, topk: object,
                        title: str = "CLS attention; outlined: top-k patches of the local loss",
                        size: int = 320) -> go.Figure:
    """The CLS→patch attention ``[N−1]`` over the image, the ``topk`` patches (0 = first patch)
    outlined: the visual tokens TextRefiner's local alignment loss classifies."""
    return patch_overlay(image, as_numpy(cls_attention, np.float64),
                         highlight=[int(i) for i in as_numpy(topk).ravel()], title=title,
                         size=size)


def slot_membership_figure(image: object, slots: object, slot: int, title: str | None = None,
                           size: int = 320) -> go.Figure:
    """One image with the patches written to cache slot ``slot`` outlined (``slots`` ``[N]``,
    token 0 = CLS)."""
    img = to_uint8_image(as_numpy(image))
    s = as_numpy(slots, np.int64).ravel()
    g = int(round((len(s) - 1) ** 0.5))
    hit = np.flatnonzero(s[1:] == slot)
    cls = " + CLS" if s[0] == slot else ""
    fig = go.Figure(go.Image(z=img, hoverinfo="skip"))
    add_outlines(fig, hit, g, img.shape[0])
    fig.update_layout(title=title or f"slot {slot}: {len(hit)} patches{cls}",
                      width=size + 40, height=size + 60, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    return fig


def class_reads_figure(read_weights: object, classnames: Sequence[str], cls: int,
                       highlight_slot: int | None = None, title: str | None = None) -> go.Figure:
    """Bars: how class ``cls`` spreads its read over the slots (``highlight_slot`` in red),
    against the uniform read ``1/M`` (dashed): a bar near the line is a slot the class
    does not single out."""
    w = as_numpy(read_weights, np.float64)[cls]
    colours = ["#d62728" if j == highlight_slot else "#1f77b4" for j in range(len(w))]
    fig = go.Figure(go.Bar(x=[f"slot {j}" for j in range(len(w))], y=w, marker_color=colours,
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.add_hline(y=1.0 / len(w), line=dict(color="#555", dash="dash", width=1.5), opacity=1,
                  annotation_text=f"uniform 1/M = {1.0 / len(w):.3f}",
                  annotation_position="top right")
    fig.update_layout(title=title or f"what '{_names(classnames)[cls]}' reads from the cache",
                      width=max(420, 22 * len(w) + 120), height=320, template="simple_white",
                      yaxis_title="read weight", margin=dict(l=50, r=10, t=50, b=60))
    return fig
