"""``promptviz bench``: the optimised path against the straightforward one, in one run.

For every method the same work is timed twice on synthetic inputs of the backbone's
image size (random pixels, random labels; no dataset is needed):

* **optimised** — what ``promptviz train`` does: training steps read a feature cache
  where the image tower is frozen (``method.image_input.frozen``: every method but SEP), kept in
  host memory and moved to the device one batch at a time (``featcache.batches``), class
  text features are computed once per evaluation, and on CUDA everything runs under
  bf16 autocast, where open_clip's ``nn.MultiheadAttention`` (called with
  ``need_weights=False``) dispatches to PyTorch's fused scaled-dot-product attention;
* **straightforward** — what the original code bases do: every training image goes
  through the frozen image tower at every step, the class text features are recomputed
  for every test batch, everything in fp32.

Each measurement runs ``warmup`` untimed steps, then ``steps`` timed ones; CUDA is
synchronised around the timers only, never inside a step. Images and labels stay on the
device for both paths, so input loading (JPEG decoding, augmentation, the images' copy to
the device), which the cache also removes from a real run, is *not* counted: the ratios
understate what a real run gains. The headline is the ratio optimised / straightforward.

Building the cache is timed on its own (``cache_images_per_s``, the copies to host memory
included): it costs one frozen image pass per image and view. ``feature_cache_estimate``
gives the host memory the store would take for ImageNet's base classes at 16 shots.
``train_amortised_images_per_s`` charges the building to training for a schedule of
``epochs`` epochs over ``min(cache_views, epochs)`` views. The optimised steps include
gathering each batch in host memory and copying it to the device, as training does.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (weights included). On a
Linux CPU it is the growth of the process's peak resident set over the phase (the peak is
reset through ``/proc/self/clear_refs``); elsewhere it is ``null``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import inspect
import json
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from promptviz.backbone import Backbone, load_clip
from promptviz.checkpoint import atomic_write_text
from promptviz.config import BENCH_METHODS as BENCH_METHODS
from promptviz.config import BenchConfig
from promptviz.methods import Method, build_method, method_class
from promptviz.methods.base import zero_shot_text_features
from promptviz.methods.zeroshot import ZeroShot
from promptviz.precision import autocast_for, resolve_precision
from promptviz.train import featcache
from promptviz.train.inputs import cached_batches
from promptviz.train.loop import TrainConfig, check_device, make_optimizer

SCHEMA = "promptviz-bench/1"
TEMPLATE = "a photo of a {}."
PATHS = ("straightforward", "optimised")
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
# Matched against torch.cuda.get_device_name in order; --peak-tflops overrides.
# The feature-cache estimate printed by the bench: ImageNet's base half at 16 shots, the
# largest training set of the base-to-novel protocol.
ESTIMATE_CLASSES, ESTIMATE_SHOTS = 500, 16
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
                    ("H200 NVL", 835.0), ("H200", 989.0), ("A100", 312.0), ("L40S", 362.0))


# ------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(key: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (Linux), else None."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _reset_rss_peak() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux ≥ 4.0); False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status("VmHWM") is not None


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):   # give freed heap back (glibc)
            ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory of the code inside ``with``, in MiB (``mib``; None with a ``reason``)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None
        self.reason = ""

    def __enter__(self) -> PeakMemory:
        _release_memory(self.device)
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = _proc_status("VmRSS")
            self._ok = self._start is not None and _reset_rss_peak()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            _sync(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._ok:
            self.mib = max(0, _proc_status("VmHWM") - self._start) / 2**20
        else:
            self.reason = "no /proc/self/clear_refs (not Linux): peak RSS cannot be reset"


def memory_metric(device: torch.device) -> dict[str, Any]:
    """What the ``*_peak_mib`` numbers measure on ``device``."""
    if device.type == "cuda":
        return {"name": "torch.cuda.max_memory_allocated", "includes_weights": True,
                "note": "peak of PyTorch's allocator over the phase: weights, cache, "
                        "activations and optimiser state"}
    if _proc_status("VmRSS") is not None and _reset_rss_peak():
        return {"name": "peak RSS growth", "includes_weights": False,
                "note": "peak resident set over the phase minus the resident set at its "
                        "start (Linux /proc/self/clear_refs); freed heap the allocator keeps "
                        "from earlier phases can hide part of the growth"}
    return {"name": None, "includes_weights": False,
            "note": "not measured: resetting the peak RSS needs Linux /proc/self/clear_refs"}


@contextlib.contextmanager
def count_attention() -> Iterator[dict[str, int]]:
    """Count ``nn.MultiheadAttention`` calls, and those that ask for the attention weights
    (``need_weights=True``), which take the slow, unfused path."""
    counts = {"mha_calls": 0, "need_weights_calls": 0}
    original = nn.MultiheadAttention.forward
    signature = inspect.signature(original)

    def forward(self: nn.MultiheadAttention, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        counts["mha_calls"] += 1
        counts["need_weights_calls"] += bool(bound.arguments["need_weights"])
        return original(self, *args, **kwargs)

    nn.MultiheadAttention.forward = forward
    try:
        yield counts
    finally:
        nn.MultiheadAttention.forward = original


@contextlib.contextmanager
def count_syncs(device: torch.device) -> Iterator[dict[str, int | None]]:
    """Count host–device synchronisations on CUDA (``torch.cuda.set_sync_debug_mode``);
    ``{"host_syncs": None}`` on a CPU, where there is nothing to synchronise."""
    counts: dict[str, int | None] = {"host_syncs": None}
    if device.type != "cuda":
        yield counts
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counts["host_syncs"] = sum("synchroniz" in str(w.message) for w in caught)


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
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


# ------------------------------------------------------------------- phases
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


# ------------------------------------------------------------------- the run
def image_tower_macs(bb: Backbone) -> int:
    """Multiply-accumulates of one image through the ViT image tower (patch embedding,
    blocks, projection). ViT-B/16 at 224 px: 17.6 G — the "17.6 GFLOPs" usually quoted
    counts multiply-accumulates; in floating-point operations it is twice that."""
    v = bb.model.visual
    n = 1 + bb.grid_size[0] * bb.grid_size[1]
    d = bb.vision_width
    p = v.patch_size[0]
    macs = (n - 1) * 3 * p * p * d + d * bb.embed_dim
    for block in v.transformer.resblocks:
        hidden = block.mlp.c_fc.out_features
        macs += 4 * n * d * d + 2 * n * n * d + 2 * n * d * hidden
    return int(macs)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical CPUs)"


def bf16_peak_tflops(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS:
        if key in name:
            return value
    return None


def _dtype_name(precision: str, device: torch.device) -> str:
    p = resolve_precision(precision, device)
    return {"fp32": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast"}[p]


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _amortised(train: dict[str, Any], epochs: int, views: int, clock: str = "s") -> float:
    """Training images per second (``clock="cpu_s"``: per CPU second) when ``views`` cache
    passes are charged to ``epochs`` epochs."""
    step = train[f"images_per_{clock}"]
    if "cache_images_per_s" not in train:
        return step
    return 1.0 / (views / (epochs * train[f"cache_images_per_{clock}"]) + 1.0 / step)


def bench_method(name: str, bb: Backbone, cfg: BenchConfig, classnames: list[str]
                 ) -> dict[str, Any]:
    """Both paths of one method; the optimised one second, each on a fresh method."""
    cls = method_class(name)
    batch_size = cfg.batch_size or cls.defaults.batch_size
    epochs = cfg.epochs or cls.defaults.epochs
    views = max(1, min(cfg.cache_views, epochs))
    eval_bs = cfg.eval_batch_size or default_eval_batch(cls, bb.device)
    row: dict[str, Any] = {"method": name, "batch_size": batch_size,
                           "eval_batch_size": eval_bs, "cacheable": cls.image_input.frozen,
                           "text_depends_on_image": cls.text_depends_on_image}
    for path in PATHS:
        optimised = path == "optimised"
        torch.manual_seed(cfg.seed)
        method = build_method(name, bb, classnames, TEMPLATE)
        if hasattr(method.options, "base_method"):          # TextRefiner: what it wraps
            row["base_method"] = method.options.base_method
        trains = bool(method.trainable_parameters()) and cls.defaults.epochs > 0
        if cfg.progress:
            print(f"  {name}: {path} …", file=sys.stderr, flush=True)
        train = train_phase(method, cfg, batch_size, optimised, eval_bs) if trains else None
        if train is not None:
            train["amortised_images_per_s"] = _amortised(train, epochs, views)
            train["amortised_images_per_cpu_s"] = _amortised(train, epochs, views, "cpu_s")
        row[path] = {"dtype": _dtype_name("auto" if optimised else "fp32", bb.device),
                     "train": train,
                     "eval": eval_phase(method, cfg, optimised, eval_bs)}
        del method
        _release_memory(bb.device)
    if row["optimised"]["train"] and row["optimised"]["train"]["feature_cache"]:
        row["amortised_over"] = {"epochs": epochs, "cache_views": views}
    fast, slow = row["optimised"], row["straightforward"]
    ft, st = fast["train"] or {}, slow["train"] or {}
    row["ratios"] = {
        "train": _ratio(ft.get("images_per_s"), st.get("images_per_s")),
        "train_amortised": _ratio(ft.get("amortised_images_per_s"), st.get("images_per_s")),
        "eval": _ratio(fast["eval"]["images_per_s"], slow["eval"]["images_per_s"]),
        "train_memory": _ratio(ft.get("peak_mib"), st.get("peak_mib")),
        "eval_memory": _ratio(fast["eval"]["peak_mib"], slow["eval"]["peak_mib"])}
    if bb.device.type == "cpu":      # the same ratios in CPU time: robust on a busy machine
        row["ratios_cpu_time"] = {
            "train": _ratio(ft.get("images_per_cpu_s"), st.get("images_per_cpu_s")),
            "train_amortised": _ratio(ft.get("amortised_images_per_cpu_s"),
                                      st.get("images_per_cpu_s")),
            "eval": _ratio(fast["eval"]["images_per_cpu_s"], slow["eval"]["images_per_cpu_s"])}
    return row


def cache_estimate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The host memory each cacheable method's feature store would take for ImageNet's base
    classes at 16 shots (:data:`ESTIMATE_CLASSES` × :data:`ESTIMATE_SHOTS` images) and its
    schedule's views: images × views × the bytes per image measured in this run, as stored
    here and as stored under bf16 autocast (a GPU's default: per-token features in bf16)."""
    images = ESTIMATE_CLASSES * ESTIMATE_SHOTS
    methods = {}
    for row in rows:
        train = row["optimised"]["train"] or {}
        if not train.get("feature_cache"):
            continue
        views = row["amortised_over"]["cache_views"]
        methods[row["method"]] = {
            "views": views, "bytes_per_image": train["cache_host_bytes_per_image"],
            "bytes": featcache.estimate_bytes(train["cache_host_bytes_per_image"], images,
                                              views),
            "bytes_bf16_autocast": featcache.estimate_bytes(
                train["cache_host_bytes_per_image_bf16"], images, views)}
    return {"dataset": f"ImageNet base ({ESTIMATE_CLASSES} classes)", "shots": ESTIMATE_SHOTS,
            "images": images, "where": "host memory (training moves one batch at a time)",
            "methods": methods}


