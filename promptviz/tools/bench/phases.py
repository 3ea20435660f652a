"""What the bench times, one phase of one path at a time, on synthetic inputs of the
backbone's image size: building the feature cache (:func:`build_cache`), training steps
(:func:`train_phase`: from the cache or through the frozen image tower) and evaluation
(:func:`eval_phase`: text features once or per batch), each as warm-up steps and then timed
steps with CUDA synchronised around the timer only, under :class:`~.measure.PeakMemory`,
with one more untimed step to count attention calls and synchronisations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from promptviz.backbone import Backbone
from promptviz.methods import Method
from promptviz.methods.base import zero_shot_text_features
from promptviz.methods.zeroshot import ZeroShot
from promptviz.precision import autocast_for
from promptviz.tools.bench.measure import PeakMemory, count_attention, count_syncs, sync
from promptviz.train import featcache
from promptviz.train.inputs import cached_batches
from promptviz.train.loop import TrainConfig, make_optimizer

if TYPE_CHECKING:
    from promptviz.config import BenchConfig


def _images(n: int, bb: Backbone, gen: torch.Generator) -> torch.Tensor:
    s = bb.image_size
    return torch.randn(n, 3, s, s, generator=gen).to(bb.device)


def _text_per_batch(method: Method) -> Callable[[], torch.Tensor | None]:
    """The straightforward evaluation: class text features recomputed for every batch."""
    if method.text_depends_on_image:       # CoCoOp builds them from each image anyway
        return lambda: None
    if isinstance(method, ZeroShot):        # its t0 is a buffer: re-encode the sentences
        return lambda: zero_shot_text_features(method.backbone, method.classnames,
                                               method.template)
    return method.text_features


def _timed(device: torch.device, n: int, fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process-CPU seconds for ``n`` calls of ``fn``, CUDA synchronised before
    and after only. CPU seconds (all threads) tell the work apart from waiting on a
    shared machine."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0



@torch.no_grad()
def build_cache(method: Method, chunk: torch.Tensor, n_images: int, precision: str
                ) -> tuple[tuple[featcache.HostFeatures, torch.Tensor], tuple[float, float],
                           featcache.ViewBuilder]:
    """Encode ``n_images`` (``chunk`` repeated) as a training run caches one view, into host
    memory (:class:`featcache.ViewBuilder`, as ``TrainingInputs.encode_views``); returns the view,
    the wall and CPU seconds (the copies to the host included) and the builder (its
    ``layout``: the shapes and dtypes stored per image)."""
    bb = method.backbone
    store = featcache.ViewBuilder(n_images, bb.device)
    labels = torch.randint(len(method.classnames), (n_images,),
                           generator=torch.Generator().manual_seed(0))

    def encode() -> None:
        with autocast_for(bb.device, precision):
            feats = method.inputs(chunk, train=True)
            autocast = featcache.autocast_dtype(bb.device)
        if not store.tensors:
            store.describe(feats, autocast)
            store.allocate()
        b = min(len(chunk), n_images - store.pos)
        store.add({k: t[:b] for k, t in feats.items()}, labels[store.pos:store.pos + b])

    n_chunks = -(-n_images // len(chunk))
    seconds = _timed(bb.device, n_chunks, encode)
    return store.view(), seconds, store


def _cached_stream(view: tuple[dict[str, torch.Tensor], torch.Tensor], batch_size: int,
                   gen: torch.Generator) -> Iterator[tuple[Any, torch.Tensor]]:
    """Epoch after epoch of shuffled cached batches, as the training loop reads them."""
    n = len(view[1])
    while True:
        order = torch.randperm(n, generator=gen).tolist()
        for feats, labels, _ in cached_batches(view, order, batch_size, n > batch_size):
            yield feats, labels


def default_eval_batch(cls: type[Method], device: torch.device) -> int:
    """128 on CUDA; 32 on a CPU, 8 for CoCoOp, whose text tower runs every class prompt
    for every image (its throughput hardly depends on the batch: it goes 8 images at a
    time through the text tower)."""
    if device.type == "cuda":
        return 128
    return 8 if cls.text_depends_on_image else 32


def train_phase(method: Method, cfg: BenchConfig, batch_size: int, optimised: bool,
                eval_batch_size: int = 32) -> dict[str, Any]:
    """Training throughput (images/s) and peak memory of one path, as ``train_method``
    runs a step: forward under autocast, ``zero_grad``, ``backward``, ``step``."""
    bb, dev = method.backbone, method.backbone.device
    precision = "auto" if optimised else "fp32"
    cached = optimised and method.image_input.frozen
    tcfg = TrainConfig(method=method.name, batch_size=batch_size, device=str(dev),
                       precision=precision).resolved()
    gen = torch.Generator().manual_seed(cfg.seed)
    out: dict[str, Any] = {"feature_cache": cached}
    method.train()
    with PeakMemory(dev) as peak:
        optim = make_optimizer(method.trainable_parameters(), tcfg)
        if cached:
            chunk = _images(eval_batch_size, bb, gen)
            build_cache(method, chunk, len(chunk), precision)                 # warm-up
            # one batch at least; the steps read it epoch after epoch, as training reads
            # its views (the cost of a step does not depend on the store's size)
            n_cache = max(batch_size, len(chunk))
            view, seconds, store = build_cache(method, chunk, n_cache, precision)
            del chunk
            out["cache_images_per_s"] = n_cache / seconds[0]
            out["cache_images_per_cpu_s"] = n_cache / seconds[1]
            out["cache_bytes_per_image"] = sum(t[0].numel() * t.element_size()
                                               for t in view[0].values())
            out["cache_layout"] = {k: {"shape": list(shape), "computed": str(c)[6:],
                                       "stored": str(st)[6:]}
                                   for k, (shape, c, st) in store.layout.items()}
            out["cache_host_bytes_per_image"] = store.bytes_per_image
            out["cache_host_bytes_per_image_bf16"] = store.bytes_per_image_under(torch.bfloat16)
            batches: Iterator = _cached_stream(view, batch_size, gen)
        else:
            images = _images(batch_size, bb, gen)
            labels = torch.randint(len(method.classnames), (batch_size,), generator=gen)
            batches = iter(lambda: (images, labels), None)
        sums: dict[str, torch.Tensor] = {}

        def step() -> None:
            inputs, labels = next(batches)
            labels = labels.to(dev)
            with autocast_for(dev, precision):
                x = inputs if cached else method.inputs(inputs, train=True)
                loss, _, _ = method.loss(x, labels)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sums["loss"] = sums.get("loss", 0.0) + loss.detach().float()   # no .item()

        for _ in range(cfg.warmup):
            step()
        seconds = _timed(dev, cfg.steps, step)
        with count_attention() as attn, count_syncs(dev) as syncs:        # one more, untimed
            step()
    loss = float(sums["loss"]) / (cfg.warmup + cfg.steps + 1)
    out.update(images_per_s=batch_size * cfg.steps / seconds[0], seconds=seconds[0],
               images_per_cpu_s=batch_size * cfg.steps / seconds[1], cpu_seconds=seconds[1],
               peak_mib=peak.mib, mean_loss=loss, per_step=dict(**attn, **syncs))
    if peak.reason:
        out["peak_mib_reason"] = peak.reason
    return out


@torch.no_grad()
def eval_phase(method: Method, cfg: BenchConfig, optimised: bool, batch_size: int = 32
               ) -> dict[str, Any]:
    """Evaluation throughput (images/s) and peak memory of one path. The optimised path
    computes the text features once per evaluation (inside the timer), as ``evaluate``."""
    bb, dev = method.backbone, method.backbone.device
    precision = "auto" if optimised else "fp32"
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    method.eval()
    per_batch = _text_per_batch(method)
    once = optimised and not method.text_depends_on_image
    with PeakMemory(dev) as peak:
        images = _images(batch_size, bb, gen)
        labels = torch.randint(len(method.classnames), (len(images),), generator=gen).to(dev)
        correct = torch.zeros((), dtype=torch.long, device=dev)

        def evaluation(n: int) -> None:
            nonlocal correct
            with autocast_for(dev, precision):
                text = method.text_features() if once else None           # once
                for _ in range(n):
                    t = text if once else per_batch()
                    correct += (method(images, t).argmax(-1) == labels).sum()

        if cfg.warmup:
            evaluation(cfg.warmup)
        seconds = _timed(dev, 1, lambda: evaluation(cfg.steps))
        with count_attention() as attn, count_syncs(dev) as syncs:
            evaluation(1)
    out = {"text": "once per evaluation" if once else "per batch",
           "images_per_s": len(images) * cfg.steps / seconds[0], "seconds": seconds[0],
           "images_per_cpu_s": len(images) * cfg.steps / seconds[1],
           "cpu_seconds": seconds[1],
           "peak_mib": peak.mib, "per_batch": dict(**attn, **syncs)}
    if peak.reason:
        out["peak_mib_reason"] = peak.reason
    return out

