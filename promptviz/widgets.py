"""Interactive explorers for notebooks: controls wired to the views of :mod:`promptviz.viz`.

An explorer is an ``ipywidgets.VBox``: a row of controls above a few figures.
Changing a control re-renders only the figures that depend on it. The current
figures are plain ``go.Figure`` objects in ``explorer.figures`` (export any of them
with :func:`~promptviz.viz.report.standalone_html`); each is shown through an
``ipywidgets.Output`` holding plotly's JSON mimetype, so explorers need no extra
widget package and can be built and driven headless (as the tests do)::

    ex = textrefiner_explorer(images, m.local_tokens(x), m.read_weights(), m.classnames)
    ex                                   # in a notebook cell: shows it
    ex.controls["slot"].value = 3        # what the dropdown does
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from promptviz.viz.embeddings import as_numpy
from promptviz.viz.patches import to_uint8_image
from promptviz.viz.sep import (
    fusion_scalars,
    record_scalars,
    selected_for_image,
    selection_map,
    text_selection,
    tfm_attention,
)
from promptviz.viz.textrefiner import (
    cache_gallery,
    class_reads_figure,
    slot_membership_figure,
    slot_usage,
    topk_patches_figure,
)

View = tuple[tuple[str, ...], Callable[[dict], go.Figure]]   # (controls it reads, render)


def _bundle(fig: go.Figure) -> dict:
    """A Jupyter display-data message for ``fig`` (plotly's mimetype; JupyterLab, Notebook 7
    and VS Code render it)."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
                     "text/plain": f"<plotly figure: {fig.layout.title.text or ''}>"}}


class Explorer(widgets.VBox):
    """Controls above figures. ``views[name] = (control names, render(values) -> Figure)``."""

    def __init__(self, controls: Mapping[str, widgets.ValueWidget],
                 views: Mapping[str, View]) -> None:
        outputs = {name: widgets.Output() for name in views}
        super().__init__(children=[
            widgets.HBox(list(controls.values())),
            widgets.HBox(list(outputs.values()), layout=widgets.Layout(flex_flow="row wrap"))])
        self.controls = dict(controls)
        self.views = dict(views)
        self.outputs = outputs
        self.figures: dict[str, go.Figure] = {}
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self.refresh(name), names="value")
        self.refresh()

    def values(self) -> dict:
        """The current value of every control, by name."""
        return {name: c.value for name, c in self.controls.items()}

    def refresh(self, changed: str | None = None) -> None:
        """Re-render the views that read control ``changed`` (all views if None)."""
        values = self.values()
        for name, (deps, render) in self.views.items():
            if changed is None or changed in deps:
                self.figures[name] = render(values)
                self.outputs[name].outputs = (_bundle(self.figures[name]),)


def _images(images: object, mean: Sequence[float] | None, std: Sequence[float] | None
            ) -> list[np.ndarray]:
    return [to_uint8_image(im, mean, std) for im in as_numpy(images)]


def _image_options(n: int, labels: Sequence[str] | None) -> list[tuple[str, int]]:
    return [(f"image {b}" + (f" ({labels[b]})" if labels is not None else ""), b)
            for b in range(n)]


def textrefiner_explorer(images: object, local: Mapping[str, object], read_weights: object,
                         classnames: Sequence[str],
                         slot_words: Sequence[Sequence[str]] | None = None, per_slot: int = 4,
                         image_labels: Sequence[str] | None = None,
                         mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None) -> Explorer:
    """Explore TextRefiner's cache: pick an image, a slot and a class.

    ``local`` is ``m.local_tokens(x)``, ``read_weights`` ``m.read_weights()``;
    ``images`` are ``[B, H, W, 3]`` uint8 or the model's ``[B, 3, H, W]`` input (pass
    ``mean``/``std`` to undo the normalisation). Figures: the image's CLS attention
    with the top-k local-loss patches, the image's patches written to the slot, the
    slot's gallery over the batch, and the class's read weights (slot in red).
    """
    imgs = _images(images, mean, std)
    attn, topk = as_numpy(local["cls_attention"]), as_numpy(local["topk"])
    slots, w = as_numpy(local["slot"], np.int64), as_numpy(read_weights, np.float64)
    usage = slot_usage(slots, w.shape[1])
    order = [int(j) for j in np.argsort(-usage, kind="stable")]

    def slot_label(j: int) -> str:
        words = f" · {', '.join(slot_words[j])}" if slot_words is not None else ""
        return f"slot {j} ({usage[j]} tokens){words}"

    controls = {
        "image": widgets.Dropdown(options=_image_options(len(imgs), image_labels), value=0,
                                  description="image"),
        "slot": widgets.Dropdown(options=[(slot_label(j), j) for j in order], value=order[0],
                                 description="slot"),
        "class": widgets.Dropdown(options=[(str(c).replace("_", " "), i)
                                           for i, c in enumerate(classnames)], value=0,
                                  description="class"),
    }
    views: dict[str, View] = {
        "attention": (("image",), lambda v: topk_patches_figure(
            imgs[v["image"]], attn[v["image"]], topk[v["image"]],
            title=f"image {v['image']}: CLS attention, top-k outlined")),
        "slot_in_image": (("image", "slot"), lambda v: slot_membership_figure(
            imgs[v["image"]], slots[v["image"]], v["slot"])),
        "class": (("class", "slot"), lambda v: class_reads_figure(
            w, classnames, v["class"], highlight_slot=v["slot"])),
        "slot": (("slot",), lambda v: cache_gallery(
            np.stack(imgs), slots, w, classnames, slot_words, per_slot=per_slot,
            slots_to_show=[v["slot"]], title=f"slot {v['slot']}: where it is written from")),
    }
    return Explorer(controls, views)


