"""``promptviz bench``'s run: :class:`BenchConfig`, both paths of one method measured on
fresh copies of it (:func:`bench_method`: the phases of :mod:`.phases`, the amortised
throughput and the ratios optimised / straightforward), and :func:`bench`, which loads the
backbone with random weights, measures every method, adds what the machine is and the
fraction of its bf16 peak, and writes the JSON.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from promptviz.backbone import Backbone, load_clip
from promptviz.checkpoint import atomic_write_text
from promptviz.config import BenchConfig
from promptviz.methods import build_method, method_class
from promptviz.precision import resolve_precision
from promptviz.tools.bench.measure import (
    bf16_peak_tflops,
    device_name,
    environment,
    image_tower_macs,
    load_at_end,
    memory_metric,
    release_memory,
)
from promptviz.tools.bench.phases import default_eval_batch, eval_phase, train_phase
from promptviz.tools.bench.report import cache_estimate, round_floats
from promptviz.train.loop import check_device

SCHEMA = "promptviz-bench/1"
TEMPLATE = "a photo of a {}."
PATHS = ("straightforward", "optimised")


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
        release_memory(bb.device)
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
    env = environment(device)                   # the load average before measuring
    rows = [bench_method(name, bb, cfg, classnames) for name in cfg.methods]
    env.update(load_at_end(env))
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
    result = round_floats(result)
    atomic_write_text(Path(cfg.out), json.dumps(result, indent=2) + "\n")
    return result
