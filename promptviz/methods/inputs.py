"""What a method reads from an image: the image side of the method interface.

A method computes ``logits(x)`` and ``loss(x, y)`` from ``x``, and its ``image_input`` says
what ``x`` is:

* :class:`FrozenFeatures` — the frozen image tower's outputs, a dict: ``{"f": norm(f_img)}``
  (zero-shot, CoOp, CoCoOp, KgCoOp), the un-normalised feature (CLIP-Adapter), and for
  training a block's projected tokens and its CLS attention too (TextRefiner). Nothing the
  method trains changes them, so training may compute them once per image and augmented
  view and reuse them (:class:`promptviz.train.inputs.TrainingInputs`; on disk:
  :mod:`promptviz.train.featcache`).
* :class:`Pixels` — the images themselves: the method runs the image tower, which its
  trainable parameters change (SEP's prompts).

``method.inputs(images)`` turns pixels into ``x``; ``method(images)`` is
``method.logits(method.inputs(images))``. The method itself never knows whether ``x`` came
from the tower a moment ago or from the feature cache: training from cached features and
from pixels runs the same method code (``tests/test_inputs.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
from torch import Tensor

from promptviz.backbone import ActivationCache, Backbone


class ImageInput(Protocol):
    frozen: bool                        # x does not depend on anything that trains

    def __call__(self, backbone: Backbone, images: Tensor, train: bool = False) -> Any: ...

    def key(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class Pixels:
    """``x`` = the images: the method runs the image tower itself (SEP)."""

    frozen = False

    def __call__(self, backbone: Backbone, images: Tensor, train: bool = False) -> Tensor:
        return images

    def key(self) -> dict[str, Any]:
        return {"features": "pixels"}


@dataclasses.dataclass(frozen=True)
class FrozenFeatures:
    """``x`` = what the frozen image tower gives, by name:

    * ``"f"``: the image feature, L2-normalised (``normalize=False``: as the tower gives it);
    * with ``tokens_layer`` and ``train=True`` also ``"tokens"``, that block's output tokens
      through ``ln_post`` and ``proj`` ``[B, N, d]``, and ``"attn"``, its CLS→patch attention
      ``[B, N−1]`` (TextRefiner's local loss and cache write; inference needs only ``f``).

    With ``tokens_layer`` every tensor comes back in fp32 (TextRefiner computes in fp32);
    without, ``f`` keeps the dtype the tower gave it (bf16 under autocast, half the cache)."""

    normalize: bool = True
    tokens_layer: int | None = None
    frozen = True

    @torch.no_grad()
    def __call__(self, backbone: Backbone, images: Tensor, train: bool = False
                 ) -> dict[str, Tensor]:
        if self.tokens_layer is None or not train:
            f = backbone.encode_image(images, normalize=self.normalize)
            return {"f": f if self.tokens_layer is None else f.float()}
        layer = self.tokens_layer
        last = layer == backbone.info.vision_layers - 1
        cache = ActivationCache(attn_layers=[layer], keep_resid=not last)
        f = backbone.encode_image(images, cache=cache, normalize=self.normalize)
        tokens = cache["vis_proj"] if last else \
            backbone.project_visual_tokens(cache["vis_resid", layer + 1])
        return {"f": f.float(), "tokens": tokens.float(),
                "attn": cache.cls_attention(layer).float()}

    def key(self) -> dict[str, Any]:
        """What the feature cache's key says is read (methods that read alike share entries:
        CoOp, CoCoOp and KgCoOp)."""
        if self.tokens_layer is not None:
            return {"features": "f+tokens+attn", "layer": self.tokens_layer,
                    **({} if self.normalize else {"normalize": False})}
        return {"features": "f" if self.normalize else "f_raw"}
