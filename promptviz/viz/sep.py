"""SEP's token selection and fusion, made visible.

Before every rebuilt block SEP picks K pre-trained tokens per tower and fuses them
into the prompts with a Token Fusion Module (TFM). These views show

* which image tokens were picked, layer by layer — :func:`selection_map`, and how
  often each patch position is picked over a dataset — :func:`selection_frequency`;
* which text positions were picked — :func:`text_selection`;
* how much of the picked tokens the TFM keeps — :func:`fusion_scalars` (``s1``, ``s2``);
* whom each prompt attends to — :func:`tfm_attention`.
* whether the picked patches lie on objects, per layer — :func:`on_object_figure`.

Inputs are the plain arrays of ``SEP.selection_record(images)``. Visual token
indices there *include* CLS at 0 (patch ``p`` is token ``p + 1``); CLS has no place
on the image, so when it is picked the panel title says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from promptviz.arrays import as_numpy, to_uint8_image
from promptviz.viz.patches import _add_patch_view
from promptviz.viz.textrefiner import add_outlines

PAD, SOS, EOT = "⟨pad⟩", "⟨SOS⟩", "⟨EOT⟩"


def _side(grid: int | Sequence[int]) -> int:
    return int(grid) if np.isscalar(grid) else int(grid[0])


def selected_for_image(record: Mapping, b: int, tower: str = "vision") -> dict[int, np.ndarray]:
    """``{layer: selected token indices [K]}`` for image ``b`` of a ``selection_record``
    (faithful mode shares one selection by the batch; per-sample mode has one per image)."""
    out = {}
    for layer, rec in sorted(record[tower].items()):
        sel = as_numpy(rec["selected"], np.int64)
        out[int(layer)] = sel[b] if sel.ndim == 2 else sel
    return out


def selection_map(image: object, selected_by_layer: Mapping[int, object],
                  grid: int | Sequence[int], scores_by_layer: Mapping[int, object] | None = None,
                  cols: int = 4, cell: int = 180, title: str = "Visual tokens SEP selects",
                  opacity: float = 0.5, numbered: bool = False) -> go.Figure:
    """One panel per rebuilt block: the image with the selected visual tokens outlined.

    ``selected_by_layer[layer]`` holds token indices (0 = CLS) selected before that block.
    With ``scores_by_layer[layer]`` (the ``[N]`` mean squared activations SEP ranks
    tokens by, CLS first) the patch scores are drawn underneath, with a colour bar.
    Outlines are dark with a light core, visible on any object colour; ``numbered``
    writes each outlined patch's place in the selection (the TFM attention's columns).
    """
    img = to_uint8_image(as_numpy(image))
    g = _side(grid)
    layers = sorted(int(v) for v in selected_by_layer)
    n = max(1, len(layers))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    titles = []
    for layer in layers:
        sel = as_numpy(selected_by_layer[layer], np.int64).ravel()
        titles.append(f"block {layer}" + (" · CLS selected" if (sel == 0).any() else ""))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or None,
                        horizontal_spacing=0.02, vertical_spacing=0.1)
    p = img.shape[0] / g
    for i, layer in enumerate(layers):
        r, c = i // cols + 1, i % cols + 1
        sel = as_numpy(selected_by_layer[layer], np.int64).ravel()
        if scores_by_layer is not None and layer in scores_by_layer:
            scores = as_numpy(scores_by_layer[layer], np.float64).ravel()[1:]
            _add_patch_view(fig, img, scores, None, r, c, opacity, "Viridis", None, i == 0)
        else:
            fig.add_trace(go.Image(z=img, hoverinfo="skip"), row=r, col=c)
        patches = sel[sel > 0] - 1
        add_outlines(fig, patches, g, img.shape[0], r, c, color="#111111", width=4)
        add_outlines(fig, patches, g, img.shape[0], r, c, color="#ffffff", width=1.5)
        if numbered:
            for k, t in enumerate(sel):
                if t > 0:
                    y, x = divmod(int(t) - 1, g)
                    fig.add_annotation(x=x * p + 1, y=y * p + 1, text=str(k), showarrow=False,
                                       xanchor="left", yanchor="top", font=dict(
                                           size=11, color="white"), bgcolor="rgba(0,0,0,0.6)",
                                       borderpad=1, row=r, col=c)
    fig.update_traces(colorbar=dict(title=dict(text="energy", side="right"), thickness=12),
                      selector=dict(type="heatmap"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(title=title, width=cols * cell + 90, height=rows * (cell + 30) + 70,
                      margin=dict(l=10, r=10, t=80, b=10))
    return fig


def selection_counts(records: Iterable[Mapping], tower: str = "vision"
                     ) -> tuple[dict[int, np.ndarray], dict[int, int], int]:
    """Count, over many ``selection_record`` batches, how often each patch was selected.

    Returns ``({layer: counts [g, g]}, {layer: times CLS was selected}, n_images)``.
    Counts are per image: a faithful-mode batch selection counts once for each image
    of the batch, because every one of them was fused with those tokens.
    """
    counts: dict[int, np.ndarray] = {}
    cls: dict[int, int] = {}
    n_images = 0
    for rec in records:
        g = _side(rec["grid"])
        batch = 0
        for layer, r in rec[tower].items():
            sel = as_numpy(r["selected"], np.int64)
            batch = as_numpy(r["scores"]).shape[0] if "scores" in r else \
                (sel.shape[0] if sel.ndim == 2 else 1)
            sel = np.broadcast_to(sel, (batch, sel.shape[-1])) if sel.ndim == 1 else sel
            c = counts.setdefault(int(layer), np.zeros(g * g, np.int64))
            np.add.at(c, sel[sel > 0] - 1, 1)
            cls[int(layer)] = cls.get(int(layer), 0) + int((sel == 0).sum())
        n_images += batch
    return {k: v.reshape(-1, int(round(len(v) ** 0.5))) for k, v in sorted(counts.items())}, \
        dict(sorted(cls.items())), n_images


def selection_frequency(counts: object | Mapping[int, object],
                        cls_counts: Mapping[int, int] | None = None,
                        n_images: int | None = None, cols: int = 4, cell: int = 200,
                        title: str = "How often SEP selects each patch position") -> go.Figure:
    """One heatmap per layer of per-patch selection counts ``[g, g]`` (a bare array = one panel).

    With ``n_images`` the colour is the share of images whose fusion used the patch.
    """
    by_layer = dict(counts) if isinstance(counts, Mapping) else {None: counts}
    keys = list(by_layer)
    n = max(1, len(keys))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    mats = {k: as_numpy(by_layer[k], np.float64) / (n_images or 1) for k in keys}
    zmax = max((float(m.max()) for m in mats.values()), default=1.0) or 1.0
    titles = []
    for k in keys:
        t = "" if k is None else f"block {k}"
        if cls_counts is not None and k in cls_counts:
            t += f" · CLS ×{cls_counts[k]}"
        titles.append(t)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.03,
                        vertical_spacing=0.12)
    what = "share of images" if n_images else "times selected"
    for i, k in enumerate(keys):
        fig.add_trace(go.Heatmap(z=mats[k], zmin=0, zmax=zmax, colorscale="Magma",
                                 showscale=i == 0, colorbar=dict(title=what),
                                 hovertemplate="row %{y}, col %{x}: %{z:.3g}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed", scaleanchor="x")
    fig.update_layout(title=title, width=cols * cell + 120, height=rows * (cell + 30) + 70,
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def prompt_tokens(backbone: object, ids: object, length: int | None = None) -> list[str]:
    """The token strings of one tokenised prompt ``ids`` ``[L]`` (e.g. ``sep.prompt.ids[c]``),
    up to the end-of-text token or ``length`` tokens; SEP's context placeholders read ``x``."""
    ids = as_numpy(ids, np.int64).ravel()
    decoder = backbone.tokenizer.decoder
    eot = int(ids.argmax())                         # CLIP's EOT has the largest id
    stop = len(ids) if length is None else min(length, len(ids))
    if length is None:
        stop = eot + 1
    out = []
    for i, t in enumerate(ids[:stop]):
        if i == 0:
            out.append(SOS)
        elif i == eot:
            out.append(EOT)
        elif i > eot:
            out.append(PAD)
        else:
            out.append(decoder[int(t)].replace("</w>", ""))
    return out


