"""One training loop for every method.

``run(TrainConfig(...))`` loads the backbone and the dataset, samples the
few-shot training set, trains the method's trainable parameters (the CLIP towers
stay frozen), evaluates under the protocol and writes ``results.json`` plus a
checkpoint into ``cfg.out``. An interrupted run resumes from the last finished
epoch (``resume.pt``); ``results.json`` only appears when everything succeeded.

Schedule (Dassl's, used by every paper here): ``warmup_epochs`` at a constant
``warmup_lr``, then a cosine over ``epochs`` that starts at the full ``lr`` in the first
epoch after the warm-up (:func:`lr_at`). The final model is the last epoch's, or the one
with the best validation accuracy (``select="best_val"``, TextRefiner's config).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from promptviz.backbone import Backbone, check_device, load_clip
from promptviz.checkpoint import (
    META,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    load_state,
    make_folder,
    save_checkpoint,
)
from promptviz.config import PROTOCOLS, TrainConfig
from promptviz.data import (
    Dataset,
    few_shot,
    load_dataset,
    subsample_classes,
)
from promptviz.data.load import looks_like_path
from promptviz.errors import Diverged, PromptvizError
from promptviz.methods import Method, build_method, load_trained, method_class
from promptviz.metrics import harmonic_mean
from promptviz.precision import autocast_for, resolve_precision
from promptviz.progress import progress_bar
from promptviz.train import featcache
from promptviz.train.evaluate import evaluate, predict
from promptviz.train.inputs import TrainingInputs

RESULTS = "results.json"
RESUME = "resume.pt"
PREDICTIONS = "predictions.npz"
# Bumped whenever training computes something else for the same config (a new schedule, a
# new default), so that studies never reuse a result of the old code (see run_key).
TRAINING_VERSION = 2


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def optimizer_steps(n_images: int, batch_size: int, epochs: int = 1) -> int:
    """How many optimiser steps training takes: full batches only (the last, partial batch
    of an epoch is dropped, as in Dassl), unless the whole set fits in one batch, which
    then is the one step of the epoch."""
    per_epoch = n_images // batch_size if n_images > batch_size else min(n_images, 1)
    return per_epoch * epochs


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """The learning rate of 0-based ``epoch`` under Dassl's schedule: ``warmup_epochs`` at the
    constant ``warmup_lr``, then a cosine over ``epochs`` that Dassl's warm-up wrapper hands
    over to unstepped, so the first epoch after the warm-up runs at the full rate:
    ``lr·(1 + cos(π(e − W)/E))/2`` (10 epochs at 0.002: 1e-5, 0.002, 0.001951, …, 0.000191)."""
    warm = cfg.warmup_epochs if cfg.epochs > cfg.warmup_epochs else 0
    if epoch < warm:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * (epoch - warm) / cfg.epochs))


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer in ("adam", "adamw"):    # AdamW: decay decoupled from the gradient
        eps = method_class(cfg.method).defaults.adam_eps
        adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=eps,
                    betas=(0.9, 0.999))
    raise PromptvizError(f"unknown optimizer {cfg.optimizer!r}; use sgd, adam or adamw")


def budget_epochs(cfg: TrainConfig, requested: TrainConfig, n_images: int,
                  dataset: str | None = None) -> TrainConfig:
    """``cfg`` with the method's step budget as epochs: a method whose authors count
    optimiser steps (``TrainDefaults.iterations_per_shot``; CLIP-LoRA: 500 × shots) trains
    ``ceil(steps / steps per epoch)`` whole epochs of its ``n_images`` training images, unless
    ``requested`` (the config as given) sets ``--epochs``."""
    per_shot = method_class(cfg.method).train_defaults(cfg.options) \
        .for_dataset(dataset, cfg.protocol) \
        .iterations_per_shot
    if requested.epochs is not None or per_shot <= 0:
        return cfg
    steps = per_shot * cfg.shots
    per_epoch = max(optimizer_steps(n_images, cfg.batch_size), 1)
    return dataclasses.replace(cfg, epochs=math.ceil(steps / per_epoch))


def protocol_splits(ds: Dataset, cfg: TrainConfig) -> tuple[Dataset, dict[str, Dataset]]:
    """The few-shot training set and the evaluation sets of ``cfg.protocol``."""
    if cfg.protocol not in PROTOCOLS:
        raise PromptvizError(f"unknown protocol {cfg.protocol!r}; use one of {PROTOCOLS}")
    unlabelled = method_class(cfg.method).unlabelled_images(cfg.options)
    # PromptKD's student: every training image, unlabelled (its teacher draws the shots)
    shots = ds if unlabelled else few_shot(ds, cfg.shots, cfg.seed)
    if cfg.protocol == "fewshot":
        return shots, {"acc": ds}
    train = shots if unlabelled == "all" else subsample_classes(shots, "base")
    return train, {"base_acc": subsample_classes(ds, "base"),
                   "new_acc": subsample_classes(ds, "new")}


def train_teacher(cfg: TrainConfig, options: dict[str, Any], out: Path, student: Backbone
                  ) -> dict[str, Any]:
    """PromptKD's first stage: ``options`` with ``teacher`` as a trained run folder. A method
    name is trained here (its own defaults, this run's dataset, protocol, labelled shots and
    seed) into ``out/teacher``, unless a finished run of that request is already there; a
    folder is checked to hold a checkpoint. A ``teacher_backbone`` must read the ``student``
    backbone's pixels (checked before it trains)."""
    from promptviz.methods.promptkd import check_teacher, is_run_folder, teacher_folder
    teacher = str(options.get("teacher", method_class(cfg.method).Options().teacher))
    if is_run_folder(teacher):
        return {**options, "teacher": str(teacher_folder(teacher))}
    if teacher == cfg.method:
        raise PromptvizError(f"teacher={teacher}: a student cannot teach itself; use "
                             "teacher=promptsrc (the authors') or a run folder")
    method_class(teacher)                            # an unknown name: its own message
    tcfg = TrainConfig(method=teacher, backbone=options.get("teacher_backbone") or cfg.backbone,
                       dataset=cfg.dataset, data_root=cfg.data_root, protocol=cfg.protocol,
                       shots=cfg.shots, seed=cfg.seed, out=str(out / "teacher"),
                       device=cfg.device, precision=cfg.precision, num_workers=cfg.num_workers,
                       progress=cfg.progress, feature_cache=cfg.feature_cache,
                       cache_views=cfg.cache_views, cache_dir=cfg.cache_dir)
    done = out / "teacher" / RESULTS
    try:
        same = json.loads(done.read_text()).get("request") == request_key(tcfg)
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        if tcfg.backbone != cfg.backbone:
            check_teacher(load_clip(tcfg.backbone, student.device), student)
        print(f"{cfg.method}: training the teacher ({teacher}) into {out / 'teacher'}")
        run(tcfg, overwrite=True)
    return {**options, "teacher": str((out / "teacher").resolve())}


