"""Numbers from accuracies: the harmonic mean, mean ± std over seeds, one aggregation
convention for every table, and the papers' reported averages to compare against.

Plain Python (no torch): the study views (:mod:`promptviz.viz.study`) and the study
runner (:mod:`promptviz.tools.compare`) both read it.

One HM convention everywhere (:data:`HM_CONVENTION`): an aggregated row's HM is the
harmonic mean of its own seed-averaged base and novel accuracies, as the papers' tables
report it, so every row's HM agrees with the base and novel printed next to it. Its
``hm_std`` is the standard deviation of the per-seed HMs (the spread of HM across seeds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2·b·n / (b + n), the headline number of base-to-novel tables."""
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


METRICS = ("base_acc", "new_acc", "hm", "acc")
HM_CONVENTION = ("HM is the harmonic mean of the seed-averaged base and novel accuracies "
                 "(as in the papers' tables); its ± is the std of the per-seed HMs")


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of ``base_acc``, ``new_acc`` and ``acc`` in ``results`` (one
    dict per seed), and the HM of the result.

    ``hm`` is ``harmonic_mean(base_acc, new_acc)`` of the *averaged* accuracies, never the
    mean of the per-seed HMs (which is lower whenever base and novel move apart across
    seeds), so the row's HM is the HM of its own base and novel. ``hm_std`` is the sample
    std of the per-seed HMs: the seed spread of HM, not the spread around ``hm`` of
    values that average to it. See :data:`HM_CONVENTION`.
    """
    out: dict[str, Any] = {"seeds": sorted(r.get("seed") for r in results), "n": len(results)}
    for key in METRICS:
        if key == "hm":                                      # after base_acc and new_acc
            if "base_acc" in out and "new_acc" in out:
                out["hm"] = harmonic_mean(out["base_acc"], out["new_acc"])
                out["hm_std"] = mean_std(harmonic_mean(r["base_acc"], r["new_acc"])
                                         for r in results if "base_acc" in r and "new_acc" in r)[1]
            continue
        vals = [r[key] for r in results if key in r]
        if vals:
            out[key], out[f"{key}_std"] = mean_std(vals)
    return out


def format_pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


# methods.md §7: averages over the 11 datasets, ViT-B/16, 16 shots, as each paper reports.
REFERENCE_B2N = {
    "CLIP": (69.34, 74.22, 71.70), "CoOp": (82.69, 63.22, 71.66),
    "CoCoOp": (80.47, 71.69, 75.83), "KgCoOp": (80.73, 73.60, 77.00),
    "MaPLe": (82.28, 75.14, 78.55), "PromptSRC": (84.26, 76.10, 79.97),
    "TCP": (84.13, 75.36, 79.51), "CoOp+TextRefiner": (79.74, 74.32, 76.94),
    # PromptKD (Li et al., CVPR 2024) and TextRefiner on it are transductive: the unlabelled
    # training images of every class, novel ones included, train the student (their code's
    # SHOTS=0 over all classes), and the teacher is a ViT-L/14
    "PromptKD+TextRefiner": (85.22, 79.64, 82.33),
    "PromptKD": (86.96, 80.73, 83.73),
}
