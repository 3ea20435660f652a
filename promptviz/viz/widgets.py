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
    ex.save_html("runs/explorer.html")   # the same explorer, no kernel needed

Without a kernel: :meth:`Explorer.to_html` renders every state up front
(:mod:`promptviz.viz.static_explorer`) into one self-contained HTML fragment with
working controls. A notebook saves it beside the live widget (``text/html`` in the same
output), so a statically rendered notebook (nbconvert, nbviewer, Colab before running)
still shows an explorer that responds; a live JupyterLab shows the widget.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from promptviz.arrays import as_numpy, to_uint8_image
from promptviz.viz.report import Report
from promptviz.viz.sep import (
    fusion_scalars,
    record_scalars,
    selected_for_image,
    selection_map,
    text_selection,
    tfm_attention,
)
from promptviz.viz.similarity import confusion_heatmap
from promptviz.viz.static_explorer import Control, explorer_html
from promptviz.viz.textrefiner import (
    cache_gallery,
    class_reads_figure,
    slot_membership_figure,
    slot_usage,
    topk_patches_figure,
)
from promptviz.viz.why import looked_at_figure, top_classes

if TYPE_CHECKING:
    from promptviz.analysis.why import Why

View = tuple[tuple[str, ...], Callable[[dict], go.Figure]]   # (controls it reads, render)
BUSY = "<i>drawing …</i>"


def _bundle(fig: go.Figure) -> dict:
    """A Jupyter display-data message for ``fig`` (plotly's mimetype; JupyterLab, Notebook 7
    and VS Code render it)."""
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": json.loads(fig.to_json()),
                     "text/plain": f"<plotly figure: {fig.layout.title.text or ''}>"}}


class Explorer(widgets.VBox):
    """Controls above figures. ``views[name] = (control names, render(values) -> Figure)``."""

    def __init__(self, controls: Mapping[str, widgets.ValueWidget],
                 views: Mapping[str, View], static_keep: Mapping[str, int] | None = None
                 ) -> None:
        outputs = {name: widgets.Output() for name in views}
        # says "drawing" while the kernel renders, so a change never looks ignored
        self.busy = widgets.HTML("", layout=widgets.Layout(min_width="90px"))
        super().__init__(children=[
            widgets.HBox([*controls.values(), self.busy]),
            widgets.HBox(list(outputs.values()), layout=widgets.Layout(flex_flow="row wrap"))])
        self.controls = dict(controls)
        self.views = dict(views)
        self.outputs = outputs
        self.figures: dict[str, go.Figure] = {}
        # without a kernel every state is drawn in advance: keep the first n options of
        # these controls there (the explorers order them most telling first)
        self.static_keep = dict(static_keep or {})
        for name, control in self.controls.items():
            control.observe(lambda change, name=name: self.refresh(name), names="value")
        self.refresh()

    def static_controls(self, keep: Mapping[str, int] | None = None) -> list[Control]:
        """The controls as plain data with the values each can take (for :meth:`to_html`);
        ``keep[name] = n`` keeps a dropdown's first ``n`` options."""
        keep = self.static_keep if keep is None else keep
        out = []
        for name, c in self.controls.items():
            if isinstance(c, widgets.IntSlider):
                out.append(Control(name, "slider",
                                   [(str(v), v) for v in range(c.min, c.max + 1, c.step)],
                                   c.value))
            elif isinstance(c, widgets.Dropdown):
                opts = c.options.items() if isinstance(c.options, Mapping) else c.options
                pairs = [o if isinstance(o, tuple) else (str(o), o) for o in opts]
                pairs = pairs[:keep.get(name, len(pairs))]
                value = c.value if c.value in [v for _, v in pairs] else pairs[0][1]
                out.append(Control(name, "dropdown", pairs, value))
            else:
                raise TypeError(f"control {name!r}: only Dropdown and IntSlider can be "
                                f"exported without a kernel, not {type(c).__name__}")
        return out

    def to_html(self, include_plotlyjs: bool = True, keep: Mapping[str, int] | None = None,
                max_states: int = 600) -> str:
        """This explorer as one HTML fragment that works without a kernel: every state
        drawn in advance (:mod:`promptviz.viz.static_explorer`), over the first
        ``keep[name]`` options of the named dropdowns (default :attr:`static_keep`)."""
        controls = self.static_controls(keep)
        cut = [f"the first {len(c.options)} of {len(self.controls[c.name].options)} "
               f"{c.name}s" for c in controls
               if c.kind == "dropdown" and len(c.options) < len(self.controls[c.name].options)]
        note = ("Drawn in advance, no kernel needed" + (f" ({', '.join(cut)})" if cut else "")
                + "; run the notebook for the live explorer.")
        return explorer_html(controls, self.views, note=note,
                             include_plotlyjs=include_plotlyjs, max_states=max_states)

    def save_html(self, path: str | Path, title: str = "promptviz explorer") -> Path:
        """Write :meth:`to_html` as a standalone page that opens offline."""
        return Report(title).explorer(self).write(path)

    def _repr_mimebundle_(self, **kwargs: object) -> dict:
        # the live widget for a kernel, the precomputed explorer for everything else
        bundle = super()._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.to_html()
        return bundle

    def values(self) -> dict:
        """The current value of every control, by name."""
        return {name: c.value for name, c in self.controls.items()}

    def refresh(self, changed: str | None = None) -> None:
        """Re-render the views that read control ``changed`` (all views if None)."""
        values = self.values()
        stale = [name for name, (deps, _) in self.views.items()
                 if changed is None or changed in deps]
        self.busy.value = BUSY
        try:
            for name in stale:
                self.figures[name] = self.views[name][1](values)
                self.outputs[name].outputs = (_bundle(self.figures[name]),)
        finally:
            self.busy.value = ""