OnEpoch = Callable[[list[dict[str, float]]], None]       # called with the history so far


def train_method(method: Method, train_set: Dataset, cfg: TrainConfig,
                 out: Path | None = None, weights: str = "", on_epoch: OnEpoch | None = None
                 ) -> list[dict[str, float]]:
    """Optimise ``method``'s trainable parameters on ``train_set``; returns per-epoch logs.

    ``cfg`` is resolved (:meth:`TrainConfig.resolved`). The batches are ``(x, y)`` for
    ``method.loss(x, y)``, from the feature cache or the images (:class:`TrainingInputs`).
    With ``cfg.select == "best_val"`` the validation shots are scored after every epoch
    (``val_acc`` in the logs) and the method ends with the state of the first epoch that
    scored best, as Dassl's ``best_val``. With ``out``, the state after every epoch goes to
    ``out/resume.pt`` (:class:`Resumable`). ``on_epoch(history)`` is called after every
    epoch (e.g. a live plot, :class:`promptviz.viz.notebook.LiveCurves`)."""
    bb: Backbone = method.backbone
    params = method.trainable_parameters()
    if cfg.epochs == 0 or not params:
        return []
    _check_can_train(train_set, cfg)
    if cfg.augment is None:
        cfg = dataclasses.replace(cfg, augment=train_set.augment)
    precision = resolve_precision(cfg.precision, bb.device)
    optim = make_optimizer(params, cfg)
    scaler = torch.amp.GradScaler(bb.device.type, enabled=precision == "fp16")
    gen = torch.Generator().manual_seed(cfg.seed)
    inputs = TrainingInputs(method, train_set, cfg)     # (x, y) from cache or pixels
    saved = Resumable(out / RESUME if out else None, method, optim, scaler, gen, cfg, weights)
    start, history, best = saved.load()
    if start == 0:
        method.prepare(inputs.images())
    epochs_bar = progress_bar(None, desc=f"{cfg.method} training", enabled=cfg.progress,
                              total=cfg.epochs, initial=start, unit="epoch")
    for epoch in range(start, cfg.epochs):
        lr = lr_at(epoch, cfg)
        for group in optim.param_groups:
            group["lr"] = lr
        method.train()
        sums: dict[str, torch.Tensor] = {}
        correct = seen = 0
        t0 = time.perf_counter()
        order = torch.randperm(len(inputs), generator=gen).tolist()  # this epoch's shuffle
        batches = progress_bar(inputs.epoch(epoch, order), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                               enabled=cfg.progress, total=optimizer_steps(len(inputs),
                                                                           cfg.batch_size))
        for step, (x, y) in enumerate(batches):
            with autocast_for(bb.device, precision):
                loss, logits, terms = method.loss(x, y)
            optim.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.float()
            if step % 10 == 0:                    # on the device: read once per epoch
                correct = correct + (logits.argmax(-1) == y).sum()
                seen += len(y)
        logs = {k: float(v) / max(step + 1, 1) for k, v in sums.items()}   # one sync per epoch
        _check_finite(logs["loss"], params, epoch, cfg)
        logs.update(epoch=epoch + 1, lr=lr, train_acc=100.0 * float(correct) / max(seen, 1),
                    seconds=time.perf_counter() - t0)
        if cfg.select == "best_val":              # Dassl: test on val after every epoch,
            acc = evaluate(method, train_set.val, train_set.classnames, train_set.template,
                           cfg.eval_batch_size, cfg.num_workers, False, precision=precision)
            logs["val_acc"] = acc
            if acc > best["acc"]:                 # keep the first best (strictly greater)
                best = {"acc": acc, "epoch": epoch + 1,
                        "state": {k: v.clone() for k, v in method.trainable_state().items()}}
        history.append(logs)
        epochs_bar.update(1)                      # then drawn once with this epoch's numbers
        epochs_bar.set_postfix(_bar_numbers(logs))
        method.end_epoch(epoch + 1, cfg.epochs)   # e.g. PromptSRC's weight average
        if on_epoch is not None:
            on_epoch(history)
        saved.save(epoch + 1, history, best)
    epochs_bar.close()
    method.end_training()
    if cfg.select == "best_val" and best["state"] is not None:
        method.load_trainable_state(best["state"])
    _check_outputs(method, inputs, cfg, precision)
    return history


