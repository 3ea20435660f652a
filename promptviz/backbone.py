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
  fn}):`` edits them (``fn(x)`` returns the replacement, or ``None`` to keep ``x``).

The blocks themselves are open_clip's own modules, called in order; nothing is
forked. With no prompt, hook or extra token, the outputs equal open_clip's
``encode_text`` / ``encode_image`` on the same weights (tested).

Backbone specs understood by :func:`load_clip`:

==================================  ==========================================================
``toyclip``                         the project's own small CLIP, shipped in assets/
``pv-tiny``                         a tiny random-weight config for tests
``ViT-B-16:openai``                 any open_clip name with a pretrained tag (downloads)
``ViT-B-16-quickgelu:/path/w.bin``  an open_clip name with a local weight file
``ViT-B-16``                        an open_clip name with random weights (benchmarks)
``/path/ViT-B-16.pt``               an OpenAI-format checkpoint (JIT archive or state dict)
``/path/model.safetensors``         a safetensors file that carries its config
==================================  ==========================================================

The activation (GELU or OpenAI's QuickGELU) is never guessed from a file name. It is
the model config's (``ViT-B-16`` is GELU) unless the name ends in ``-quickgelu`` or the
file itself shows it is OpenAI's: a TorchScript archive (its code names the activation;
OpenAI's CLIP uses QuickGELU), or a state dict with the entries only OpenAI's archives
hold. A plain state dict does not record its activation, so OpenAI's weights saved as
an open_clip state dict (the hub's ``open_clip_pytorch_model.bin``) must be named
``ViT-B-16-quickgelu:/path``. A bare path is read as OpenAI's CLIP (QuickGELU).
:attr:`Backbone.activation` says which one the towers use, and :func:`load_clip` prints
it, with the reason, when it loads weights from a file or a pretrained tag.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import Tensor, nn

from promptviz.checkpoint import atomic_write
from promptviz.errors import PromptvizError

CONFIG_DIR = Path(__file__).parent / "configs"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
TOYCLIP_WEIGHTS = ASSETS_DIR / "toyclip" / "toyclip.safetensors"
# Built-in names: a config in promptviz/configs and, optionally, shipped weights.
BUILTIN = {"toyclip": TOYCLIP_WEIGHTS, "pv-tiny": None}

WEIGHT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}
QUICK = "-quickgelu"     # an open_clip name with this suffix asks for QuickGELU
# Entries of OpenAI's TorchScript archives that no open_clip state dict holds.
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
Hook = Callable[[int, Tensor], Tensor]
Edit = Callable[[Tensor], "Tensor | None"]          # a named hook point's edit
# Named hook points of every block (``<vis|txt>.<layer>.<point>``); all but attn_pattern
# can be edited. attn_out / mlp_out are what the block adds to the residual stream, after
# open_clip's LayerScale, so resid_post = resid_pre + attn_out + mlp_out.
POINTS = ("resid_pre", "attn_pattern", "attn_out", "mlp_out", "resid_post")
EDITABLE = ("resid_pre", "attn_out", "mlp_out", "resid_post")
_configs_registered = False


def _register_configs() -> None:
    global _configs_registered
    if not _configs_registered:
        open_clip.add_model_config(CONFIG_DIR)
        _configs_registered = True


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
        #: why the loader chose it (see the module docstring)
        self.activation_source = activation_source
        self.tokenizer = tokenizer or open_clip.get_tokenizer("ViT-B-16",
                                                              context_length=model.context_length)
        self.mean, self.std = image_stats(model.visual)
        self._edits: dict[str, Edit] = {}     # named hook points edited now (see hooks())

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
        recorded (otherwise open_clip's own forward runs, unchanged)."""
        parts = (f"{name}.attn_out", f"{name}.mlp_out")
        edited = any(fnmatch.fnmatchcase(p, e) for p in parts for e in self._edits)
        return edited or (cache is not None and any(cache.wants(p) for p in parts))

    def _blocks(self, transformer: nn.Module, x: Tensor, attn_mask: Tensor | None,
                hook: Hook | None, cache: ActivationCache | None, tower: str) -> Tensor:
        batch_first = getattr(transformer, "batch_first", True)
        named = bool(self._edits) or (cache is not None and bool(cache.points))
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
        h = block.ln_1(x if batch_first else x.transpose(0, 1))
        a = block.ls_1(block.attention(q_x=h, attn_mask=attn_mask))
        x = x + self._point(f"{name}.attn_out", a if batch_first else a.transpose(0, 1), cache)
        m = block.ls_2(block.mlp(block.ln_2(x)))
        return x + self._point(f"{name}.mlp_out", m, cache)

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


# ---------------------------------------------------------------------- loading
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


def load_clip(spec: str, device: str | torch.device = "cpu", seed: int = 0,
              random_weights: bool = False) -> Backbone:
    """Load a frozen CLIP backbone from a spec string (see module docstring).

    An open_clip model name without a tag (``ViT-B-16``) names an architecture, not
    weights: it is an error unless ``random_weights`` (benchmarks and shape checks, where
    random weights cost the same), so a forgotten ``:openai`` never trains on noise.

    When the weights come from a file or a pretrained tag, one line on stderr says which
    activation the towers use and why (also kept in ``Backbone.activation`` and
    ``Backbone.activation_source``)."""
    _register_configs()
    spec = str(spec).strip()
    if not spec:
        raise PromptvizError("empty --backbone; use e.g. toyclip or ViT-B-16:openai")
    name, _, tag = spec.partition(":")
    resolved = _resolve_name(name)
    if spec in BUILTIN:
        model, why = _load_builtin(spec, seed), f"the {spec} config's activation"
    elif resolved is not None:
        if not tag and not random_weights:
            tags = open_clip.list_pretrained_tags_by_model(resolved[0])
            example = f"{name}:{tags[0]}" if tags else f"{name}:/path/to/weights"
            raise PromptvizError(
                f"--backbone {spec} names an architecture without weights (random weights "
                f"would classify at chance); add a pretrained tag, e.g. {example} (known: "
                f"{', '.join(tags) or 'none'}), or a weight file as {name}:/path/to/weights")
        model, why = _load_open_clip(name, *resolved, tag or None, seed)
    elif os.path.sep in spec or Path(spec).suffix in WEIGHT_SUFFIXES:
        model, why = _load_file(Path(spec).expanduser())
    else:
        raise PromptvizError(
            f"unknown backbone {spec!r}; use toyclip, an open_clip model name with a tag "
            "(e.g. ViT-B-16:openai; see open_clip.list_models()), or a weight file path")
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=model.context_length)
    bb = Backbone(model, spec, tokenizer, activation_source=why).to(device)
    if spec not in BUILTIN and not (resolved is not None and not tag):   # weights from outside
        print(f"backbone {spec}: {bb.activation} ({why})", file=sys.stderr, flush=True)
    return bb


def activation_of(model: nn.Module) -> str:
    """The MLP activation of a CLIP's blocks, read from its modules: "QuickGELU" or "GELU"."""
    found = {"QuickGELU" if isinstance(m, QuickGELU) else "GELU"
             for m in model.modules() if isinstance(m, (QuickGELU, nn.GELU))}
    return "+".join(sorted(found)) or "unknown"


def _resolve_name(name: str) -> tuple[str, bool] | None:
    """``(open_clip config name, force QuickGELU)`` for a model name, or ``None``.

    ``NAME-quickgelu`` works for every config: open_clip's own ``-quickgelu`` config
    where it has one, else ``NAME``'s config with QuickGELU."""
    name = name.replace("/", "-")
    if open_clip.get_model_config(name) is not None:
        return name, False
    base = name[:-len(QUICK)]
    if name.endswith(QUICK) and open_clip.get_model_config(base) is not None:
        return base, True
    return None


def _create(name: str, seed: int, **kwargs) -> nn.Module:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)        # open_clip logs a warning for random weights
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(name, **kwargs)
    finally:
        root.setLevel(level)


