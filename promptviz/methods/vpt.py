"""VPT-deep — visual prompt tuning (Jia et al., ECCV 2022) as the MaPLe authors run it on CLIP.

Deep prompts in the **image tower only**: ``n`` learnable tokens appended after CLS and the
patches, replaced by each block's own before blocks ``1 … J − 1``
(:func:`promptviz.methods.ivlp.deep_prompt_hook`); the text side is CLIP's frozen
hand-crafted sentence, "a photo of a {class}." for every dataset in the authors' code. It is
:class:`~promptviz.methods.ivlp.IVLP` with no text prompts.

Defaults: the authors' ``VPT/vit_b16_c2_ep5_batch4_4.yaml`` (8 tokens at all 12 blocks,
SGD 0.0025, batch 4, 5 epochs).
"""

from __future__ import annotations

import dataclasses

from promptviz.methods.base import TrainDefaults
from promptviz.methods.ivlp import IVLP, IVLPOptions


@dataclasses.dataclass
class VPTOptions(IVLPOptions):
    n_ctx_text: int = 0                 # no text prompts: the frozen template below
    n_ctx_vision: int = 8               # n visual prompt tokens per block
    template: str = "a photo of a {}."  # the authors' fixed sentence ("" = the dataset's)


class VPT(IVLP):
    name = "vpt"
    Options = VPTOptions
    defaults = TrainDefaults(epochs=5, lr=0.0025, optimizer="sgd", batch_size=4)
