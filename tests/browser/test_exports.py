"""Standalone exports open offline in Chromium and draw.

Every view function of :mod:`promptviz.viz` (TextRefiner, SEP, embeddings, results,
patches) is exported with :func:`~promptviz.viz.report.standalone_html`, and the report
of ``make demo`` (``runs/demo/report.html``: a results table and figures) is written by
the demo's own code, on a small suite. Each file is opened from disk in
Chromium with the network cut off: any request that is not ``file://`` is aborted and
recorded, and the test fails if there was one, if plotly.js did not run, or if a
plot area is blank (no painted traces, or a screenshot of one or two colours).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from browserkit import Offline, OfflinePage, assert_painted

import promptviz.viz
from promptviz.data.toyworld import sample_batch
from promptviz.viz import (
    deep,
    embeddings,
    patches,
    pipeline,
    results,
    sep,
    similarity,
    study,
    textrefiner,
    why,
)
from promptviz.viz.report import standalone_html

CLASSES = ["red circle", "blue square", "green star", "yellow heart"]
G = 8                                                 # toyclip: 64 px images, 8×8 patches
ROWS = [{"label": "zero-shot CLIP", "base_acc": 61.2, "new_acc": 58.4, "hm": 59.8},
        {"label": "CoOp", "base_acc": 80.5, "new_acc": 52.1, "hm": 63.3},
        {"label": "SEP", "base_acc": 79.0, "new_acc": 60.2, "hm": 68.3, "hm_std": 1.2}]


def _inputs() -> dict:
    rng = np.random.default_rng(0)
    images = (sample_batch(4, torch.Generator().manual_seed(0)).images.permute(0, 2, 3, 1)
              .numpy() * 255).astype(np.uint8)
    attn = rng.random((4, G * G))
    w = rng.random((len(CLASSES), 6))
    record = {"mode": "faithful", "grid": (G, G),
              "vision": {layer: {"selected": rng.choice(G * G + 1, 4, replace=False),
                                 "attention": rng.random((4, 4, 4)),
                                 "s1": 0.6 + layer / 10, "s2": 0.8,
                                 "scores": rng.random((4, G * G + 1))} for layer in (1, 2, 3)},
              "text": {1: {"selected": np.array([5, 6]), "attention": rng.random((2, 4, 4)),
                           "s1": 0.7, "s2": 0.75}}}
    return {"images": images, "attn": attn / attn.sum(1, keepdims=True),
            "topk": np.argsort(-attn, axis=1)[:, :4], "slots": rng.integers(0, 6, (4, G * G + 1)),
            "w": w / w.sum(1, keepdims=True), "record": record,
            "stages": {s: rng.normal(size=(len(CLASSES), 16)) for s in ("t0", "t", "t̂")}}


def figures() -> dict[str, go.Figure]:
    """One figure per view function, keyed by the function's name."""
    d = _inputs()
    img, rec = d["images"][0], d["record"]
    counts, cls_counts, n = sep.selection_counts([rec])
    tokens = ["⟨SOS⟩", "X", "X", "X", "X", "red", "circle", ".", "⟨EOT⟩"]
    return {
        "embedding_shift": embeddings.embedding_shift(d["stages"], CLASSES),
        "patch_overlay": patches.patch_overlay(img, d["attn"][0], highlight=[0, 9, 18],
                                               title="patch overlay"),
        "patch_grid": patches.patch_grid(list(d["images"]), list(d["attn"]),
                                         [list(t) for t in d["topk"]], cols=2,
                                         title="patch grid"),
        "accuracy_bars": results.accuracy_bars(ROWS, label="label"),
        "prompt_shift": deep.prompt_shift({"MaPLe text": [0.2, 1.1], "MaPLe vision": [0.4, 0.9]}),
        "epoch_weights": deep.epoch_weights([0.0, 0.1, 0.8, 0.1]),
        "teacher_student": deep.teacher_student([0, 1, 2, 2], [0, 1, 1, 2], [0, 1, 2, 1],
                                                ["a", "b", "c"], n_base=2),
        "learning_curves": results.learning_curves(
            {"CoOp": [{"epoch": e, "loss": 2 / e, "train_acc": 50 + 4 * e} for e in (1, 2, 3)],
             "SEP": [{"epoch": e, "loss": 1.5 / e, "train_acc": 60 + 3 * e, "val_acc": 55 + e}
                     for e in (1, 2, 3)], "zero-shot": []}, metrics=("loss", "val_acc")),
        "intervention_bars": results.intervention_bars(
            {half: [{"intervention": "none", "acc": 80.0, "delta": 0.0},
                    {"intervention": "read=zero", "acc": 80.0 + d, "delta": d},
                    {"intervention": "alpha=0", "acc": 78.0 - d, "delta": -2.0 - d}]
             for half, d in (("base", 0.5), ("novel", -1.0))}),
        "selection_map": sep.selection_map(img, sep.selected_for_image(rec, 0), rec["grid"],
                                           {k: v["scores"][0] for k, v in rec["vision"].items()}),
        "selection_frequency": sep.selection_frequency(counts, cls_counts, n),
        "text_selection": sep.text_selection(tokens, [5, 6], [1, 2, 3, 4]),
        "fusion_scalars": sep.fusion_scalars(sep.record_scalars(rec),
                                             sep.record_scalars(rec, "text"), current_layer=2),
        "tfm_attention": sep.tfm_attention(rec["vision"][1]["attention"]),
        "on_object_figure": sep.on_object_figure(
            {"faithful": {1: 0.4, 2: 0.55, 3: 0.7}, "per_sample": {1: 0.5, 2: 0.6, 3: 0.8}},
            0.3),
        "read_weights_heatmap": textrefiner.read_weights_heatmap(d["w"], CLASSES),
        "cache_gallery": textrefiner.cache_gallery(d["images"], d["slots"], d["w"], CLASSES,
                                                   [["red", "round", "big"]] * 6, per_slot=2,
                                                   max_rows=3),
        "topk_patches_figure": textrefiner.topk_patches_figure(img, d["attn"][0], d["topk"][0]),
        "slot_membership_figure": textrefiner.slot_membership_figure(img, d["slots"][0], 2),
        "class_reads_figure": textrefiner.class_reads_figure(d["w"], CLASSES, 1,
                                                             highlight_slot=2),
        "similarity_heatmap": similarity.similarity_heatmap(
            d["stages"]["t0"] @ d["stages"]["t"].T / 16, CLASSES, CLASSES),
        "confusion_heatmap": similarity.confusion_heatmap(
            np.eye(len(CLASSES)) * 8 + 1, CLASSES),
        "base_novel_scatter": study.base_novel_scatter(ROWS, label="label"),
        "per_dataset_bars": study.per_dataset_bars(
            [{"method": m, "dataset": ds, "acc": 40.0 + 10 * i + 5 * j}
             for i, m in enumerate(("CoOp", "SEP")) for j, ds in enumerate(("toy_fine", "dtd"))]),
        "pipeline_diagram": pipeline.pipeline_diagram(
            pipeline.PIPELINES["sep"]["boxes"], pipeline.PIPELINES["sep"]["arrows"], "SEP"),
        "method_pipeline": pipeline.method_pipeline("textrefiner"),
        "probability_bars": similarity.probability_bars(
            {"s = 1": d["w"][0, :4] / d["w"][0, :4].sum(), "s = 100": [0.9, 0.05, 0.03, 0.02]},
            CLASSES),
        "top_classes": why.top_classes({"CoOp": [3.0, 9.5, 1.0, 9.0], "SEP": [8.0, 2.0, 1.0, 0.5]},
                                       CLASSES, true="red circle", k=3),
        "looked_at_figure": why.looked_at_figure(
            img, {"CoOp": d["attn"][0], "SEP": d["attn"][1]},
            {"CoOp": list(d["topk"][0]), "SEP": [0, 5]}, {"CoOp": "CLS attention, top-5"}),
    }


