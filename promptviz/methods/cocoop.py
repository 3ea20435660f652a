"""CoCoOp — conditional context optimisation (Zhou et al., CVPR 2022; methods.md §3).

A meta-net maps each image feature to a bias ``π(x)`` added to every context
vector, ``v_m(x) = v_m + π(x)``, so text features become per-image ``[B, C, d]``
and the text tower runs ``B·C`` sequences per batch (why it is much slower).

CoCoOp takes CoOp's options (it inherits them) except ``class_specific=true``: the
meta-net's bias is per image and shared across classes, added to one shared context,
as in the paper and the authors' code; class-specific context (CSC) is a CoOp option.
Building CoCoOp with it raises a :class:`~promptviz.errors.PromptvizError`, before
anything is trained or written.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
from torch import Tensor, nn

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.base import TrainDefaults
from promptviz.methods.coop import CoOp, CoOpOptions


@dataclasses.dataclass
class CoCoOpOptions(CoOpOptions):
    """CoOp's options (``class_specific`` must stay false, see the module) and the chunk."""

    images_per_chunk: int = 8   # images whose B·C prompts go through the text tower at once


class CoCoOp(CoOp):
    name = "cocoop"
    Options = CoCoOpOptions
    defaults = TrainDefaults(epochs=10, lr=0.002, optimizer="sgd", batch_size=1)
    text_depends_on_image = True

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: CoCoOpOptions | None = None) -> None:
        if options is not None and options.class_specific:
            raise PromptvizError(
                "cocoop does not support class_specific=true: CoCoOp's meta-net adds one bias "
                "per image, shared across classes, to a single shared context, so there is no "
                "per-class context to condition. Drop --set class_specific=true, or use "
                "--method coop for class-specific context (CSC).")
        super().__init__(backbone, classnames, template, options)
        d, width = backbone.embed_dim, backbone.text_width
        self.meta_net = nn.Sequential(OrderedDict([            # Linear(d→d/16) → ReLU → Linear
            ("linear1", nn.Linear(d, max(d // 16, 1))),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(max(d // 16, 1), width)),
        ])).to(backbone.device)

    def text_features(self, ctx: Tensor | None = None) -> Tensor | None:
        if ctx is None:       # no image: the text side is not defined on its own
            return None
        return super().text_features(ctx)

    def logits(self, x: dict[str, Tensor], text: Tensor | None = None) -> Tensor:
        f = x["f"]                                               # [B, d], normalised
        ctx = self.prompt.ctx + self.meta_net(f.to(self.meta_net[0].weight.dtype))[:, None]
        rows = []                                                # v_m(x) = v_m + π(x)
        for i in range(0, len(f), self.options.images_per_chunk):
            chunk = ctx[i:i + self.options.images_per_chunk]    # [b, M, D_t]
            emb = torch.cat([self.prompt(c) for c in chunk])      # [b·C, L, D_t]
            ids = self.prompt.ids.repeat(len(chunk), 1)
            t = self.backbone.encode_text_embeddings(emb, ids, normalize=True)
            t = t.view(len(chunk), -1, t.shape[-1])               # [b, C, d]
            rows.append(torch.einsum("bd,bcd->bc", f[i:i + len(chunk)].to(t.dtype), t))
        return self.backbone.logit_scale * torch.cat(rows)
