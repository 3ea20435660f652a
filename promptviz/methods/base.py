"""The one interface every method implements.

A method is a small ``nn.Module`` around a frozen :class:`~promptviz.backbone.Backbone`:

* ``text_features()`` — the ``[C, d]`` class embeddings (L2-normalised) for the
  current class names, when they do not depend on the image (``None`` otherwise);
* ``logits(x, text)`` — ``[B, C]`` class scores; ``text`` is the output of
  ``text_features()`` computed once per evaluation, so text is not re-encoded
  for every test batch;
* ``loss(x, labels)`` — the training objective, returning the loss, the
  logits (for training accuracy) and a dict of named terms for logging;
* ``set_classnames(names, template)`` — switch the class list (base → novel);
* ``trainable_state()`` / ``load_trainable_state()`` — what a checkpoint holds:
  the parameters that train plus any non-gradient state (TextRefiner's cache).

``x`` is what the method reads from an image, as its ``image_input`` declares
(:mod:`promptviz.train.inputs`): the frozen tower's features (computed once and cached by
training, with no code in the method) or the pixels. ``method(images)`` gives the logits
from pixels.

Each method has its own plain ``@dataclass`` of options; ``key=value``
overrides from the command line are applied by :func:`parse_options`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError
from promptviz.methods.inputs import FrozenFeatures, ImageInput


@dataclasses.dataclass
class TrainDefaults:
    """Per-method training defaults (the authors' configs and scripts), overridable from the
    CLI. ``by_dataset`` holds the authors' per-dataset schedules, keyed ``"<name>/<protocol>"``
    with the dataset's name (``Dataset.name``, CoOp's folder name, e.g. ``"imagenet/base2new"``);
    its entries override the fields above for that dataset and protocol. See the README's
    fidelity table."""

    epochs: int = 10
    lr: float = 0.002
    optimizer: str = "sgd"
    batch_size: int = 32
    adam_eps: float = 1e-8
    weight_decay: float = 5e-4          # Dassl's OPTIM.WEIGHT_DECAY
    warmup_epochs: int = 1              # Dassl's WARMUP_EPOCH (at WARMUP_CONS_LR 1e-5)
    iterations_per_shot: int = 0        # > 0: the authors count optimiser steps, this many
                                        # per shot (CLIP-LoRA: 500 × K); training turns them
                                        # into whole epochs of the training set (unless
                                        # --epochs is given); 0: ``epochs`` as it stands
    select: str = "last"                # final model: "last" epoch | "best_val" (Dassl)
    eval_batch_size: int = 128          # test batch; part of the method where predictions
                                        # depend on batch-mates (SEP's faithful mode)
    by_dataset: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def for_dataset(self, dataset: str | None, protocol: str) -> TrainDefaults:
        """These defaults with the authors' schedule for ``dataset`` under ``protocol``."""
        return dataclasses.replace(self, **self.by_dataset.get(f"{dataset}/{protocol}", {}))