def text_selection(tokens: Sequence[str] | Sequence[Sequence[str]], selected_positions: object,
                   prompt_positions: object = None, row_labels: Sequence[str] | None = None,
                   title: str = "Text tokens SEP selects", cell: int | None = None
                   ) -> go.Figure:
    """The prompt's tokens as a strip of cells; selected positions in orange, the learnable
    prompt positions (optional) in blue. ``tokens`` may be one prompt or one per class
    (SEP selects the same positions for every class)."""
    rows = [list(tokens)] if tokens and isinstance(tokens[0], str) else [list(t) for t in tokens]
    width = max(len(r) for r in rows)
    sel = set(as_numpy(selected_positions, np.int64).ravel().tolist())
    prompt = set() if prompt_positions is None else \
        set(as_numpy(prompt_positions, np.int64).ravel().tolist())
    width = max([width, *(p + 1 for p in sel)])
    if cell is None:                 # narrower cells for long prompts (fits an output area)
        cell = max(36, min(64, 760 // width))
    z = np.zeros((len(rows), width))
    text = [[(r[i] if i < len(r) else PAD) for i in range(width)] for r in rows]
    for i in range(width):
        z[:, i] = 1.0 if i in sel else 0.5 if i in prompt else 0.0
    labels = list(row_labels) if row_labels is not None else \
        [f"prompt {i}" for i in range(len(rows))]
    scale = [[0.0, "#f4f4f4"], [0.25, "#f4f4f4"], [0.25, "#c6dbef"], [0.75, "#c6dbef"],
             [0.75, "#fdae6b"], [1.0, "#fdae6b"]]
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", x=list(range(width)), y=labels, zmin=0, zmax=1,
        colorscale=scale, showscale=False, xgap=2, ygap=2,
        hovertemplate="position %{x}: %{text}<extra></extra>"))
    key = "position (orange = selected" + (", blue = learned prompt)" if prompt else ")")
    fig.update_layout(title=title, width=width * cell + 160, height=len(rows) * 40 + 120,
                      margin=dict(l=10, r=10, t=50, b=40), plot_bgcolor="white",
                      xaxis=dict(title=key, dtick=1))
    fig.update_yaxes(autorange="reversed")
    return fig


