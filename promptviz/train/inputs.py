"""The training side of what a method reads: the few-shot training set as ``(x, y)``
batches for ``method.loss`` (:class:`TrainingInputs`), ``x`` made by the method's own
``image_input`` (:mod:`promptviz.methods.inputs`). When that input is frozen, each training
image is encoded once per augmented view and the epochs are read from host memory and the
on-disk feature cache (:mod:`promptviz.train.featcache`); otherwise from the images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from promptviz.data import ImageDataset, clip_transform, train_transform
from promptviz.errors import PromptvizError
from promptviz.precision import autocast_for, resolve_precision
from promptviz.progress import progress_bar
from promptviz.train import featcache

if TYPE_CHECKING:
    from promptviz.data import Dataset
    from promptviz.methods.base import Method
    from promptviz.train.loop import TrainConfig

Batch = tuple[Any, Tensor]              # (x, labels): what method.loss(x, y) takes


# ------------------------------------------------------------------ training batches
class TrainingInputs:
    """The few-shot training set as ``method.loss``'s ``(x, y)`` batches, one epoch at a time.

    When the method's input is frozen and ``cfg.feature_cache`` is on, every training image
    goes through the tower once per augmented view (``cfg.cache_views``, at most one per
    epoch, one without augmentation) and the epochs read those views from host memory,
    one batch moved to the device at a time (:func:`featcache.batches`); the views are read
    from and written to the on-disk cache (``cfg.cache_dir``; ``""`` keeps them in memory).
    Otherwise, or when the views would not fit in host memory, each batch is read from the
    images and turned into ``x`` by ``method.inputs``. Both give the same ``(x, y)``."""

    def __init__(self, method: Method, train_set: Dataset, cfg: TrainConfig) -> None:
        self.method, self.train_set, self.cfg = method, train_set, cfg
        bb = method.backbone
        self.device = bb.device
        self.precision = resolve_precision(cfg.precision, bb.device)
        transform = train_transform if cfg.augment else clip_transform
        self.data = ImageDataset(train_set.train, transform(bb.image_size, bb.mean, bb.std))
        self.drop_last = len(self.data) > cfg.batch_size   # as train.optimizer_steps counts
        self.views: featcache.Views | None = None
        if cfg.feature_cache and method.image_input.frozen:
            self.views = self.cached_views()

    def __len__(self) -> int:
        return len(self.data)

    def images(self) -> DataLoader:
        """The training images in order, for a method's :meth:`~Method.prepare`."""
        return DataLoader(self.data, batch_size=self.cfg.batch_size,
                          num_workers=self.cfg.num_workers)

    def epoch(self, epoch: int, order: list[int]) -> Iterator[Batch]:
        """The batches of 0-based ``epoch``, visiting the images in ``order``."""
        if self.views is not None:
            view = self.views[epoch % len(self.views)]
            for x, y, _ in cached_batches(view, order, self.cfg.batch_size, self.drop_last):
                yield x, y
            return
        loader = DataLoader(self.data, batch_size=self.cfg.batch_size, sampler=order,
                            num_workers=self.cfg.num_workers, drop_last=self.drop_last)
        for images, labels, _ in loader:
            yield self._encode(images), labels.to(self.device)

    def first(self, n: int) -> Batch:
        """The first ``n`` training images (unaugmented order) as ``(x, y)``."""
        if self.views is not None:
            x, y, _ = next(iter(cached_batches(self.views[0], list(range(n)), n, False)))
            return x, y
        images, labels, _ = next(iter(DataLoader(self.data, batch_size=n)))
        return self._encode(images), labels.to(self.device)

    def _encode(self, images: Tensor) -> Any:
        with autocast_for(self.device, self.precision):        # as the cached views were
            return self.method.inputs(images.to(self.device), train=True)

    # -- the feature cache -------------------------------------------------------------
    def cached_views(self) -> featcache.Views | None:
        """The views, read from the on-disk cache (memory-mapped) when an entry with the same
        key exists and written there otherwise; ``None`` when they would not fit in host
        memory (see :meth:`encode_views`)."""
        if self.cfg.cache_dir == "":
            return self.encode_views()
        facts, items = cache_facts(self.method, self.train_set, self.cfg)
        root, key = featcache.cache_root(self.cfg.cache_dir), featcache.entry_key(facts, items)
        views = featcache.load(root, key, self.device)
        if views is None:
            views = self.encode_views()
            if views is not None:
                featcache.store(root, key, views, dict(facts, images=len(items)))
        return views

    @torch.no_grad()
    def encode_views(self) -> featcache.Views | None:
        """Every training image through the frozen tower under :func:`n_views` augmented
        views, into host memory (:class:`featcache.HostFeatures`). The store's size is
        estimated from the first encoded chunk; when it would take more than
        :func:`featcache.host_budget`, nothing more is encoded, a one-line warning says so
        and the result is ``None``: training then reads the images."""
        cfg = self.cfg
        loader = DataLoader(self.data, batch_size=cfg.eval_batch_size or 128, shuffle=False,
                            num_workers=cfg.num_workers)
        views: featcache.Views = []
        n = n_views(self.cfg)
        with torch.random.fork_rng(devices=[]):      # the views depend on the seed alone
            torch.manual_seed(cfg.seed)
            for v in range(n):
                view = self._encode_view(loader, v, fit_views=n if v == 0 else 0)
                if view is None:
                    return None
                views.append(view)
        return views

    def _encode_view(self, loader: DataLoader, v: int, fit_views: int = 0
                     ) -> tuple[featcache.HostFeatures, Tensor] | None:
        """One view, chunk by chunk into host memory (:class:`featcache.ViewBuilder`). With
        ``fit_views``, once the first chunk is encoded and before anything is allocated, a
        store of that many views is checked against the host's memory (:func:`featcache.fits`);
        ``None`` when it would not fit."""
        store = featcache.ViewBuilder(len(loader.dataset), self.device)
        for images, y, _ in progress_bar(loader, desc=f"caching view {v + 1}",
                                         enabled=self.cfg.progress):
            with autocast_for(self.device, self.precision):
                feats = self.method.inputs(images.to(self.device), train=True)
                autocast = featcache.autocast_dtype(self.device)
            if not store.tensors:
                store.describe(feats, autocast)
                if fit_views and not featcache.fits(store.bytes_per_image, store.n, fit_views):
                    return None
                store.allocate()
            store.add(feats, y)
        return store.view()