class Method(nn.Module):
    """Base class: the frozen image feature against the class embeddings, cosine logits.

    ``x`` is what the method reads from an image, declared by :attr:`image_input`
    (:mod:`promptviz.train.inputs`): the frozen tower's features by default, the pixels for a
    method that changes the image tower (SEP). The data side makes ``x`` (from pixels, or
    from the training feature cache); the method only computes with it."""

    name: ClassVar[str] = "method"
    Options: ClassVar[type] = type(None)
    defaults: ClassVar[TrainDefaults] = TrainDefaults()
    text_depends_on_image: ClassVar[bool] = False
    image_input: ImageInput = FrozenFeatures()      # what x is: {"f": norm(f_img)}

    def __init__(self, backbone: Backbone, classnames: list[str], template: str,
                 options: Any = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options if options is not None else self.Options()
        self.classnames: list[str] = []
        self.template = template

    # -- the interface ---------------------------------------------------------
    def set_classnames(self, classnames: list[str], template: str | None = None) -> None:
        raise NotImplementedError

    def text_features(self) -> Tensor | None:
        raise NotImplementedError

    def logits(self, x: Any, text: Tensor | None = None) -> Tensor:
        """``s · norm(f_img) @ norm(t)ᵀ`` (every method's logits unless it says otherwise);
        pass ``text = text_features()`` to reuse it across batches."""
        text = self.text_features() if text is None else text
        f = x["f"]
        return self.backbone.logit_scale * f @ text.t().to(f.dtype)

    def loss(self, x: Any, labels: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The training objective: the loss, the logits (for training accuracy) and the named
        terms (for logging). Cross-entropy plus :meth:`extra_loss` by default."""
        text = self.text_features()
        logits = self.logits(x, text)
        ce = F.cross_entropy(logits, labels)
        extra, terms = self.extra_loss(text)
        loss = ce + extra
        return loss, logits, {"ce": ce.detach(), **{k: v.detach() for k, v in terms.items()}}

    # -- from pixels -----------------------------------------------------------
    def inputs(self, images: Tensor, train: bool = False) -> Any:
        """``x`` for ``images`` (the data side, :attr:`image_input`); ``train=True`` asks for
        what :meth:`loss` reads too (TextRefiner's tokens)."""
        return self.image_input(self.backbone, images, train)

    def forward(self, images: Tensor, text: Tensor | None = None) -> Tensor:
        """Logits from pixels: ``method(images)`` is ``logits(inputs(images))``."""
        return self.logits(self.inputs(images), text)

    @classmethod
    def dataset_options(cls, dataset: str, protocol: str = "base2new") -> dict[str, Any]:
        """Option defaults the authors' code sets for ``dataset`` (``Dataset.name``, e.g.
        ``"fgvc_aircraft"``) under ``protocol``; applied by training unless the user set them.
        None by default."""
        return {}

    @classmethod
    def unlabelled_images(cls, options: dict[str, Any]) -> str | None:
        """``None``, or for a distillation student (PromptKD) with ``options`` (as given) the
        training images it learns from, unlabelled: ``"all"`` (every training image of every
        class, the transductive protocol) or ``"base"`` (the base classes' only). Training
        then trains the teacher first (:func:`promptviz.train.loop.train_teacher`)."""
        return None

    @classmethod
    def train_defaults(cls, options: dict[str, Any]) -> TrainDefaults:
        """The schedule for ``options`` (as given): :attr:`defaults`, unless the options pick
        another method's (TextRefiner on MaPLe or PromptKD)."""
        return cls.defaults

    def prepare(self, loader: Iterable) -> None:
        """Called once before the first training epoch with the training loader (not on
        resume). A method that needs a pass over the data first (SEP's prototypes) does it
        here; the default does nothing."""

    def end_epoch(self, epoch: int, epochs: int) -> None:
        """Called after training epoch ``epoch`` (1-based) of ``epochs``; PromptSRC adds the
        weights to its Gaussian-weighted average here. Nothing by default."""

    def end_training(self) -> None:
        """Called once after the last training epoch (also when a resumed run had none left),
        before ``--select best_val`` restores its best epoch; PromptSRC swaps in its average
        of the epochs' weights. Nothing by default."""

    def training_state(self) -> dict[str, Tensor]:
        """State that exists only while training: the resume file carries it, the final
        checkpoint does not (PromptSRC's running average). Empty by default."""
        return {}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`training_state` when a run resumes."""

    def extra_loss(self, text: Tensor) -> tuple[Tensor | float, dict[str, Tensor]]:
        """The method's own regularisers on its text features ``text`` ``[C, d]``.

        Returns the weighted sum to add to the loss and the raw terms by name (for
        logging). None by default; KgCoOp's ``λ·L_kg`` lives here, so a wrapper such as
        TextRefiner can add the wrapped method's terms to its own loss.
        """
        return 0.0, {}

    # -- checkpoint state ------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        """Trainable parameters plus persistent buffers of the method (not the backbone)."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        state.update({n: b.detach() for n, b in self.named_buffers()
                      if not n.startswith("backbone.") and n in self._persistent_buffer_names()})
        return state

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        own = self.trainable_state()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise PromptvizError(
                f"checkpoint does not fit method {self.name}: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}; was it trained with other options? Check meta.json")
        for key, value in state.items():
            target = self.get_parameter(key) if key in dict(self.named_parameters()) \
                else self.get_buffer(key)
            if target.shape != value.shape:
                raise PromptvizError(
                    f"checkpoint tensor {key} has shape {tuple(value.shape)}, the method expects "
                    f"{tuple(target.shape)}: a checkpoint from another backbone or class list?")
            with torch.no_grad():
                target.copy_(value.to(target.dtype))

    def _persistent_buffer_names(self) -> set[str]:
        names = set()
        for mod_name, mod in self.named_modules():
            if {"backbone", "teacher"} & set(mod_name.split(".")):   # frozen, not ours
                continue
            for b in mod._buffers:
                if b not in mod._non_persistent_buffers_set:
                    names.add(f"{mod_name}.{b}" if mod_name else b)
        return names

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.trainable_parameters())
        return f"classes={len(self.classnames)}, trainable={n:,}"


# ------------------------------------------------------------------- helpers
def parse_options(cls: type, overrides: dict[str, Any] | None) -> Any:
    """Build a method's option dataclass from ``key=value`` overrides (strings are coerced)."""
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise PromptvizError(f"unknown option(s) {unknown} for this method; "
                             f"known options: {sorted(fields)}")
    defaults = cls()
    kwargs = {}
    for key, value in overrides.items():
        kwargs[key] = _coerce(value, getattr(defaults, key), key)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, key: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        if isinstance(default, bool):
            if value.lower() in {"1", "true", "yes", "on"}:
                return True
            if value.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (list, tuple)):
            return type(default)(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise PromptvizError(f"option {key}={value!r} is not a valid "
                             f"{type(default).__name__}") from None
    return None if value.lower() == "none" else value


def prompt_texts(classnames: list[str], template: str) -> list[str]:
    """Hand-crafted sentences, one per class: ``template.format(name)``."""
    return [template.format(c.replace("_", " ")) for c in classnames]


@torch.no_grad()
def zero_shot_text_features(backbone: Backbone, classnames: list[str], template: str,
                            chunk: int = 256) -> Tensor:
    """Frozen text features ``t0`` of the hand-crafted template, normalised ``[C, d]``."""
    ids = backbone.tokenize(prompt_texts(classnames, template))
    feats = [backbone.encode_text(ids[i:i + chunk], normalize=True)
             for i in range(0, len(ids), chunk)]
    return torch.cat(feats).float()


def trainable_parameter_counts(method: nn.Module) -> dict[str, int]:
    """Trainable parameters of ``method`` by top-level part (``prompt``, ``text_tfm``…),
    in registration order; the frozen backbone has none."""
    counts: dict[str, int] = {}
    for name, p in method.named_parameters():
        if p.requires_grad:
            part = name.split(".")[0]
            counts[part] = counts.get(part, 0) + p.numel()
    return counts