def record_scalars(record: Mapping, tower: str = "vision") -> dict[int, tuple[float, float]]:
    """``{layer: (s1, s2)}`` of one tower of a ``selection_record``."""
    return {int(k): (float(v["s1"]), float(v["s2"])) for k, v in sorted(record[tower].items())}


def fusion_scalars(s_by_layer: Mapping[int, tuple[float, float]],
                   text: Mapping[int, tuple[float, float]] | None = None,
                   current_layer: int | None = None,
                   title: str = "TFM gates: how much of the selected tokens is kept",
                   start: float | None = None) -> go.Figure:
    """``s1`` (share of the selected tokens kept over the attention) and ``s2`` (kept over
    the MLP) per layer; ``s_by_layer`` is the vision tower, ``text`` the text tower.
    ``start`` (e.g. ``SEPOptions.s_init``) draws the value training started from."""
    fig = go.Figure()
    towers = [("vision", s_by_layer, "solid")] + ([("text", text, "dash")] if text else [])
    for name, d, dash in towers:
        layers = sorted(d)
        for k, colour in ((0, "#1f77b4"), (1, "#ff7f0e")):
            fig.add_trace(go.Scatter(
                x=layers, y=[d[v][k] for v in layers], mode="lines+markers",
                name=f"{name} s{k + 1}", line=dict(color=colour, dash=dash),
                hovertemplate=f"{name} s{k + 1}, block %{{x}}: %{{y:.3f}}<extra></extra>"))
    if current_layer is not None:
        fig.add_vline(x=current_layer, line=dict(color="#999", dash="dot", width=2), opacity=1)
    if start is not None:
        fig.add_hline(y=start, line=dict(color="#2ca02c", dash="dot", width=2),
                      annotation_text=f"start {start:g}", annotation_position="bottom right")
    fig.update_layout(title=title, width=560, height=340, template="simple_white",
                      xaxis=dict(title="block (prompts rebuilt before it)", dtick=1),
                      yaxis=dict(title="gate value"),
                      margin=dict(l=50, r=10, t=50, b=40))
    return fig


