"""PromptKD — unsupervised prompt distillation (Li et al., CVPR 2024).

Two stages:

1. **the teacher**: a CLIP with learned prompts, trained on the labelled base-class shots
   (the authors: PromptSRC on ViT-L/14). Its prompted text features ``t^T`` for *all* classes
   are computed once and shared with the student, which never runs a text tower;
2. **the student**: an image tower with deep visual prompts (VPT-deep: 4 tokens in the first 9
   of 12 blocks) and a projector ``φ`` from its feature width to the teacher's, trained on
   **unlabelled** training images of all classes, base and novel (the *transductive*
   protocol: the student has seen novel-class images, though never their labels) to match the
   teacher's class probabilities:

   * student logits ``z^S = s · norm(φ(f^S)) @ t^Tᵀ`` (Eq. 3), teacher logits
     ``z^T = s^T · norm(f^T) @ t^Tᵀ``;
   * ``L_kd = T² · KL(softmax(z^T / T) ‖ softmax(z^S / T))`` (Eq. 4), no label anywhere.

At test time the student classifies with the teacher's text features: a deployment that
keeps the teacher's ``[C, D_T]`` class embeddings, not its towers.

Defaults: the authors' ``PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml`` and ``base2new_train.sh``
(SGD 0.005, batch 8, 20 epochs, T = 1, KD weight 1000, 200 on FGVCAircraft, Flowers102 and
DTD; all training images, ``SHOTS=0``). Their projector is two layers,
``Linear(d_S→D_T) → BatchNorm → ReLU → Linear(D_T→D_T)`` (1×1 convolutions in their code).
One code-vs-paper switch: their KL is summed and divided by the number of logits ``B·C``
(``kl_scale="elements"``, so the loss is ``1000 · KL / C``); ``"batch"`` divides by ``B``, the
batch-mean KL of Eq. 4. Their config selects the epoch with the best *base test* accuracy
(``FINAL_MODEL: best_val`` with the base test split as ``val``); promptviz keeps the last epoch.

**The teacher in promptviz.** ``teacher`` is a finished run folder (``promptviz train
--method promptsrc …``; any method's checkpoint), or a method name: then ``promptviz train
--method promptkd`` first trains that method on the run's labelled shots (its own defaults,
into ``<out>/teacher``, reused when it is already there) and distils it — the paper's two
stages in one command. ``teacher_backbone`` gives the teacher a bigger CLIP (the paper:
``ViT-L-14`` with OpenAI weights); by default it is the student's own backbone, which on
toyclip makes PromptKD a *self-distillation*: the student cannot inherit a stronger image
tower, only the teacher's prompted text and soft labels on unlabelled images. ``teacher=zeroshot``
is the control: distilling frozen CLIP.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptviz.backbone import ActivationCache, Backbone
from promptviz.checkpoint import META, WEIGHTS
from promptviz.errors import PromptvizError
from promptviz.methods.base import Method, TrainDefaults, parse_options
from promptviz.methods.inputs import Pixels
from promptviz.methods.ivlp import _prompts, deep_prompt_hook, optional_int, resolve_depth

KL_SCALES = ("elements", "batch")
PROJECTORS = ("mlp", "linear")
SMALL_KD_WEIGHT = ("fgvc_aircraft", "oxford_flowers", "dtd")    # KD_WEIGHT 200 in their script


@dataclasses.dataclass
class PromptKDOptions:
    teacher: str = "promptsrc"          # a finished run folder, or a method to train first on
                                        # the labelled shots (into <out>/teacher); "zeroshot":
                                        # frozen CLIP teaches (the control)
    teacher_backbone: str = ""          # the teacher's CLIP when teacher is a method name
                                        # ("" = the student's; the paper: ViT-L-14)
    n_ctx_vision: int = 4               # visual prompt tokens of the student
    depth_vision: int | None = None     # None = the authors' 9 of 12 blocks
    temperature: float = 1.0            # T of Eq. 4
    kd_weight: float = 1000.0           # the loss is kd_weight · L_kd (their KD_WEIGHT)
    kl_scale: str = "elements"          # code: KL sum / (B·C); "batch": sum / B (Eq. 4)
    projector: str = "mlp"              # code: Linear→BN→ReLU→Linear; "linear": one Linear
    transductive: bool = True           # the student learns from every class's training
                                        # images (the paper); False: the base classes' only
                                        # (the control: no novel-class image seen)

    def __post_init__(self) -> None:
        self.depth_vision = optional_int(self.depth_vision, "depth_vision")


def projector(d_in: int, d_out: int, kind: str = "mlp") -> nn.Module:
    """``φ``: the student's image feature into the teacher's width."""
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(),
                         nn.Linear(d_out, d_out))


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0,
            scale: str = "elements") -> Tensor:
    """``T² · KL(softmax(z^T/T) ‖ softmax(z^S/T))`` summed, over ``B·C`` (``"elements"``, the
    authors' code) or over ``B`` (``"batch"``) (Eq. 4)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student.float() / t, dim=-1),
                  F.log_softmax(teacher.float() / t, dim=-1), reduction="sum", log_target=True)
    return kl * t * t / (student.numel() if scale == "elements" else student.shape[0])


