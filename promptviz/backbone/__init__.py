"""The frozen CLIP backbone, imported from here: ``from promptviz.backbone import load_clip``.

- :mod:`~promptviz.backbone.model` -- :class:`Backbone`: open_clip's blocks run one by one,
  with prompt embeddings, extra visual tokens, named hook points, deltas on the
  attention projections (LoRA) and an :class:`ActivationCache`;
- :mod:`~promptviz.backbone.weights` -- :func:`load_clip` (built-in models, open_clip names
  and tags, weight files) and :func:`save_clip`.
"""

from __future__ import annotations

from promptviz.backbone.model import (
    EDITABLE,
    POINTS,
    PROJECTIONS,
    ActivationCache,
    Backbone,
    BackboneInfo,
    Delta,
    Edit,
    Hook,
    activation_of,
    check_device,
    image_stats,
)
from promptviz.backbone.weights import (
    ASSETS_DIR,
    BUILTIN,
    CONFIG_DIR,
    OPENAI_EXTRAS,
    QUICK,
    TOYCLIP_WEIGHTS,
    WEIGHT_SUFFIXES,
    load_clip,
    register_configs,
    save_clip,
)

__all__ = [
    "ASSETS_DIR",
    "BUILTIN",
    "CONFIG_DIR",
    "EDITABLE",
    "OPENAI_EXTRAS",
    "POINTS",
    "PROJECTIONS",
    "QUICK",
    "TOYCLIP_WEIGHTS",
    "WEIGHT_SUFFIXES",
    "ActivationCache",
    "Backbone",
    "BackboneInfo",
    "Delta",
    "Edit",
    "Hook",
    "activation_of",
    "check_device",
    "image_stats",
    "load_clip",
    "register_configs",
    "save_clip",
]
