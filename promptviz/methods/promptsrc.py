"""PromptSRC — self-regulating prompts (Khattak et al., ICCV 2023).

IVLP's deep prompts in both towers (:mod:`promptviz.methods.ivlp`: 4 + 4 tokens in the first
9 blocks, the text prompt initialised from "a photo of a"), kept from forgetting what frozen
CLIP knows by three self-regularising pieces:

* **mutual agreement** (Eq. 3–5) with the frozen model on every training batch:
  ``L_SCL-text = λ1 · mean|norm(t) − norm(t̃)|`` (L1 over the class embeddings),
  ``L_SCL-image = λ2 · mean|norm(f) − norm(f̃)|`` and ``L_SCL-logits = KL(p̃ ‖ p)``, where
  ``~`` marks frozen CLIP (no prompts) and ``p``, ``p̃`` are the class probabilities of the
  prompted and the frozen logits. ``L = CE + L_SCL-text + L_SCL-image + L_SCL-logits``;
* **textual diversity**: ``t̃`` is not one sentence's feature but the mean over many
  hand-crafted templates (the authors: the first 60 of CLIP's 80 ImageNet templates, for
  every dataset; promptviz takes them from open_clip);
* **Gaussian-weighted prompt aggregation (GPA, Eq. 6)**: after each epoch ``e`` the prompts
  are added to a running sum with weight ``g(e) = N(e; μ, σ²)``, normalised over ``1 … E``;
  after the last epoch the model takes that sum. Early epochs, still close to the
  initialisation, and the last ones, fitted hardest to the few shots, count less.

At test time the method is IVLP with the aggregated prompts (no frozen pass, no ensemble).

Defaults: the authors' ``PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml`` (SGD 0.0025, batch 4,
20 epochs, λ1 = 25, λ2 = 10, GPA μ = 15, σ = 1). Few-shot (``--protocol fewshot``): 50 epochs,
GPA μ = 30, σ = 30 on ImageNet, Caltech101, OxfordPets, Food101, UCF101, SUN397 and
μ = 45, σ = 5 on StanfordCars, Flowers102, FGVCAircraft, DTD, EuroSAT (their few-shot config
and its comments). One code-vs-paper switch: the authors' KL sums over the batch and divides
by the number of logits ``B·C`` (``kl_scale="elements"``); ``"batch"`` divides by ``B``, the
usual batch-mean KL of the paper's ``D_KL``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import Tensor

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.base import TrainDefaults, prompt_texts
from promptviz.methods.inputs import FrozenFeatures
from promptviz.methods.ivlp import IVLP, IVLPOptions

# The authors' 60 templates are the first 60 of CLIP's 80 (the same sentences; the mean over
# templates does not depend on their order).
TEMPLATES = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES[:60])
# Few-shot GPA by dataset (the few-shot config and its comment), keyed by Dataset.name.
FEWSHOT_GPA = {**dict.fromkeys(("imagenet", "caltech-101", "oxford_pets", "food-101", "ucf101",
                                "sun397"), (30.0, 30.0)),
               **dict.fromkeys(("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd",
                                "eurosat"), (45.0, 5.0))}
KL_SCALES = ("elements", "batch")


@dataclasses.dataclass
class PromptSRCOptions(IVLPOptions):
    n_ctx_text: int = 4                 # text prompt tokens ("a photo of a", all four learn)
    n_ctx_vision: int = 4               # visual prompt tokens
    depth_text: int | None = None       # None = the authors' 9 of 12 blocks
    depth_vision: int | None = None     # None = the authors' 9 of 12 blocks
    text_weight: float = 25.0           # λ1 of L_SCL-text
    image_weight: float = 10.0          # λ2 of L_SCL-image
    logit_weight: float = 1.0           # weight of L_SCL-logits (1 in the authors' code)
    n_templates: int = 60               # t̃ = mean over the first N of CLIP's 80 ImageNet
                                        # templates; 0 = the dataset's own template only
    gpa: bool = True                    # Gaussian-weighted prompt aggregation over epochs
    gpa_mean: float = 15.0              # μ of the epoch weights (1-based epochs)
    gpa_std: float = 1.0                # σ of the epoch weights
    kl_scale: str = "elements"          # code: KL sum / (B·C); "batch": sum / B (paper's D_KL)


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """``g(e) = N(e; μ, σ²)`` for ``e = 1 … epochs``, normalised to sum to 1 (Eq. 6)."""
    g = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, epochs + 1)]
    total = sum(g)
    if total == 0.0:        # every epoch ≫ σ away from μ: all the weight on the nearest one
        nearest = min(range(epochs), key=lambda i: abs(i + 1 - mean))
        return [float(i == nearest) for i in range(epochs)]
    return [w / total for w in g]


class PromptSRC(IVLP):
    name = "promptsrc"
    Options = PromptSRCOptions
    defaults = TrainDefaults(epochs=20, lr=0.0025, optimizer="sgd", batch_size=4,
                             by_dataset={f"{d}/fewshot": {"epochs": 50} for d in FEWSHOT_GPA})
    authors_depth = 9

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: PromptSRCOptions | None = None) -> None:
        o = options if options is not None else PromptSRCOptions()
        if o.n_ctx_text < 1:
            raise PromptvizError(f"n_ctx_text={o.n_ctx_text}; PromptSRC prompts the text tower "
                                 "(its agreement terms compare prompted and frozen text)")
        if o.kl_scale not in KL_SCALES:
            raise PromptvizError(f"kl_scale={o.kl_scale!r}; use one of {list(KL_SCALES)}")
        if not (o.gpa_std > 0 and math.isfinite(o.gpa_mean)):
            raise PromptvizError(f"gpa_std={o.gpa_std}, gpa_mean={o.gpa_mean}: GPA needs a "
                                 "finite mean and a positive standard deviation")
        if not 0 <= o.n_templates <= len(OPENAI_IMAGENET_TEMPLATES):
            raise PromptvizError(f"n_templates={o.n_templates}; use 0 (the dataset's template) "
                                 f"to {len(OPENAI_IMAGENET_TEMPLATES)}")
        super().__init__(backbone, classnames, template, o)
        self._gpa: dict[str, Tensor] = {}           # Σ_e g(e)·θ_e so far (training only)
        self._frozen_text: tuple[tuple, Tensor] | None = None

    @classmethod
    def dataset_options(cls, dataset: str, protocol: str = "base2new") -> dict[str, Any]:
        """Few-shot runs use the authors' per-dataset GPA mean and spread."""
        if protocol == "fewshot" and dataset in FEWSHOT_GPA:
            mean, std = FEWSHOT_GPA[dataset]
            return {"gpa_mean": mean, "gpa_std": std}
        return {}

    # -- frozen CLIP's side ------------------------------------------------------------
    @torch.no_grad()
    def frozen_text_features(self) -> Tensor:
        """``norm(t̃)``: frozen text features averaged over the templates, ``[C, d]``
        (computed once per class list and templates)."""
        n = self.options.n_templates
        templates = TEMPLATES[:n] if n else (self.template,)
        key = (tuple(self.classnames), templates)
        if self._frozen_text is None or self._frozen_text[0] != key:
            total = 0.0
            for template in templates:       # mean of the un-normalised features (authors)
                ids = self.backbone.tokenize(prompt_texts(self.classnames, template))
                total = total + self.backbone.encode_text(ids).float()
            t = F.normalize(total / len(templates), dim=-1)
            self._frozen_text = (key, t)
        return self._frozen_text[1]

    # -- the objective -------------------------------------------------------------------
    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        o, s = self.options, self.backbone.logit_scale
        text = self.text_features()                                       # norm(t)
        f = F.normalize(self.encode_image_prompted(images).float(), dim=-1)   # norm(f)
        logits = s * f @ text.t()
        ce = F.cross_entropy(logits, labels)
        t0 = self.frozen_text_features()                                  # norm(t̃)
        f0 = FrozenFeatures()(self.backbone, images)["f"].float()         # norm(f̃), no grad
        logits0 = s * f0 @ t0.t()
        l_text = F.l1_loss(text, t0)                          # Eq. 3: mean|norm(t) − norm(t̃)|
        l_image = F.l1_loss(f, f0)                            # Eq. 4: mean|norm(f) − norm(f̃)|
        kl = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(logits0, dim=-1),
                      reduction="sum", log_target=True)       # Eq. 5: KL(p̃ ‖ p), summed
        kl = kl / (logits.numel() if o.kl_scale == "elements" else logits.shape[0])
        loss = (ce + o.text_weight * l_text + o.image_weight * l_image
                + o.logit_weight * kl)
        terms = {"ce": ce, "scl_text": l_text, "scl_image": l_image, "scl_logits": kl}
        return loss, logits, {k: v.detach() for k, v in terms.items()}

    # -- GPA -------------------------------------------------------------------------------
    def _prompt_params(self) -> dict[str, Tensor]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Add ``g(epoch)·θ`` to the running sum (Eq. 6)."""
        if not self.options.gpa:
            return
        g = gpa_weights(epochs, self.options.gpa_mean, self.options.gpa_std)[epoch - 1]
        for n, p in self._prompt_params().items():
            self._gpa[n] = self._gpa.get(n, torch.zeros_like(p, dtype=torch.float32)) \
                + g * p.detach().float()

    @torch.no_grad()
    def end_training(self) -> None:
        """The prompts become the Gaussian-weighted sum over all epochs."""
        if not self._gpa:
            return
        for n, p in self._prompt_params().items():
            p.copy_(self._gpa[n].to(p.dtype))
        self._gpa = {}

    def training_state(self) -> dict[str, Tensor]:
        return {f"gpa.{n}": v for n, v in self._gpa.items()}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        dev = self.backbone.device
        self._gpa = {k.removeprefix("gpa."): v.to(dev) for k, v in state.items()
                     if k.startswith("gpa.")}
