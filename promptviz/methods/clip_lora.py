"""CLIP-LoRA — low-rank adaptation of both CLIP towers (Zanella & Ben Ayed, CVPRW 2024).

Nothing is added to the input: each adapted weight matrix ``W0`` of the attention (the
query, key and value projections by default) gains a trainable low-rank update,
``h = W0 x + ΔW x = W0 x + γ·B A x`` with ``A`` ``[r, d_in]``, ``B`` ``[d_out, r]``,
``r = 2``. ``A`` starts as an ``nn.Linear`` weight would (Kaiming-uniform) and ``B`` at zero,
so the untrained model *is* zero-shot CLIP. Dropout (0.25) acts on the LoRA branch's input
only, in training only. Both towers are adapted in every block, so the class embeddings
are re-encoded with the update (once per evaluation, every step in training) and the
method reads pixels. Logits ``s · norm(f) @ norm(t)ᵀ`` with the hand-crafted prompt
``"a photo of a {}."`` (the authors use it for every dataset, ImageNet included), loss
cross-entropy.

The update is added through :meth:`promptviz.backbone.Backbone.deltas` for the duration of
each encode: the frozen backbone's weights are never written, so another method on the
same backbone still computes pre-trained CLIP.

Where the authors' code (MaxZanella/CLIP-LoRA @ 358f0d7) and the paper or plain LoRA part:

* **scaling** ``γ``: their ``LoRALayer`` uses ``α/√r`` (the ``α/r`` of Hu et al.'s LoRA is
  commented out there), so with ``α = 1, r = 2``, ``γ = 0.707``. The default is the code's;
  ``--set scaling=linear`` is LoRA's ``α/r``.
* **weight decay**: their first commit passed ``weight_decay=1e2`` to AdamW (their issue
  #1); it was corrected to ``1e-2`` on 2024-06-03 (commit 37a196d) and stays so at the
  revision read. promptviz uses **1e-2**: it is what the code says now, it is AdamW's own
  default, and 1e2 with lr 2e-4 would shrink A and B by 2% every step, pulling the update
  back to zero over the 8,000 steps of a 16-shot run. Whether the paper's numbers were
  measured before the fix is not stated; ``--weight-decay 100`` reruns the slip.
* **schedule**: theirs is AdamW (lr 2e-4, betas 0.9/0.999), batch 32, ``500 × shots``
  iterations with a cosine stepped every iteration down to 1e-6 and no warm-up. promptviz's
  loop is epoch-based: the budget becomes ``ceil(500·K / steps per epoch)`` whole epochs
  (``TrainDefaults.iterations_per_shot``), the cosine is stepped per epoch and ends at 0,
  and there is no warm-up epoch (``warmup_epochs=0``). Their loader keeps the last, partial
  batch of an epoch; promptviz's drops it, so each epoch has ``⌊N/32⌋`` steps.
* **positions**: their ``position`` names index lists for 12-block towers (``bottom`` =
  blocks 0-3, ``mid`` 4-7, ``up`` 8-11, ``half-*``, ``top3``, ``all``); here they are the
  same thirds and halves of any depth (identical at 12 blocks; ``half-*`` at 24 as their
  ViT-L/14 lists).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptviz.backbone import PROJECTIONS, Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.base import Method, TrainDefaults, prompt_texts, zero_shot_text_features
from promptviz.methods.inputs import Pixels

ENCODERS = {"both": ("txt", "vis"), "text": ("txt",), "vision": ("vis",)}
SCALINGS = ("sqrt", "linear")          # γ = α/√r (the authors' code) | α/r (Hu et al.)


def position_layers(position: str, depth: int) -> tuple[int, ...]:
    """The blocks of a ``depth``-block tower that the authors' ``position`` names: thirds
    (``bottom``, ``mid``, ``up``), halves (``half-bottom``, ``half-up``), the last three
    (``top3``) or ``all`` — at 12 blocks exactly their index lists."""
    third, half = depth // 3, depth // 2
    spans = {"all": (0, depth), "bottom": (0, third), "mid": (third, 2 * third),
             "up": (2 * third, depth), "half-bottom": (0, half), "half-up": (half, depth),
             "top3": (max(depth - 3, 0), depth)}
    if position not in spans:
        raise PromptvizError(f"option position={position!r}; use one of {list(spans)}")
    return tuple(range(*spans[position]))


@dataclasses.dataclass
class CLIPLoRAOptions:
    r: int = 2                          # rank of B A
    alpha: float = 1.0                  # α: γ = α/√r (code) or α/r (scaling=linear)
    scaling: str = "sqrt"               # "sqrt": the authors' α/√r; "linear": LoRA's α/r
    dropout: float = 0.25               # on the LoRA branch's input, in training only
    params: str = "q,k,v"               # adapted projections, any of q, k, v, o
    encoder: str = "both"               # adapted towers: both | text | vision
    position: str = "all"               # blocks: all | bottom | mid | up | half-bottom |
                                        # half-up | top3 (the authors' names)
    template: str = "a photo of a {}."  # the authors' prompt for every dataset; "" = the
                                        # dataset's own template

    def __post_init__(self) -> None:
        if isinstance(self.params, (list, tuple)):
            self.params = ",".join(self.params)
        chosen = [p.strip() for p in self.params.split(",") if p.strip()]
        bad = [p for p in chosen if p not in PROJECTIONS]
        if bad or not chosen:
            raise PromptvizError(f"option params={self.params!r}; use a comma-separated "
                                 f"subset of {','.join(PROJECTIONS)}, e.g. params=q,k,v")
        self.params = ",".join(p for p in PROJECTIONS if p in chosen)   # canonical order
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise PromptvizError(f"option r={self.r!r}: the rank must be an integer ≥ 1")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise PromptvizError(f"option alpha={self.alpha!r}: use a number above 0")
        if not 0.0 <= self.dropout < 1.0:
            raise PromptvizError(f"option dropout={self.dropout!r}: use a rate in [0, 1)")
        if self.encoder not in ENCODERS:
            raise PromptvizError(f"option encoder={self.encoder!r}; use one of "
                                 f"{list(ENCODERS)}")
        if self.scaling not in SCALINGS:
            raise PromptvizError(f"option scaling={self.scaling!r}; use one of "
                                 f"{list(SCALINGS)}")
        position_layers(self.position, 12)                    # a known name

    @property
    def gamma(self) -> float:
        """The update's scale ``γ``: ``α/√r`` (the authors' code) or ``α/r``."""
        return self.alpha / (math.sqrt(self.r) if self.scaling == "sqrt" else self.r)


class LoRA(nn.Module):
    """The low-rank update of one ``[d_out, d_in]`` matrix: ``x ↦ γ·B A dropout(x)``."""

    def __init__(self, d_in: int, d_out: int, r: int, gamma: float, dropout: float,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.A = nn.Parameter(torch.empty(r, d_in, device=device))
        self.B = nn.Parameter(torch.zeros(d_out, r, device=device))  # B = 0: ΔW = 0 at first
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))            # as nn.Linear (loralib)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # ΔW x of h = W0 x + ΔW x = W0 x + γ·B A x (the backbone adds W0 x), dropout on x
        return self.gamma * F.linear(F.linear(self.dropout(x), self.A), self.B)

    def delta_weight(self) -> Tensor:
        """``ΔW = γ·B A`` ``[d_out, d_in]`` (what merging into ``W0`` would add)."""
        return self.gamma * self.B @ self.A


class CLIPLoRA(Method):
    name = "clip_lora"
    Options = CLIPLoRAOptions
    image_input = Pixels()          # x = the images: the adapted image tower runs in logits
    defaults = TrainDefaults(       # lora.py and run_utils.py of the authors
        epochs=10, lr=2e-4, optimizer="adamw", batch_size=32, weight_decay=1e-2,
        warmup_epochs=0, iterations_per_shot=500)

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: CLIPLoRAOptions | None = None) -> None:
        super().__init__(backbone, classnames, template, options)
        o, info = self.options, backbone.info
        widths = {"txt": info.text_width, "vis": info.vision_width}
        depths = {"txt": info.text_layers, "vis": info.vision_layers}
        self.adapted: dict[str, tuple[int, ...]] = {}
        for tower in ENCODERS[o.encoder]:
            layers = position_layers(o.position, depths[tower])
            if not layers:
                raise PromptvizError(
                    f"option position={o.position!r} names no block of the {depths[tower]}-"
                    f"block {'text' if tower == 'txt' else 'image'} tower; use position=all")
            self.adapted[tower] = layers
        self.lora = nn.ModuleDict({
            f"{tower}_{layer}_{p}": LoRA(widths[tower], widths[tower], o.r, o.gamma, o.dropout,
                                         backbone.device)
            for tower, layers in self.adapted.items() for layer in layers
            for p in o.params.split(",")})
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        self.classnames = list(classnames)
        self.template = self.options.template or template or self.template
        ids = self.backbone.tokenize(prompt_texts(self.classnames, self.template))
        self.register_buffer("ids", ids, persistent=False)
        if "txt" not in self.adapted:     # the text tower stays pre-trained: encode it once
            self.register_buffer("t0", zero_shot_text_features(
                self.backbone, self.classnames, self.template), persistent=False)

    def deltas(self, tower: str) -> dict[str, nn.Module]:
        """``{"vis.3.q": LoRA, …}``: the updates of ``tower`` for :meth:`Backbone.deltas`."""
        return {name.replace("_", "."): m for name, m in self.lora.items()
                if name.startswith(tower + "_")}

    def text_features(self) -> Tensor:
        """``norm(t_c)`` of the prompt through the adapted text tower, ``[C, d]``."""
        if "txt" not in self.adapted:
            return self.t0
        with self.backbone.deltas(self.deltas("txt")):
            return F.normalize(self.backbone.encode_text(self.ids).float(), dim=-1)

    def image_features(self, images: Tensor) -> Tensor:
        """``norm(f)`` of the images through the adapted image tower, ``[B, d]``."""
        if "vis" not in self.adapted:
            with torch.no_grad():
                return self.backbone.encode_image(images, normalize=True).float()
        with self.backbone.deltas(self.deltas("vis")):
            return F.normalize(self.backbone.encode_image(images).float(), dim=-1)

    def logits(self, images: Tensor, text: Tensor | None = None) -> Tensor:
        """``s · norm(f) @ norm(t)ᵀ``, both towers adapted; pass ``text`` to reuse it."""
        text = self.text_features() if text is None else text
        return self.backbone.logit_scale * self.image_features(images) @ text.float().t()
