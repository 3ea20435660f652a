"""Each command's settings, stated once: a plain dataclass per command whose fields carry
their own help text (:func:`setting`). The command line is generated from the fields
(:func:`promptviz.cli.add_fields`: one ``--flag`` per field, its type, default, choices
and help read from here), so every setting a run records is settable and documented in
one place. This module imports nothing heavy: ``promptviz --help`` builds every parser.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from promptviz.errors import PromptvizError

PROTOCOLS = ("base2new", "fewshot")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECTIONS = ("last", "best_val")          # the final model: last epoch | best on validation
OPTIMIZERS = ("sgd", "adam")


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
            metavar: str | None = None, required: bool = False) -> Any:
    """A dataclass field with its command-line help (``choices`` restrict the flag;
    ``required``: the command line must give it, the dataclass still has a default)."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "required": required}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """``promptviz train``: one method on one dataset, one protocol, shots and seed."""

    method: str = setting("coop", "zeroshot | coop | cocoop | kgcoop | textrefiner | sep | "
                          "clip_adapter", required=True)
    backbone: str = setting("toyclip", "toyclip, NAME:TAG (open_clip, e.g. ViT-B-16:openai) "
                            "or a weight file")
    dataset: str = setting("toy_fine", "CoOp folder name (dtd, oxford_pets, …), a card folder "
                           "or a folder path", required=True)
    data_root: str = setting("data", "folder holding the datasets")
    protocol: str = setting("base2new", "base2new: train on the base half of the classes, test "
                            "on both halves; fewshot: all classes", choices=PROTOCOLS)
    shots: int = setting(16, "training images per class")
    seed: int = setting(1, "seed of the shot sampling, the initialisation and the batch order")
    out: str = setting("runs/train", "output folder (results.json + checkpoint)",
                       required=True)
    # None = the method's default, per dataset (its authors' schedule, TrainDefaults)
    epochs: int | None = setting(None, "default: the method's, per dataset (its authors' "
                                 "schedule)")
    batch_size: int | None = setting(None, "default: the method's")
    lr: float | None = setting(None, "default: the method's")
    optimizer: str | None = setting(None, "default: the method's", choices=OPTIMIZERS)
    select: str | None = setting(None, "final model: the last epoch or the best on validation "
                                 "(default: the method's; best_val for textrefiner, as its "
                                 "authors' config)", choices=SELECTIONS)
    weight_decay: float = setting(5e-4, "SGD/Adam weight decay (Dassl's OPTIM value)")
    momentum: float = setting(0.9, "SGD momentum (Dassl's OPTIM value)")
    warmup_epochs: int = setting(1, "epochs at the constant --warmup-lr before the cosine "
                                 "(Dassl's WARMUP_EPOCH)")
    warmup_lr: float = setting(1e-5, "the warm-up's constant learning rate (Dassl's "
                               "WARMUP_CONS_LR)")
    device: str = setting("cpu", "cpu | cuda | cuda:N")
    precision: str = setting("auto", "auto: bf16 autocast on a GPU that has it, else fp32; "
                             "fp16 adds a gradient scaler; weights stay fp32",
                             choices=PRECISIONS)
    num_workers: int = setting(0, "data-loading worker processes")
    eval_batch_size: int | None = setting(None, "test batch (default: the method's; SEP's "
                                          "faithful mode depends on it)")
    feature_cache: bool = setting(True, "train from the frozen image tower's features, encoded "
                                  "once per view (--no-feature-cache: encode every batch, the "
                                  "straightforward path)")
    cache_views: int = setting(10, "augmented views of each training image cached (at most "
                               "one per epoch)")
    cache_dir: str | None = setting(None, "where cached image features live (default: "
                                    "$PROMPTVIZ_CACHE_DIR or ~/.cache/promptviz/features; "
                                    "'' = memory only)")
    augment: bool | None = setting(None, "CoOp's random-resized-crop + flip on training images "
                                   "(default: the dataset's choice: on, except ToyWorld, whose "
                                   "labels a crop can change)")
    progress: bool = setting(True, "progress bars (--quiet turns them off)")
    options: dict[str, Any] = field(default_factory=dict)   # method options, --set key=value

    def resolved(self, dataset: str | None = None) -> TrainConfig:
        """Fill the ``None`` fields from the method's defaults, for ``dataset`` (its
        ``Dataset.name``) when given: the authors' per-dataset schedules apply then."""
        from promptviz.methods import method_class  # torch: only when a run starts
        d = method_class(self.method).defaults.for_dataset(dataset, self.protocol)
        mine = {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "optimizer",
                                              "select", "eval_batch_size")}
        return dataclasses.replace(
            self, **{k: getattr(d, k) if v is None else v for k, v in mine.items()})

    def validate(self) -> None:
        """One clear error for a setting that cannot train (call on a resolved config)."""
        bad = []
        if self.shots is not None and self.shots < 1:
            bad.append(f"--shots {self.shots} (use 1 or more images per class)")
        if self.epochs is not None and self.epochs < 0:
            bad.append(f"--epochs {self.epochs} (use 0 or more)")
        for name in ("batch_size", "eval_batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad.append(f"--{name.replace('_', '-')} {v} (use 1 or more)")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            bad.append(f"--lr {self.lr} (use a finite number above 0)")
        if self.num_workers < 0:
            bad.append(f"--num-workers {self.num_workers} (use 0 or more; 0 loads in this "
                       "process)")
        if self.cache_views < 1:
            bad.append(f"--cache-views {self.cache_views} (use 1 or more)")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            bad.append(f"weight_decay {self.weight_decay} (use a finite number, 0 or more)")
        if self.protocol not in PROTOCOLS:
            bad.append(f"--protocol {self.protocol} (use one of {', '.join(PROTOCOLS)})")
        if self.select is not None and self.select not in SELECTIONS:
            bad.append(f"--select {self.select} (use one of {', '.join(SELECTIONS)})")
        if self.precision not in PRECISIONS:
            bad.append(f"--precision {self.precision} (use one of {', '.join(PRECISIONS)})")
        if bad:
            raise PromptvizError("invalid setting: " + "; ".join(bad))
