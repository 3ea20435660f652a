"""Interventions: replace one part of a trained method, measure what the accuracy does.

A view shows what a mechanism *looks like*; an intervention tests whether the method
*uses* it. ``with intervene(method, "read=class_mean"): ...`` runs the method with one
part replaced and restores it afterwards; :func:`intervention_table` evaluates a list of
them next to the untouched method, so a notebook (or a test) gets plain numbers:

TextRefiner (``t̂_c = t_c + α·W[t_c; r_c]``, ``r_c = softmax_j(q_c·A_j / τ)·A``):

* ``read=class_mean`` — every class reads the mean of all classes' reads: what is left
  is one bias shared by all classes, which cannot change an argmax of cosine scores much;
* ``read=zero`` — ``r_c = 0``: only ``W·t`` remains of the refiner;
* ``alpha=0`` — ``t̂ = t``: the wrapped method alone;
* ``cache=shuffled`` — each feature dimension of the cache permuted across slots (a
  permutation of whole slots would change nothing: the read is order-free).

CoOp / KgCoOp (and TextRefiner's wrapped method): ``context=initial`` — the learned
context replaced by the one training started from (``ctx_init``'s embedding; for a random
start, a fresh draw of the same seed).

SEP (visual top-K by mean squared activation, then a TFM per layer and tower, then a
residual ensemble with frozen CLIP):

* ``selection=random`` / ``selection=cls_attention`` / ``selection=lowest`` — the visual
  tokens chosen at random, by the block's CLS attention, or with the *lowest* energy
  instead of the highest (the TFMs stay as trained);
* ``tfm=raw`` (``tfm=raw_text``, ``tfm=raw_vision``) — no rebuild: the prompt states flow
  through the blocks as they are, in both towers (or one);
* ``ensemble=off`` — ``f̂ = f`` and ``t̂ = t``, the prompted features alone.

Deep prompts (IVLP, VPT, MaPLe, PromptSRC, PromptKD's student: prompts in the first J blocks
of a tower):

* ``vision_prompts=off`` — the image tower runs without prompts (frozen CLIP's image side);
* ``vision_prompts=random`` — every visual prompt token replaced by a random direction of
  the same norm (the control: do *these* tokens matter, or any extra tokens?);
* ``deep=off`` — only block 0's prompts: no replacement before blocks 1…J−1, in both towers;
* ``text_prompts=initial`` — the text prompts put back to where training started (the init
  phrase's words, fresh N(0, 0.02) draws of the seed for the deep ones). In MaPLe the
  visual prompts are made from them, so both towers change: the coupling at work.

CLIP-LoRA: ``lora=text_off`` / ``lora=vision_off`` — one tower's low-rank updates left out
(that tower is pre-trained CLIP again), the other's kept.

Any method, on the backbone's named hook points (:meth:`Backbone.hooks`):
``<tower>.<layer>.<point>=zero`` (e.g. ``vis.11.attn_out=zero``, ``txt.*.mlp_out=zero``)
— what that part of a block adds to the residual stream (``attn_out``, ``mlp_out``) or the
stream itself (``resid_pre``, ``resid_post``) set to zero. Not in :func:`available`'s list
(there are many); name them. An image-tower ablation changes a frozen-input method's
image features too: :func:`intervention_table` encodes the images again under it.

:func:`read_statistics` says whether the read can differ between classes at all: the
mean entropy of the read weights against the maximum ``ln M``, and the mean cosine between
two classes' reads. :func:`selection_control` is the control for any token selection: what
SEP selects on a blank (mean-colour) image, and how much of each image's selection is the
same tokens — a selection that reads the image should overlap the blank's no more than a
random one does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from promptviz.data import Sample, load_images
from promptviz.errors import Diverged, PromptvizError
from promptviz.methods import Method, build_method
from promptviz.methods.sep import cls_attention_scores, energy_scores
from promptviz.precision import autocast_for

TEXTREFINER = ("read=class_mean", "read=zero", "alpha=0", "cache=shuffled")
CONTEXT = ("context=initial",)
DEEP_PROMPTS = ("ivlp", "vpt", "maple", "promptsrc", "promptkd")
TEXT_PROMPTS = ("text_prompts=initial",)
VISION_PROMPTS = ("vision_prompts=off", "vision_prompts=random")
SEP = ("selection=random", "selection=cls_attention", "selection=lowest", "tfm=raw",
       "tfm=raw_text", "tfm=raw_vision", "ensemble=off")


def hook_ablation(name: str) -> str | None:
    """The hook point (pattern) of a ``<tower>.<layer>.<point>=zero`` intervention, else
    ``None`` (the point is checked by :meth:`Backbone.hooks`)."""
    point, _, how = name.rpartition("=")
    return point if how == "zero" and point.startswith(("vis.", "txt.")) else None


def available(method: Method) -> tuple[str, ...]:
    """The interventions :func:`intervene` knows for ``method`` by name (and, for any
    method, ``<tower>.<layer>.<point>=zero`` on a named hook point)."""
    if method.name == "textrefiner":
        return TEXTREFINER + CONTEXT
    if method.name in ("coop", "kgcoop"):
        return CONTEXT
    if method.name == "sep":
        return SEP
    if method.name == "clip_lora":
        return tuple(f"lora={'text' if t == 'txt' else 'vision'}_off" for t in method.adapted)
    if method.name in DEEP_PROMPTS:
        return ((TEXT_PROMPTS if method.n_text else ()) + (VISION_PROMPTS if method.n_vision
                                                            else ()) + ("deep=off",))
    return ()


@contextlib.contextmanager
def intervene(method: Method, name: str, seed: int = 0) -> Iterator[Method]:
    """``method`` with the part ``name`` replaced (see the module docstring) inside the
    ``with`` block; restored on exit, even after an error. ``seed`` drives the random ones."""
    point = hook_ablation(name)
    if point is not None:
        with method.backbone.hooks({point: torch.zeros_like}):
            yield method
        return
    if name not in available(method):
        raise PromptvizError(f"no intervention {name!r} for {method.name}; known: "
                             f"{', '.join(available(method)) or 'none'}, or a hook point "
                             "set to zero, e.g. 'vis.11.attn_out=zero'")
    restore: list[Any] = []

    def override(attr: str, value: Any) -> None:
        """Set ``method.attr`` on the instance; on exit put back exactly what was there
        (an outer intervention's override, or nothing), so interventions nest."""
        own = vars(method)
        had, old = attr in own, own.get(attr)
        setattr(method, attr, value)
        restore.append(lambda: setattr(method, attr, old) if had else delattr(method, attr))

    try:
        if name.startswith("read="):
            original = method.read

            def class_mean(t: torch.Tensor) -> torch.Tensor:
                return original(t).mean(0, keepdim=True).expand(len(t), -1)
            override("read", class_mean if name == "read=class_mean" else (
                lambda t: torch.zeros_like(t, dtype=torch.float32)))
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
        elif name.startswith("selection="):
            override("token_scores", _scores(method, name.split("=")[1], seed))
        elif name.startswith("tfm=raw"):
            towers = {"tfm=raw": ("txt", "vis"), "tfm=raw_text": ("txt",),
                      "tfm=raw_vision": ("vis",)}[name]
            fuse = method.fuse

            def raw(tower: str, layer: int, p: torch.Tensor, t: torch.Tensor,
                    need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
                return (p, None) if tower in towers else fuse(tower, layer, p, t, need_weights)
            override("fuse", raw)
        elif name == "ensemble=off":
            ensemble = method.options.ensemble
            method.options.ensemble = False
            restore.append(lambda: setattr(method.options, "ensemble", ensemble))
        elif name.startswith("lora="):
            off = "txt" if name == "lora=text_off" else "vis"
            deltas = method.deltas
            override("deltas", lambda tower: {} if tower == off else deltas(tower))
        elif name == "vision_prompts=off":
            override("encode_image_prompted", method.backbone.encode_image)
        elif name == "vision_prompts=random":
            gen = torch.Generator().manual_seed(seed)

            def like(p: torch.Tensor) -> torch.Tensor:   # random directions, the same norms
                r = torch.randn(p.shape, generator=gen).to(p.device, p.dtype)
                return F.normalize(r, dim=-1) * p.detach().norm(dim=-1, keepdim=True)
            shallow, deep = method.vision_prompts()
            fixed = (like(shallow), [like(p) for p in deep])
            override("vision_prompts", lambda: fixed)
        elif name == "deep=off":
            text, vision = method.text_prompts, method.vision_prompts
            override("text_prompts", lambda: (text()[0], []))
            override("vision_prompts", lambda: (vision()[0], []))
        elif name == "text_prompts=initial":
            fresh = fresh_copy(method, seed)
            parts = (method.prompt.ctx, *method.text_deep)
            trained = [p.detach().clone() for p in parts]
            restore.append(lambda: [p.data.copy_(v) for p, v in zip(parts, trained)])
            with torch.no_grad():
                for part, start in zip(parts, (fresh.prompt.ctx, *fresh.text_deep)):
                    part.copy_(start.to(part.device))
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


def _scores(method: Method, rule: str, seed: int) -> Any:
    """A replacement for ``SEP.token_scores``: ``random`` (uniform, from a generator seeded
    once per intervention), ``cls_attention`` (head-averaged attention of CLS to each token
    in the block the tokens enter, computed on the tokens as they arrive, i.e. with the
    prompt states before this layer's rebuild in the softmax) or ``lowest`` (minus the
    energy: the quietest tokens win)."""
    gen = torch.Generator().manual_seed(seed)

    def scores(layer: int, x: torch.Tensor, n: int) -> torch.Tensor:
        if rule == "random":
            return torch.rand(x.shape[0], n, generator=gen).to(x.device)
        if rule == "lowest":
            return -energy_scores(x, n)
        return cls_attention_scores(method.backbone, layer, x, n)
    return scores


def fresh_copy(method: Method, seed: int = 0) -> Method:
    """``method`` as training started: built again with the same options and classes, its
    random draws from ``seed`` (the global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_method(method.name, method.backbone, method.classnames,
                            method.template, dataclasses.asdict(method.options))


def prompt_shift(trained: Method, start: Method) -> dict[str, list[float]]:
    """How far training moved a deep-prompt method's prompts, per prompted block and tower:
    ``‖P_trained − P_start‖ / ‖P_start‖`` (``start``: the same method as training began,
    e.g. the checkpoint of the same run with ``--epochs 0``). MaPLe's visual prompts are
    compared as made by the couplings, ``F_l(P_l)``."""
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for tower, get in (("text", "text_prompts"), ("vision", "vision_prompts")):
            (a0, a), (b0, b) = getattr(trained, get)(), getattr(start, get)()
            if a0 is None:
                continue
            out[tower] = [float((p - q.to(p.device)).norm() / q.norm())
                          for p, q in zip([a0, *a], [b0, *b])]
    return out


@torch.no_grad()
def teacher_student(method: Method, images: torch.Tensor, batch_size: int = 64
                    ) -> dict[str, np.ndarray]:
    """PromptKD: per image, the teacher's and the student's predicted class (``"teacher"``,
    ``"student"``) and ``KL(p^T ‖ p^S)`` (``"kl"``), for the method's current classes."""
    if not hasattr(method, "teacher_logits"):
        raise PromptvizError(f"{method.name} has no teacher; teacher_student reads a PromptKD "
                             "student")
    method.eval()
    dev, out = method.backbone.device, {"teacher": [], "student": [], "kl": []}
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev)
        zt, zs = method.teacher_logits(x).float(), method.logits(x).float()
        out["teacher"].append(zt.argmax(-1).cpu())
        out["student"].append(zs.argmax(-1).cpu())
        out["kl"].append(F.kl_div(zs.log_softmax(-1), zt.log_softmax(-1), reduction="none",
                                  log_target=True).sum(-1).cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def lora_update(method: Method) -> dict[str, list[float]]:
    """CLIP-LoRA's update per adapted block and tower, relative to the pre-trained weights:
    ``‖ΔW‖ / ‖W0‖`` over the block's adapted projections together (``ΔW = γ·B A``; ``W0``
    the q, k, v rows of the attention's packed input projection, or its output projection)."""
    if method.name != "clip_lora":
        raise PromptvizError(f"lora_update reads CLIP-LoRA's updates; {method.name} has none")
    towers = {"txt": method.backbone.model.transformer,
              "vis": method.backbone.model.visual.transformer}
    out: dict[str, list[float]] = {}
    with torch.no_grad():
        for tower, layers in method.adapted.items():
            values = []
            for layer in layers:
                attn = towers[tower].resblocks[layer].attn
                w = attn.in_proj_weight.float().chunk(3)
                base = {"q": w[0], "k": w[1], "v": w[2], "o": attn.out_proj.weight.float()}
                delta = sq = 0.0
                for key, lora in method.deltas(tower).items():
                    if int(key.split(".")[1]) == layer:
                        p = key.split(".")[2]
                        delta += float(lora.delta_weight().float().pow(2).sum())
                        sq += float(base[p].pow(2).sum())
                values.append(math.sqrt(delta / sq))
            out["text" if tower == "txt" else "vision"] = values
    return out


def initial_context(method: Method, seed: int = 0) -> torch.Tensor:
    """The context a CoOp-style prompt started from: a freshly built method with the same
    options (``ctx_init``'s embedding, or a random draw under ``seed``)."""
    prompted = method.base if method.name == "textrefiner" else method
    fresh = fresh_copy(prompted, seed)
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


def selection_control(method: Method, images: torch.Tensor, object_patches: Any = None,
                      blank: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """The control for SEP's visual selection, one row per rebuilt layer.

    ``blank`` (default: one image of the backbone's mean colour, zeros after normalising)
    goes through the method alone; ``images`` ``[B, 3, S, S]`` as one batch. Each row:
    ``blank`` (the tokens the blank selects, 0 = CLS), ``overlap`` (mean share of an
    image's K tokens that the blank selects too) against ``chance`` = K / N (a random
    selection's expected overlap, N candidate tokens), ``top_token`` and ``top_share`` (the
    token chosen for the most images, and for what share of them), and, given
    ``object_patches`` (``[B, g²]`` bool), ``on_object`` against ``area`` (its chance).
    With a batch selection (faithful mode) one choice serves every image, so ``top_share``
    is 1 by construction and ``top_token`` is one of that choice's tokens."""
    from promptviz.analysis.scores import object_area_share, on_object_share, tokens_to_patches
    if method.name != "sep":
        raise PromptvizError(f"selection_control is for SEP's token selection, not {method.name}")
    blank = torch.zeros_like(images[:1]) if blank is None else blank
    seen = method.selection_record(images)["vision"]
    empty = method.selection_record(blank)["vision"]
    rows = []
    for layer, rec in seen.items():
        sel = np.asarray(rec["selected"])
        sel = np.broadcast_to(sel, (len(images), sel.shape[-1]))      # batch choice: one for all
        k, n = sel.shape[1], rec["scores"].shape[1]
        ref = set(np.asarray(empty[layer]["selected"]).reshape(-1).tolist())
        counts = np.bincount(sel.reshape(-1), minlength=n)             # images choosing each token
        row = {"layer": int(layer), "blank": sorted(ref),
               "overlap": float(np.mean([len(ref & set(r.tolist())) / k for r in sel])),
               "chance": k / n, "top_token": int(counts.argmax()),
               "top_share": float(counts.max() / len(sel))}
        if object_patches is not None:
            row["on_object"] = on_object_share(tokens_to_patches(sel), object_patches)
            row["area"] = object_area_share(object_patches)
        rows.append(row)
    return rows


def intervention_table(method: Method, samples: Sequence[Sample] | torch.Tensor,
                       classnames: list[str], template: str,
                       names: Sequence[str] | None = None, seed: int = 0,
                       batch_size: int | None = None, labels: torch.Tensor | None = None,
                       precision: str = "auto") -> list[dict[str, Any]]:
    """Accuracy of ``method`` on ``samples`` untouched (``"none"``) and under each
    intervention in ``names`` (default: all it has), with ``delta`` against untouched.

    The images are read once: pass ``samples`` as a list of :class:`Sample` or, to reuse
    them across calls, as a preprocessed ``[N, 3, S, S]`` tensor with ``labels``.
    ``batch_size`` defaults to the method's evaluation batch (SEP's faithful mode depends
    on it), in file order and under the same ``precision`` as
    :func:`promptviz.train.evaluate.evaluate` (NaN scores raise :class:`Diverged` as there)."""
    if isinstance(samples, torch.Tensor):
        if labels is None:
            raise PromptvizError("intervention_table got an image tensor without its labels")
        images = samples
    else:
        bb = method.backbone
        images = load_images(samples, bb.image_size, bb.mean, bb.std)
        labels = torch.tensor([s.label for s in samples])
    labels = labels.cpu()
    if len(labels) != len(images):
        raise PromptvizError(f"intervention_table got {len(images)} images and "
                             f"{len(labels)} labels")
    batch = batch_size or method.defaults.eval_batch_size
    method.set_classnames(classnames, template)
    method.eval()
    dev = method.backbone.device

    # The method's inputs once: a method with a frozen image side (all but SEP) sees the
    # same image features under every intervention on the method's own parts (they act on
    # the text side); SEP's x is the pixels, and its prompted image pass runs again each
    # time. An ablation in the image tower changes x itself: encoded again under it.
    def inputs() -> list[Any]:
        with torch.no_grad(), autocast_for(dev, precision):
            return [method.inputs(images[i:i + batch].to(dev))
                    for i in range(0, len(images), batch)]
    clean = inputs()

    @torch.no_grad()
    def acc(name: str = "none") -> float:
        point = hook_ablation(name)
        xs = inputs() if point is not None and point.startswith("vis.") else clean
        with autocast_for(dev, precision):        # as evaluate(): bf16 where it would be
            text = None if method.text_depends_on_image else method.text_features()
            logits = [method.logits(x, text) for x in xs]
        if not all(bool(x.isfinite().all()) for x in logits):
            raise Diverged(f"the {method.name} model's scores are NaN or infinite under "
                           "an intervention or untouched; no accuracy to report")
        pred = torch.cat([x.argmax(-1).cpu() for x in logits])
        return 100.0 * int((pred == labels).sum()) / len(labels)
    base = acc()
    rows = [{"intervention": "none", "acc": base, "delta": 0.0}]
    for name in names if names is not None else available(method):
        with intervene(method, name, seed):
            a = acc(name)
        rows.append({"intervention": name, "acc": a, "delta": a - base})
    return rows