def _check_can_train(train_set: Dataset, cfg: TrainConfig) -> None:
    if not train_set.train:
        raise PromptvizError(f"dataset {train_set.name} has no training images; it is a "
                             "test-only dataset (e.g. a domain-shifted copy)")
    if cfg.select == "best_val" and not train_set.val:
        raise PromptvizError(f"--select best_val needs validation images and {train_set.name} "
                             "has none; use --select last")


def _check_finite(loss: float, params: list[torch.nn.Parameter], epoch: int,
                  cfg: TrainConfig) -> None:
    """Stop a run whose loss or weights are NaN or infinite (one device sync per epoch)."""
    finite = bool(torch.stack([p.detach().isfinite().all() for p in params]).all())
    if not (math.isfinite(loss) and finite):
        what = f"loss became {loss}" if finite else "weights became NaN or infinite"
        raise Diverged(
            f"the training {what} in epoch {epoch + 1}; lower the learning rate "
            f"(--lr, now {cfg.lr}) or train in fp32 (--precision fp32)")


def _bar_numbers(logs: dict[str, float]) -> dict[str, str]:
    shown = {"loss": f"{logs['loss']:.3f}", "train acc": f"{logs['train_acc']:.1f}"}
    if "val_acc" in logs:
        shown["val acc"] = f"{logs['val_acc']:.1f}"
    return shown


