"""promptviz: learn, run and compare prompt tuning for CLIP.

    from promptviz import load_clip, load_dataset, build_method
    clip = load_clip("toyclip")                       # or "ViT-B-16:openai" on a GPU
    ds = load_dataset("toy_fine", "data/toyworld")
    coop = build_method("coop", clip, ds.classnames, ds.template)

The names below are imported on first use (PEP 562), so ``import promptviz.cli`` and
``promptviz --help`` do not pay for torch and open_clip.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from promptviz.errors import PromptvizError

__version__ = "0.1.0"

_LAZY = {"ActivationCache": "promptviz.backbone", "Backbone": "promptviz.backbone",
         "load_clip": "promptviz.backbone", "few_shot": "promptviz.data",
         "load_dataset": "promptviz.data", "subsample_classes": "promptviz.data",
         "METHODS": "promptviz.methods", "build_method": "promptviz.methods"}

__all__ = ["ActivationCache", "Backbone", "METHODS", "PromptvizError", "build_method",
           "few_shot", "load_clip", "load_dataset", "subsample_classes"]

if TYPE_CHECKING:                              # for type checkers and IDEs: the real imports
    from promptviz.backbone import ActivationCache, Backbone, load_clip
    from promptviz.data import few_shot, load_dataset, subsample_classes
    from promptviz.methods import METHODS, build_method


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value                 # next time a plain attribute
        return value
    raise AttributeError(f"module 'promptviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
