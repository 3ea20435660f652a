"""Views of a ``promptviz compare`` study: a text table, a transfer pivot, base vs novel.

All three take the table :func:`promptviz.compare.summarise` returns (plain dicts
with ``method``, ``dataset``, ``shots``, the metrics and their ``*_std``). They show
each row's ``hm`` as it is, and the table holds one HM convention
(:data:`promptviz.evaluate.HM_CONVENTION`): a row's HM is the harmonic mean of that row's
own (seed- or dataset-averaged) base and novel accuracies, as in the papers' tables, and
the ``± std`` shown next to it is the std of the per-seed HMs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from promptviz.evaluate import harmonic_mean

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
    HM is the HM of the row's own base and novel (:data:`~promptviz.evaluate.HM_CONVENTION`);
    its ``± std`` is the std of the per-seed HMs.

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


def pivot(table: Sequence[dict[str, Any]], metric: str = "acc",
          datasets: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per method with one column per dataset (``metric``'s value): the shape of a
    transfer table, ready for :func:`promptviz.viz.accuracy_bars` with ``metrics=datasets``."""
    names = list(datasets) if datasets is not None else list(
        dict.fromkeys(r["dataset"] for r in table if r["dataset"] != "average"))
    rows: dict[str, dict[str, Any]] = {}
    for r in table:
        if r["dataset"] in names and metric in r:
            row = rows.setdefault(r["method"], {"method": r["method"]})
            row[r["dataset"]] = r[metric]
            if _std(r, metric) is not None:
                row[f"{r['dataset']}_std"] = _std(r, metric)
    return list(rows.values())


def per_dataset_bars(table: Sequence[dict[str, Any]], metric: str = "acc",
                     title: str = "Accuracy per dataset (%)") -> go.Figure:
    """Grouped bars of ``metric``: one group per dataset (table order), one bar per method."""
    from promptviz.viz.results import accuracy_bars
    names = list(dict.fromkeys(r["dataset"] for r in table
                               if r["dataset"] != "average" and metric in r))
    return accuracy_bars(pivot(table, metric, names), label="method", metrics=names,
                         title=title)


def base_novel_scatter(rows: Sequence[dict[str, Any]], label: str = "method",
                       title: str = "Base vs novel accuracy") -> go.Figure:
    """Each row a point at (base, novel), with dotted curves of equal harmonic mean.

    Up-left of the diagonal a method generalises to unseen classes better than it fits
    the seen ones; moving along an iso-HM curve trades one for the other at equal HM.
    """
    fig = go.Figure()
    lo = min([r[k] for r in rows for k in ("base_acc", "new_acc")] + [100.0])
    lo = max(0.0, 10 * (lo // 10) - 10)
    grid = [lo + (100 - lo) * i / 100 for i in range(1, 101)]
    for h in range(int(lo) + 10, 100, 10):       # iso-HM curves: n = h·b / (2b − h)
        pts = [(b, h * b / (2 * b - h)) for b in grid if 2 * b > h and h * b / (2 * b - h) <= 100]
        fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines",
                        line=dict(color="lightgrey", dash="dot", width=1), hoverinfo="skip",
                        showlegend=False)
        if pts:
            fig.add_annotation(x=pts[-1][0], y=pts[-1][1], text=f"HM {h}", showarrow=False,
                               font=dict(size=9, color="grey"), xanchor="right",
                               yanchor="bottom")
    fig.add_scatter(x=[lo, 100], y=[lo, 100], mode="lines", hoverinfo="skip",
                    line=dict(color="grey", width=1), showlegend=False)
    for r in rows:
        hm = r.get("hm", harmonic_mean(r["base_acc"], r["new_acc"]))
        errors = {f"error_{axis}": dict(type="data", array=[_std(r, key)])
                  for axis, key in (("x", "base_acc"), ("y", "new_acc"))
                  if _std(r, key) is not None}
        fig.add_scatter(
            x=[r["base_acc"]], y=[r["new_acc"]], mode="markers+text", name=str(r[label]),
            text=[str(r[label])], textposition="top center", marker=dict(size=11), **errors,
            hovertemplate=f"{r[label]}<br>base %{{x:.1f}}<br>novel %{{y:.1f}}<br>HM {hm:.1f}"
                          "<extra></extra>")
    fig.update_layout(title=title, template="plotly_white", height=480, width=560,
                      xaxis=dict(title="base accuracy (%)", range=[lo, 100]),
                      yaxis=dict(title="novel accuracy (%)", range=[lo, 100],
                                 scaleanchor="x"), showlegend=False)
    return fig


def reference_rows() -> list[dict[str, Any]]:
    """The papers' reported averages (methods.md §7) as table rows (not measured here)."""
    from promptviz.compare import REFERENCE_B2N
    return [{"method": k, "dataset": "11 datasets (paper)", "base_acc": b,
             "new_acc": n, "hm": h} for k, (b, n, h) in REFERENCE_B2N.items()]
