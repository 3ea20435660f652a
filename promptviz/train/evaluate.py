"""Accuracy, base / novel / HM, and multi-seed aggregation.

Text features that do not depend on the image are computed **once per
evaluation** (``method.text_features()``) and reused for every test batch.

The numbers made from accuracies (HM, mean ± std over seeds, one aggregation convention)
are :mod:`promptviz.metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from promptviz.data import ImageDataset, Sample, clip_transform
from promptviz.errors import Diverged
from promptviz.methods import Method
from promptviz.precision import autocast_for
from promptviz.progress import progress_bar


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
