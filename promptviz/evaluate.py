"""Accuracy, base / novel / HM, and multi-seed aggregation.

Text features that do not depend on the image are computed **once per
evaluation** (``method.text_features()``) and reused for every test batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from promptviz.data import ImageDataset, Sample, clip_transform
from promptviz.methods import Method
from promptviz.progress import progress_bar


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2·b·n / (b + n), the headline number of base-to-novel tables."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


@torch.no_grad()
def evaluate(method: Method, samples: Sequence[Sample], classnames: list[str], template: str,
             batch_size: int = 128, num_workers: int = 0, progress: bool = True,
             desc: str = "eval", precision: str = "auto") -> float:
    """Top-1 accuracy (percent) of ``method`` on ``samples`` with ``classnames`` as candidates
    (bf16 autocast on CUDA unless ``precision="fp32"``)."""
    if not samples:
        return float("nan")
    bb = method.backbone
    method.set_classnames(classnames, template)
    method.eval()
    loader = DataLoader(ImageDataset(samples, clip_transform(bb.image_size, bb.mean, bb.std)),
                        batch_size=batch_size, shuffle=False, num_workers=num_workers)
    with autocast_for(bb.device, precision):
        text = None if method.text_depends_on_image else method.text_features()  # once
        correct = torch.zeros((), dtype=torch.long, device=bb.device)
        for images, labels, _ in progress_bar(loader, desc=desc, enabled=progress):
            images, labels = images.to(bb.device), labels.to(bb.device)
            correct += (method.logits(images, text).argmax(-1) == labels).sum()
    return 100.0 * correct.item() / len(samples)


def autocast_for(device: torch.device, precision: str = "auto") -> Any:
    """bf16 autocast on CUDA (unless precision="fp32"); a no-op context on CPU."""
    enabled = device.type == "cuda" and precision in {"auto", "bf16"}
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


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


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every metric present in ``results`` (one dict per seed)."""
    out: dict[str, Any] = {"seeds": sorted(r.get("seed") for r in results), "n": len(results)}
    for key in METRICS:
        vals = [r[key] for r in results if key in r]
        if vals:
            out[key], out[f"{key}_std"] = mean_std(vals)
    return out


def format_pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"