def _load_builtin(name: str, seed: int) -> nn.Module:
    weights = BUILTIN[name]
    if weights is None:                      # test configs: random but deterministic
        return _create(name, seed)
    if not weights.is_file():
        raise PromptvizError(
            f"the {name} weights are missing at {weights}; they ship with the repository "
            "(git checkout / git lfs pull), or run `promptviz pretrain` to make them.")
    model = _create(name, seed)
    _fit(model, _read_state(weights), weights)
    return model


def _load_open_clip(name: str, cfg_name: str, force_quick: bool, tag: str | None,
                    seed: int) -> tuple[nn.Module, str]:
    by_name = name.replace("/", "-").endswith(QUICK)
    quick = force_quick or bool(open_clip.get_model_config(cfg_name).get("quick_gelu"))
    if by_name:
        why = "asked for by the -quickgelu name"
    else:
        why = f"the {cfg_name} config's activation"
    if tag is None:                           # random weights: benchmarks, shape checks
        return _create(cfg_name, seed, quick_gelu=quick), why
    if os.path.isfile(tag):
        return _load_named_file(name, cfg_name, quick, by_name, why, Path(tag), seed)
    cfg = open_clip.get_pretrained_cfg(cfg_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(cfg_name)
        raise PromptvizError(f"{name} has no pretrained tag {tag!r}; known tags: {tags}, "
                             "or give a local file as NAME:/path/to/weights")
    if not by_name:
        quick = bool(cfg.get("quick_gelu"))
        why = f"the {tag} weights of {cfg_name} were trained with it"
    try:
        return _create(cfg_name, seed, pretrained=tag, force_quick_gelu=quick), why
    except Exception as e:  # download failures surface as many exception types
        raise PromptvizError(
            f"could not load {name}:{tag} ({_first_line(e)}). Without internet, download the "
            f"weights elsewhere and pass {name}:/path/to/file, or use --backbone toyclip."
        ) from None


def _load_named_file(name: str, cfg_name: str, quick: bool, by_name: bool, why: str,
                     path: Path, seed: int) -> tuple[nn.Module, str]:
    """``NAME:/path``: the name gives the architecture; the activation is the name's
    unless the file's content shows OpenAI's format."""
    content = _openai_content(path)
    if content is not None:
        activation, evidence = content
        if by_name and activation != "QuickGELU":
            raise PromptvizError(f"{name} asks for QuickGELU but {path} {evidence}; pass "
                                 f"{cfg_name}:{path}")
        model = _create(cfg_name, seed, quick_gelu=activation == "QuickGELU")
        _fit(model, _openai_state(path), path, name)
        return model, f"{path.name} {evidence}"
    if not quick:
        why += (" (a state dict does not record its activation: for OpenAI's weights pass "
                f"{cfg_name}{QUICK}:{path})")
    state = _read_state(path)             # refuses pickled code and unreadable files first
    try:
        return _create(cfg_name, seed, pretrained=str(path), quick_gelu=quick), why
    except Exception as e:                # open_clip's loader also resizes position tables
        _fit(_create(cfg_name, seed, quick_gelu=quick), state, path, name)   # says what misfits
        raise PromptvizError(f"the weights in {path} do not fit {name}: {_first_line(e)}; "
                             "check that the model name matches the file") from None


def _openai_content(path: Path) -> tuple[str, str] | None:
    """What a weight file's content says about OpenAI's format: ``(activation, evidence)``,
    or ``None`` for a plain state dict (which does not record its activation)."""
    code = _torchscript_code(path)
    if code is not None:
        if "QuickGELU" in code:
            return "QuickGELU", "is a TorchScript archive whose code uses QuickGELU"
        if "torch.gelu(" in code:
            return "GELU", "is a TorchScript archive whose code uses GELU"
        return "QuickGELU", ("is a TorchScript archive, OpenAI's format (OpenAI's CLIP uses "
                             "QuickGELU)")
    keys = _state_keys(path)
    if keys & set(OPENAI_EXTRAS):
        return "QuickGELU", (f"holds {', '.join(OPENAI_EXTRAS)}, as OpenAI's archives do "
                             "(OpenAI's CLIP uses QuickGELU)")
    return None


def _torchscript_code(path: Path) -> str | None:
    """The Python source inside a TorchScript archive, or ``None`` for any other file."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            code = [n for n in z.namelist() if "/code/__torch__/" in n and n.endswith(".py")]
            return "\n".join(z.read(n).decode("utf-8", "replace") for n in code) if code \
                else None
    except (OSError, zipfile.BadZipFile):
        return None


def _state_keys(path: Path) -> set[str]:
    """The entry names of a saved state dict, read without loading its tensors where the
    format allows (memory-mapped); an empty set for a file torch cannot read."""
    if path.suffix == ".safetensors":
        try:
            return set(_safetensors_header(path)[0])
        except PromptvizError:
            return set()          # the loader reports what is wrong with the file
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an older format, or no state dict: the loader reports what it can
        return set()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k.removeprefix("module.") for k in state} if isinstance(state, dict) else set()


def _openai_state(path: Path) -> dict[str, Tensor]:
    """The weights of an OpenAI-format file (TorchScript archive or state dict), without
    the entries that are not weights of open_clip's CLIP."""
    if _torchscript_code(path) is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # recent torch deprecates torch.jit
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = _read_state(path)
    return {k: v for k, v in state.items() if k not in (*OPENAI_EXTRAS, "attn_mask")}


def _load_file(path: Path) -> tuple[nn.Module, str]:
    if not path.is_file():
        raise PromptvizError(f"backbone file {path} does not exist; check the path, or use "
                             "--backbone toyclip / NAME:TAG")
    if path.suffix == ".safetensors":
        meta = _safetensors_header(path)[1]
        if "open_clip_config" not in meta:
            raise PromptvizError(
                f"{path} carries no model config; pass it as NAME:{path} (e.g. ViT-B-16:{path})")
        try:
            model = open_clip.CLIP(**_cfg_kwargs(json.loads(meta["open_clip_config"])))
        except Exception as e:   # bad JSON, missing keys, values open_clip cannot build
            raise PromptvizError(
                f"the model config stored in {path} is not a valid open_clip config "
                f"({type(e).__name__}: {_first_line(e)}); re-export the file, or pass it as "
                f"NAME:{path} with the open_clip model name") from None
        _fit(model, _read_state(path), path)
        return model, f"the config stored in {path.name}"
    # A bare path is OpenAI's CLIP (JIT archive or its state dict): QuickGELU, unless the
    # archive's own code says otherwise.
    content = _openai_content(path)
    activation, why = content if content is not None else (
        "QuickGELU", "a bare path is read as OpenAI's CLIP, which uses QuickGELU; for an "
        f"open_clip state dict trained with GELU pass NAME:{path}")
    if content is not None:
        why = f"{path.name} {why}"
    try:
        model = open_clip.model.build_model_from_openai_state_dict(
            _openai_state(path), quick_gelu=activation == "QuickGELU", cast_dtype=None)
    except Exception as e:
        raise PromptvizError(
            f"{path} is not an OpenAI-format CLIP checkpoint ({_first_line(e)}); for other "
            f"state dicts pass NAME:{path} with the open_clip model name") from None
    model.float()       # OpenAI's weights are fp16; the towers run in fp32 (or autocast)
    model.visual.image_mean, model.visual.image_std = (open_clip.OPENAI_DATASET_MEAN,
                                                       open_clip.OPENAI_DATASET_STD)
    return model, why


def _cfg_kwargs(cfg: dict) -> dict:
    return {"embed_dim": cfg["embed_dim"], "vision_cfg": cfg["vision_cfg"],
            "text_cfg": cfg["text_cfg"], "quick_gelu": cfg.get("quick_gelu", False)}


def _safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """The tensor names and the metadata of a safetensors file, read from its header."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as e:       # truncated, corrupt, or not safetensors at all
        raise PromptvizError(f"{path} is not a readable safetensors file ({_first_line(e)}); "
                             "it may be truncated: copy or export it again") from None


def _read_state(path: Path) -> dict[str, Tensor]:
    """A state dict from a weight file; pickled code is never run (``weights_only``)."""
    try:
        state = open_clip.factory.load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise PromptvizError(
            f"{path} is not a readable weight file ({type(e).__name__}: {_first_line(e)}); "
            "give a state dict or safetensors file (objects that need code to unpickle are "
            "refused)") from None
    if not isinstance(state, dict) or not state:
        raise PromptvizError(f"{path} holds no state dict of tensors; give the weights file")
    other = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if other:
        nested = [k for k in other if isinstance(state[k], dict)]
        hint = (f"; the weights may be under {nested[0]!r}: save that entry alone"
                if nested else "")
        raise PromptvizError(f"{path} holds entries that are not tensors ({', '.join(other[:3])}"
                             f"){hint}; give a file with the model's state dict only")
    return state


def _fit(model: nn.Module, state: dict[str, Tensor], path: Path, name: str = "this model"
         ) -> None:
    """Load ``state`` strictly; when it does not fit, say what is missing, what is extra and
    what has another shape, with a few names of each."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape]
    if missing or extra or shapes:
        parts = [f"{len(x)} {what} (e.g. {', '.join(x[:3])})" for x, what in
                 ((missing, "missing"), (extra, "unexpected"), (shapes, "of another shape"))
                 if x]
        raise PromptvizError(f"the weights in {path} do not fit {name}: {'; '.join(parts)}; "
                             "check that the model name matches the file")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PromptvizError(f"the weights in {path} do not fit {name}: "
                             f"{_first_line(e)}") from None


def save_clip(model: nn.Module, path: str | Path, config: dict, half: bool = True) -> None:
    """Save a CLIP as safetensors with its open_clip config in the metadata (write, then rename)."""
    from safetensors.torch import save_file
    dtype = torch.float16 if half else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(
        state, str(tmp), metadata={"open_clip_config": json.dumps(config)}))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