@torch.no_grad()
def _check_outputs(method: Method, inputs: TrainingInputs, cfg: TrainConfig,
                   precision: str) -> None:
    """The trained model's scores on one training batch must be finite: finite weights can
    still overflow inside the text tower (a learning rate of 1e30), and the per-epoch
    checks look at losses computed before each step. Raised before any checkpoint is
    written."""
    method.eval()
    x, _ = inputs.first(min(cfg.batch_size, len(inputs)))
    with autocast_for(method.backbone.device, precision):
        logits = method.logits(x)
    if not bool(logits.isfinite().all()):
        raise Diverged(
            f"the trained weights give NaN or infinite scores (the text tower overflowed); "
            f"lower the learning rate (--lr, now {cfg.lr}) or train in fp32 "
            "(--precision fp32)")


def selected_epoch(history: list[dict[str, float]], select: str) -> int:
    """The epoch whose state :func:`train_method` ended with (0: no training)."""
    if not history:
        return 0
    if select == "best_val":
        return int(max(history, key=lambda h: (h["val_acc"], -h["epoch"]))["epoch"])
    return int(history[-1]["epoch"])


def _key(cfg: TrainConfig, weights: str) -> dict[str, Any]:
    """The parts of the config, and the backbone's weights, that must match for a resume
    to be valid."""
    d = dataclasses.asdict(cfg)
    for k in ("out", "progress", "num_workers", "eval_batch_size", "data_root", "cache_dir"):
        d.pop(k)
    return {**d, "weights": weights}


class Resumable:
    """A run's state after every epoch in ``path`` (``out/resume.pt``; ``None``: not kept),
    keyed on the config and the backbone's weights (``weights``: the backbone's
    :func:`featcache.weights_fingerprint`, computed here when not given): method, optimiser,
    scaler, shuffle generator and random states, history and the best epoch so far."""

    def __init__(self, path: Path | None, method: Method, optim: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, gen: torch.Generator, cfg: TrainConfig,
                 weights: str = "") -> None:
        self.path, self.method, self.optim, self.scaler, self.gen = path, method, optim, scaler, gen
        if path is not None and not weights:
            weights = featcache.weights_fingerprint(method.backbone.model)
        self.key = _key(cfg, weights)

    def load(self) -> tuple[int, list[dict[str, float]], dict[str, Any]]:
        """``(epochs done, history, best)`` of a matching saved state, restored into the
        method, optimiser and generators; ``(0, [], no best)`` when there is none."""
        fresh: dict[str, Any] = {"acc": -math.inf, "epoch": 0, "state": None}
        if self.path is None or not self.path.is_file():
            return 0, [], fresh
        saved = load_state(self.path)
        if saved.get("config") != self.key:
            print(f"{self.path} was written with other settings or backbone weights; training "
                  "from scratch")
            return 0, [], fresh
        self.method.load_trainable_state(saved["state"])
        self.method.load_training_state(saved.get("training", {}))  # older files: none
        self.optim.load_state_dict(saved["optimizer"])  # moves its state to the params' device
        self.scaler.load_state_dict(saved["scaler"])
        self.gen.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["python_rng"])
        print(f"resuming from epoch {saved['epoch']} ({self.path})")
        return int(saved["epoch"]), list(saved["history"]), saved["best"]

    def save(self, epoch: int, history: list[dict[str, float]], best: dict[str, Any]) -> None:
        if self.path is None:
            return
        atomic_torch_save({"epoch": epoch, "history": history, "config": self.key,
                           "state": self.method.trainable_state(),
                           "training": self.method.training_state(),   # e.g. GPA's sum
                           "optimizer": self.optim.state_dict(),
                           "scaler": self.scaler.state_dict(), "best": best,
                           "generator": self.gen.get_state(),
                           "torch_rng": torch.get_rng_state(),          # augmentations
                           "python_rng": random.getstate()}, self.path)