def format_estimate(result: dict[str, Any]) -> str | None:
    """One line: the feature store's size for ImageNet base at 16 shots, per method."""
    est = result.get("feature_cache_estimate")
    if not est or not est["methods"]:
        return None
    views = {m["views"] for m in est["methods"].values()}
    parts = []
    for name, m in est["methods"].items():
        size = featcache.format_bytes(m["bytes"])
        if m["bytes_bf16_autocast"] != m["bytes"]:
            size += f" ({featcache.format_bytes(m['bytes_bf16_autocast'])} under bf16 autocast)"
        parts.append(f"{size} for {name}" + ("" if len(views) == 1 else f" ({m['views']} views)"))
    shared = f", {views.pop()} views" if len(views) == 1 else ""
    return (f"feature cache for {result['backbone']}, {est['shots']} shots, {est['dataset']}"
            f"{shared}: " + ", ".join(parts))


def _environment(device: torch.device) -> dict[str, Any]:
    import open_clip

    import promptviz
    env: dict[str, Any] = {
        "device": str(device), "device_name": device_name(device),
        "torch": torch.__version__, "open_clip": open_clip.__version__,
        "promptviz": promptviz.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    if device.type == "cuda":
        env.update(cuda=torch.version.cuda,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    elif hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return env


def _load_at_end(env: dict[str, Any]) -> dict[str, Any]:
    """The load average when the measurements ended, and whether the machine was busy:
    other processes wanted more CPUs than there are (at the start, or over the run: the
    5-minute average at the end), so wall-clock times measure the machine's load as much
    as the code and the CPU-time ratios are the ones to read."""
    if "load_average_at_start" not in env:
        return {}
    end = [round(x, 2) for x in os.getloadavg()]
    busy = max(*env["load_average_at_start"][:2], *end[:2]) > (os.cpu_count() or 1)
    return {"load_average_at_end": end, "busy_machine": busy}


def _round(obj: Any) -> Any:
    """Round floats for the JSON file (4 significant figures is more than timing holds)."""
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def bench(cfg: BenchConfig) -> dict[str, Any]:
    """Measure every method of ``cfg.methods`` on both paths; write ``cfg.out`` (JSON)."""
    device = check_device(cfg.device)
    cfg = cfg.resolved(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bb = load_clip(cfg.backbone, device, random_weights=True)   # same shapes, same cost
    classnames = [f"class {i}" for i in range(cfg.classes)]
    attn = {type(b.attn).__name__ for b in bb.model.visual.transformer.resblocks}
    macs = image_tower_macs(bb)
    peak = cfg.peak_tflops or (bf16_peak_tflops(device_name(device))
                               if device.type == "cuda" else None)
    if cfg.progress:
        print(f"bench: {cfg.backbone} on {device_name(device)}, {cfg.classes} classes, "
              f"{cfg.steps} timed steps after {cfg.warmup} warm-up", file=sys.stderr)
    env = _environment(device)                   # the load average before measuring
    rows = [bench_method(name, bb, cfg, classnames) for name in cfg.methods]
    env.update(_load_at_end(env))
    for row in rows:
        rate = row["optimised"]["eval"]["images_per_s"]
        row["eval_fraction_of_bf16_peak"] = None if peak is None else \
            rate * 2 * macs / (peak * 1e12)
    result = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": cfg.backbone, "image_size": bb.image_size, "classes": cfg.classes,
        "steps": cfg.steps, "warmup": cfg.warmup, "seed": cfg.seed,
        **env,
        "paths": {
            "optimised": {"feature_cache": "where the method is cacheable",
                          "text": "once per evaluation",
                          "dtype": _dtype_name("auto", device) + (
                              " (precision auto: bf16 autocast on GPUs that have it)"
                              if device.type == "cpu" else "")},
            "straightforward": {"feature_cache": False, "text": "per batch",
                                "dtype": "float32"}},
        "attention": {"modules": sorted(attn),
                      "note": "open_clip blocks call nn.MultiheadAttention with "
                              "need_weights=False, which runs PyTorch's fused "
                              "scaled-dot-product attention; per_step/per_batch count the "
                              "calls that ask for weights (the slow path)"},
        "image_tower_gmacs_per_image": macs / 1e9,
        "bf16_peak_tflops": peak,
        "memory_metric": memory_metric(device),
        "feature_cache_estimate": cache_estimate(rows),
        "inputs": "synthetic images and labels kept on the device for both paths (no "
                  "data loading is timed)",
        "methods": rows}
    result = _round(result)
    atomic_write_text(Path(cfg.out), json.dumps(result, indent=2) + "\n")
    return result


# ------------------------------------------------------------------- the table
def _fmt(x: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def format_bench(result: dict[str, Any]) -> str:
    """The bench as a plain-text table: ratios (optimised / straightforward) first."""
    rows = result["methods"]
    cpu = any("ratios_cpu_time" in r for r in rows)
    head = [f"{result['backbone']} ({result['image_size']} px) on {result['device_name']}, "
            f"{result['classes']} classes; optimised = {result['paths']['optimised']['dtype']}"
            f", straightforward = float32",
            "train×, eval×: optimised / straightforward images per second (higher is "
            "better); train×am: with the feature cache's cost charged to the schedule; "
            f"mem×: peak memory ratio ({result['memory_metric']['name'] or 'not measured'})"]
    if cpu:
        head.append("cpu columns: the same ratios in process CPU time (all threads), which a "
                    "busy machine disturbs less; load average at start: "
                    f"{result.get('load_average_at_start')}, at end: "
                    f"{result.get('load_average_at_end')}")
    estimate = format_estimate(result)
    if estimate:
        head.append(estimate)
    if result.get("busy_machine"):
        head.append("WARNING: the machine was busy (load above its CPU count): the wall-clock "
                    "columns are unreliable, read the cpu columns")
    cols = ["method", "batch", "train×", "train×am", "eval×"]
    cols += ["train× cpu", "train×am cpu", "eval× cpu"] if cpu else []
    cols += ["mem× train", "mem× eval", "train img/s opt | str", "eval img/s opt | str"]
    lines = []
    for r in rows:
        fast, slow, ratio = r["optimised"], r["straightforward"], r["ratios"]
        ft, st = fast["train"] or {}, slow["train"] or {}
        line = [r["method"], str(r["batch_size"])]
        keys = ("train", "train_amortised", "eval")
        line += [_fmt(ratio[k], ".2f", "×") for k in keys]
        if cpu:
            line += [_fmt(r.get("ratios_cpu_time", {}).get(k), ".2f", "×") for k in keys]
        line += [_fmt(ratio["train_memory"], ".2f"), _fmt(ratio["eval_memory"], ".2f"),
                 f"{_fmt(ft.get('images_per_s'))} | {_fmt(st.get('images_per_s'))}",
                 f"{_fmt(fast['eval']['images_per_s'])} | "
                 f"{_fmt(slow['eval']['images_per_s'])}"]
        lines.append(line)
    widths = [max(len(c), *(len(row[i]) for row in lines)) for i, c in enumerate(cols)]
    table = [" ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip(),
             " ".join("-" * w for w in widths)]
    table += [" ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in lines]
    return "\n".join(head + table)
