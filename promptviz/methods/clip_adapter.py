"""CLIP-Adapter — a residual bottleneck adapter on the frozen image feature (Gao et al., IJCV
2024, arXiv 2110.04544).

The smallest method here, and the one the README's "Adding a method" walkthrough builds:
zero-shot CLIP (whose class embeddings it keeps) plus one module; nothing in either tower
trains. A two-layer bottleneck ``A`` reads the image feature ``f``
and its output is blended back in, ``f* = α·A(f) + (1−α)·f``; the class embeddings are the
hand-crafted sentences' ``t0`` and the logits ``s · norm(f*) @ norm(t0)ᵀ``. With ``α = 0`` it
is zero-shot CLIP.

The method reads ``x = {"f": f_img}``, the feature as the tower gives it (the authors adapt
it before normalising), by declaring ``image_input``; training gets it from the feature
cache or from the images without any code here. Defaults follow the authors' code
(``clip_adapter.py`` in gaopengcuhk/CLIP-Adapter): reduction 4, ``α = 0.2``, no biases, a
ReLU after both layers (the paper's ``A(f) = ReLU(fᵀW1)W2`` has none after the second:
``final_relu=false``). That repository ships no training config, so the schedule is
CoOp's (SGD 0.002, batch 32, 10 epochs).
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.base import TrainDefaults
from promptviz.methods.inputs import FrozenFeatures
from promptviz.methods.zeroshot import ZeroShot, ZeroShotOptions


@dataclasses.dataclass
class CLIPAdapterOptions(ZeroShotOptions):  # template: override the dataset's template
    reduction: int = 4          # bottleneck width d / reduction
    ratio: float = 0.2          # α, the residual ratio (the code's 0.2 for every dataset)
    final_relu: bool = True     # code: ReLU after W2 too; false: the paper's A(f) = ReLU(fᵀW1)W2


class CLIPAdapter(ZeroShot):    # zero-shot CLIP (t0 of the template) + an adapter on f_img
    name = "clip_adapter"
    Options = CLIPAdapterOptions
    defaults = TrainDefaults(epochs=10, lr=0.002, optimizer="sgd", batch_size=32)
    image_input = FrozenFeatures(normalize=False)      # x = {"f": f_img}, not normalised

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: CLIPAdapterOptions | None = None) -> None:
        super().__init__(backbone, classnames, template, options)       # t0, as zero-shot
        o, d = self.options, backbone.embed_dim
        if not 1 <= o.reduction <= d:
            raise PromptvizError(f"reduction={o.reduction}; choose 1 to {d} (the feature width)")
        if not 0.0 <= o.ratio <= 1.0:
            raise PromptvizError(f"ratio={o.ratio}; choose a blend between 0 and 1")
        layers = [nn.Linear(d, d // o.reduction, bias=False), nn.ReLU(),
                  nn.Linear(d // o.reduction, d, bias=False)]
        self.adapter = nn.Sequential(*layers, *([nn.ReLU()] if o.final_relu else []))
        self.adapter.to(backbone.device)

    def logits(self, x: dict[str, Tensor], text: Tensor | None = None) -> Tensor:
        text = self.t0 if text is None else text
        f = x["f"].float()
        a = self.options.ratio
        f_star = a * self.adapter(f) + (1 - a) * f             # f* = α·A(f) + (1−α)·f
        return self.backbone.logit_scale * F.normalize(f_star, dim=-1) @ text.float().t()