def protocol_predictions(method: Method, eval_sets: dict[str, Dataset], cfg: TrainConfig
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Top-1 predictions and true labels on every evaluation set's test split."""
    precision = resolve_precision(cfg.precision, method.backbone.device)
    return {key: predict(method, ds.test, ds.classnames, ds.template, cfg.eval_batch_size,
                         cfg.num_workers, cfg.progress, desc=key, precision=precision)
            for key, ds in eval_sets.items()}


def protocol_metrics(predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Accuracy (percent) on every evaluation set, and HM for base-to-novel."""
    out = {key: 100.0 * float((p == y).sum()) / len(y) if len(y) else float("nan")
           for key, (p, y) in predictions.items()}
    if "base_acc" in out:
        out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
    return out


def evaluate_protocol(method: Method, eval_sets: dict[str, Dataset],
                      cfg: TrainConfig) -> dict[str, float]:
    """Accuracy on every evaluation set, and HM for base-to-novel."""
    return protocol_metrics(protocol_predictions(method, eval_sets, cfg))


def save_predictions(out: Path, predictions: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """``out/predictions.npz``: ``{key}_pred`` and ``{key}_label`` per evaluation set (what
    confusion matrices are made of, without evaluating again)."""
    arrays = {f"{k}_{what}": a for k, (p, y) in predictions.items()
              for what, a in (("pred", p), ("label", y))}
    atomic_write(out / PREDICTIONS, lambda tmp: tmp.write_bytes(_npz_bytes(arrays)))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_predictions(out: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The predictions a finished run saved (:func:`save_predictions`), or None when its
    folder has none (a run of an older promptviz)."""
    path = Path(out) / PREDICTIONS
    if not path.is_file():
        return None
    with np.load(path) as z:
        keys = [k[:-len("_pred")] for k in z.files if k.endswith("_pred")]
        return {k: (z[f"{k}_pred"], z[f"{k}_label"]) for k in keys}


# TrainConfig fields that say where a run writes and how it reports, not what it computes
_NOT_IN_KEY = ("out", "progress", "cache_dir")


def run_key(cfg: TrainConfig, weights: str) -> str:
    """What a run computes, as a short hash: its resolved config (less :data:`_NOT_IN_KEY`)
    and the fingerprint of its backbone's weights. A study reuses a finished run only when
    the key is the same, so new weights behind the same name (a retrained toyclip), a
    changed setting or a new :data:`TRAINING_VERSION` mean a new run, never a stale result."""
    facts = {k: v for k, v in dataclasses.asdict(cfg.resolved()).items() if k not in _NOT_IN_KEY}
    facts["weights"] = weights
    facts["training_version"] = TRAINING_VERSION
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished_run(cfg: TrainConfig, weights: str) -> dict[str, Any] | None:
    """The results in ``cfg.out`` when they were computed under the same :func:`run_key`
    (same settings, backbone weights and training code), else ``None``; an unreadable
    file is reported and treated as absent (the run is done again)."""
    path = Path(cfg.out) / RESULTS
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError):
        print(f"note: {path} is unreadable; running that run again", file=sys.stderr)
        return None
    if isinstance(res, dict) and res.get("run_key") == run_key(cfg, weights):
        return res
    return None


# ... and those that do not make it another run (a rerun may load from elsewhere)
_NOT_IN_REQUEST = (*_NOT_IN_KEY, "num_workers", "data_root")


_FORMER_GLOBALS = {"weight_decay": 5e-4, "warmup_epochs": 1}


def request_key(cfg: TrainConfig) -> str:
    """What was asked for, as a short hash: the config as given (``None`` for a method's
    default, so that the same command is the same request after a default changes) less
    :data:`_NOT_IN_REQUEST`, without the backbone's weights. Files in an ``--out`` folder
    that carry another request key belong to another run, which :func:`run` does not
    overwrite unless told to."""
    facts = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_REQUEST}
    # settings that were global before they became per-method defaults: unset, they enter
    # the key as their old global value, so earlier commands keep their request keys
    for k, old in _FORMER_GLOBALS.items():
        facts[k] = old if facts[k] is None else facts[k]
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _describe(found: dict[str, Any]) -> str:
    what = [str(found.get(k)) for k in ("method", "dataset") if found.get(k)]
    if "shots" in found:
        what.append(f"{found['shots']} shots")
    if "seed" in found:
        what.append(f"seed {found['seed']}")
    return ", ".join(what) or "settings this run cannot read"


