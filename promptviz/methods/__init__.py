"""Every method behind one interface (see :mod:`promptviz.methods.base`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from promptviz.backbone import Backbone, check_device, load_clip
from promptviz.errors import PromptvizError, did_you_mean
from promptviz.methods.base import Method, TrainDefaults, parse_options
from promptviz.methods.clip_adapter import CLIPAdapter
from promptviz.methods.clip_lora import CLIPLoRA
from promptviz.methods.cocoop import CoCoOp
from promptviz.methods.coop import CoOp, nearest_words
from promptviz.methods.ivlp import IVLP
from promptviz.methods.kgcoop import KgCoOp
from promptviz.methods.maple import MaPLe
from promptviz.methods.promptkd import PromptKD
from promptviz.methods.promptsrc import PromptSRC
from promptviz.methods.sep import SEP
from promptviz.methods.textrefiner import TextRefiner
from promptviz.methods.vpt import VPT
from promptviz.methods.zeroshot import ZeroShot

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (ZeroShot, CoOp, CoCoOp, KgCoOp, TextRefiner, SEP, CLIPAdapter, IVLP,
                         VPT, MaPLe, PromptSRC, CLIPLoRA, PromptKD)}


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


def load_trained(checkpoint: str | Path, device: str = "cpu",
                 loaded: tuple[dict, dict] | None = None) -> tuple[Method, dict[str, Any]]:
    """The trained method in a checkpoint folder (``promptviz train``'s ``--out``) and its
    metadata: the backbone named in the checkpoint is loaded, the method rebuilt with the
    options and class names it was trained with, then its trainable state restored."""
    from promptviz.checkpoint import load_checkpoint
    state, meta = loaded or load_checkpoint(
        checkpoint, ("method", "backbone", "classnames", "template", "options"))
    model = load_clip(meta["backbone"], check_device(device))
    method = build_method(meta["method"], model, meta["classnames"], meta["template"],
                          meta["options"])
    method.load_trainable_state(state)
    method.eval()
    return method, meta


__all__ = ["METHODS", "Method", "TrainDefaults", "build_method", "load_trained", "method_class",
           "nearest_words", "CLIPAdapter", "CLIPLoRA", "CoOp", "CoCoOp", "IVLP", "KgCoOp",
           "MaPLe", "PromptKD", "PromptSRC", "SEP", "TextRefiner", "VPT", "ZeroShot"]
