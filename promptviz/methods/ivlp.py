"""IVLP — independent vision-language prompting (the deep-prompt baseline of MaPLe,
Khattak et al., CVPR 2023).

Deep prompts, VPT-style, in **both** towers and learned **independently**:

* text: ``[SOS] v_1 … v_n {rest of the init phrase} {class}. [EOT]`` enters block 0 (the
  authors learn the first ``n`` tokens of "a photo of a"); before every block ``l`` in
  ``1 … J_t − 1`` the ``n`` hidden states at the prompt positions are **replaced** by that
  block's own learnable vectors ``P_l`` (not added to: what the previous block wrote there is
  dropped);
* vision: ``n`` learnable tokens are appended after CLS and the patches (after the positional
  embeddings, before ``ln_pre``); before every block ``l`` in ``1 … J_v − 1`` they are replaced
  by that block's own ``P̃_l``. After block ``J − 1`` the prompt states flow on like any
  token.

Logits ``s · norm(f) @ norm(t)ᵀ``, cross-entropy. Nothing of the two towers' prompts talks
to the other: that is what MaPLe's coupling (:mod:`promptviz.methods.maple`) adds. With
``n_ctx_text=0`` the text side is the frozen hand-crafted template and only the image tower is
prompted — VPT-deep (:mod:`promptviz.methods.vpt`); with ``n_ctx_vision=0`` only the text
tower (the authors' "language prompting" baseline).

Defaults: the authors' ``IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml`` (2 + 2 tokens, prompts at
all 12 of 12 blocks, SGD 0.0035, batch 4, 5 epochs); deep prompts drawn from N(0, 0.02).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptviz.backbone import ActivationCache, Backbone, Hook
from promptviz.errors import PromptvizError
from promptviz.methods.base import Method, TrainDefaults, zero_shot_text_features
from promptviz.methods.coop import PromptLearner
from promptviz.methods.inputs import Pixels

AUTHORS_BLOCKS = 12         # the depths in the authors' configs count blocks of ViT-B/16's towers


@dataclasses.dataclass
class IVLPOptions:
    n_ctx_text: int = 2                 # n text prompt tokens (0: hand-crafted text, VPT)
    n_ctx_vision: int = 2               # n visual prompt tokens (0: text prompts only)
    depth_text: int | None = None       # J_t: blocks 0..J_t−1 get prompts; None = all (authors)
    depth_vision: int | None = None     # J_v, the same for the image tower
    ctx_init: str = "a photo of a"      # its first n_ctx_text tokens initialise the text
                                        # prompt; "" = N(0, 0.02) and "X X …" (the authors'
                                        # fallback, also taken when n_ctx_text > its length)
    template: str = "a photo of a {}."  # the frozen text when n_ctx_text=0 ("" = the dataset's)

    def __post_init__(self) -> None:
        self.depth_text = optional_int(self.depth_text, "depth_text")
        self.depth_vision = optional_int(self.depth_vision, "depth_vision")


def optional_int(value: object, name: str) -> int | None:
    """An option that is a whole number or ``None``, as ``--set name=3`` / ``name=none`` give
    it (a string: its default ``None`` does not say the type)."""
    if value is None or isinstance(value, int):
        return value
    try:
        return None if str(value).strip().lower() == "none" else int(str(value))
    except ValueError:
        raise PromptvizError(f"option {name}={value!r} is not a whole number; give a block "
                             f"count, e.g. {name}=2, or {name}=none for the authors'") from None


def resolve_depth(depth: int | None, authors: int, n_blocks: int, what: str) -> int:
    """How many blocks get prompts: ``depth`` as given (1 … n_blocks), or for ``None`` the
    authors' ``authors`` of 12 blocks, scaled to a tower of ``n_blocks`` (ViT-B/16: as is)."""
    if depth is None:
        return max(1, min(n_blocks, round(authors * n_blocks / AUTHORS_BLOCKS)))
    if not 1 <= depth <= n_blocks:
        raise PromptvizError(f"{what}={depth}: prompts can go into 1 to {n_blocks} blocks of "
                             f"this backbone (or {what}=none for the authors' depth)")
    return depth


def deep_prompt_hook(deep: Sequence[Tensor], tower: str, n: int) -> Hook:
    """``hook(layer, x)`` replacing the ``n`` prompt states before block ``l`` by ``deep[l−1]``
    (``1 ≤ l ≤ len(deep)``): text prompts sit at positions ``1 … n``, visual ones last."""

    def hook(layer: int, x: Tensor) -> Tensor:
        if not 1 <= layer <= len(deep):
            return x
        p = deep[layer - 1].to(x.dtype).expand(x.shape[0], -1, -1)    # x_l[prompts] ← P_l
        if tower == "txt":
            return torch.cat([x[:, :1], p, x[:, 1 + n:]], dim=1)
        return torch.cat([x[:, :-n], p], dim=1)

    return hook


def _prompts(count: int, n: int, width: int, device: torch.device) -> nn.ParameterList:
    """``count`` learnable ``[n, width]`` prompt sets drawn from N(0, 0.02)."""
    return nn.ParameterList(
        [nn.Parameter(torch.empty(n, width, device=device).normal_(0.0, 0.02))
         for _ in range(count)])