def _same_request(found: dict[str, Any], cfg: TrainConfig, request: str, dataset: str) -> bool:
    """Whether a results.json / meta.json is of the request ``request``. Files of an older
    promptviz carry no request key: they count as the same run when what they record
    (method, backbone, dataset, protocol, shots, seed) is this one's."""
    if "request" in found:
        return found["request"] == request
    mine = {"method": cfg.method, "backbone": cfg.backbone, "dataset": dataset,
            "protocol": cfg.protocol, "shots": cfg.shots, "seed": cfg.seed}
    return bool(found) and all(found.get(k) == v for k, v in mine.items())


def check_owner(out: Path, cfg: TrainConfig, request: str, dataset: str) -> None:
    """Refuse to overwrite another run's results, checkpoint or interrupted state in ``out``:
    one whose :func:`request_key` differs (a rerun of the same request is fine; with new
    backbone weights it trains again). ``dataset`` is the dataset's name."""
    for name in (RESULTS, META):
        path = out / name
        if not path.is_file():
            continue
        try:
            found = json.loads(path.read_text())
            found = found if isinstance(found, dict) else {}
        except (OSError, ValueError):
            found = {}
        if not _same_request(found, cfg, request, dataset):
            raise PromptvizError(
                f"--out {out} holds another run ({_describe(found)}: its {name}); choose "
                "another --out, or pass --overwrite to replace that run")
    resume = out / RESUME
    if resume.is_file():
        saved = load_state(resume).get("config")
        mine = _key(cfg, "")
        if not isinstance(saved, dict) or {**saved, "weights": ""} != mine:
            raise PromptvizError(
                f"--out {out} holds an interrupted run of other settings ({RESUME}); choose "
                "another --out, or pass --overwrite to discard it")


