"""Array plumbing shared by the analysis tools and the views: numpy in, numpy out
(a torch tensor is accepted duck-typed, without importing torch here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_numpy(x: object, dtype: type | None = None) -> np.ndarray:
    """``x`` (numpy array, list, or torch tensor on any device) as a numpy array of ``dtype``
    (default: its own; a bf16 or fp16 tensor comes back as float32, integers stay integers)."""
    if hasattr(x, "detach"):
        t = x.detach().cpu()
        x = (t.float() if t.is_floating_point() else t).numpy()
    return np.asarray(x, dtype=dtype)


def to_uint8_image(image: np.ndarray, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> np.ndarray:
    """A ``[3, H, W]`` or ``[H, W, 3]`` float image (optionally CLIP-normalised) as uint8 HWC."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[0] == 3:
        x = x.transpose(1, 2, 0)
    if mean is not None and std is not None:
        x = x * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    if x.max() <= 1.0 + 1e-6:
        x = x * 255.0
    return np.clip(x, 0, 255).astype(np.uint8)
