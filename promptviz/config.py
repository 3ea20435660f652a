"""Each command's settings, stated once: a plain dataclass per command (``train``,
``pretrain``, ``toyworld card``, ``compare``, ``demo``, ``bench``) whose fields carry their
own help text (:func:`setting`). The command line is generated from the fields
(:func:`promptviz.cli.add_fields`: one ``--flag`` per field, :func:`flag_of`, its type,
default, choices and help read from here), so every setting a run records is settable and
documented in one place. This module imports nothing heavy: ``promptviz --help`` builds
every parser; the names a method list may hold live in the method registry, which is
imported only when a command checks them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from promptviz.errors import PromptvizError

if TYPE_CHECKING:
    import torch

PROTOCOLS = ("base2new", "fewshot")
STUDY_PROTOCOLS = (*PROTOCOLS, "crossdataset", "dg")   # compare: + train on one, test on others
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECTIONS = ("last", "best_val")          # the final model: last epoch | best on validation
OPTIMIZERS = ("sgd", "adam", "adamw")
BENCH_METHODS = ("zeroshot", "coop", "kgcoop", "cocoop", "textrefiner", "sep", "ivlp", "vpt",
                 "maple", "promptsrc", "clip_lora", "promptkd")
TOYWORLD_ROOT = "data/toyworld"
BACKBONE_HELP = "toyclip, NAME:TAG (open_clip) or a weight file"
DEVICE_HELP = "cpu | cuda | cuda:N"


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
            metavar: str | None = None, required: bool = False, const: Any = None) -> Any:
    """A dataclass field with its command-line help (``choices`` restrict the flag;
    ``required``: the command line must give it, the dataclass still has a default;
    ``const``: the flag's value may be left out, and then is ``const``). A list or dict
    default is copied for every instance (a ``default_factory``)."""
    meta = {"help": help, "choices": choices, "metavar": metavar, "required": required,
            "const": const}
    if isinstance(default, (list, dict)):      # a fresh copy for every instance
        return field(default_factory=lambda: copy.copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(cls: type, name: str) -> str:
    """How a user sets field ``name`` of the config dataclass ``cls``: its flag
    (``--name-with-dashes``; every field with help has one), else ``Cls.name``."""
    f = cls.__dataclass_fields__[name]
    return "--" + name.replace("_", "-") if "help" in f.metadata else f"{cls.__name__}.{name}"


@dataclass
class TrainConfig:
    """``promptviz train``: one method on one dataset, one protocol, shots and seed."""

    method: str = setting("coop", "zeroshot | coop | cocoop | kgcoop | textrefiner | sep | "
                          "clip_adapter | ivlp | vpt | maple | promptsrc | clip_lora | promptkd",
                          required=True)
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
    optimizer: str | None = setting(None, "default: the method's (sgd; adam: Adam, adamw: "
                                    "AdamW, decoupled weight decay, betas 0.9/0.999)",
                                    choices=OPTIMIZERS)
    select: str | None = setting(None, "final model: the last epoch or the best on validation "
                                 "(default: the method's; best_val for textrefiner, as its "
                                 "authors' config)", choices=SELECTIONS)
    weight_decay: float | None = setting(None, "weight decay (default: the method's; Dassl's "
                                         "OPTIM 5e-4, clip_lora's AdamW 1e-2)")
    momentum: float = setting(0.9, "SGD momentum (Dassl's OPTIM value)")
    warmup_epochs: int | None = setting(None, "epochs at the constant --warmup-lr before the "
                                        "cosine (default: the method's; Dassl's WARMUP_EPOCH "
                                        "1, clip_lora 0)")
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
        d = method_class(self.method).train_defaults(self.options).for_dataset(dataset,
                                                                               self.protocol)
        mine = {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "optimizer",
                                              "select", "eval_batch_size", "weight_decay",
                                              "warmup_epochs")}
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
        if self.warmup_epochs is not None and self.warmup_epochs < 0:
            bad.append(f"--warmup-epochs {self.warmup_epochs} (use 0 or more)")
        if self.weight_decay is not None and \
                not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            bad.append(f"weight_decay {self.weight_decay} (use a finite number, 0 or more)")
        if self.protocol not in PROTOCOLS:
            bad.append(f"--protocol {self.protocol} (use one of {', '.join(PROTOCOLS)})")
        if self.select is not None and self.select not in SELECTIONS:
            bad.append(f"--select {self.select} (use one of {', '.join(SELECTIONS)})")
        if self.precision not in PRECISIONS:
            bad.append(f"--precision {self.precision} (use one of {', '.join(PRECISIONS)})")
        if bad:
            raise PromptvizError("invalid setting: " + "; ".join(bad))


@dataclass
class PretrainConfig:
    """``promptviz pretrain``: toyclip's contrastive pretraining on the ToyWorld stream
    (:mod:`promptviz.train.pretrain`)."""

    out: str = setting("runs/pretrain", "run folder; run the same command again to resume")
    model: str = setting("toyclip", "open_clip config name (promptviz/configs: toyclip, "
                         "pv-tiny, or any of open_clip's)")
    steps: int = setting(2500, "contrastive training steps")
    batch_size: int = setting(128, "scenes (image-caption pairs) per step")
    lr: float = setting(1e-3, "peak learning rate")
    min_lr: float = setting(1e-5, "learning rate at the end of the cosine decay")
    warmup: int = setting(100, "linear warm-up steps")
    weight_decay: float = setting(0.1, "AdamW weight decay (weights, not biases, norms or "
                                  "embeddings)")
    seed: int = setting(0, "seed of the ToyWorld stream and of the initialisation")
    image_size: int | None = setting(None, "scene size in pixels; must be the --model "
                                     "config's vision_cfg.image_size (default: that size)")
    device: str = setting("cpu", DEVICE_HELP)
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    # Curriculum. A small ViT learns colour first (it sorts most captions of a batch) and
    # then stalls on shape, which needs the silhouette across patches. So a share of the
    # scenes is *clean* (one object, filled, plain background), falling linearly from
    # clean_start to clean_end over the run, and a share of the batches paints every
    # object one colour, so that colour cannot tell those captions apart.
    clean_start: float = setting(0.7, "share of clean scenes (one filled object on a plain "
                                 "background) at the start; it falls linearly to --clean-end "
                                 "(0-1)", metavar="P")
    clean_end: float = setting(0.2, "share of clean scenes at the end of the run (0-1)",
                               metavar="P")
    same_colour_share: float = setting(0.5, "share of the batches that paint every object "
                                       "one colour, so that colour cannot tell their "
                                       "captions apart (0-1)", metavar="P")
    # Warm start (LiT-style): before the contrastive run, the image tower learns the main
    # object's shape, colour, pattern, size and position from ToyWorld's ground truth for
    # ``warm_steps`` steps; the contrastive run then trains it at ``image_lr_scale`` × lr.
    warm_steps: int = setting(1500, "supervised warm start of the image tower (0 = none)")
    # Or take the image tower from an earlier run's export (e.g. one made with ``steps=0``,
    # a warm start only) instead of warming up here; its warm-start log is copied along.
    warm_from: str = setting("", "take the image tower from an earlier run (its --out folder "
                             "or toyclip.safetensors; e.g. a --steps 0 warm start) instead of "
                             "warming it up here", metavar="RUN")
    # Or start the whole CLIP (both towers) from an earlier run's export and go on training
    # it, e.g. with the image tower locked (image_lr_scale=0) and a new caption vocabulary.
    init_from: str = setting("", "start the whole CLIP from an earlier run's export (its --out "
                             "folder or toyclip.safetensors) and go on training it",
                             metavar="RUN")
    warm_clean: float = setting(0.7, "share of clean scenes in the warm start's batches (0-1)",
                                metavar="P")
    warm_dense: float = setting(1.0, "weight of the warm start's per-patch shape and colour "
                                "losses (0 = none)", metavar="W")
    image_lr_scale: float = setting(0.1, "image tower's learning rate × S after a warm start "
                                    "or --init-from (0 locks it)", metavar="S")
    logit_scale: float = setting(0.0, "start the temperature (logit scale) at this value, at "
                                 "most 100 (0: the model's own start)")
    learn_scale: bool = setting(True, "learn the logit scale (--no-learn-scale keeps the "
                                "starting scale fixed)")
    same_caption: bool = setting(False, "identical captions in a batch are positives of each "
                                 "other")
    # Web-like captions: the share of captions that leave the main object's shape vague or
    # describe only the other objects (see toyworld.captions.caption).
    caption_noise: float = setting(0.0, "share of web-like careless captions: the main "
                                   "object's shape left vague, or only the other objects "
                                   "described (0-1)", metavar="P")
    # The chance that a named colour is its specialist name ("vermilion", "ultramarine":
    # toyworld.captions.PAINT_WORDS), rare words that ToyPaints' class names use.
    paint_names: float = setting(0.0, "chance that a caption names a colour by its specialist "
                                 "name ('vermilion'), the words ToyPaints' classes use (0-1)",
                                 metavar="P")
    # Keep the warm start's lesson during the contrastive run: linear heads on the image
    # embedding name the main object's attributes, the style and the background from
    # ground truth, added to the contrastive loss with this weight (0 = off).
    aux_weight: float = setting(0.0, "weight of attribute heads on the image embedding during "
                                "the contrastive run (keeps what the warm start taught; "
                                "0 = off)", metavar="W")
    log_every: int = setting(50, "steps between log entries (printed and kept in "
                             "pretrain_log.json)")
    save_every: int = setting(200, "steps between saves of the resumable state")
    probe_every: int = setting(250, "steps between zero-shot probes on held-out scenes (at "
                               "log steps)")
    progress: bool = setting(True, "progress bar (--quiet turns it off)")

    def validate(self) -> None:
        """Check every setting's type and range at once; raise one :class:`PromptvizError`
        listing each bad one with its flag and allowed values. Touches nothing on disk."""
        bad: list[str] = []

        def whole(name: str, low: int, allowed: str, high: int | None = None) -> None:
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, int) or v < low
                    or (high is not None and v > high)):
                bad.append(f"{flag_of(PretrainConfig, name)} {v!r}: give {allowed}")

        def number(name: str, allowed: str, low: float = 0.0, high: float = math.inf,
                   above_low: bool = False) -> None:
            v = getattr(self, name)
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and (v > low if above_low else v >= low) and v <= high)
            if not ok:
                bad.append(f"{flag_of(PretrainConfig, name)} {v!r}: give {allowed}")

        def text(name: str, required: bool) -> None:
            v = getattr(self, name)
            if not isinstance(v, str) or (required and not v.strip()):
                bad.append(f"{flag_of(PretrainConfig, name)} {v!r}: give a "
                           f"{'non-empty ' if required else ''}string")

        text("out", True)
        text("model", True)
        text("warm_from", False)
        text("init_from", False)
        whole("steps", 0, "a whole number of steps >= 0 (0 = warm start only)")
        whole("batch_size", 1, "a whole number of scenes >= 1, e.g. 128")
        number("lr", "a finite number > 0, e.g. 1e-3", above_low=True)
        number("min_lr", "a finite number >= 0, e.g. 1e-5")
        whole("warmup", 0, "a whole number of steps >= 0 (0 = no warm-up)")
        number("weight_decay", "a finite number >= 0, e.g. 0.1")
        whole("seed", -2**63, f"a whole number from {-2**63} to {2**64 - 2}", high=2**64 - 2)
        whole("threads", 0, "a whole number >= 0 (0 = torch's default)")
        whole("warm_steps", 0, "a whole number of steps >= 0 (0 = no warm start)")
        for name, zero in (("caption_noise", "clean captions"),
                           ("paint_names", "no specialist colour names"),
                           ("clean_start", "no clean scenes"), ("clean_end", "no clean scenes"),
                           ("same_colour_share", "never"), ("warm_clean", "no clean scenes")):
            number(name, f"a share from 0 ({zero}) to 1", high=1.0)
        number("warm_dense", "a finite number >= 0 (0 = no per-patch losses)")
        number("image_lr_scale", "a finite number >= 0 (0 locks the image tower)")
        number("aux_weight", "a finite number >= 0 (0 turns the attribute heads off)")
        number("logit_scale", "a number from 0 (the model's own start) to 100", high=100.0)
        if self.image_size is not None:
            whole("image_size", 16, "None (the --model's own size) or a whole number >= 16")
        for name in ("log_every", "save_every", "probe_every"):
            whole(name, 1, "a whole number of steps >= 1")
        if not (isinstance(self.device, str)
                and re.fullmatch(r"cpu|cuda(:\d+)?", self.device.strip())):
            bad.append(f"--device {self.device!r}: give cpu, cuda or cuda:N")
        if bad:
            raise PromptvizError("bad pretrain setting" + ("s" if len(bad) > 1 else "")
                                 + ": " + "; ".join(bad))
        if self.init_from and (self.warm_from or self.warm_steps):
            raise PromptvizError("--init-from starts from a whole trained CLIP, so there is "
                                 "nothing to warm up: drop --warm-from and pass --warm-steps 0")
        if self.steps == 0 and not (self.warm_steps or self.warm_from or self.init_from):
            raise PromptvizError("--steps 0 with --warm-steps 0 trains nothing; give --steps "
                                 ">= 1, or --warm-steps >= 1 for a warm start only")



@dataclass
class CardConfig:
    """``promptviz toyworld card``: a backbone's zero-shot and CoOp tables on ToyWorld
    (:mod:`promptviz.tools.modelcard`)."""

    backbone: str = setting("toyclip", BACKBONE_HELP)
    data_root: str = setting(TOYWORLD_ROOT, "the ToyWorld suite")
    out: str = setting("runs/card", "folder for the card's runs and tables")
    seeds: tuple[int, ...] = setting((1, 2, 3), "CoOp's seeds")
    # CoOp's epochs. ToyWorld's base splits are small (5 classes x 16 shots = 2 full batches
    # of 32), so the 10 epochs of CoOp's defaults would be 20 SGD steps; 50 is SEP's base-to-
    # novel budget (CoOp's own few-shot runs use 200).
    epochs: int = setting(50, "CoOp's training epochs")
    device: str = setting("cpu", DEVICE_HELP)
    progress: bool = setting(False, "progress bars (the command line's --quiet turns them "
                             "off)")


RAY_LOCAL = "local"      # --ray without an address: ray.init starts a cluster on this machine


@dataclass
class CompareConfig:
    """``promptviz compare``: methods × datasets × seeds under one protocol, one table
    (:mod:`promptviz.tools.compare`)."""

    methods: list[str] = setting(["zeroshot", "coop"], "methods, or variants such as "
                                 "'sep[ensemble=false]' (own row each)")
    datasets: list[str] = setting(["toy_fine"], "datasets under --data-root (names, card "
                                  "folders or paths)")
    seeds: list[int] = setting([1, 2, 3], "one run per seed; the table gives mean ± std")
    protocol: str = setting("base2new", "crossdataset and dg train once on --source and test "
                            "elsewhere", choices=STUDY_PROTOCOLS)
    shots: list[int] = setting([16], "one table per shot count")
    source: str | None = setting(None, "crossdataset / dg: the dataset to train on")
    backbone: str = setting("toyclip", BACKBONE_HELP)
    data_root: str = setting(TOYWORLD_ROOT, "folder holding the datasets")
    out: str = setting("runs/compare", "study folder: table.json, table.csv, report.html and "
                       "runs/ (finished runs are reused)")
    epochs: int | None = setting(None, "every method's epochs (default: each method's own "
                                 "schedule)")
    batch_size: int | None = setting(None, "training batch (default: each method's; 32, "
                                     "CoCoOp 1)")
    device: str = setting("cpu", DEVICE_HELP)
    feature_cache: bool = setting(True, "train from the frozen image tower's cached features "
                                  "(--no-feature-cache: encode every training batch through "
                                  "it, the straightforward path)")
    cache_dir: str | None = setting(None, "where cached image features live (default: "
                                    "$PROMPTVIZ_CACHE_DIR or ~/.cache/promptviz/features; "
                                    "'' = memory only)")
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method, --set M.K=V
    progress: bool = setting(False, "progress bars (the command line's --quiet turns them "
                             "off)")
    retries: int = setting(1, "times a run that fails (or whose Ray worker dies) is tried "
                           "again; then the table reports it failed, with its error")
    ray: str | None = setting(None, "run the study on Ray (pip install 'promptviz[ray]'), one "
                              "task per run: no ADDRESS starts a cluster of this machine's "
                              "GPUs (one run each) or CPUs; ADDRESS joins a running one "
                              "(`ray start --head` prints it; 'auto': the one started here). "
                              "--out must be storage every machine of the cluster shares",
                              metavar="ADDRESS", const=RAY_LOCAL)
    ray_cpus: int = setting(1, "--ray: CPUs each run asks for (a --device cuda run asks for "
                            "one GPU besides)")


@dataclass
class DemoConfig:
    """``promptviz demo`` (``make demo``): zero-shot vs prompt tuning on ToyWorld, one HTML
    report (:mod:`promptviz.tools.demo`)."""

    out: str = setting("runs/demo", "folder for the runs and report.html")
    data_root: str = setting(TOYWORLD_ROOT, "the ToyWorld suite (built there if missing)")
    backbone: str = setting("toyclip", BACKBONE_HELP)
    datasets: list[str] = setting(["toy_paints", "toy_fine"], "ToyWorld datasets (or any "
                                  "datasets under --data-root)")
    methods: list[str] = setting(["zeroshot", "coop", "textrefiner", "sep"], "methods run on "
                                 "each dataset, in the tables' order (zeroshot is evaluated, "
                                 "the others trained)")
    shots: int = setting(16, "training images per class")
    seed: int = setting(1, "seed of the shot sampling, the initialisation and the batch order")
    epochs: int = setting(10, "training epochs (a dataset in --epochs-by-dataset: its own)")
    # ToyPaints' 5 base classes × 16 shots make two batches an epoch: it trains for as many
    # epochs as the model card's CoOp (10 epochs would be 20 optimiser steps)
    epochs_by_dataset: dict[str, int] = setting({"toy_paints": 50}, "training epochs of "
                                                "particular datasets (none given: --epochs "
                                                "for all)", metavar="DATASET=EPOCHS")
    device: str = setting("cpu", DEVICE_HELP)
    progress: bool = setting(True, "progress bars (--quiet turns them off)")


@dataclass
class BenchConfig:
    """``promptviz bench``: the optimised path against the straightforward one, per method,
    on synthetic inputs (:mod:`promptviz.tools.bench`)."""

    backbone: str = setting("toyclip", "toyclip, or e.g. ViT-B-16 (random weights: same "
                            "shapes and cost)")
    device: str = setting("cpu", DEVICE_HELP)
    methods: tuple[str, ...] = setting(BENCH_METHODS, "methods to measure")
    # None: each method's own default (the papers')
    batch_size: int | None = setting(None, "training batch (default: each method's)")
    eval_batch_size: int | None = setting(None, "default: 128 on CUDA, 32 on CPU (8 for "
                                          "CoCoOp)")
    steps: int | None = setting(None, "timed steps per measurement (default: 20 on CUDA, "
                                "3 on CPU)")
    warmup: int | None = setting(None, "untimed steps first (default: 5 CUDA, 1 CPU)")
    classes: int = setting(100, "number of classes (class prompts per step and evaluation)")
    epochs: int | None = setting(None, "schedule the cache cost is amortised over (default: "
                                 "each method's)")
    cache_views: int = setting(10, "augmented views per training image in the cached path's "
                               "cost (as train's --cache-views)")
    threads: int = setting(0, "torch CPU threads (0: as is)")
    peak_tflops: float | None = setting(None, "the GPU's dense bf16 peak (default: looked up "
                                        "from its name)")
    seed: int = setting(0, "seed of the synthetic inputs")
    out: str = setting("runs/bench/bench.json", "JSON file for the measurements")
    progress: bool = setting(True, "progress output (--quiet turns it off)")

    def resolved(self, device: torch.device) -> BenchConfig:
        """Fill the device-dependent defaults and check every value."""
        from promptviz.methods import METHODS  # torch: only when a bench starts
        cuda = device.type == "cuda"
        cfg = dataclasses.replace(
            self, methods=tuple(self.methods),
            steps=self.steps if self.steps is not None else (20 if cuda else 3),
            warmup=self.warmup if self.warmup is not None else (5 if cuda else 1))
        unknown = [m for m in cfg.methods if m not in METHODS]
        if unknown or not cfg.methods:
            raise PromptvizError(f"unknown method(s) {unknown} for --methods; choose from "
                                 f"{list(BENCH_METHODS)}")
        for name in ("batch_size", "eval_batch_size", "steps", "classes", "cache_views",
                     "epochs"):
            value = getattr(cfg, name)
            if value is not None and value < 1:
                raise PromptvizError(f"--{name.replace('_', '-')} must be at least 1, "
                                     f"got {value}")
        if cfg.warmup < 0 or cfg.threads < 0:
            raise PromptvizError("--warmup and --threads must not be negative")
        if cfg.peak_tflops is not None and cfg.peak_tflops <= 0:
            raise PromptvizError(f"--peak-tflops must be positive, got {cfg.peak_tflops}")
        return cfg
