"""MaPLe — multi-modal prompt learning (Khattak et al., CVPR 2023).

Deep prompts in both towers, as in IVLP (:mod:`promptviz.methods.ivlp`), but the image
tower's prompts are not learned on their own: they are **made from the text prompts** by a
V-L coupling function per block, a linear map from text width to vision width (Eq. 5):

* block 0: the text prompt ``P_0`` (the first ``n`` tokens of "a photo of a", learnable)
  enters the text tower; ``P̃_0 = F_0(P_0)`` is appended to the image tokens before
  ``ln_pre``;
* before block ``l`` in ``1 … J − 1``: the text prompt states are replaced by ``P_l`` (drawn
  from N(0, 0.02)) and the visual ones by ``P̃_l = F_l(P_l)``;
* after block ``J − 1`` the prompts flow on as ordinary tokens.

So a gradient from the image side reaches the text prompts through ``F_l``: the two towers'
prompts are learned together. Logits ``s · norm(f) @ norm(t)ᵀ``, cross-entropy.

Defaults: the authors' ``MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml`` (n = 2, J = 9 of 12 blocks,
SGD 0.0035, batch 4, 5 epochs, all ``F_l`` for ``l ≥ 1`` starting as copies of one draw);
their cross-dataset source model (ImageNet, ``fewshot``) uses J = 3, 0.0026, 2 epochs. Two
adaptations, neither changing ViT-B/16: the authors hard-code widths 512 → 768 (promptviz
reads the towers' widths), and the default depth on a backbone with fewer than 12 blocks is
the authors' share, ``round(9 · L / 12)`` (toyclip: 2 of its 3 text blocks).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.base import TrainDefaults
from promptviz.methods.inputs import Pixels
from promptviz.methods.ivlp import (
    IVLP,
    _prompts,
    optional_int,
    resolve_depth,
    text_prompt_learner,
)

AUTHORS_DEPTH = 9           # PROMPT_DEPTH of the base-to-novel config (of 12 blocks)


@dataclasses.dataclass
class MaPLeOptions:
    n_ctx: int = 2                      # n prompt tokens per block, in both towers
    ctx_init: str = "a photo of a"      # its first n tokens initialise P_0 ("" = N(0, 0.02))
    depth: int | None = None            # J: blocks 0..J−1 get prompts; None = the authors' 9
                                        # of 12 (scaled on smaller towers); cross-dataset: 3

    def __post_init__(self) -> None:
        self.depth = optional_int(self.depth, "depth")


class MaPLe(IVLP):
    name = "maple"
    Options = MaPLeOptions
    image_input = Pixels()
    defaults = TrainDefaults(epochs=5, lr=0.0035, optimizer="sgd", batch_size=4,
                             by_dataset={"imagenet/fewshot": {"epochs": 2, "lr": 0.0026}})

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: MaPLeOptions | None = None) -> None:
        super(IVLP, self).__init__(backbone, classnames, template, options)
        o, info, dev = self.options, backbone.info, backbone.device
        if o.n_ctx < 1:
            raise PromptvizError(f"n_ctx={o.n_ctx}; MaPLe needs at least one prompt token")
        blocks = min(info.text_layers, info.vision_layers)     # J counts blocks of both towers
        depth = resolve_depth(o.depth, AUTHORS_DEPTH, blocks, "depth")
        self.n_text = self.n_vision = o.n_ctx
        self.depth_text = self.depth_vision = depth
        self.prompt = text_prompt_learner(backbone, o.n_ctx, o.ctx_init, len(classnames))  # P_0
        self.text_deep = _prompts(depth - 1, o.n_ctx, info.text_width, dev)   # P_1 … P_{J−1}
        self.proj = nn.Linear(info.text_width, info.vision_width).to(dev)    # F_0
        first = nn.Linear(info.text_width, info.vision_width).to(dev)
        self.couplings = nn.ModuleList(copy.deepcopy(first) for _ in range(depth - 1))  # F_l
        self.set_classnames(classnames, template)

    @classmethod
    def dataset_options(cls, dataset: str, protocol: str = "base2new") -> dict[str, Any]:
        """The cross-dataset source model (ImageNet, ``fewshot``) has prompts in 3 blocks."""
        return {"depth": 3} if (dataset, protocol) == ("imagenet", "fewshot") else {}

    def vision_prompts(self) -> tuple[Tensor, list[Tensor]]:
        """``P̃_0 = F_0(P_0)`` and ``P̃_l = F_l(P_l)``: the visual prompts made from the text
        prompts (Eq. 5), recomputed at every forward so both train together."""
        shallow = self.proj(self.prompt.ctx)                                 # P̃_0 = F_0(P_0)
        return shallow, [f(p) for f, p in zip(self.couplings, self.text_deep)]  # P̃_l = F_l(P_l)

    def coupled_prompts(self) -> list[dict[str, Tensor]]:
        """Per prompted block ``l``: the text prompt ``P_l`` ``[n, D_t]`` and the visual prompt
        ``P̃_l`` ``[n, D_v]`` made from it (detached), for the views."""
        text_shallow, text_deep = self.text_prompts()
        vis_shallow, vis_deep = self.vision_prompts()
        return [{"text": t.detach(), "vision": v.detach()}
                for t, v in zip([text_shallow, *text_deep], [vis_shallow, *vis_deep])]

    def text_features(self) -> Tensor:
        return F.normalize(self.encode_text().float(), dim=-1)
