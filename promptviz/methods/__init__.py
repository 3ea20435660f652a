"""Every method behind one interface (see :mod:`promptviz.methods.base`)."""

from __future__ import annotations

from typing import Any

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError, did_you_mean
from promptviz.methods.base import Method, TrainDefaults, parse_options
from promptviz.methods.clip_adapter import CLIPAdapter
from promptviz.methods.clip_lora import CLIPLoRA
from promptviz.methods.cocoop import CoCoOp
from promptviz.methods.coop import CoOp, nearest_words
from promptviz.methods.ivlp import IVLP
from promptviz.methods.kgcoop import KgCoOp
from promptviz.methods.maple import MaPLe
from promptviz.methods.promptsrc import PromptSRC
from promptviz.methods.sep import SEP
from promptviz.methods.textrefiner import TextRefiner
from promptviz.methods.vpt import VPT
from promptviz.methods.zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (ZeroShot, CoOp, CoCoOp, KgCoOp, TextRefiner, SEP, CLIPAdapter, IVLP,
                         VPT, MaPLe, PromptSRC, CLIPLoRA)}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise PromptvizError(f"unknown method {name!r}{did_you_mean(name, METHODS)}; choose one "
                             f"of {sorted(METHODS)}")
    return METHODS[name]


def build_method(name: str, backbone: Backbone, classnames: list[str], template: str,
                 options: dict[str, Any] | None = None) -> Method:
    """Create method ``name`` for ``classnames``; ``options`` are ``key=value`` overrides."""
    cls = method_class(name)
    return cls(backbone, classnames, template, parse_options(cls.Options, options))


__all__ = ["METHODS", "Method", "TrainDefaults", "build_method", "method_class",
           "nearest_words", "CLIPAdapter", "CLIPLoRA", "CoOp", "CoCoOp", "IVLP", "KgCoOp",
           "MaPLe", "PromptSRC", "SEP", "TextRefiner", "VPT", "ZeroShot"]
