"""``make demo``: the whole story offline on a CPU in a few minutes.

Builds the ToyWorld suite (once), then on base-to-novel splits of ToyPaints (colours
under rare names, where prompt tuning has much to learn) and ToyFine (36 colour × shape
classes, where it has little) evaluates
zero-shot toyclip and trains CoOp, CoOp+TextRefiner and SEP, prints the base / novel /
HM tables and writes
``runs/demo/report.html``: one file, plotly embedded, that opens offline, with the
table, the accuracy bars, the learning curves, how the classes read TextRefiner's cache,
which visual tokens SEP selects, and per test image why each method predicted what it did
(top-5 classes, the patches it looked at, confusion matrices), with explorers that work
without a kernel.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from promptviz.analysis.probe import load_images
from promptviz.analysis.scores import patch_object_mask, slot_on_object
from promptviz.backbone import load_clip
from promptviz.config import DemoConfig
from promptviz.data import Sample, load_dataset
from promptviz.data.toyworld.suite import load_ground_truth
from promptviz.errors import PromptvizError
from promptviz.metrics import HM_CONVENTION, format_pm
from promptviz.train.loop import (
    TrainConfig,
    check_device,
    finished_run,
    load_method,
    load_predictions,
    run,
)
from promptviz.viz import (
    Report,
    accuracy_bars,
    learning_curves,
    read_weights_heatmap,
    results_table_html,
)
from promptviz.viz.sep import selected_for_image, selection_map

LABELS = {"zeroshot": "zero-shot CLIP", "coop": "CoOp", "kgcoop": "KgCoOp",
          "cocoop": "CoCoOp", "textrefiner": "CoOp+TextRefiner", "sep": "SEP",
          "ivlp": "IVLP", "vpt": "VPT-deep", "maple": "MaPLe",
          "promptsrc": "PromptSRC", "clip_lora": "CLIP-LoRA",
          "promptkd": "PromptKD"}


def format_table(rows: list[dict]) -> str:
    """A plain-text base / novel / HM table (``rows`` carry ``label`` and metrics).

    The demo's rows are single runs (HM = 2·base·novel / (base + novel)). Rows aggregated
    over seeds (``promptviz compare``) carry ``*_std``; then a last line says how their HM
    was formed (:data:`~promptviz.metrics.HM_CONVENTION`)."""
    lines = [f"{'method':<18}{'base':>16}{'novel':>16}{'HM':>16}"]
    for r in rows:
        cells = [format_pm(r[k], r.get(f"{k}_std", 0.0)) if f"{k}_std" in r else f"{r[k]:.2f}"
                 for k in ("base_acc", "new_acc", "hm")]
        lines.append(f"{r['label']:<18}" + "".join(f"{c:>16}" for c in cells))
    if any("hm_std" in r for r in rows):
        lines.append(f"({HM_CONVENTION}.)")
    return "\n".join(lines)


def _test_images(method, cfg: DemoConfig, dataset: str, n: int
                 ) -> tuple[torch.Tensor, list[Sample]]:
    """``n`` test images spread over the classes, preprocessed for ``method``'s backbone,
    and their samples."""
    from promptviz.analysis.why import spread
    picked = spread(load_dataset(dataset, cfg.data_root).test, n)
    images, _ = load_images(picked, method.backbone)
    return images, picked


def _textrefiner_figure(report: Report, method, cfg: DemoConfig, dataset: str) -> None:
    from promptviz.viz.widgets import textrefiner_explorer
    report.paragraph("Each base class reads the cache of local visual concepts with a "
                     "softmax over its slots; the refined class embedding adds what it read. "
                     "White is the uniform read 1/M, red above it, blue below.")
    w = method.read_weights()
    report.figure(read_weights_heatmap(w, method.classnames, zmid=1.0 / w.shape[1]),
                  f"pv-demo-textrefiner-reads-{dataset}")
    images, picked = _test_images(method, cfg, dataset, 8)
    report.paragraph("Explore the cache: pick a test image, a slot and a class (the image's "
                     "CLS attention with the top-k patches, its patches written to the "
                     "slot, the slot's gallery, the class's read weights). On ToyWorld the "
                     "slots are listed by the share of their patches that lie on objects "
                     "(ground truth over these images).")
    clip = method.backbone
    local = method.local_tokens(images)
    slots = local["slot"][:, 1:].cpu().numpy()
    try:
        on_object = patch_object_mask([load_ground_truth(s.impath).patch_labels
                                       for s in picked])
    except PromptvizError:           # not a ToyWorld dataset: no ground truth, slots by use
        on_object = None
    # ToyWorld's ground truth is on toyclip's patch grid; another backbone's grid differs
    share = (slot_on_object(slots, on_object, method.options.n_slots)
             if on_object is not None and on_object.shape == slots.shape else None)
    report.explorer(textrefiner_explorer(images.cpu(), local, method.read_weights(),
                                         method.classnames,
                                         image_labels=[s.classname for s in picked],
                                         object_share=share, mean=clip.mean, std=clip.std))


def _sep_figure(report: Report, method, cfg: DemoConfig, dataset: str) -> None:
    from promptviz.viz.sep import prompt_tokens
    from promptviz.viz.widgets import sep_explorer
    images, picked = _test_images(method, cfg, dataset, 8)
    names = [s.classname for s in picked]
    record = method.selection_record(images)
    report.paragraph("The visual tokens SEP keeps before each rebuilt block of the image "
                     "tower (outlined), over the first test image.")
    clip = method.backbone
    image = images[0].cpu().numpy() * np.array(clip.std)[:, None, None] \
        + np.array(clip.mean)[:, None, None]                       # back to [0, 1] for display
    report.figure(selection_map(image, selected_for_image(record, 0), record["grid"]),
                  f"pv-demo-sep-selection-{dataset}")
    report.paragraph("Explore the selection: a block slider and an image picker.")
    tokens = {c: prompt_tokens(clip, clip.tokenize([f"{method.prompt.placeholder} {c}."])[0])
              for c in dict.fromkeys(names)}      # the prompt of each image's class
    report.explorer(sep_explorer(images.cpu(), record, image_labels=names, text_tokens=tokens,
                                 mean=clip.mean, std=clip.std))


def _why_section(report: Report, trained: dict, cfg: DemoConfig, dataset: str,
                 batch_size: int) -> None:
    from promptviz.analysis.why import explain
    from promptviz.data import subsample_classes
    from promptviz.viz.widgets import why_explorer
    ds = load_dataset(dataset, cfg.data_root)
    halves = {"base": subsample_classes(ds, "base"), "novel": subsample_classes(ds, "new")}
    saved = {}                        # the runs' own predictions: no second evaluation
    for m in trained:
        p = load_predictions(Path(cfg.out) / dataset / m)
        if p is not None and {"base_acc", "new_acc"} <= set(p):
            saved[LABELS.get(m, m)] = {"base": p["base_acc"], "novel": p["new_acc"]}
    why = explain({LABELS.get(m, m): method for m, method in trained.items()}, halves,
                  per_half=4, batch_size=batch_size, predictions=saved)
    report.heading(f"Why this prediction? ({dataset})", level=3)
    report.paragraph("Pick a test image: each method's five highest logits (the true class "
                     "green, a wrong pick red) and the patches it looked at. Zero-shot CLIP "
                     "and CoOp share the frozen image tower, so they look at the same "
                     "patches and differ only in the text; TextRefiner marks the patches its "
                     "local loss reads, SEP the tokens it keeps before its last rebuilt "
                     "block. Pick a method: its confusion matrices over the whole base and "
                     "novel test splits (rows are true classes).")
    report.explorer(why_explorer(why))


FIGURES = {"textrefiner": _textrefiner_figure, "sep": _sep_figure}
ABOUT = {
    "toy_paints": "9 colours under a paint catalogue's names (\"vermilion\", \"viridian\"): "
                  "toyclip's image tower tells the colours apart, but its captions seldom used "
                  "these words, so the template classifier is poor and 16 shots teach a "
                  "learned context a lot, as on Flowers or EuroSAT for real CLIP.",
    "toy_textures": "6 patterns with DTD's template \"{} texture.\", a phrase toyclip never "
                    "saw in pretraining, which a learned context replaces.",
    "toy_fine": "36 colour × shape classes that share attributes (the fine-grained case "
                "TextRefiner targets); toyclip tells colours apart perfectly and shapes less "
                "well, and a prompt cannot repair image features.",
}


def _header(i: int, n: int, dataset: str, method: str, epochs: int) -> str:
    what = "no training" if method == "zeroshot" else f"{epochs} epochs"
    return f"[{i}/{n}] {dataset} · {LABELS.get(method, method)} · {what}"


def run_demo(cfg: DemoConfig) -> Path:
    """Build the suite, run (or reuse) every (dataset, method) run, write the report.

    A run whose folder already holds results under the same run key (same settings,
    backbone weights and training code, :func:`~promptviz.train.loop.finished_run`) is reused,
    so a second ``make demo`` only rewrites the report."""
    from promptviz.data.toyworld.suite import build_suite
    from promptviz.train.featcache import weights_fingerprint

    t0 = time.perf_counter()
    for method in cfg.methods:                  # every mistake before the first run trains
        TrainConfig(method=method, shots=cfg.shots, epochs=cfg.epochs).resolved().validate()
    negative = [f"{d}={e}" for d, e in cfg.epochs_by_dataset.items() if e < 0]
    if negative:
        raise PromptvizError(f"--epochs-by-dataset {' '.join(negative)}: use 0 or more epochs")
    clip = load_clip(cfg.backbone, check_device(cfg.device))
    weights = weights_fingerprint(clip.model)
    missing = []                       # build only what the demo reads and is not there
    for dataset in cfg.datasets:
        try:
            load_dataset(dataset, cfg.data_root)
        except PromptvizError:
            missing.append(dataset)
    if missing:
        print(f"building ToyWorld {', '.join(missing)} under {cfg.data_root}", flush=True)
        build_suite(cfg.data_root, datasets=missing)
        for dataset in missing:
            load_dataset(dataset, cfg.data_root)
    report = Report("promptviz demo: prompt tuning on ToyWorld")
    report.paragraph(
        f"Backbone {cfg.backbone}; base-to-novel: train on the first half of the classes "
        f"with {cfg.shots} shots each, test on base and novel classes; seed {cfg.seed}, "
        f"{cfg.epochs} epochs"
        + "".join(f", {d}: {e}" for d, e in cfg.epochs_by_dataset.items() if d in cfg.datasets)
        + ".")
    n, i, reused = len(cfg.datasets) * len(cfg.methods), 0, 0
    for dataset in cfg.datasets:
        epochs = cfg.epochs_by_dataset.get(dataset, cfg.epochs)
        rows, histories = [], {}
        for method in cfg.methods:
            i += 1
            print(_header(i, n, dataset, method, epochs), flush=True)
            train_cfg = TrainConfig(
                method=method, backbone=cfg.backbone, dataset=dataset, data_root=cfg.data_root,
                protocol="base2new", shots=cfg.shots, seed=cfg.seed,
                epochs=None if method == "zeroshot" else epochs, device=cfg.device,
                out=str(Path(cfg.out) / dataset / method), progress=cfg.progress)
            res = finished_run(train_cfg, weights)
            if res is not None:
                reused += 1
                print(f"  reusing the finished run in {train_cfg.out} (same settings and "
                      "weights; delete the folder to train it again)", flush=True)
            else:                       # the demo's own folder: a stale run is replaced
                res = run(train_cfg, overwrite=True)
            rows.append({"label": LABELS.get(method, method), **res})
            histories[LABELS.get(method, method)] = res.get("history", [])
        print(f"\n{dataset}\n{format_table(rows)}\n", flush=True)
        report.heading(dataset)
        if dataset in ABOUT:
            report.paragraph(ABOUT[dataset])
        report.raw(results_table_html(rows, label="label", caption="accuracy in percent; "
                                      "HM = 2·base·novel / (base + novel)"))
        report.figure(accuracy_bars(rows, label="label",
                                    title=f"{dataset}: base / novel / HM"),
                      f"pv-demo-bars-{dataset}")
        if any(histories.values()):
            report.figure(learning_curves(histories, title=f"{dataset}: learning curves "
                                          "(per epoch, from each run's results.json)"),
                          f"pv-demo-curves-{dataset}")
        trained = {method: load_method(Path(cfg.out) / dataset / method, cfg.device)[0]
                   for method in cfg.methods}
        for method in cfg.methods:
            if method in FIGURES:
                report.heading(f"{LABELS[method]} on {dataset}", level=3)
                FIGURES[method](report, trained[method], cfg, dataset)
        _why_section(report, trained, cfg, dataset, rows[0].get("eval_batch_size", 128))
    took = time.perf_counter() - t0
    report.paragraph(f"Made by make demo in {took:.0f} s"
                     + (f" ({reused} of {n} runs reused from an earlier demo)." if reused
                        else "."), cls="note")
    path = report.write(Path(cfg.out) / "report.html")
    print(f"wrote {path} in {took:.0f} s" + (f" ({reused} of {n} runs reused)" if reused
                                              else ""))
    return path
