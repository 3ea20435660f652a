"""One training loop for every method.

``run(TrainConfig(...))`` loads the backbone and the dataset, samples the
few-shot training set, trains the method's trainable parameters (the CLIP towers
stay frozen), evaluates under the protocol and writes ``results.json`` plus a
checkpoint into ``cfg.out``. An interrupted run resumes from the last finished
epoch (``resume.pt``); ``results.json`` only appears when everything succeeded.

Schedule (Dassl's, used by every paper here): ``warmup_epochs`` at a constant
``warmup_lr``, then cosine annealing of ``lr`` over all epochs, stepped per epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from promptviz import featcache
from promptviz.backbone import Backbone, load_clip
from promptviz.checkpoint import atomic_torch_save, atomic_write_text, save_checkpoint
from promptviz.data import (
    Dataset,
    ImageDataset,
    clip_transform,
    few_shot,
    load_dataset,
    subsample_classes,
    train_transform,
)
from promptviz.errors import PromptvizError
from promptviz.evaluate import autocast_for, evaluate, harmonic_mean
from promptviz.methods import Method, build_method, method_class
from promptviz.progress import progress_bar

PROTOCOLS = ("base2new", "fewshot")
RESULTS = "results.json"
RESUME = "resume.pt"


@dataclass
class TrainConfig:
    method: str = "coop"
    backbone: str = "toyclip"
    dataset: str = "toy_fine"
    data_root: str = "data"
    protocol: str = "base2new"          # base2new | fewshot
    shots: int = 16
    seed: int = 1
    out: str = "runs/train"
    epochs: int | None = None           # None = the method's default
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str | None = None        # sgd | adam
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    device: str = "cpu"
    precision: str = "auto"             # auto (bf16 autocast on CUDA) | fp32
    num_workers: int = 0
    eval_batch_size: int = 128
    feature_cache: bool = True          # encode each training image once per view, reuse
    cache_views: int = 10               # augmented views cached (at most one per epoch)
    cache_dir: str | None = None        # on-disk feature cache (None: featcache.cache_root();
                                        # "" keeps the features in memory only)
    augment: bool | None = None         # random-resized-crop + flip (False: eval transform;
                                        # None: the dataset's choice, see Dataset.augment)
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)   # method options, key=value

    def resolved(self) -> TrainConfig:
        """Fill the ``None`` fields from the method's defaults."""
        d = method_class(self.method).defaults
        return dataclasses.replace(
            self, epochs=d.epochs if self.epochs is None else self.epochs,
            batch_size=self.batch_size or d.batch_size, lr=self.lr or d.lr,
            optimizer=self.optimizer or d.optimizer)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(epoch: int, cfg: TrainConfig) -> float:
    """Constant warm-up, then cosine annealing over all epochs (per-epoch steps)."""
    if epoch < cfg.warmup_epochs and cfg.epochs > cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * epoch / cfg.epochs))


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        eps = method_class(cfg.method).defaults.adam_eps
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=eps)
    raise PromptvizError(f"unknown optimizer {cfg.optimizer!r}; use sgd or adam")


def check_device(device: str) -> torch.device:
    if device not in {"cpu", "cuda"} and not device.startswith("cuda:"):
        raise PromptvizError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PromptvizError("--device cuda was asked for but no CUDA GPU is visible; "
                             "use --device cpu")
    return torch.device(device)


def protocol_splits(ds: Dataset, cfg: TrainConfig) -> tuple[Dataset, dict[str, Dataset]]:
    """The few-shot training set and the evaluation sets of ``cfg.protocol``."""
    if cfg.protocol not in PROTOCOLS:
        raise PromptvizError(f"unknown protocol {cfg.protocol!r}; use one of {PROTOCOLS}")
    shots = few_shot(ds, cfg.shots, cfg.seed)
    if cfg.protocol == "fewshot":
        return shots, {"acc": ds}
    return subsample_classes(shots, "base"), {"base_acc": subsample_classes(ds, "base"),
                                              "new_acc": subsample_classes(ds, "new")}


