"""Accuracy, base / novel / HM, and multi-seed aggregation.

Text features that do not depend on the image are computed **once per
evaluation** (``method.text_features()``) and reused for every test batch.

One HM convention everywhere (:data:`HM_CONVENTION`): an aggregated row's HM is the
harmonic mean of its own seed-averaged base and novel accuracies, as the papers' tables
report it, so every row's HM agrees with the base and novel printed next to it. Its
``hm_std`` is the standard deviation of the per-seed HMs (the spread of HM across seeds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from promptviz.data import ImageDataset, Sample, clip_transform
from promptviz.errors import Diverged
from promptviz.methods import Method
from promptviz.precision import autocast_for
from promptviz.progress import progress_bar


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2·b·n / (b + n), the headline number of base-to-novel tables."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


@torch.no_grad()
def predict(method: Method, samples: Sequence[Sample], classnames: list[str], template: str,
            batch_size: int = 128, num_workers: int = 0, progress: bool = False,
            desc: str = "predict", precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and true labels (int arrays ``[N]``) of ``method`` on ``samples``
    with ``classnames`` as the candidates, under :func:`autocast_for` ``precision``.
    ``batch_size`` matters for a method whose predictions depend on the other images of a
    batch (SEP's faithful mode): :func:`evaluate` with the same batch size scores exactly
    these predictions. Raises :class:`~promptviz.errors.Diverged` on NaN scores."""
    if not samples:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bb = method.backbone
    method.set_classnames(classnames, template)
    method.eval()
    loader = DataLoader(ImageDataset(samples, clip_transform(bb.image_size, bb.mean, bb.std)),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers)
    preds, labels = [], []
    with autocast_for(bb.device, precision):
        text = None if method.text_depends_on_image else method.text_features()  # once
        finite = torch.ones((), dtype=torch.bool, device=bb.device)
        for images, y, _ in progress_bar(loader, desc=desc, enabled=progress):
            logits = method(images.to(bb.device), text)        # logits(inputs(images))
            finite &= logits.isfinite().all()
            preds.append(logits.argmax(-1))                 # stays on the device: one sync
            labels.append(y)
    if not finite:             # argmax of NaN is an arbitrary class: no accuracy to report
        raise Diverged(f"the {method.name} model's scores are NaN or infinite ({desc}); "
                       "its weights diverged: train again with a lower --lr")
    return (torch.cat(preds).cpu().numpy().astype(np.int64),
            torch.cat(labels).numpy().astype(np.int64))


def evaluate(method: Method, samples: Sequence[Sample], classnames: list[str], template: str,
             batch_size: int = 128, num_workers: int = 0, progress: bool = True,
             desc: str = "eval", precision: str = "auto") -> float:
    """Top-1 accuracy (percent) of ``method`` on ``samples`` with ``classnames`` as candidates
    (:func:`predict`'s predictions scored; NaN for no samples)."""
    if not samples:
        return float("nan")
    preds, labels = predict(method, samples, classnames, template, batch_size, num_workers,
                            progress, desc, precision)
    return 100.0 * float((preds == labels).sum()) / len(samples)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


METRICS = ("base_acc", "new_acc", "hm", "acc")
HM_CONVENTION = ("HM is the harmonic mean of the seed-averaged base and novel accuracies "
                 "(as in the papers' tables); its ± is the std of the per-seed HMs")


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of ``base_acc``, ``new_acc`` and ``acc`` in ``results`` (one
    dict per seed), and the HM of the result.

    ``hm`` is ``harmonic_mean(base_acc, new_acc)`` of the *averaged* accuracies, never the
    mean of the per-seed HMs (which is lower whenever base and novel move apart across
    seeds), so the row's HM is the HM of its own base and novel. ``hm_std`` is the sample
    std of the per-seed HMs: the seed spread of HM, not the spread around ``hm`` of
    values that average to it. See :data:`HM_CONVENTION`.
    """
    out: dict[str, Any] = {"seeds": sorted(r.get("seed") for r in results), "n": len(results)}
    for key in METRICS:
        if key == "hm":                                      # after base_acc and new_acc
            if "base_acc" in out and "new_acc" in out:
                out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
                out["hm_std"] = mean_std(harmonic_mean(r["base_acc"], r["new_acc"])
                                         for r in results if "base_acc" in r and "new_acc" in r)[1]
            continue
        vals = [r[key] for r in results if key in r]
        if vals:
            out[key], out[f"{key}_std"] = mean_std(vals)
    return out


def format_pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"
