"""KgCoOp — knowledge-guided CoOp (Yao et al., CVPR 2023; methods.md §4).

CoOp plus a regulariser that keeps each learned class embedding close to the
hand-crafted one: ``L_kg = 1 − mean_c cos(t_c, t0_c)``, loss ``CE + λ·L_kg``.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor

from promptviz.methods.base import TrainDefaults
from promptviz.methods.coop import CoOp, CoOpOptions


@dataclasses.dataclass
class KgCoOpOptions(CoOpOptions):
    kg_weight: float = 8.0              # λ in the authors' scripts


class KgCoOp(CoOp):
    name = "kgcoop"
    Options = KgCoOpOptions
    # the authors' base-to-novel config (vit_b16_ep100_ctxv1): SGD 0.002, batch 128, 100 epochs
    defaults = TrainDefaults(epochs=100, lr=0.002, optimizer="sgd", batch_size=128)

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        super().set_classnames(classnames, template)
        self.register_buffer("t0", self.frozen_text_features(), persistent=False)

    def extra_loss(self, text: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``λ·L_kg`` with ``L_kg = 1 − mean_c cos(t_c, t0_c)`` on the learned text ``text``."""
        kg = 1.0 - F.cosine_similarity(text.float(), self.t0, dim=-1).mean()  # L_kg
        return self.options.kg_weight * kg, {"kg": kg}