def sep_explorer(images: object, record: Mapping, image_labels: Sequence[str] | None = None,
                 text_tokens: Sequence[str] | None = None,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> Explorer:
    """Explore SEP's selection: a layer slider and an image dropdown.

    ``record`` is ``sep.selection_record(x)`` for the batch ``images``. Figures: the
    tokens selected in that image before that layer (over their scores), the TFM
    attention there, the fusion gates with the layer marked, and — given the
    prompt's ``text_tokens`` (see :func:`~promptviz.viz.sep.prompt_tokens`) — the
    text positions selected before that layer.
    """
    imgs = _images(images, mean, std)
    layers = sorted(int(v) for v in record["vision"])
    if not layers:
        raise ValueError("the record has no rebuilt vision layers")
    grid = record["grid"]
    # attention across the batch ([K, B, B] per slot) or within each image ([B, K, K])
    faithful = record.get("attention_over", "batch" if record.get("mode", "faithful") ==
                          "faithful" else "sample") == "batch"

    def layer_of(v: dict) -> int:
        """The slider may sit between rebuilt layers: use the last one at or below it."""
        return max([x for x in layers if x <= v["layer"]] or layers[:1])

    def selection(v: dict) -> go.Figure:
        layer, b = layer_of(v), v["image"]
        sel = selected_for_image(record, b)[layer]
        scores = as_numpy(record["vision"][layer]["scores"])[b]
        return selection_map(imgs[b], {layer: sel}, grid, {layer: scores}, cell=300,
                             title=f"image {b}, block {layer}: selected tokens<br>"
                                   "<sub>colour: mean squared activation</sub>")

    def attention(v: dict) -> go.Figure:
        layer, b = layer_of(v), v["image"]
        a = as_numpy(record["vision"][layer]["attention"])
        if faithful:
            return tfm_attention(a, labels=[f"img {i}" for i in range(a.shape[-1])],
                                 title=f"TFM attention before block {layer}: "
                                       "per prompt slot, image → image")
        return tfm_attention(a[b], labels=[f"p{k}" for k in range(a.shape[-1])],
                             title=f"image {b}, block {layer}: prompt → selected token")

    def gates(v: dict) -> go.Figure:
        text = record_scalars(record, "text") if record.get("text") else None
        return fusion_scalars(record_scalars(record, "vision"), text, current_layer=layer_of(v))

    controls = {
        "layer": widgets.IntSlider(value=layers[0], min=layers[0], max=layers[-1],
                                   description="layer"),
        "image": widgets.Dropdown(options=_image_options(len(imgs), image_labels), value=0,
                                  description="image"),
    }
    views: dict[str, View] = {
        "selection": (("layer", "image"), selection),
        "attention": (("layer",) if faithful else ("layer", "image"), attention),
        "gates": (("layer",), gates),
    }
    if text_tokens is not None:
        def text(v: dict) -> go.Figure:
            rec = record.get("text", {}).get(layer_of(v))
            sel = [] if rec is None else as_numpy(rec["selected"]).ravel()
            note = "" if rec is not None else " (no text rebuild here)"
            return text_selection(text_tokens, sel,
                                  title=f"text positions selected before block "
                                        f"{layer_of(v)}{note}")
        views["text"] = (("layer",), text)
    return Explorer(controls, views)