def _images(images: object, mean: Sequence[float] | None, std: Sequence[float] | None
            ) -> list[np.ndarray]:
    return [to_uint8_image(im, mean, std) for im in as_numpy(images)]


def _dropdown(**kwargs: object) -> widgets.Dropdown:
    """A dropdown as wide as its longest option (the default width cuts labels short)."""
    return widgets.Dropdown(layout=widgets.Layout(width="auto"),
                            style={"description_width": "initial"}, **kwargs)


def _image_options(n: int, labels: Sequence[str] | None) -> list[tuple[str, int]]:
    return [(f"image {b}" + (f" ({labels[b]})" if labels is not None else ""), b)
            for b in range(n)]


def _empty_slot(slot: int, n_images: int) -> go.Figure:
    """Said, not drawn as a blank gallery: no token of these images is written to ``slot``."""
    fig = go.Figure()
    fig.add_annotation(text=f"slot {slot} is empty: no token of these {n_images} images "
                            "is nearest to it", showarrow=False, font=dict(size=14),
                       x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=f"slot {slot}: where it is written from", width=520, height=160,
                      xaxis=dict(visible=False), yaxis=dict(visible=False),
                      template="simple_white", margin=dict(l=10, r=10, t=50, b=10))
    return fig


def textrefiner_explorer(images: object, local: Mapping[str, object], read_weights: object,
                         classnames: Sequence[str],
                         slot_words: Sequence[Sequence[str]] | None = None, per_slot: int = 4,
                         image_labels: Sequence[str] | None = None,
                         object_share: Sequence[float] | None = None,
                         mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None) -> Explorer:
    """Explore TextRefiner's cache: pick an image, a slot and a class.

    With ground truth, ``object_share[j]`` (the share of slot ``j``'s patches that lie on
    an object, :func:`promptviz.analysis.scores.slot_on_object`) orders the slots most-object
    first, shows in each slot's label, and a slot under 10 % is called "background"
    instead of given the words nearest to it (which would name a colour it does not hold).

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
    share = None if object_share is None else np.asarray(object_share, np.float64)
    if share is not None:
        if len(share) != w.shape[1]:
            raise ValueError(f"object_share has {len(share)} values for {w.shape[1]} slots")
        order = [int(j) for j in np.argsort(-np.nan_to_num(share, nan=-1.0), kind="stable")]
        background = [bool(share[j] < 0.1) for j in range(len(share))]   # NaN: not background
        if slot_words is not None:
            slot_words = [["background"] if background[j] else list(words)
                          for j, words in enumerate(slot_words)]

    def slot_label(j: int) -> str:
        on = "" if share is None or np.isnan(share[j]) else f", {100 * share[j]:.0f} % on objects"
        words = f" · {', '.join(slot_words[j])}" if slot_words is not None else ""
        return f"slot {j} ({usage[j]} tokens{on}){words}"

    controls = {
        "image": _dropdown(options=_image_options(len(imgs), image_labels), value=0,
                                  description="image"),
        "slot": _dropdown(options=[(slot_label(j), j) for j in order], value=order[0],
                                 description="slot"),
        "class": _dropdown(options=[(str(c).replace("_", " "), i)
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
            slots_to_show=[v["slot"]], title=f"slot {v['slot']}: where it is written from")
            if usage[v["slot"]] else _empty_slot(v["slot"], len(imgs))),
    }
    return Explorer(controls, views, static_keep={"image": 8, "slot": 8})


def sep_explorer(images: object, record: Mapping, image_labels: Sequence[str] | None = None,
                 text_tokens: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> Explorer:
    """Explore SEP's selection: a block slider and an image dropdown.

    ``record`` is ``sep.selection_record(x)`` for the batch ``images``. Figures: the
    tokens selected in that image before that block (over their energy, numbered in
    selection order), the TFM attention there (per sample: prompt slot → those numbered
    tokens), the fusion gates with the block marked, and — given the prompt's
    ``text_tokens`` (see :func:`~promptviz.viz.sep.prompt_tokens`; a mapping from class
    name to tokens shows the prompt of the picked image's class, its key in
    ``image_labels``) — the text positions selected before that block, with the learned
    context positions (the ``x`` placeholders) in blue.
    """
    imgs = _images(images, mean, std)
    layers = sorted(int(v) for v in record["vision"])
    if not layers:
        raise ValueError("the record has no rebuilt vision layers")
    grid = record["grid"]
    # attention across the batch ([K, B, B] per slot) or within each image ([B, K, K])
    faithful = record.get("attention_over", "batch" if record.get("mode", "faithful") ==
                          "faithful" else "sample") == "batch"
    per_class = isinstance(text_tokens, Mapping)
    if per_class and image_labels is None:
        raise ValueError("text_tokens by class name needs image_labels (each image's class)")

    def layer_of(v: dict) -> int:
        """The slider may sit between rebuilt blocks: use the last one at or below it."""
        return max([x for x in layers if x <= v["block"]] or layers[:1])

    def selection(v: dict) -> go.Figure:
        layer, b = layer_of(v), v["image"]
        sel = selected_for_image(record, b)[layer]
        scores = as_numpy(record["vision"][layer]["scores"])[b]
        return selection_map(imgs[b], {layer: sel}, grid, {layer: scores}, cell=300,
                             numbered=not faithful,
                             title=f"image {b}: tokens selected before block {layer}")

    def attention(v: dict) -> go.Figure:
        layer, b = layer_of(v), v["image"]
        a = as_numpy(record["vision"][layer]["attention"])
        if faithful:
            return tfm_attention(a, labels=[f"img {i}" for i in range(a.shape[-1])],
                                 title=f"TFM attention before block {layer}: "
                                       "per prompt slot, image → image")
        k = a.shape[-1]
        return tfm_attention(a[b], labels=[f"prompt {j}" for j in range(k)],
                             column_labels=[f"token {j}" for j in range(k)],
                             title=f"image {b}, block {layer}:<br>prompt slot → selected "
                                   "token")

    def gates(v: dict) -> go.Figure:
        text = record_scalars(record, "text") if record.get("text") else None
        return fusion_scalars(record_scalars(record, "vision"), text, current_layer=layer_of(v))

    controls = {
        # redrawn when the handle is let go, not for every block passed while dragging
        "block": widgets.IntSlider(value=layers[0], min=layers[0], max=layers[-1],
                                   description="block", continuous_update=False),
        "image": _dropdown(options=_image_options(len(imgs), image_labels), value=0,
                                  description="image"),
    }
    views: dict[str, View] = {
        "selection": (("block", "image"), selection),
        "attention": (("block",) if faithful else ("block", "image"), attention),
        "gates": (("block",), gates),
    }
    if text_tokens is not None:
        def text(v: dict) -> go.Figure:
            tokens = text_tokens[image_labels[v["image"]]] if per_class else text_tokens
            rec = record.get("text", {}).get(layer_of(v))
            sel = [] if rec is None else as_numpy(rec["selected"]).ravel()
            note = "" if rec is not None else " (no text rebuild here)"
            whose = f" of '{image_labels[v['image']]}'" if per_class else ""
            return text_selection(tokens, sel, [i for i, t in enumerate(tokens) if t == "x"],
                                  row_labels=["prompt" + whose],
                                  title=f"text positions selected before block "
                                        f"{layer_of(v)}{note}")
        views["text"] = (("block", "image") if per_class else ("block",), text)
    return Explorer(controls, views, static_keep={"image": 12})


def why_explorer(why: Why) -> Explorer:
    """Why this prediction? ``why`` is :func:`promptviz.analysis.why.explain`'s. Pick a test image:
    every method's top-5 classes with their logits side by side and the patches each
    looked at; pick a method: its confusion matrix on each half's whole test split."""
    def scores(v: dict) -> go.Figure:
        b = v["image"]
        half = why.halves[b]
        return top_classes({m: why.logits[m][b] for m in why.methods}, why.classnames[half],
                           true=why.labels[b],
                           title=f"image {b} ({half}, true class: "
                                 f"{why.labels[b].replace('_', ' ')}): top 5 of each method")

    def looked(v: dict) -> go.Figure:
        b = v["image"]
        return looked_at_figure(why.images[b], {m: why.heat[m][b] for m in why.methods},
                                {m: why.marked[m][b] for m in why.methods}, why.looked,
                                title=f"image {b}: where each method looked "
                                      "(each map scaled to its maximum)")

    def confusion(half: str) -> Callable[[dict], go.Figure]:
        def render(v: dict) -> go.Figure:
            cm = why.confusion[v["method"]][half]
            acc = 100.0 * np.trace(cm) / max(int(cm.sum()), 1)
            size = min(520, max(260, 26 * len(why.classnames[half])))
            fig = confusion_heatmap(cm, why.classnames[half], size=size,
                                    title=f"{v['method']} · {half}: {acc:.1f} % right")
            return fig.update_xaxes(title=f"predicted ({int(cm.sum())} test images)")
        return render

    labels = [f"{h} · {c}" for h, c in zip(why.halves, why.labels, strict=True)]
    controls: dict[str, widgets.ValueWidget] = {
        "image": _dropdown(options=_image_options(len(why.images), labels), value=0,
                           description="image")}
    views: dict[str, View] = {"scores": (("image",), scores), "looked": (("image",), looked)}
    confusions = [h for h in why.classnames if all(h in why.confusion.get(m, {})
                                                    for m in why.methods)]
    if confusions:
        controls["method"] = _dropdown(options=why.methods, value=why.methods[0],
                                       description="confusion of")
        views.update({f"confusion_{h}": (("method",), confusion(h)) for h in confusions})
    return Explorer(controls, views)