def train_method(method: Method, train_set: Dataset, cfg: TrainConfig,
                 out: Path | None = None, weights: str = "") -> list[dict[str, float]]:
    """Optimise ``method``'s trainable parameters on ``train_set``; returns per-epoch logs.
    With ``out``, the state after every epoch goes to ``out/resume.pt``, keyed on the config
    and ``weights`` (the backbone's :func:`featcache.weights_fingerprint`, computed here
    when not given)."""
    bb: Backbone = method.backbone
    params = method.trainable_parameters()
    if cfg.epochs == 0 or not params:
        return []
    if not train_set.train:
        raise PromptvizError(f"dataset {train_set.name} has no training images; it is a "
                             "test-only dataset (e.g. a domain-shifted copy)")
    if cfg.augment is None:
        cfg = dataclasses.replace(cfg, augment=train_set.augment)
    optim = make_optimizer(params, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    transform = train_transform if cfg.augment else clip_transform
    data = ImageDataset(train_set.train, transform(bb.image_size, bb.mean, bb.std))
    drop_last = len(data) > cfg.batch_size
    views = None
    if cfg.feature_cache and method.cacheable:
        views = cached_views(method, train_set, data, cfg)
    history: list[dict[str, float]] = []
    start = 0
    resume = out / RESUME if out else None
    if resume is not None and not weights:
        weights = featcache.weights_fingerprint(bb.model)
    if resume is not None and resume.is_file():
        start, history = _resume(resume, method, optim, gen, cfg, weights)
    if start == 0:
        method.prepare(DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.num_workers))
    for epoch in range(start, cfg.epochs):
        lr = lr_at(epoch, cfg)
        for group in optim.param_groups:
            group["lr"] = lr
        method.train()
        sums: dict[str, torch.Tensor] = {}
        correct = seen = 0
        t0 = time.perf_counter()
        order = torch.randperm(len(data), generator=gen).tolist()   # this epoch's shuffle
        if views is None:
            batches = DataLoader(data, batch_size=cfg.batch_size, sampler=order,
                                 num_workers=cfg.num_workers, drop_last=drop_last)
        else:
            batches = cached_batches(views[epoch % len(views)], order, cfg.batch_size, drop_last)
        steps = len(data) // cfg.batch_size if drop_last else -(-len(data) // cfg.batch_size)
        bar = progress_bar(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=cfg.progress,
                           total=steps)
        for step, (inputs, labels, _) in enumerate(bar):
            labels = labels.to(bb.device)
            with autocast_for(bb.device, cfg.precision):
                if views is None:
                    loss, logits, terms = method.loss(inputs.to(bb.device), labels)
                else:
                    loss, logits, terms = method.loss_from(inputs, labels)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            for k, v in {"loss": loss.detach(), **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.float()
            if step % 10 == 0:                    # on the device: read once per epoch
                correct = correct + (logits.argmax(-1) == labels).sum()
                seen += len(labels)
        logs = {k: float(v) / max(step + 1, 1) for k, v in sums.items()}   # one sync per epoch
        if not math.isfinite(logs["loss"]):
            raise PromptvizError(
                f"the training loss became {logs['loss']} in epoch {epoch + 1}; lower the "
                f"learning rate (--lr, now {cfg.lr}) or train in fp32 (--precision fp32)")
        logs.update(epoch=epoch + 1, lr=lr, train_acc=100.0 * float(correct) / max(seen, 1),
                    seconds=time.perf_counter() - t0)
        history.append(logs)
        if resume is not None:
            atomic_torch_save({"epoch": epoch + 1, "history": history,
                               "config": _key(cfg, weights), "state": method.trainable_state(),
                               "optimizer": optim.state_dict(),
                               "generator": gen.get_state(),
                               "torch_rng": torch.get_rng_state(),       # augmentations
                               "python_rng": random.getstate()}, resume)
    return history


def n_views(cfg: TrainConfig) -> int:
    """How many views of each training image the feature cache holds: ``cache_views``, at
    most one per epoch, and one when there is no augmentation (every view would be alike)."""
    return max(1, min(cfg.cache_views, cfg.epochs)) if cfg.augment else 1


@torch.no_grad()
def encode_views(method: Method, data: ImageDataset, cfg: TrainConfig
                 ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """The frozen image tower on every training image, under ``cache_views`` augmented views
    (at most one per epoch; one without augmentation, when every view would be the same):
    what ``method.encode_images(train=True)`` returns, kept on the device, so that a
    training step costs only the text side and the method's own modules."""
    loader = DataLoader(data, batch_size=cfg.eval_batch_size, shuffle=False,
                        num_workers=cfg.num_workers)
    views = []
    with torch.random.fork_rng(devices=[]):      # the views depend on the seed alone
        torch.manual_seed(cfg.seed)
        for v in range(n_views(cfg)):
            views.append(_encode_view(method, loader, cfg, v))
    return views


def cached_views(method: Method, train_set: Dataset, data: ImageDataset, cfg: TrainConfig
                 ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """``encode_views``, read from the on-disk feature cache when an entry with the same
    key exists, and written there otherwise (``cfg.cache_dir == ""``: memory only)."""
    if cfg.cache_dir == "":
        return encode_views(method, data, cfg)
    bb = method.backbone
    facts = {"format": featcache.FORMAT, "backbone": bb.name,
             "weights": featcache.backbone_fingerprint(bb.model),
             "dataset": train_set.name, "shots": cfg.shots, "seed": cfg.seed,
             "views": n_views(cfg), "augment": cfg.augment, "image_size": bb.image_size,
             "mean": list(bb.mean), "std": list(bb.std), "precision": cfg.precision,
             "device": bb.device.type, **method.image_key()}
    if cfg.augment and cfg.num_workers:
        # worker processes draw the augmentations from their own seeds
        facts["augment_workers"] = cfg.num_workers
    items = [(f"{x.impath}\t{_stamp(x.impath)}", int(x.label)) for x in train_set.train]
    root, key = featcache.cache_root(cfg.cache_dir), featcache.entry_key(facts, items)
    views = featcache.load(root, key, bb.device)
    if views is None:
        views = encode_views(method, data, cfg)
        featcache.store(root, key, views, dict(facts, images=len(items)))
    return views


def _stamp(path: str) -> str:
    """Size and modification time: a dataset rebuilt in place gets new cache entries."""
    try:
        st = Path(path).stat()
    except OSError:
        raise PromptvizError(f"training image {path} is missing; rebuild or re-download the "
                             "dataset") from None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _encode_view(method: Method, loader: DataLoader, cfg: TrainConfig, v: int
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    bb = method.backbone
    parts: dict[str, list[torch.Tensor]] = {}
    labels = []
    for images, y, _ in progress_bar(loader, desc=f"caching view {v + 1}", enabled=cfg.progress):
        with autocast_for(bb.device, cfg.precision):
            feats = method.encode_images(images.to(bb.device), train=True)
        for k, t in feats.items():
            parts.setdefault(k, []).append(t)
        labels.append(y)
    return {k: torch.cat(t) for k, t in parts.items()}, torch.cat(labels)


def cached_batches(view: tuple[dict[str, torch.Tensor], torch.Tensor], order: list[int],
                   batch_size: int, drop_last: bool):
    """Batches of cached features, visiting the images in ``order`` (as the image path does)."""
    feats, labels = view
    device = next(iter(feats.values())).device
    order = torch.tensor(order, device=device)   # one host-to-device copy per epoch, none
    labels = labels.to(device)                   # per step (each would synchronise on CUDA)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        yield {k: t[idx.to(t.device)] for k, t in feats.items()}, labels[idx], idx


def _key(cfg: TrainConfig, weights: str) -> dict[str, Any]:
    """The parts of the config, and the backbone's weights, that must match for a resume
    to be valid."""
    d = dataclasses.asdict(cfg)
    for k in ("out", "progress", "num_workers", "eval_batch_size", "data_root", "cache_dir"):
        d.pop(k)
    return {**d, "weights": weights}


def _resume(path: Path, method: Method, optim: torch.optim.Optimizer, gen: torch.Generator,
            cfg: TrainConfig, weights: str) -> tuple[int, list[dict[str, float]]]:
    try:
        saved = torch.load(path, map_location=method.backbone.device, weights_only=False)
    except Exception:
        raise PromptvizError(f"{path} is unreadable; delete it to train from scratch") from None
    if saved.get("config") != _key(cfg, weights):
        print(f"{path} was written with other settings or backbone weights; training from "
              "scratch")
        return 0, []
    method.load_trainable_state(saved["state"])
    optim.load_state_dict(saved["optimizer"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    print(f"resuming from epoch {saved['epoch']} ({path})")
    return int(saved["epoch"]), list(saved["history"])


def evaluate_protocol(method: Method, eval_sets: dict[str, Dataset],
                      cfg: TrainConfig) -> dict[str, float]:
    """Accuracy on every evaluation set, and HM for base-to-novel."""
    out = {}
    for key, ds in eval_sets.items():
        out[key] = evaluate(method, ds.test, ds.classnames, ds.template, cfg.eval_batch_size,
                            cfg.num_workers, cfg.progress, desc=key, precision=cfg.precision)
    if "base_acc" in out:
        out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
    return out


# TrainConfig fields that say where a run writes and how it reports, not what it computes
_NOT_IN_KEY = ("out", "progress", "cache_dir")


def run_key(cfg: TrainConfig, weights: str) -> str:
    """What a run computes, as a short hash: its resolved config (less :data:`_NOT_IN_KEY`)
    and the fingerprint of its backbone's weights. A study reuses a finished run only when
    the key is the same, so new weights behind the same name (a retrained toyclip) or a
    changed setting mean a new run, never a stale result."""
    facts = {k: v for k, v in dataclasses.asdict(cfg.resolved()).items() if k not in _NOT_IN_KEY}
    facts["weights"] = weights
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train and evaluate one (method, dataset, protocol, shots, seed); write results.json."""
    cfg = cfg.resolved()
    out = Path(cfg.out)
    (out / RESULTS).unlink(missing_ok=True)          # a stale result must not survive a failure
    device = check_device(cfg.device)
    set_seed(cfg.seed)
    ds = load_dataset(cfg.dataset, cfg.data_root)
    requested = cfg                                  # before the dataset fills in augment
    if cfg.augment is None:
        cfg = dataclasses.replace(cfg, augment=ds.augment)
    train_set, eval_sets = protocol_splits(ds, cfg)
    backbone = load_clip(cfg.backbone, device)
    weights = featcache.weights_fingerprint(backbone.model)
    key = run_key(requested, weights)
    method = build_method(cfg.method, backbone, train_set.classnames, train_set.template,
                          cfg.options)
    if cfg.protocol == "base2new" and getattr(method.options, "class_specific", False):
        raise PromptvizError(  # caught before training: nothing may be written for it
            "class_specific=true learns one context per training class, so it cannot classify "
            "base2new's novel classes; drop --set class_specific=true or use --protocol fewshot")
    t0 = time.perf_counter()
    history = train_method(method, train_set, cfg, out, weights)
    train_seconds = time.perf_counter() - t0
    method.set_classnames(train_set.classnames, train_set.template)
    meta = {"method": cfg.method, "options": dataclasses.asdict(method.options),
            "backbone": cfg.backbone, "dataset": ds.name, "protocol": cfg.protocol,
            "shots": cfg.shots, "seed": cfg.seed, "classnames": train_set.classnames,
            "template": train_set.template, "config": dataclasses.asdict(cfg)}
    save_checkpoint(out, method.trainable_state(), meta)
    t1 = time.perf_counter()
    metrics = evaluate_protocol(method, eval_sets, cfg)
    results = {"method": cfg.method, "backbone": cfg.backbone, "dataset": ds.name,
               "protocol": cfg.protocol, "shots": cfg.shots, "seed": cfg.seed, **metrics,
               "epochs": cfg.epochs, "train_seconds": round(train_seconds, 2),
               "eval_seconds": round(time.perf_counter() - t1, 2),
               "trainable_params": sum(p.numel() for p in method.trainable_parameters()),
               "history": history, "options": meta["options"], "run_key": key}
    atomic_write_text(out / RESULTS, json.dumps(results, indent=2))
    (out / RESUME).unlink(missing_ok=True)
    return results


def load_method(checkpoint: str | Path, device: str = "cpu",
                loaded: tuple[dict, dict] | None = None) -> tuple[Method, dict[str, Any]]:
    """The trained method in a checkpoint folder written by :func:`run`, and its metadata.

    The backbone named in the checkpoint is loaded; the method is rebuilt with the
    options and class names it was trained with, then its trainable state restored.
    """
    from promptviz.checkpoint import load_checkpoint
    state, meta = loaded or load_checkpoint(checkpoint)
    model = load_clip(meta["backbone"], check_device(device))
    method = build_method(meta["method"], model, meta["classnames"], meta["template"],
                          meta["options"])
    method.load_trainable_state(state)
    method.eval()
    return method, meta


def run_eval(checkpoint: str | Path, dataset: str | None = None, data_root: str = "data",
             protocol: str | None = None, device: str = "cpu", backbone: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a checkpoint written by :func:`run` (``promptviz eval``)."""
    from promptviz.checkpoint import load_checkpoint
    state, meta = load_checkpoint(checkpoint)
    if backbone and backbone != meta["backbone"]:
        raise PromptvizError(
            f"checkpoint {checkpoint} was trained on backbone {meta['backbone']!r}, not "
            f"{backbone!r}; drop --backbone or use a checkpoint of that backbone")
    cfg = TrainConfig(**{**meta["config"], "protocol": protocol or meta["protocol"],
                         "dataset": dataset or meta["dataset"], "data_root": data_root,
                         "device": device, "progress": progress, "out": str(checkpoint)})
    ds = load_dataset(cfg.dataset, cfg.data_root)
    train_set, eval_sets = protocol_splits(ds, cfg)
    if ds.name == meta["dataset"] and train_set.classnames != meta["classnames"]:
        raise PromptvizError(
            f"checkpoint {checkpoint} was trained on other classes of {ds.name} than the "
            f"dataset now has ({len(meta['classnames'])} vs {len(train_set.classnames)}); "
            "was the dataset rebuilt or the protocol changed? Re-train or pass the matching "
            "--protocol")
    method, _ = load_method(checkpoint, device, (state, meta))
    metrics = evaluate_protocol(method, eval_sets, cfg)
    return {"method": meta["method"], "backbone": meta["backbone"], "dataset": ds.name,
            "protocol": cfg.protocol, "shots": meta["shots"], "seed": meta["seed"], **metrics}