def view_functions() -> set[str]:
    """The public functions of ``promptviz.viz.*`` that return a plotly figure."""
    names = set()
    for info in pkgutil.iter_modules(promptviz.viz.__path__):
        module = importlib.import_module(f"promptviz.viz.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if fn.__module__ == module.__name__ and not name.startswith("_") and \
                    fn.__annotations__.get("return") in ("go.Figure", go.Figure):
                names.add(name)
    return names


# the names are found without building anything; the figures are built once, by the
# first test that needs them (never while pytest collects, e.g. under -m "not browser")
NAMES = sorted(view_functions())


@pytest.fixture(scope="module")
def built() -> dict[str, go.Figure]:
    return figures()


def test_every_view_function_is_exported_here(built):
    missing = set(NAMES) - set(built)
    assert not missing, (f"new view functions {sorted(missing)}: add a figure for each to "
                         "figures() in tests/browser/test_exports.py")


@pytest.fixture(scope="module")
def pages(browser, built, demo_report_file, tmp_path_factory):
    """Every export and report, written to disk and opening in its own page."""
    out = tmp_path_factory.mktemp("exports")
    files = {name: standalone_html(fig, out / f"{name}.html", title=name)
             for name, fig in built.items()}
    files["report"] = demo_report_file
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = {name: OfflinePage(context, path) for name, path in files.items()}
    yield opened
    context.close()


def check_page(page, offline: Offline, n_plots: int, shot_prefix: Path) -> None:
    page.wait_for_function("n => document.querySelectorAll('.js-plotly-plot svg.main-svg')"
                           ".length >= n", arg=n_plots, timeout=30_000)
    assert page.evaluate("() => typeof window.Plotly") == "object", "plotly.js did not load"
    plots = page.locator(".js-plotly-plot")
    assert plots.count() == n_plots
    for i in range(n_plots):
        plots.nth(i).scroll_into_view_if_needed()
        assert_painted(plots.nth(i), shot_prefix.with_name(f"{shot_prefix.name}-{i}.png"))
    assert not offline.blocked, f"the page asked the network for {offline.blocked}"
    assert not offline.console_errors, offline.console_errors


@pytest.mark.parametrize("name", NAMES)
def test_figure_export_draws_offline(pages, shots_dir, name):
    page = pages[name]
    check_page(page.loaded(), page.offline, 1, shots_dir / f"export-{name}")


def _check_report(page: OfflinePage, shot: Path) -> None:
    text = page.path.read_text()
    # figures, and the views of the embedded explorers (drawn by their script)
    n = text.count('class="plotly-graph-div"') + text.count('class="pv-view" data-view=')
    assert n >= 1
    check_page(page.loaded(), page.offline, n, shot)
    rows = page.page.locator("table tbody tr").count()
    assert rows >= 1 and page.page.locator("table").first.is_visible(), "no results table"
    page.page.screenshot(path=str(shot.with_name(f"{shot.name}-page.png")), full_page=True)


def test_demo_report_draws_offline(pages, shots_dir):
    """The demo's report: its table is visible and every figure in it draws, offline."""
    _check_report(pages["report"], shots_dir / "demo-report")