def text_prompt_learner(backbone: Backbone, n_ctx: int, ctx_init: str,
                        n_classes: int) -> PromptLearner:
    """The authors' shallow text prompt: the first ``n_ctx`` tokens of ``ctx_init`` learn, the
    rest of the phrase stays text; random with "X" placeholders when ``ctx_init`` is empty or
    shorter than ``n_ctx`` tokens."""
    words = int((backbone.tokenize([ctx_init])[0] > 0).sum()) - 2 if ctx_init else 0
    if ctx_init and n_ctx <= words:
        return PromptLearner(backbone, n_ctx, ctx_init, n_classes, learned=n_ctx)
    return PromptLearner(backbone, n_ctx, "", n_classes)


class IVLP(Method):
    name = "ivlp"
    Options = IVLPOptions
    image_input = Pixels()     # the visual prompts change the image pass
    defaults = TrainDefaults(epochs=5, lr=0.0035, optimizer="sgd", batch_size=4)
    authors_depth: ClassVar[int] = AUTHORS_BLOCKS    # depth=None: prompts in 12 of 12 blocks

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: IVLPOptions | None = None) -> None:
        super().__init__(backbone, classnames, template, options)
        o, info, dev = self.options, backbone.info, backbone.device
        if o.n_ctx_text < 0 or o.n_ctx_vision < 0 or o.n_ctx_text + o.n_ctx_vision == 0:
            raise PromptvizError(f"n_ctx_text={o.n_ctx_text}, n_ctx_vision={o.n_ctx_vision}: "
                                 "prompt at least one tower with a positive token count")
        self.n_text, self.n_vision = o.n_ctx_text, o.n_ctx_vision
        self.depth_text = resolve_depth(o.depth_text, self.authors_depth, info.text_layers,
                                        "depth_text") if self.n_text else 0
        self.depth_vision = resolve_depth(o.depth_vision, self.authors_depth, info.vision_layers,
                                          "depth_vision") if self.n_vision else 0
        if self.n_text:
            self.prompt = text_prompt_learner(backbone, self.n_text, o.ctx_init, len(classnames))
            self.text_deep = _prompts(self.depth_text - 1, self.n_text, info.text_width, dev)
        if self.n_vision:
            self.visual_prompt = nn.Parameter(
                torch.empty(self.n_vision, info.vision_width, device=dev).normal_(0.0, 0.02))
            self.vision_deep = _prompts(self.depth_vision - 1, self.n_vision,
                                        info.vision_width, dev)
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        self.classnames = list(classnames)
        self.template = template or self.template
        if self.n_text:
            self.prompt.set_classnames(self.classnames)
        else:                                           # VPT: the frozen hand-crafted text
            self.register_buffer("t0", zero_shot_text_features(
                self.backbone, self.classnames, self.options.template or self.template),
                persistent=False)

    # -- the two towers ------------------------------------------------------------
    def text_prompts(self) -> tuple[Tensor | None, list[Tensor]]:
        """The text prompt entering block 0 (``None``: no text prompts) and those replacing it
        before blocks ``1 … J_t − 1``."""
        return (self.prompt.ctx, list(self.text_deep)) if self.n_text else (None, [])

    def vision_prompts(self) -> tuple[Tensor | None, list[Tensor]]:
        """The visual tokens appended before ``ln_pre`` and those replacing them before blocks
        ``1 … J_v − 1`` (``None, []``: the image tower is not prompted)."""
        return (self.visual_prompt, list(self.vision_deep)) if self.n_vision else (None, [])

    def encode_text(self, cache: ActivationCache | None = None) -> Tensor:
        """Prompted text features ``t`` (not normalised), ``[C, d]``; ``cache`` records the
        tokens entering every block (after the prompts were put in)."""
        _, deep = self.text_prompts()
        return self.backbone.encode_text_embeddings(
            self.prompt(), self.prompt.ids, hook=deep_prompt_hook(deep, "txt", self.n_text),
            cache=cache)

    def encode_image_prompted(self, images: Tensor, cache: ActivationCache | None = None
                              ) -> Tensor:
        """Prompted image features ``f`` (not normalised), ``[B, d]``."""
        shallow, deep = self.vision_prompts()
        if shallow is None:
            return self.backbone.encode_image(images, cache=cache)
        return self.backbone.encode_image(images, extra_tokens=shallow, cache=cache,
                                          hook=deep_prompt_hook(deep, "vis", self.n_vision))

    def text_features(self) -> Tensor:
        """``norm(t)`` for the current classes ``[C, d]``; image-independent."""
        if not self.n_text:
            return self.t0
        return F.normalize(self.encode_text().float(), dim=-1)

    def logits(self, images: Tensor, text: Tensor | None = None) -> Tensor:
        """``s · norm(f) @ norm(t)ᵀ`` from pixels."""
        text = self.text_features() if text is None else text
        f = F.normalize(self.encode_image_prompted(images).float(), dim=-1)
        return self.backbone.logit_scale * f @ text.float().t()
