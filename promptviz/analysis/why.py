"""Why this prediction? What each trained method scored on the same test images, where it
looked, and which classes it mixes up.

:func:`explain` gathers plain arrays (a :class:`Why`) for :func:`promptviz.viz.widgets.why_explorer`
and the demo report:

* the logits of every method over the candidates of the image's half (base-to-novel tests
  base images among base classes, novel images among novel classes);
* per method, a map over the image patches and the patches it marks — the CLS attention of
  the image tower's last block with its top-k for methods that keep the tower frozen
  (zero-shot, CoOp, KgCoOp, CoCoOp share one map: they differ only on the text side),
  TextRefiner's CLS attention and the top-k patches its local loss reads, SEP's token
  energy and the tokens it selected before its last rebuilt block (its prompted tower
  attends differently, so its map is its own);
* confusion matrices over each half's whole test split, from the same predictions
  :func:`~promptviz.train.evaluate.evaluate` scores (same batch size), so their diagonals give
  the run's accuracy back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from promptviz.analysis.probe import cls_attention, confusion_matrix, load_images
from promptviz.data import Dataset, Sample
from promptviz.methods import Method
from promptviz.train.evaluate import predict


@dataclass
class Why:
    """Everything the "why" views draw, as numpy arrays (``M`` methods, ``B`` images)."""
    images: np.ndarray                              # [B, S, S, 3] uint8, what the model sees
    labels: list[str]                               # each image's true class
    halves: list[str]                               # each image's half ("base" / "novel")
    classnames: dict[str, list[str]]                # the candidates of each half
    logits: dict[str, list[np.ndarray]] = field(default_factory=dict)  # method → [C] per image
    heat: dict[str, np.ndarray] = field(default_factory=dict)          # method → [B, g²]
    marked: dict[str, list[np.ndarray]] = field(default_factory=dict)  # method → patches per image
    looked: dict[str, str] = field(default_factory=dict)               # method → what heat is
    # method → half → [C, C] counts (row = true class) over the half's whole test split
    confusion: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.logits)


def spread(samples: list[Sample], n: int) -> list[Sample]:
    """``n`` samples taken at even steps through ``samples`` (test splits are ordered by
    class, so this spreads them over the classes)."""
    return samples[:: max(1, len(samples) // n)][:n] if n > 0 else []


@torch.no_grad()
def looked_at(method: Method, images: Tensor, k: int = 5
              ) -> tuple[np.ndarray, list[np.ndarray], str]:
    """Where ``method`` looked on each image: a map ``[B, g²]`` over the patches, the patches
    it marks (flat row-major indices, one array per image) and a short name of the map."""
    if hasattr(method, "selection_record"):                       # SEP
        record = method.selection_record(images)
        layer = max(record["vision"])
        rec = record["vision"][layer]
        heat = np.asarray(rec["scores"], np.float64)[:, 1:]       # token energy, CLS left out
        sel = np.asarray(rec["selected"], np.int64)
        per = [sel[b] if sel.ndim == 2 else sel for b in range(len(images))]
        shared = " (shared by the batch)" if sel.ndim == 1 else ""
        return heat, [p[p > 0] - 1 for p in per], f"selected before block {layer}{shared}"
    if hasattr(method, "local_tokens"):                           # TextRefiner
        local = method.local_tokens(images)
        heat = local["cls_attention"].float().cpu().numpy()
        top = local["topk"].cpu().numpy()
        return heat, list(top), f"top-{top.shape[1]} of its local loss"
    bb = method.backbone                                          # a frozen image tower
    heat = cls_attention(bb, images, [bb.info.vision_layers - 1])[0].numpy()
    top = np.argsort(-heat, axis=1, kind="stable")[:, :k]
    return heat, list(top), f"CLS attention, top-{k}"


@torch.no_grad()
def explain(methods: Mapping[str, Method], halves: Mapping[str, Dataset], per_half: int = 4,
            batch_size: int = 128, k: int = 5, confusions: bool = True,
            predictions: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None
            ) -> Why:
    """The :class:`Why` of ``methods`` (label → trained method, one backbone) on ``per_half``
    test images of each of ``halves`` (name → dataset, e.g. ``{"base": …, "novel": …}``).

    ``batch_size`` is the evaluation batch of the confusion matrices (keep the runs'
    ``eval_batch_size`` for SEP's faithful mode, whose predictions depend on the batch).
    ``predictions[method][half] = (preds, labels)`` that a run saved
    (:func:`promptviz.train.loop.load_predictions`) are used instead of predicting again.
    Leaves every method set to the classes of the last half."""
    if not methods:
        raise ValueError("explain() needs at least one trained method")
    backbone = next(iter(methods.values())).backbone
    picked = {h: spread(d.test, per_half) for h, d in halves.items()}
    pixels, shown, labels, which = [], [], [], []
    for h, samples in picked.items():
        if samples:
            x, raw = load_images(samples, backbone)
            pixels.append((h, x))
            shown.append(raw)
            labels += [s.classname for s in samples]
            which += [h] * len(samples)
    if not pixels:
        raise ValueError("no test images to explain: the halves' test splits are empty")
    why = Why(images=np.concatenate(shown), labels=labels, halves=which,
              classnames={h: list(d.classnames) for h, d in halves.items()})
    for label, m in methods.items():
        logits, heat, marked = [], [], []
        for h, x in pixels:
            d = halves[h]
            m.set_classnames(list(d.classnames), d.template)
            m.eval()
            logits += list(m(x).float().cpu().numpy())
            hm, mk, why.looked[label] = looked_at(m, x, k)
            heat.append(hm)
            marked += mk
        why.logits[label], why.heat[label], why.marked[label] = logits, np.concatenate(heat), marked
        if confusions:
            why.confusion[label] = {}
            saved = (predictions or {}).get(label, {})
            for h, d in halves.items():
                preds, y = saved[h] if h in saved else predict(
                    m, d.test, list(d.classnames), d.template, batch_size)
                why.confusion[label][h] = confusion_matrix(preds, y, len(d.classnames))
    return why
