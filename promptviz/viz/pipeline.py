"""One figure per paper: the path from image and class name to the logits.

A pipeline is plain data -- boxes (``id``, ``label``, grid ``x``/``y``, ``kind``) and
arrows (``(from, to)`` or ``(from, to, label)``) -- drawn by :func:`pipeline_diagram`.
The box's kind says what training does to it, so a reader sees at a glance what is
frozen, what is learned and what exists only during training:

* ``data`` -- inputs and outputs;  * ``frozen`` -- CLIP's own weights, never updated;
* ``learned`` -- trained by gradient;  * ``state`` -- written without gradient (a cache);
* ``train`` -- used in training only (absent at test time).

:data:`PIPELINES` holds TextRefiner's and SEP's, as the authors' code computes them
(methods.md §5 and §6); :func:`method_pipeline` draws one by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from promptviz.errors import PromptvizError

KINDS = {  # kind -> (fill, border, legend text)
    "data": ("#ffffff", "#555555", "input / output"),
    "frozen": ("#dfe6ee", "#5b7083", "frozen CLIP"),
    "learned": ("#fde3c8", "#d9822b", "learned (gradient)"),
    "state": ("#e3f1df", "#4c9a2a", "written, no gradient"),
    "train": ("#f3e0f0", "#9c4f96", "training only"),
}

Box = dict
Arrow = tuple

PIPELINES: dict[str, dict] = {
    "textrefiner": {
        "title": "CoOp+TextRefiner: the cache refines each class's text feature",
        "boxes": [
            {"id": "img", "label": "image", "x": 0, "y": 2, "kind": "data"},
            {"id": "vis", "label": "image tower", "x": 1, "y": 2, "kind": "frozen"},
            {"id": "f", "label": "norm(f_img)<br>(CLS)", "x": 2, "y": 2, "kind": "frozen"},
            {"id": "tok", "label": "last block's tokens<br>ln_post + proj", "x": 2, "y": 1,
             "kind": "frozen"},
            {"id": "mlp", "label": "alignment MLP<br>x = MLP(tokens)", "x": 3, "y": 1,
             "kind": "train"},
            {"id": "l2", "label": "L2: local tokens classified<br>with t (un-refined)",
             "x": 4, "y": 0, "kind": "train"},
            {"id": "cache", "label": "local cache A [M, d]<br>momentum write", "x": 4, "y": 1,
             "kind": "state"},
            {"id": "cls", "label": "[ctx] (learned)<br>+ class name", "x": 0, "y": 4,
             "kind": "learned"},
            {"id": "txt", "label": "text tower", "x": 1, "y": 4, "kind": "frozen"},
            {"id": "t", "label": "t = norm(text)", "x": 2, "y": 4, "kind": "data"},
            {"id": "read", "label": "read<br>r = softmax(q·A / τ)·A", "x": 4, "y": 3,
             "kind": "data"},
            {"id": "agg", "label": "t̂ = t + α·W[t; r]", "x": 5, "y": 4, "kind": "learned"},
            {"id": "logits", "label": "logits<br>s·norm(f_img)·t̂ᵀ", "x": 6, "y": 2,
             "kind": "data"},
        ],
        "arrows": [
            ("img", "vis"), ("vis", "f"), ("vis", "tok"), ("tok", "mlp"), ("mlp", "cache", "write"),
            ("mlp", "l2"), ("cls", "txt"), ("txt", "t"), ("t", "read", "q = t"),
            ("cache", "read"), ("t", "agg"), ("read", "agg"), ("agg", "logits"),
            ("f", "logits"),
        ],
    },
    "sep": {
        "title": "SEP: before each chosen block, prompts rebuilt from the block's own tokens",
        "boxes": [
            {"id": "img", "label": "image patches<br>+ visual prompts (learned)", "x": 0, "y": 1,
             "kind": "learned"},
            {"id": "vsel", "label": "top-K tokens of block l's<br>input by energy mean(h²)",
             "x": 1, "y": 0, "kind": "data"},
            {"id": "vtfm", "label": "TFM_l (vision): P attends<br>to T (code: across the batch)",
             "x": 2, "y": 1,
             "kind": "learned"},
            {"id": "vblk", "label": "block l (frozen)<br>each rebuilt block", "x": 3, "y": 1,
             "kind": "frozen"},
            {"id": "fp", "label": "f (prompted)", "x": 4, "y": 1, "kind": "data"},
            {"id": "f0", "label": "f0: frozen CLIP<br>image feature", "x": 4, "y": 0,
             "kind": "frozen"},
            {"id": "fhat", "label": "f̂ = norm(norm(f)<br>+ norm(f0))", "x": 5, "y": 1,
             "kind": "data"},
            {"id": "cls", "label": "text prompts (learned)<br>+ class name", "x": 0, "y": 3,
             "kind": "learned"},
            {"id": "tsel", "label": "the K tokens after<br>the prompts (by position)",
             "x": 1, "y": 4, "kind": "data"},
            {"id": "ttfm", "label": "TFM_l (text): P attends<br>to T (code: across classes)",
             "x": 2, "y": 3, "kind": "learned"},
            {"id": "tblk", "label": "block l (frozen)<br>each rebuilt block", "x": 3, "y": 3,
             "kind": "frozen"},
            {"id": "tp", "label": "t (prompted)", "x": 4, "y": 3, "kind": "data"},
            {"id": "t0", "label": "t0: hand-crafted<br>prompt's feature", "x": 4, "y": 4,
             "kind": "frozen"},
            {"id": "that", "label": "t̂ = norm(norm(t)<br>+ t0)", "x": 5, "y": 3,
             "kind": "data"},
            {"id": "logits", "label": "logits<br>s·f̂·t̂ᵀ", "x": 6, "y": 2, "kind": "data"},
        ],
        "arrows": [
            ("img", "vsel"), ("vsel", "vtfm", "T"), ("img", "vtfm", "P"), ("vtfm", "vblk"),
            ("vblk", "vsel", "next block"), ("vblk", "fp"), ("fp", "fhat"), ("f0", "fhat"),
            ("cls", "tsel"), ("tsel", "ttfm", "T"), ("cls", "ttfm", "P"), ("ttfm", "tblk"),
            ("tblk", "tsel", "next block"), ("tblk", "tp"), ("tp", "that"), ("t0", "that"),
            ("fhat", "logits"), ("that", "logits"),
        ],
    },
}


def pipeline_diagram(boxes: Sequence[Box], arrows: Sequence[Arrow], title: str = "",
                     col_width: int = 170, row_height: int = 78) -> go.Figure:
    """Boxes on a grid (``x`` column, ``y`` row from the top) joined by arrows.

    ``boxes``: dicts with ``id``, ``label`` (``<br>`` breaks lines), ``x``, ``y`` and a
    ``kind`` from :data:`KINDS`; ``arrows``: ``(from_id, to_id)`` or ``(from_id, to_id,
    label)``. Unknown ids or kinds raise, so a typo cannot drop an arrow silently."""
    where = {}
    for b in boxes:
        if b["kind"] not in KINDS:
            raise PromptvizError(f"box {b['id']!r} has kind {b['kind']!r}; use one of "
                                 f"{sorted(KINDS)}")
        where[b["id"]] = (float(b["x"]), -float(b["y"]))
    fig = go.Figure()
    w, h = 0.42, 0.3                                   # half box size, in grid units
    for a in arrows:
        src, dst = a[0], a[1]
        if src not in where or dst not in where:
            raise PromptvizError(f"arrow {src!r} -> {dst!r} names a box that is not there")
        (x0, y0), (x1, y1) = where[src], where[dst]
        dx, dy = x1 - x0, y1 - y0
        # leave each box through the side that faces the other one
        t0 = min(w / abs(dx) if dx else 1e9, h / abs(dy) if dy else 1e9)
        fig.add_annotation(x=x1 - dx * t0, y=y1 - dy * t0, ax=x0 + dx * t0, ay=y0 + dy * t0,
                           xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                           arrowhead=2, arrowsize=1.1, arrowwidth=1.3, arrowcolor="#444",
                           text="")
        if len(a) > 2:
            fig.add_annotation(x=x0 + dx / 2, y=y0 + dy / 2, text=f"<i>{a[2]}</i>",
                               showarrow=False, yshift=9 if not dy else 0,
                               font=dict(size=10, color="#333"),
                               bgcolor="rgba(255,255,255,0.85)")
    for b in boxes:
        fill, line, _ = KINDS[b["kind"]]
        x, y = where[b["id"]]
        fig.add_shape(type="rect", x0=x - w, x1=x + w, y0=y - h, y1=y + h,
                      fillcolor=fill, line=dict(color=line, width=1.5), layer="below")
        fig.add_annotation(x=x, y=y, text=b["label"], showarrow=False,
                           font=dict(size=10, color="#111"))
    used = {b["kind"] for b in boxes}
    for kind in (k for k in KINDS if k in used):             # legend: one entry per kind
        fill, line, text = KINDS[kind]
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=text,
                                 marker=dict(symbol="square", size=14, color=fill,
                                             line=dict(color=line, width=1.5))))
    xs = [p[0] for p in where.values()]
    ys = [p[1] for p in where.values()]
    fig.update_xaxes(visible=False, range=[min(xs) - 0.55, max(xs) + 0.55])
    fig.update_yaxes(visible=False, range=[min(ys) - 0.5, max(ys) + 0.5])
    fig.update_layout(title=title, plot_bgcolor="white", margin=dict(l=10, r=10, t=50, b=10),
                      width=int(col_width * (max(xs) - min(xs) + 1.1)) + 20,
                      height=int(row_height * (max(ys) - min(ys) + 1)) + 110,
                      legend=dict(orientation="h", y=-0.02, yanchor="top", x=0))
    return fig


def method_pipeline(name: str) -> go.Figure:
    """The pipeline figure of one paper: ``"textrefiner"`` or ``"sep"``."""
    if name not in PIPELINES:
        raise PromptvizError(f"no pipeline figure for {name!r}; known: {sorted(PIPELINES)}")
    p = PIPELINES[name]
    return pipeline_diagram(p["boxes"], p["arrows"], p["title"])