def run(cfg: TrainConfig, overwrite: bool = False, on_epoch: OnEpoch | None = None
        ) -> dict[str, Any]:
    """Train and evaluate one (method, dataset, protocol, shots, seed); write results.json.
    ``on_epoch(history)`` is called after every training epoch.

    Every check (settings, device, dataset, backbone, method options, that ``cfg.out`` can
    be written and holds no other run: :func:`check_owner`, unless ``overwrite``) happens
    before anything is written; an earlier result in ``cfg.out`` is removed only then."""
    requested = cfg                                  # as given: the run key's input
    cfg.resolved().validate()
    request = request_key(requested)
    out = Path(cfg.out)
    device = check_device(cfg.device)
    set_seed(cfg.seed)
    ds = load_dataset(cfg.dataset, cfg.data_root)
    cfg = cfg.resolved(ds.name)                      # the authors' schedule for this dataset
    if cfg.augment is None:
        cfg = dataclasses.replace(cfg, augment=ds.augment)
    train_set, eval_sets = protocol_splits(ds, cfg)
    cfg = budget_epochs(cfg, requested, len(train_set.train), ds.name)  # CLIP-LoRA: 500·K
    if cfg.select == "best_val" and requested.select is None and not train_set.val:
        print(f"note: {ds.name} has no validation images, so {cfg.method} keeps its last "
              "epoch instead of its default best_val")
        cfg = dataclasses.replace(cfg, select="last")
    backbone = load_clip(cfg.backbone, device)
    resolve_precision(cfg.precision, device)
    weights = featcache.weights_fingerprint(backbone.model)
    key = run_key(requested, weights)
    options = {**method_class(cfg.method).dataset_options(ds.name, cfg.protocol), **cfg.options}
    if method_class(cfg.method).unlabelled_images(cfg.options):
        # PromptKD: the teacher run comes first, after every check that could refuse the
        # student (its options, on an untrained teacher of the name given; --out's owner)
        build_method(cfg.method, backbone, train_set.classnames, train_set.template, options)
        if not overwrite:
            check_owner(out, cfg, request, ds.name)
        options = train_teacher(cfg, options, out, backbone)
        set_seed(cfg.seed)          # the student starts alike whether the teacher trained now
    method = build_method(cfg.method, backbone, train_set.classnames, train_set.template,
                          options)
    if cfg.protocol == "base2new" and getattr(method.options, "class_specific", False):
        raise PromptvizError(  # caught before training: nothing may be written for it
            "class_specific=true learns one context per training class, so it cannot classify "
            "base2new's novel classes; drop --set class_specific=true or use --protocol fewshot")
    if not overwrite:
        check_owner(out, cfg, request, ds.name)
    if (out / RESULTS).is_file():                    # say so: the earlier result goes now
        print(f"note: {out} already holds a finished run; training again replaces it "
              "(give another --out to keep both)")
    created = make_folder(out)
    for stale in (RESULTS, PREDICTIONS):             # a stale result must not survive a failure
        (out / stale).unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        history = train_method(method, train_set, cfg, out, weights, on_epoch)
    except Diverged:             # resuming would diverge again: leave --out as it was
        (out / RESUME).unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    train_seconds = time.perf_counter() - t0
    method.set_classnames(train_set.classnames, train_set.template)
    meta = {"method": cfg.method, "options": dataclasses.asdict(method.options),
            "backbone": cfg.backbone, "dataset": ds.name, "protocol": cfg.protocol,
            "shots": cfg.shots, "seed": cfg.seed, "classnames": train_set.classnames,
            "template": train_set.template, "config": dataclasses.asdict(cfg),
            "request": request, "data_root": str(Path(cfg.data_root).expanduser().resolve()),
            "dataset_path": str(Path(cfg.dataset).expanduser().resolve())
            if looks_like_path(cfg.dataset) else None}
    save_checkpoint(out, method.trainable_state(), meta)
    t1 = time.perf_counter()
    predictions = protocol_predictions(method, eval_sets, cfg)
    metrics = protocol_metrics(predictions)
    save_predictions(out, predictions)               # before results.json, which ends a run
    results = {"method": cfg.method, "backbone": cfg.backbone, "dataset": ds.name,
               "protocol": cfg.protocol, "shots": cfg.shots, "seed": cfg.seed, **metrics,
               "epochs": cfg.epochs, "select": cfg.select,
               "selected_epoch": selected_epoch(history, cfg.select),
               "eval_batch_size": cfg.eval_batch_size,
               "train_seconds": round(train_seconds, 2),
               "eval_seconds": round(time.perf_counter() - t1, 2),
               "trainable_params": sum(p.numel() for p in method.trainable_parameters()),
               **({"unlabelled_images": unlabelled, "train_images": len(train_set.train)}
                  if (unlabelled := method_class(cfg.method).unlabelled_images(cfg.options))
                  else {}),
               "history": history, "options": meta["options"], "run_key": key,
               "request": request}
    atomic_write_text(out / RESULTS, strict_json(results, f"the results of {cfg.method} on "
                                                           f"{ds.name}"))
    (out / RESUME).unlink(missing_ok=True)
    return results


def strict_json(obj: Any, what: str) -> str:
    """``obj`` as JSON that strict parsers accept: a NaN or infinite number is an error
    (JSON has no such numbers), never a bare ``NaN`` in a file."""
    try:
        return json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        raise PromptvizError(f"{what} hold a NaN or infinite number; nothing was written. "
                             "Check the evaluation sets are not empty") from None


def load_method(checkpoint: str | Path, device: str = "cpu",
                loaded: tuple[dict, dict] | None = None) -> tuple[Method, dict[str, Any]]:
    """The trained method in a checkpoint folder written by :func:`run`, and its metadata
    (:func:`promptviz.methods.load_trained`)."""
    return load_trained(checkpoint, device, loaded)


def run_eval(checkpoint: str | Path, dataset: str | None = None, data_root: str | None = None,
             protocol: str | None = None, device: str = "cpu", backbone: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a checkpoint written by :func:`run` (``promptviz eval``). Without
    ``dataset`` (and ``data_root``) the checkpoint's own dataset is used, as it was given to
    ``train`` (a CoOp name under the same data root, a card folder or a path)."""
    from promptviz.checkpoint import META_KEYS, load_checkpoint
    state, meta = load_checkpoint(checkpoint, META_KEYS)
    config = meta["config"]
    if backbone and backbone != meta["backbone"]:
        raise PromptvizError(
            f"checkpoint {checkpoint} was trained on backbone {meta['backbone']!r}, not "
            f"{backbone!r}; drop --backbone or use a checkpoint of that backbone")
    if dataset is None:
        dataset = meta.get("dataset_path") or config["dataset"]
        data_root = data_root or meta.get("data_root") or config.get("data_root")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{**{k: v for k, v in config.items() if k in known},
                         "protocol": protocol or meta["protocol"], "dataset": dataset,
                         "data_root": data_root or "data",
                         "device": device, "progress": progress, "out": str(checkpoint)})
    ds = load_dataset(cfg.dataset, cfg.data_root)
    train_set, eval_sets = protocol_splits(ds, cfg)
    if ds.name == meta["dataset"] and train_set.classnames != meta["classnames"]:
        raise PromptvizError(
            f"checkpoint {checkpoint} was trained on other classes of {ds.name} than the "
            f"dataset now has ({_class_difference(meta['classnames'], train_set.classnames)})"
            "; was the dataset rebuilt or the protocol changed? Re-train or pass the matching "
            "--protocol")
    method, _ = load_method(checkpoint, device, (state, meta))
    set_seed(meta["seed"])           # a method that draws at test time (sep[score=random])
    metrics = evaluate_protocol(method, eval_sets, cfg)
    return {"method": meta["method"], "backbone": meta["backbone"], "dataset": ds.name,
            "protocol": cfg.protocol, "shots": meta["shots"], "seed": meta["seed"], **metrics}


def _class_difference(trained: list[str], now: list[str]) -> str:
    """How two class lists differ, in a few words: counts, or the first names that differ."""
    if len(trained) != len(now):
        return f"{len(trained)} classes in the checkpoint, {len(now)} now"
    pairs = [(a, b) for a, b in zip(trained, now) if a != b]
    shown = "; ".join(f"{a!r} is now {b!r}" for a, b in pairs[:3])
    return f"{len(pairs)} of {len(now)} class names differ: {shown}"
