"""Interventions: replace one part of a trained method, measure what the accuracy does.

A view shows what a mechanism *looks like*; an intervention tests whether the method
*uses* it. ``with intervene(method, "read=class_mean"): ...`` runs the method with one
part replaced and restores it afterwards; :func:`intervention_table` evaluates a list of
them next to the untouched method, so a notebook (or a test) gets plain numbers:

TextRefiner (``t̂_c = t_c + α·W[t_c; r_c]``, ``r_c = softmax_j(q_c·A_j)·A``):

* ``read=class_mean`` — every class reads the mean of all classes' reads: what is left
  is one bias shared by all classes, which cannot change an argmax of cosine scores much;
* ``read=zero`` — ``r_c = 0``: only ``W·t`` remains of the refiner;
* ``alpha=0`` — ``t̂ = t``: the wrapped method alone;
* ``cache=shuffled`` — each feature dimension of the cache permuted across slots (a
  permutation of whole slots would change nothing: the read is order-free).

CoOp / KgCoOp (and TextRefiner's wrapped method): ``context=initial`` — the learned
context replaced by the one training started from (``ctx_init``'s embedding; for a random
start, a fresh draw of the same seed).

:func:`read_statistics` says whether the read can differ between classes at all: the
mean entropy of the read weights against the maximum ``ln M``, and the mean cosine between
two classes' reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from promptviz.data import Sample
from promptviz.errors import PromptvizError
from promptviz.evaluate import evaluate
from promptviz.methods import Method, build_method

TEXTREFINER = ("read=class_mean", "read=zero", "alpha=0", "cache=shuffled")
CONTEXT = ("context=initial",)


def available(method: Method) -> tuple[str, ...]:
    """The interventions :func:`intervene` knows for ``method``."""
    if method.name == "textrefiner":
        return TEXTREFINER + CONTEXT
    if method.name in ("coop", "kgcoop"):
        return CONTEXT
    return ()


@contextlib.contextmanager
def intervene(method: Method, name: str, seed: int = 0) -> Iterator[Method]:
    """``method`` with the part ``name`` replaced (see the module docstring) inside the
    ``with`` block; restored on exit, even after an error. ``seed`` drives the random ones."""
    if name not in available(method):
        raise PromptvizError(f"no intervention {name!r} for {method.name}; known: "
                             f"{', '.join(available(method)) or 'none'}")
    restore: list[Any] = []
    try:
        if name.startswith("read="):
            original = method.read

            def class_mean(t: torch.Tensor) -> torch.Tensor:
                return original(t).mean(0, keepdim=True).expand(len(t), -1)
            method.read = class_mean if name == "read=class_mean" else (   # type: ignore
                lambda t: torch.zeros_like(t, dtype=torch.float32))
            restore.append(lambda: delattr(method, "read"))
        elif name == "alpha=0":
            alpha = method.options.alpha
            method.options.alpha = 0.0
            restore.append(lambda: setattr(method.options, "alpha", alpha))
        elif name == "cache=shuffled":
            cache = method.cache.detach().clone()
            gen = torch.Generator().manual_seed(seed)
            order = torch.stack([torch.randperm(cache.shape[0], generator=gen)
                                 for _ in range(cache.shape[1])], dim=1)
            with torch.no_grad():
                method.cache.copy_(cache.gather(0, order.to(cache.device)))
            restore.append(lambda: method.cache.data.copy_(cache))
        elif name == "context=initial":
            prompt = (method.base if method.name == "textrefiner" else method).prompt
            ctx = prompt.ctx.detach().clone()
            with torch.no_grad():
                prompt.ctx.copy_(initial_context(method, seed))
            restore.append(lambda: prompt.ctx.data.copy_(ctx))
        yield method
    finally:
        for undo in reversed(restore):
            undo()


def initial_context(method: Method, seed: int = 0) -> torch.Tensor:
    """The context a CoOp-style prompt started from: a freshly built method with the same
    options (``ctx_init``'s embedding, or a random draw under ``seed``)."""
    prompted = method.base if method.name == "textrefiner" else method
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_method(prompted.name, prompted.backbone, prompted.classnames,
                             prompted.template, dataclasses.asdict(prompted.options))
    return fresh.prompt.ctx.detach().to(prompted.prompt.ctx.device)


def read_statistics(method: Method) -> dict[str, float]:
    """Whether TextRefiner's read differs between the current classes: ``entropy`` (mean
    over classes of the read weights' entropy) against ``max_entropy = ln M``, and
    ``read_cosine``, the mean cosine between two different classes' reads (1 = one read
    shared by all, which only adds a common bias)."""
    if method.name != "textrefiner":
        raise PromptvizError(f"read statistics are TextRefiner's; {method.name} has no cache")
    with torch.no_grad():
        w = method.read_weights()
        entropy = float(-(w * w.clamp_min(1e-12).log()).sum(-1).mean())
        r = F.normalize(method.read(method.base_text()), dim=-1)
        cos = r @ r.t()
        c = len(r)
        mean_cos = float((cos.sum() - cos.diagonal().sum()) / (c * (c - 1))) if c > 1 else 1.0
    return {"entropy": entropy, "max_entropy": math.log(w.shape[1]), "read_cosine": mean_cos,
            "classes": float(len(w)), "slots": float(w.shape[1])}


def intervention_table(method: Method, samples: Sequence[Sample], classnames: list[str],
                       template: str, names: Sequence[str] | None = None, seed: int = 0,
                       batch_size: int = 128) -> list[dict[str, Any]]:
    """Accuracy of ``method`` on ``samples`` untouched (``"none"``) and under each
    intervention in ``names`` (default: all it has), with ``delta`` against untouched."""
    def acc() -> float:
        return evaluate(method, samples, classnames, template, batch_size, progress=False)
    base = acc()
    rows = [{"intervention": "none", "acc": base, "delta": 0.0}]
    for name in names if names is not None else available(method):
        with intervene(method, name, seed):
            a = acc()
        rows.append({"intervention": name, "acc": a, "delta": a - base})
    return rows
