"""Mixed precision: one setting for every command (``--precision``).

Master weights stay fp32 in every case; ``autocast_for`` runs the forward in bf16 or fp16
where asked (the authors train fp16 weights; see the README's fidelity table). bf16
autocast also works on a CPU, which is how the tests exercise the GPU's path.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from promptviz.config import PRECISIONS
from promptviz.errors import PromptvizError


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``precision`` on ``device``: ``auto`` is bf16 on a
    GPU that supports it and fp32 elsewhere. Master weights stay fp32 in every case (the
    authors train fp16 weights; see the README's fidelity table)."""
    if precision not in PRECISIONS:
        raise PromptvizError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if device.type == "cuda" and bf16_ok else "fp32"
    if precision == "bf16" and not bf16_ok:
        raise PromptvizError("this GPU does not support bf16; use --precision fp16 or fp32")
    return precision


def autocast_for(device: torch.device, precision: str = "auto") -> Any:
    """Autocast to the resolved ``precision`` on ``device`` (a no-op context for fp32). bf16
    also works on CPU, which is how the tests exercise the GPU's mixed-precision path."""
    p = resolve_precision(precision, device)
    if p == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type,
                          dtype=torch.bfloat16 if p == "bf16" else torch.float16)
