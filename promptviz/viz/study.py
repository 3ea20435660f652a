"""Views of a ``promptviz compare`` study: a text table, a transfer pivot, base vs novel.

All three take the table :func:`promptviz.tools.compare.summarise` returns (plain dicts
with ``method``, ``dataset``, ``shots``, the metrics and their ``*_std``). They show
each row's ``hm`` as it is, and the table holds one HM convention
(:data:`promptviz.metrics.HM_CONVENTION`): a row's HM is the harmonic mean of that row's
own (seed- or dataset-averaged) base and novel accuracies, as in the papers' tables, and
the ``± std`` shown next to it is the std of the per-seed HMs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from promptviz.metrics import REFERENCE_B2N, harmonic_mean

B2N_METRICS = ("base_acc", "new_acc", "hm")
_HEAD = {"base_acc": "base", "new_acc": "novel", "hm": "HM", "acc": "acc"}


def _std(row: dict[str, Any], key: str) -> float | None:
    """The spread over seeds, or None where there is none to show (a single seed)."""
    if len(row.get("seeds", (0, 0))) < 2:
        return None
    return row.get(f"{key}_std")


def _fmt(row: dict[str, Any], key: str, digits: int) -> str:
    if key not in row:
        return "-"
    std = _std(row, key)
    return f"{row[key]:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def format_study(table: Sequence[dict[str, Any]], digits: int = 1,
                 methods: Sequence[str] | None = None) -> str:
    """A plain-text table, one line per (method, dataset, shots): base / novel / HM for
    base-to-novel rows, accuracy otherwise; ``± std`` where there are several seeds.
    HM is the HM of the row's own base and novel
    (:data:`~promptviz.metrics.HM_CONVENTION`); its ``± std`` is the std of the per-seed
    HMs.

    ``methods`` orders the rows (each method's datasets, then its average row); by
    default the table's own order.
    """
    if methods is not None:
        rank = {m: i for i, m in enumerate(methods)}
        table = sorted(table, key=lambda r: (rank.get(r["method"], len(rank)),
                                             r["dataset"] == "average"))
    b2n = any("hm" in r for r in table)
    metrics = B2N_METRICS if b2n else ("acc",)
    several_k = len({r.get("shots") for r in table}) > 1
    wm = max([len("method")] + [len(str(r["method"])) for r in table]) + 2
    wd = max([len("dataset")] + [len(str(r["dataset"])) for r in table]) + 2
    cells = [[_fmt(r, m, digits) for m in metrics] for r in table]
    wv = max([len(c) for row in cells for c in row] + [5]) + 2
    head = f"{'method':<{wm}}{'dataset':<{wd}}" + ("shots" if several_k else "")
    lines = [head + "".join(f"{_HEAD[m]:>{wv}}" for m in metrics)]
    for r, row in zip(table, cells):
        start = f"{r['method']:<{wm}}{r['dataset']:<{wd}}" + (
            f"{r['shots']:>5}" if several_k else "")
        lines.append(start + "".join(f"{c:>{wv}}" for c in row))
    return "\n".join(lines)


def _ordered(table: Sequence[dict[str, Any]],
             methods: Sequence[str] | None) -> Sequence[dict[str, Any]]:
    if methods is None:
        return table
    rank = {m: i for i, m in enumerate(methods)}
    return sorted(table, key=lambda r: rank.get(r["method"], len(rank)))   # stable


def pivot(table: Sequence[dict[str, Any]], metric: str = "acc",
          datasets: Sequence[str] | None = None,
          methods: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per method with one column per dataset (``metric``'s value): the shape of a
    transfer table, ready for :func:`promptviz.viz.accuracy_bars` with ``metrics=datasets``.
    ``methods`` orders the rows (default: the table's order)."""
    names = list(datasets) if datasets is not None else list(
        dict.fromkeys(r["dataset"] for r in table if r["dataset"] != "average"))
    rows: dict[str, dict[str, Any]] = {}
    for r in _ordered(table, methods):
        if r["dataset"] in names and metric in r:
            row = rows.setdefault(r["method"], {"method": r["method"]})
            row[r["dataset"]] = r[metric]
            if _std(r, metric) is not None:
                row[f"{r['dataset']}_std"] = _std(r, metric)
    return list(rows.values())


def deltas(table: Sequence[dict[str, Any]], reference: str, metric: str = "hm",
           dataset: str | None = None) -> list[dict[str, Any]]:
    """Each method's ``metric`` against ``reference``'s on one dataset (default: the first
    one in the table), as rows ``{"intervention", "acc", "delta", "std"}`` in table order,
    the reference first with delta 0: an ablation study in the shape
    :func:`promptviz.viz.intervention_bars` draws (``"none"`` marks the reference).
    ``std`` is the row's own spread over seeds (None for one seed), not the spread of the
    delta; the standard error of a delta needs both rows' ``std``."""
    names = [r["dataset"] for r in table if r["dataset"] != "average"]
    dataset = dataset or (names[0] if names else None)
    rows = [r for r in table if r["dataset"] == dataset and metric in r]
    ref = next((r for r in rows if r["method"] == reference), None)
    if ref is None:
        raise ValueError(f"no {reference!r} row for {dataset!r} in the table")
    return [{"intervention": "none" if r is ref else r["method"], "acc": r[metric],
             "delta": r[metric] - ref[metric], "std": _std(r, metric)}
            for r in [ref] + [r for r in rows if r is not ref]]


def per_dataset_bars(table: Sequence[dict[str, Any]], metric: str = "acc",
                     title: str = "Accuracy per dataset (%)",
                     methods: Sequence[str] | None = None) -> go.Figure:
    """Grouped bars of ``metric``: one group per dataset (table order), one bar per method
    (in ``methods``' order when given), ``± std`` where the table has several seeds."""
    from promptviz.viz.results import accuracy_bars
    names = list(dict.fromkeys(r["dataset"] for r in table
                               if r["dataset"] != "average" and metric in r))
    return accuracy_bars(pivot(table, metric, names, methods), label="method", metrics=names,
                         title=title)


_PLACES = ("top center", "bottom center", "middle right", "middle left", "top right",
           "bottom left", "top left", "bottom right")


def _label_places(xy: Sequence[tuple[float, float]], near: tuple[float, float]
                  ) -> list[str | None]:
    """A text position per point. A point with one close neighbour (closer than ``near``
    = (dx, dy) in axis units) takes the next free position, so the two labels do not sit
    on each other; a point with two or more gets None: in a crowd no placement keeps the
    labels apart, so its name is left to the legend."""
    def close(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return abs(a[0] - b[0]) < near[0] and abs(a[1] - b[1]) < near[1]

    places: list[str | None] = []
    for i, p in enumerate(xy):
        if sum(close(p, q) for j, q in enumerate(xy) if j != i) >= 2:
            places.append(None)
            continue
        taken = {places[j] for j, q in enumerate(xy[:i]) if close(p, q)}
        places.append(next((pl for pl in _PLACES if pl not in taken), _PLACES[0]))
    return places


def base_novel_scatter(rows: Sequence[dict[str, Any]], label: str = "method",
                       title: str = "Base vs novel accuracy", zoom: bool = False,
                       reference: str | None = None) -> go.Figure:
    """Each row a point at (base, novel) with ``± std`` bars where there are several seeds,
    and dotted curves of equal harmonic mean.

    Up-left of the diagonal a method generalises to unseen classes better than it fits
    the seen ones; moving along an iso-HM curve trades one for the other at equal HM.
    Points are named next to their marker and in the legend; where three or more crowd
    together, only in the legend. ``zoom`` fits both axes to the points (5 points of
    margin) instead of running them to 100. ``reference`` names the row (by ``label``)
    whose base and novel accuracy get a dashed line each, e.g. zero-shot CLIP: points up
    and right of both lines beat it on both.
    """
    fig = go.Figure()
    values = [r[k] for r in rows for k in ("base_acc", "new_acc")]
    if zoom and values:
        lo, hi = max(0.0, min(values) - 5), min(100.0, max(values) + 5)
    else:
        lo = max(0.0, 10 * (min(values + [100.0]) // 10) - 10)
        hi = 100.0
    grid = [lo + (hi - lo) * i / 200 for i in range(1, 201)]
    step = 10 if hi - lo > 25 else 5
    for h in range(step * math.ceil(lo / step), 100, step):
        # iso-HM curves: n = h·b / (2b − h)
        pts = [(b, h * b / (2 * b - h)) for b in grid if 2 * b > h
               and lo <= h * b / (2 * b - h) <= hi]
        if not pts:
            continue
        fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines",
                        line=dict(color="lightgrey", dash="dot", width=1), hoverinfo="skip",
                        showlegend=False)
        fig.add_annotation(x=pts[-1][0], y=pts[-1][1], text=f"HM {h}", showarrow=False,
                           font=dict(size=9, color="grey"), xanchor="right", yanchor="bottom")
    fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", hoverinfo="skip",
                    line=dict(color="grey", width=1), showlegend=False)
    ref = next((r for r in rows if str(r[label]) == reference), None) if reference else None
    if reference and ref is None:
        raise ValueError(f"reference {reference!r} is not one of the rows' {label!r} values")
    if ref is not None:
        fig.add_vline(x=ref["base_acc"], line=dict(color="#999", dash="dash", width=1), opacity=1)
        fig.add_hline(y=ref["new_acc"], line=dict(color="#999", dash="dash", width=1), opacity=1)
    places = _label_places([(r["base_acc"], r["new_acc"]) for r in rows],
                           ((hi - lo) / 8, (hi - lo) / 12))
    colours = pio.templates["plotly_white"].layout.colorway      # the bars' colours, in order
    for k, (r, place) in enumerate(zip(rows, places)):
        hm = r.get("hm", harmonic_mean(r["base_acc"], r["new_acc"]))
        errors = {f"error_{axis}": dict(type="data", array=[_std(r, key)])
                  for axis, key in (("x", "base_acc"), ("y", "new_acc"))
                  if _std(r, key) is not None}
        fig.add_scatter(
            x=[r["base_acc"]], y=[r["new_acc"]], mode="markers" if place is None else
            "markers+text", name=str(r[label]), text=[str(r[label])],
            textposition=place or "top center", **errors,
            marker=dict(size=11, color=colours[k % len(colours)]),
            hovertemplate=f"{r[label]}<br>base %{{x:.1f}}<br>novel %{{y:.1f}}<br>HM {hm:.1f}"
                          "<extra></extra>")
    fig.update_layout(title=title, template="plotly_white", height=480, width=720,
                      xaxis=dict(title="base accuracy (%)", range=[lo, hi]),
                      yaxis=dict(title="novel accuracy (%)", range=[lo, hi],
                                 scaleanchor="x"), legend=dict(title=label))
    return fig


def reference_rows() -> list[dict[str, Any]]:
    """The papers' reported averages (methods.md §7) as table rows (not measured here)."""
    return [{"method": k, "dataset": "11 datasets (paper)", "base_acc": b,
             "new_acc": n, "hm": h} for k, (b, n, h) in REFERENCE_B2N.items()]