def is_run_folder(value: str) -> bool:
    """Whether ``teacher`` names a folder rather than a method."""
    from promptviz.methods import METHODS
    return value not in METHODS


class PromptKD(Method):
    name = "promptkd"
    Options = PromptKDOptions
    image_input = Pixels()          # the student's visual prompts change the image pass
    defaults = TrainDefaults(epochs=20, lr=0.005, optimizer="sgd", batch_size=8)

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: PromptKDOptions | None = None, teacher: Method | None = None
                 ) -> None:
        super().__init__(backbone, classnames, template, options)
        o, info = self.options, backbone.info
        if o.kl_scale not in KL_SCALES:
            raise PromptvizError(f"kl_scale={o.kl_scale!r}; use one of {list(KL_SCALES)}")
        if o.projector not in PROJECTORS:
            raise PromptvizError(f"projector={o.projector!r}; use one of {list(PROJECTORS)}")
        if o.n_ctx_vision < 1:
            raise PromptvizError(f"n_ctx_vision={o.n_ctx_vision}: the student learns at least "
                                 "one visual prompt token")
        if not o.temperature > 0:
            raise PromptvizError(f"temperature={o.temperature}; use a positive number (1: the "
                                 "authors')")
        self.n_text, self.n_vision = 0, o.n_ctx_vision     # no text side of its own
        self.depth_vision = resolve_depth(o.depth_vision, 9, info.vision_layers, "depth_vision")
        dev = backbone.device
        self.visual_prompt = nn.Parameter(
            torch.empty(self.n_vision, info.vision_width, device=dev).normal_(0.0, 0.02))
        self.vision_deep = _prompts(self.depth_vision - 1, self.n_vision, info.vision_width, dev)
        teacher = teacher if teacher is not None else load_teacher(o.teacher, backbone,
                                                                   classnames, template)
        check_teacher(teacher.backbone, backbone)
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.teacher = teacher.eval()
        self.proj = projector(backbone.embed_dim, teacher.backbone.embed_dim,
                              o.projector).to(dev)
        self.set_classnames(classnames, template)

    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        self.classnames = list(classnames)
        self.template = template or self.template
        self.teacher.set_classnames(self.classnames, self.template)
        with torch.no_grad():
            t = self.teacher.text_features()
        if t is None:
            raise PromptvizError(f"teacher {self.teacher.name} has image-dependent text features "
                                 "(one set per image); PromptKD shares one [C, d] set with the "
                                 "student: use another teacher (promptsrc, the authors')")
        self.register_buffer("t_teacher", F.normalize(t.float(), dim=-1), persistent=False)

    def train(self, mode: bool = True) -> PromptKD:
        super().train(mode)
        self.teacher.eval()             # the teacher never trains (no dropout, no BN updates)
        return self

    # -- the student -----------------------------------------------------------------
    def vision_prompts(self) -> tuple[Tensor, list[Tensor]]:
        """The student's visual tokens entering the tower and those replacing them before
        blocks ``1 … J − 1``."""
        return self.visual_prompt, list(self.vision_deep)

    def text_prompts(self) -> tuple[None, list[Tensor]]:
        """None: the student has no text prompts (it reads the teacher's text features)."""
        return None, []

    def encode_image_prompted(self, images: Tensor, cache: ActivationCache | None = None
                              ) -> Tensor:
        """The student's prompted image feature ``f^S`` (not normalised), ``[B, d_S]``."""
        shallow, deep = self.vision_prompts()
        return self.backbone.encode_image(images, extra_tokens=shallow, cache=cache,
                                          hook=deep_prompt_hook(deep, "vis", self.n_vision))

    def student_features(self, images: Tensor) -> Tensor:
        """``norm(φ(f^S))`` in the teacher's width, ``[B, D_T]``."""
        return F.normalize(self.proj(self.encode_image_prompted(images).float()).float(), dim=-1)

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        """``z^T``: the teacher's own logits on ``images`` for the current classes."""
        return self.teacher.logits(self.teacher.inputs(images), self.t_teacher).float()

    # -- the interface ----------------------------------------------------------------
    def text_features(self) -> Tensor:
        """The teacher's text features ``norm(t^T)`` ``[C, D_T]``; the student has no text side."""
        return self.t_teacher

    def logits(self, images: Tensor, text: Tensor | None = None) -> Tensor:
        """``z^S = s · norm(φ(f^S)) @ t^Tᵀ`` (Eq. 3)."""
        text = self.t_teacher if text is None else text
        return self.backbone.logit_scale * self.student_features(images) @ text.float().t()

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``kd_weight · L_kd``; ``labels`` are never read (they only score training accuracy
        in the loop)."""
        o = self.options
        student = self.logits(images)
        kd = kd_loss(student, self.teacher_logits(images), o.temperature, o.kl_scale)
        return o.kd_weight * kd, student, {"kd": kd.detach()}

    @classmethod
    def unlabelled_images(cls, options: dict[str, Any]) -> str | None:
        """Every class's training images, or the base classes' (``transductive=false``)."""
        return "all" if parse_options(cls.Options, options).transductive else "base"

    @classmethod
    def dataset_options(cls, dataset: str, protocol: str = "base2new") -> dict[str, Any]:
        return {"kd_weight": 200.0} if dataset in SMALL_KD_WEIGHT else {}



def load_teacher(teacher: str, backbone: Backbone, classnames: list[str], template: str
                 ) -> Method:
    """The teacher ``teacher`` names: a trained run folder's method, or (a method name) that
    method as built, untrained, on ``backbone`` — what ``promptviz train`` replaces by a
    trained one before it builds the student (:func:`promptviz.train.loop.train_teacher`)."""
    from promptviz.methods import build_method, load_trained
    if not is_run_folder(teacher):
        if teacher == PromptKD.name:
            raise PromptvizError("teacher=promptkd: a student cannot teach itself; use "
                                 "teacher=promptsrc (the authors') or a run folder")
        return build_method(teacher, backbone, classnames, template)
    return load_trained(teacher_folder(teacher), str(backbone.device))[0]


def teacher_folder(teacher: str) -> Path:
    """``teacher`` as the absolute path of a finished run folder, or one clear error."""
    folder = Path(teacher).expanduser()
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise PromptvizError(
            f"teacher={teacher}: no trained run there ({WEIGHTS} and {META}); give the --out "
            "folder of a finished `promptviz train` run, or a method name (e.g. "
            "teacher=promptsrc) for `promptviz train` to train the teacher first")
    return folder.resolve()


def check_teacher(teacher: Backbone, backbone: Backbone) -> None:
    """Teacher and student read the same pixels: one image size and normalisation."""
    a, b = teacher, backbone
    if (a.image_size, tuple(a.mean), tuple(a.std)) != (b.image_size, tuple(b.mean),
                                                        tuple(b.std)):
        raise PromptvizError(
            f"the teacher's backbone reads {a.image_size}px images normalised by {a.mean}/"
            f"{a.std} and the student's {b.image_size}px by {b.mean}/{b.std}; PromptKD feeds "
            "both the same batch: pick a teacher_backbone with the student's preprocessing")
