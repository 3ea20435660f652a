"""What the bench's numbers say, in words and rounded: the plain-text table of ratios that
``promptviz bench`` prints (:func:`format_bench`), the host memory a feature cache would take
for ImageNet's base classes at 16 shots (:func:`cache_estimate`, :func:`format_estimate`),
from the bytes per image measured in the run, and the rounding of the JSON file's floats
(:func:`round_floats`).
"""

from __future__ import annotations

from typing import Any

from promptviz.train import featcache

# The feature-cache estimate printed by the bench: ImageNet's base half at 16 shots, the
# largest training set of the base-to-novel protocol.
ESTIMATE_CLASSES, ESTIMATE_SHOTS = 500, 16


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



def round_floats(obj: Any) -> Any:
    """Round floats for the JSON file (4 significant figures is more than timing holds)."""
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [round_floats(v) for v in obj]
    return obj



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