def n_views(cfg: TrainConfig) -> int:
    """How many views of each training image the feature cache holds: ``cache_views``, at
    most one per epoch, and one when there is no augmentation (every view would be alike)."""
    return max(1, min(cfg.cache_views, cfg.epochs)) if cfg.augment else 1


def cache_facts(method: Method, train_set: Dataset, cfg: TrainConfig
                ) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """What a feature-cache entry's key is made of (:func:`featcache.entry_key`): the facts
    its tensors depend on, library versions included, and the training items."""
    bb = method.backbone
    facts = {"format": featcache.FORMAT, "backbone": bb.name,
             "weights": featcache.backbone_fingerprint(bb.model),
             "dataset": train_set.name, "shots": cfg.shots, "seed": cfg.seed,
             "views": n_views(cfg), "augment": cfg.augment, "image_size": bb.image_size,
             "mean": list(bb.mean), "std": list(bb.std),
             "precision": resolve_precision(cfg.precision, bb.device),
             "device": bb.device.type, "versions": featcache.library_versions(),
             **method.image_input.key()}
    if cfg.augment and cfg.num_workers:
        # worker processes draw the augmentations from their own seeds
        facts["augment_workers"] = cfg.num_workers
    items = [(f"{x.impath}\t{_stamp(x.impath)}", int(x.label)) for x in train_set.train]
    return facts, items


def cached_batches(view: tuple[dict[str, Tensor], Tensor], order: list[int], batch_size: int,
                    drop_last: bool) -> Iterator[tuple[dict[str, Tensor], Tensor, Tensor]]:
    """Batches of cached features in ``order``: ``(features, labels, indices)`` on the
    training device, one batch moved from host memory at a time (:func:`featcache.batches`).
    A view of plain tensors (no :class:`featcache.HostFeatures`) is read where it is."""
    feats, labels = view
    if not isinstance(feats, featcache.HostFeatures):
        feats = featcache.HostFeatures(feats, next(iter(feats.values())).device)
    return featcache.batches(feats, labels, order, batch_size, drop_last)



def _stamp(path: str) -> str:
    """Size and modification time: a dataset rebuilt in place gets new cache entries."""
    try:
        st = Path(path).stat()
    except OSError:
        raise PromptvizError(f"training image {path} is missing; rebuild or re-download the "
                             "dataset") from None
    return f"{st.st_size}:{st.st_mtime_ns}"