def tfm_attention(attn: object, labels: Sequence[str] | None = None,
                  panel_name: str = "prompt slot", cols: int = 4, cell: int = 200,
                  title: str = "TFM attention (rows attend to columns)",
                  column_labels: Sequence[str] | None = None) -> go.Figure:
    """Heatmap(s) of TFM attention: ``[K, K]`` (one sample: prompt → selected token) or
    ``[K, B, B]`` (faithful mode: per prompt slot, image → image; text: class → class).
    ``labels`` name the rows (and the columns, unless ``column_labels`` is given)."""
    a = as_numpy(attn, np.float64)
    mats = [a] if a.ndim == 2 else list(a)
    n = len(mats)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    titles = [""] if a.ndim == 2 else [f"{panel_name} {k}" for k in range(n)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.04,
                        vertical_spacing=0.12)
    zmax = float(max(m.max() for m in mats)) or 1.0
    for i, m in enumerate(mats):
        ticks = list(labels) if labels is not None and len(labels) == m.shape[0] else \
            [str(j) for j in range(m.shape[0])]
        xticks = list(column_labels) if column_labels is not None and \
            len(column_labels) == m.shape[1] else ticks
        fig.add_trace(go.Heatmap(z=m, x=xticks, y=ticks, zmin=0, zmax=zmax, colorscale="Blues",
                                 showscale=i == 0, colorbar=dict(title="weight"),
                                 hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, width=cols * cell + 140, height=rows * (cell + 30) + 70,
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


def on_object_figure(shares: Mapping[str, Mapping[int, float]],
                     baseline: float | Mapping[str, float],
                     title: str = "Selected visual tokens that lie on an object") -> go.Figure:
    """The on-object share of the selected patches per layer, one line per run (e.g.
    ``{"faithful": on_object_by_layer(...), "per_sample": ...}``), against the chance
    ``baseline`` (the object-area share: what randomly chosen patches would score), drawn
    dashed. A mapping of baselines draws one dashed line each."""
    fig = go.Figure()
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
    for i, (name, by_layer) in enumerate(shares.items()):
        layers = sorted(int(v) for v in by_layer)
        fig.add_trace(go.Scatter(
            x=layers, y=[100.0 * by_layer[v] for v in layers], mode="lines+markers",
            name=name, line=dict(color=colours[i % len(colours)]),
            hovertemplate=f"{name}, layer %{{x}}: %{{y:.1f}}%<extra></extra>"))
    lines = baseline if isinstance(baseline, Mapping) else {"object area (chance)": baseline}
    for i, (name, value) in enumerate(lines.items()):
        # width set explicitly: the simple_white template draws shapes 0 px wide by default
        fig.add_hline(y=100.0 * float(value),
                      line=dict(color="#777", dash=("dash", "dot")[i % 2], width=1.5), opacity=1,
                      annotation_text=f"{name}: {100.0 * float(value):.1f}%",
                      annotation_position="bottom right")
    fig.update_layout(title=title, width=600, height=380, template="simple_white",
                      xaxis=dict(title="layer (block the prompts are rebuilt before)", dtick=1),
                      yaxis=dict(title="selected patches on an object (%)", range=[0, 100]),
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig
