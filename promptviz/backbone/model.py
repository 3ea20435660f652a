"""A frozen open_clip CLIP with the handles prompt tuning needs.

`load_clip(spec)` returns a :class:`Backbone`: the open_clip model (frozen, eval
mode) plus three things open_clip does not offer directly:

* ``encode_text_embeddings(x, ids)`` runs the text tower from *token embeddings*,
  so learned prompt vectors can stand where word embeddings were (CoOp & co.);
* ``encode_image(images, extra_tokens=...)`` can append extra tokens to the
  visual sequence after the positional embeddings (SEP's visual prompts);
* both encoders take an optional ``hook(layer, x) -> x`` called before every
  transformer block (SEP rebuilds prompt tokens there) and an optional
  :class:`ActivationCache` that records every block's input tokens and, for
  chosen visual layers, the head-averaged attention (TransformerLens-style:
  ``cache["vis_resid", 11]``, ``cache["vis_attn", 11]``);
* **named hook points** (TransformerLens's, :data:`POINTS`): every block of either tower
  has ``<tower>.<layer>.resid_pre`` (the tokens it reads), ``.attn_out`` and ``.mlp_out``
  (what its attention and its MLP add to the residual stream), ``.resid_post`` (what it
  writes) and ``.attn_pattern`` (head-averaged attention, recorded only), ``tower`` being
  ``vis`` or ``txt``. ``ActivationCache(points=["vis.11.attn_out", "txt.*.mlp_out"])``
  records them by name (glob patterns allowed) and ``with backbone.hooks({"vis.3.mlp_out":
  fn}):`` edits them (``fn(x)`` returns the replacement, or ``None`` to keep ``x``);
* **projection deltas** (what LoRA trains): ``with backbone.deltas({"vis.3.q": fn}):`` adds
  ``fn(x)`` to the query (``q``), key (``k``), value (``v``) or output (``o``) projection of
  a block's attention, ``x`` being that projection's input. The weights are never touched:
  the delta lives for the ``with`` block only, so other methods on the same backbone still
  see the pre-trained towers.

The blocks themselves are open_clip's own modules, called in order; nothing is
forked. With no prompt, hook or extra token, the outputs equal open_clip's
``encode_text`` / ``encode_image`` on the same weights (tested).

How a backbone is loaded (the specs :func:`load_clip` understands, the activation it picks)
is :mod:`promptviz.backbone.weights`'s job.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import Tensor, nn

from promptviz.errors import PromptvizError

Hook = Callable[[int, Tensor], Tensor]
Edit = Callable[[Tensor], "Tensor | None"]          # a named hook point's edit
Delta = Callable[[Tensor], Tensor]                  # added to a projection of its input
# Named hook points of every block (``<vis|txt>.<layer>.<point>``); all but attn_pattern
# can be edited. attn_out / mlp_out are what the block adds to the residual stream, after
# open_clip's LayerScale, so resid_post = resid_pre + attn_out + mlp_out.
POINTS = ("resid_pre", "attn_pattern", "attn_out", "mlp_out", "resid_post")
EDITABLE = ("resid_pre", "attn_out", "mlp_out", "resid_post")
# The attention projections a delta can be added to (``<vis|txt>.<layer>.<q|k|v|o>``).
PROJECTIONS = ("q", "k", "v", "o")


class ActivationCache(dict):
    """Per-layer activations, indexed like TransformerLens: ``cache["vis_resid", 3]``.

    Keys are ``(name, layer)`` tuples or plain names:

    * ``("vis_resid", l)`` — visual tokens entering block ``l``, ``[B, N, D_v]``
    * ``("vis_attn", l)`` — head-averaged attention of visual block ``l``, ``[B, N, N]``
      (only for layers listed in ``attn_layers``; row 0 is CLS → every token)
    * ``"vis_final"`` — visual tokens after the last block, ``[B, N, D_v]``
    * ``"vis_proj"`` — every visual token through ``ln_post`` and ``proj``, ``[B, N, d]``
    * ``("txt_resid", l)`` — text tokens entering block ``l``, ``[C, L, D_t]``
    * a named hook point asked for in ``points`` (glob patterns: ``"vis.*.mlp_out"``),
      under its name: ``cache["vis.11.attn_out"]`` (see :data:`POINTS`)
    """

    def __init__(self, attn_layers: Iterable[int] = (), keep_resid: bool = True,
                 points: Iterable[str] = ()) -> None:
        super().__init__()
        self.attn_layers = set(attn_layers)
        self.keep_resid = keep_resid
        self.points = tuple(points)

    def wants(self, name: str) -> bool:
        """Whether the named hook point ``name`` is to be recorded."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.points)

    def cls_attention(self, layer: int) -> Tensor:
        """CLS → patch attention of a visual layer, ``[B, N-1]`` (heads averaged)."""
        return self["vis_attn", layer][:, 0, 1:]


@dataclass
class BackboneInfo:
    name: str
    embed_dim: int
    text_width: int
    vision_width: int
    image_size: int
    patch_size: int
    context_length: int
    text_layers: int
    vision_layers: int


class Backbone(nn.Module):
    """A frozen open_clip CLIP; see the module docstring."""

    def __init__(self, model: nn.Module, name: str, tokenizer: Callable | None = None,
                 activation_source: str = "") -> None:
        super().__init__()
        if not hasattr(model, "visual") or not hasattr(model.visual, "conv1"):
            raise PromptvizError(
                f"backbone {name!r} is not a CLIP with a ViT image tower; promptviz needs "
                "a ViT (e.g. ViT-B-16) because the methods read patch tokens.")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        #: the MLP activation the towers use: "QuickGELU" (OpenAI's CLIP) or "GELU"
        self.activation = activation_of(model)
        #: why the loader chose it (see promptviz.backbone.weights)
        self.activation_source = activation_source
        self.tokenizer = tokenizer or open_clip.get_tokenizer("ViT-B-16",
                                                              context_length=model.context_length)
        self.mean, self.std = image_stats(model.visual)
        self._edits: dict[str, Edit] = {}     # named hook points edited now (see hooks())
        self._deltas: dict[str, list[Delta]] = {}   # projection deltas now (see deltas())

    # ------------------------------------------------------------------ facts
    @property
    def info(self) -> BackboneInfo:
        v = self.model.visual
        return BackboneInfo(
            name=self.name, embed_dim=self.embed_dim, text_width=self.text_width,
            vision_width=self.vision_width, image_size=self.image_size,
            patch_size=v.patch_size[0], context_length=self.model.context_length,
            text_layers=len(self.model.transformer.resblocks),
            vision_layers=len(v.transformer.resblocks))

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)

    @property
    def text_width(self) -> int:
        return int(self.model.token_embedding.weight.shape[1])

    @property
    def vision_width(self) -> int:
        return int(self.model.visual.class_embedding.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.model.visual.image_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.model.visual.grid_size)

    @property
    def logit_scale(self) -> float:
        """``s = exp(logit_scale)`` of the frozen CLIP (100 for OpenAI weights).

        Read from the device once and kept until the parameter changes: reading a GPU
        tensor in every training step would make the host wait for the device."""
        p = self.model.logit_scale
        key = (p.data_ptr(), p._version)
        if self.__dict__.get("_scale_key") != key:
            self.__dict__["_scale"] = float(p.detach().exp().clamp(max=100.0))
            self.__dict__["_scale_key"] = key
        return self.__dict__["_scale"]

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.transformer.get_cast_dtype()

    def train(self, mode: bool = True) -> Backbone:
        # The towers are frozen: they stay in eval mode whatever the caller does.
        super().train(mode)
        self.model.eval()
        return self

    # ------------------------------------------------------------------- text
    def tokenize(self, texts: list[str]) -> Tensor:
        return self.tokenizer(texts).to(self.device)

    def token_embedding(self, ids: Tensor) -> Tensor:
        return self.model.token_embedding(ids).to(self.dtype)

    def encode_text(self, ids: Tensor, normalize: bool = False) -> Tensor:
        """Text features of token ids: exactly open_clip's ``encode_text``."""
        return self.encode_text_embeddings(self.token_embedding(ids), ids, normalize=normalize)

    def encode_text_embeddings(self, x: Tensor, ids: Tensor, hook: Hook | None = None,
                               cache: ActivationCache | None = None,
                               normalize: bool = False) -> Tensor:
        """Run the text tower on token embeddings ``x`` ``[N, L, D_t]``.

        ``ids`` ``[N, L]`` are the token ids the sequence stands for; they only
        locate the end-of-text token, whose final state is the text feature.
        """
        m = self.model
        x = x + m.positional_embedding.to(x.dtype)
        x = self._blocks(m.transformer, x, m.attn_mask, hook, cache, "txt")
        x = m.ln_final(x)
        eos = getattr(m, "text_eos_id", None)
        x = open_clip.transformer.text_global_pool(x, ids, m.text_pool_type, eos_token_id=eos)
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) \
                else x @ m.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    # ------------------------------------------------------------------ image
    def image_tokens(self, images: Tensor, extra_tokens: Tensor | None = None) -> Tensor:
        """Patch embedding, CLS, positional embedding, optional extra tokens, ``ln_pre``."""
        v = self.model.visual
        x = v.conv1(images.to(self.dtype))                      # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)                         # [B, g*g, D]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        if extra_tokens is not None:                             # SEP: appended after CLS+patches
            if extra_tokens.dim() == 2:
                extra_tokens = extra_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat([x, extra_tokens.to(x.dtype)], dim=1)
        x = v.patch_dropout(x)
        return v.ln_pre(x)

    def encode_image(self, images: Tensor, extra_tokens: Tensor | None = None,
                     hook: Hook | None = None, cache: ActivationCache | None = None,
                     normalize: bool = False) -> Tensor:
        """Image features ``[B, d]``; with no extras, exactly open_clip's ``encode_image``."""
        v = self.model.visual
        x = self.image_tokens(images, extra_tokens)
        x = self._blocks(v.transformer, x, None, hook, cache, "vis")
        if cache is not None:
            cache["vis_final"] = x
            cache["vis_proj"] = self.project_visual_tokens(x)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def project_visual_tokens(self, x: Tensor) -> Tensor:
        """Every visual token through CLIP's ``ln_post`` and ``proj``: ``[B, N, d]``."""
        v = self.model.visual
        x = v.ln_post(x)
        return x @ v.proj if v.proj is not None else x

    # ----------------------------------------------------------------- blocks
    # ------------------------------------------------------------ named hook points
    def hook_points(self) -> list[str]:
        """Every named hook point of both towers, in the order they run."""
        info = self.info
        return [f"{tower}.{layer}.{point}"
                for tower, n in (("txt", info.text_layers), ("vis", info.vision_layers))
                for layer in range(n) for point in POINTS]

    @contextmanager
    def hooks(self, edits: Mapping[str, Edit]) -> Iterator[Backbone]:
        """Edit named hook points while the block runs: ``{name or glob pattern: fn}``;
        ``fn(x)`` returns what replaces ``x`` (same shape), or ``None`` to keep it. Nested
        uses combine; each is undone when its block ends, even on an error."""
        names = self.hook_points()
        for pattern in edits:
            hit = fnmatch.filter(names, pattern)
            if not hit or any(n.rsplit(".", 1)[1] not in EDITABLE for n in hit):
                raise PromptvizError(
                    f"no editable hook point {pattern!r}: names are <vis|txt>.<layer>.<point> "
                    f"with point one of {', '.join(EDITABLE)} (attn_pattern is recorded only), "
                    f"layers 0-{self.info.vision_layers - 1} (vis) and "
                    f"0-{self.info.text_layers - 1} (txt), e.g. 'vis.3.mlp_out'")
        previous = self._edits
        self._edits = {**previous, **edits}
        try:
            yield self
        finally:
            self._edits = previous

    @contextmanager
    def deltas(self, deltas: Mapping[str, Delta]) -> Iterator[Backbone]:
        """Add ``fn(x)`` to attention projections while the block runs: ``{"vis.3.q": fn}``
        (``<vis|txt>.<layer>.<q|k|v|o>``; ``x`` is the projection's input, batch first,
        and ``fn(x)`` must have the projection's output shape). A block with a delta runs
        its attention from its own weights part by part (:meth:`_attention`); nested uses
        add up, and each is undone when its block ends, even on an error. This is LoRA's
        ``h = W0 x + ΔW x`` without writing ``W0 + ΔW`` into the frozen, shared weights."""
        info = self.info
        depth = {"vis": info.vision_layers, "txt": info.text_layers}
        for name in deltas:
            tower, layer, proj = (name.split(".") + ["", "", ""])[:3]
            if tower not in depth or not layer.isdigit() or int(layer) >= depth[tower] \
                    or proj not in PROJECTIONS or name.count(".") != 2:
                raise PromptvizError(
                    f"no attention projection {name!r}: names are <vis|txt>.<layer>.<proj> "
                    f"with proj one of {', '.join(PROJECTIONS)}, layers "
                    f"0-{info.vision_layers - 1} (vis) and 0-{info.text_layers - 1} (txt), "
                    "e.g. 'vis.3.q'")
        previous = self._deltas
        merged = {k: list(v) for k, v in previous.items()}
        for name, fn in deltas.items():
            merged.setdefault(name, []).append(fn)
        self._deltas = merged
        try:
            yield self
        finally:
            self._deltas = previous

    def _point(self, name: str, x: Tensor, cache: ActivationCache | None) -> Tensor:
        """A named hook point: its edit (if any) applied, then recorded (if asked)."""
        for pattern, fn in self._edits.items():
            if pattern == name or fnmatch.fnmatchcase(name, pattern):
                out = fn(x)
                x = x if out is None else out
        if cache is not None and cache.points and cache.wants(name):
            cache[name] = x
        return x

    def _by_parts(self, name: str, cache: ActivationCache | None) -> bool:
        """Whether a block must run part by part: its attn_out or mlp_out is edited or
        recorded, or a projection of its attention has a delta (otherwise open_clip's own
        forward runs, unchanged)."""
        parts = (f"{name}.attn_out", f"{name}.mlp_out")
        if any(f"{name}.{p}" in self._deltas for p in PROJECTIONS):
            return True
        edited = any(fnmatch.fnmatchcase(p, e) for p in parts for e in self._edits)
        return edited or (cache is not None and any(cache.wants(p) for p in parts))

    def _blocks(self, transformer: nn.Module, x: Tensor, attn_mask: Tensor | None,
                hook: Hook | None, cache: ActivationCache | None, tower: str) -> Tensor:
        batch_first = getattr(transformer, "batch_first", True)
        named = bool(self._edits) or bool(self._deltas) or \
            (cache is not None and bool(cache.points))
        for layer, block in enumerate(transformer.resblocks):
            if hook is not None:
                x = hook(layer, x)
            name = f"{tower}.{layer}"
            if named:
                x = self._point(f"{name}.resid_pre", x, cache)
            if cache is not None:
                if cache.keep_resid:
                    cache[f"{tower}_resid", layer] = x
                if (tower == "vis" and layer in cache.attn_layers) or \
                        (cache.points and cache.wants(f"{name}.attn_pattern")):
                    if self._has_deltas(name):      # the adapted attention's pattern
                        pattern = self._attention(block, x, attn_mask, name, True)[1]
                    else:
                        pattern = self._attention_weights(block, x, attn_mask)
                    if tower == "vis" and layer in cache.attn_layers:
                        cache["vis_attn", layer] = pattern
                    if cache.points and cache.wants(f"{name}.attn_pattern"):
                        cache[f"{name}.attn_pattern"] = pattern
            if named and self._by_parts(name, cache):
                x = self._block_parts(block, x, attn_mask, batch_first, name, cache)
            elif batch_first:
                x = block(x, attn_mask=attn_mask)
            else:  # older open_clip: sequence-first blocks
                x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
            if named:
                x = self._point(f"{name}.resid_post", x, cache)
        return x

    def _block_parts(self, block: nn.Module, x: Tensor, attn_mask: Tensor | None,
                     batch_first: bool, name: str, cache: ActivationCache | None) -> Tensor:
        """open_clip's ``ResidualAttentionBlock.forward``, the same operations in the same
        order (so the same numbers), with ``attn_out`` and ``mlp_out`` as hook points."""
        if not all(hasattr(block, a) for a in ("ln_1", "attention", "ls_1", "ln_2", "mlp",
                                               "ls_2")):
            raise PromptvizError(
                f"the hook points attn_out / mlp_out need open_clip's ResidualAttentionBlock; "
                f"this backbone has {type(block).__name__}")
        if self._has_deltas(name):       # LoRA & co.: the attention from its weights + deltas
            a = block.ls_1(self._attention(block, x, attn_mask, name)[0])
            a = a if batch_first else a.transpose(0, 1)
        else:
            h = block.ln_1(x if batch_first else x.transpose(0, 1))
            a = block.ls_1(block.attention(q_x=h, attn_mask=attn_mask))
        x = x + self._point(f"{name}.attn_out", a if batch_first else a.transpose(0, 1), cache)
        m = block.ls_2(block.mlp(block.ln_2(x)))
        return x + self._point(f"{name}.mlp_out", m, cache)

    def _has_deltas(self, name: str) -> bool:
        return any(f"{name}.{p}" in self._deltas for p in PROJECTIONS)

    def _attention(self, block: nn.Module, x: Tensor, attn_mask: Tensor | None, name: str,
                   need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``block``'s attention on its input ``x`` ``[B, N, D]`` (batch first) computed from
        its ``nn.MultiheadAttention``'s own weights, with the deltas of block ``name`` added
        to the projections: ``q = W_q h + b_q + Σ fn(h)`` (``h = ln_1(x)``), the same for
        ``k`` and ``v``, ``o = W_o a + b_o + Σ fn(a)`` for the heads' output ``a``. Returns the
        output ``[B, N, D]`` (before LayerScale) and, if asked, the head-averaged attention
        ``[B, N, N]``. Equals the module's forward up to rounding (tested)."""
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise PromptvizError(
                f"projection deltas need nn.MultiheadAttention blocks with one packed "
                f"in_proj_weight, this backbone has {type(attn).__name__}; use a standard CLIP "
                "ViT such as ViT-B-16")
        h = block.ln_1(x)
        n_batch, n_tok, width = h.shape
        heads = attn.num_heads

        def add(proj: str, inp: Tensor, out: Tensor) -> Tensor:
            for fn in self._deltas.get(f"{name}.{proj}", ()):
                out = out + fn(inp).to(out.dtype)
            return out

        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = add("q", h, q), add("k", h, k), add("v", h, v)      # h = W0 x + ΔW x (LoRA)
        q, k, v = (t.reshape(n_batch, n_tok, heads, width // heads).transpose(1, 2)
                   for t in (q, k, v))                                   # [B, H, N, D/H]
        mask = attn_mask.to(q.dtype) if attn_mask is not None else None
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(width // heads)
            weights = (scores + mask if mask is not None else scores).softmax(-1)
            a = weights @ v
            weights = weights.mean(1)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        a = a.transpose(1, 2).reshape(n_batch, n_tok, width)
        out = F.linear(a, attn.out_proj.weight, attn.out_proj.bias)
        return add("o", a, out), weights

    @staticmethod
    def _attention_weights(block: nn.Module, x: Tensor, attn_mask: Tensor | None = None
                           ) -> Tensor:
        """Head-averaged attention ``[B, N, N]`` of ``block`` on its input ``x`` (with the
        text tower's causal ``attn_mask``)."""
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention):
            raise PromptvizError(
                f"attention capture needs nn.MultiheadAttention blocks, this backbone has "
                f"{type(attn).__name__}; use a standard CLIP ViT such as ViT-B-16.")
        h = block.ln_1(x)
        if not attn.batch_first:
            h = h.transpose(0, 1)
        mask = attn_mask.to(h.dtype) if attn_mask is not None else None
        _, w = attn(h, h, h, need_weights=True, average_attn_weights=True, attn_mask=mask)
        return w


# ------------------------------------------------------------------------ helpers
def image_stats(visual: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel ``(mean, std)`` an open_clip image tower expects its pixels
    normalised with (its ``preprocess_cfg``; OpenAI's when it names none)."""
    pre = getattr(visual, "preprocess_cfg", {}) or {}
    return (tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            tuple(pre.get("std", open_clip.OPENAI_DATASET_STD)))


def check_device(device: str) -> torch.device:
    """``device`` as a torch device, or one clear error: an unknown name, or CUDA asked for
    where no GPU is visible (every command that takes ``--device`` checks it here)."""
    if device not in {"cpu", "cuda"} and not re.fullmatch(r"cuda:\d+", device):
        raise PromptvizError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PromptvizError(f"--device {device} was asked for but no CUDA GPU is visible; "
                             "use --device cpu")
    return torch.device(device)


def activation_of(model: nn.Module) -> str:
    """The MLP activation of a CLIP's blocks, read from its modules: "QuickGELU" or "GELU"."""
    found = {"QuickGELU" if isinstance(m, QuickGELU) else "GELU"
             for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    return "+".join(sorted(found)) or "unknown"
