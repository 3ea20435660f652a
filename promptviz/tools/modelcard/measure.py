"""What the toyclip model card measures, on the held-out test splits of the ToyWorld suite:
zero-shot accuracy over all classes with the hand-crafted template, next to chance
(:func:`zero_shot_accuracy`: the training sets and ToyShapes' domain-shifted copies);
zero-shot and CoOp base / novel / HM at 16 shots over the card's seeds
(:func:`base_to_novel`); what a 16-shot linear head on the frozen image features reaches
(:func:`headroom`); and the ToyWorld issue's quality bars checked on them
(:func:`quality_bars`). :func:`make_card` runs them all and writes ``card.json`` and its
tables (``card.md``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptviz.backbone import check_device, load_clip
from promptviz.checkpoint import atomic_write_text
from promptviz.config import CardConfig
from promptviz.data import load_dataset
from promptviz.errors import PromptvizError
from promptviz.methods import build_method
from promptviz.metrics import aggregate, mean_std
from promptviz.tools.modelcard.render import markdown
from promptviz.train.evaluate import evaluate
from promptviz.train.loop import TrainConfig, run

TRAIN_SETS = ("toy_shapes", "toy_textures", "toy_fine", "toy_scenes", "toy_paints")
SHIFTED = ("toy_shapes_sketch", "toy_shapes_noisy", "toy_shapes_shifted")


def zero_shot_accuracy(cfg: CardConfig) -> list[dict[str, Any]]:
    """Zero-shot top-1 over all classes of each dataset's test split."""
    clip = load_clip(cfg.backbone, cfg.device)
    rows = []
    for name in TRAIN_SETS + SHIFTED:
        ds = load_dataset(name, cfg.data_root)
        zs = build_method("zeroshot", clip, ds.classnames, ds.template)
        acc = evaluate(zs, ds.test, ds.classnames, ds.template, progress=cfg.progress)
        rows.append({"dataset": name, "classes": ds.num_classes, "template": ds.template,
                     "acc": acc, "chance": 100.0 / ds.num_classes})
    return rows


def base_to_novel(cfg: CardConfig, method: str) -> list[dict[str, Any]]:
    """``method`` base / novel / HM per training dataset, mean ± std over ``cfg.seeds``.

    HM is the HM of the seed-averaged base and novel, its std that of the per-seed HMs
    (:func:`promptviz.metrics.aggregate`,
    :data:`~promptviz.metrics.HM_CONVENTION`)."""
    rows = []
    for name in TRAIN_SETS:
        runs = [run(TrainConfig(method=method, backbone=cfg.backbone, dataset=name,
                                data_root=cfg.data_root, seed=seed, device=cfg.device,
                                epochs=None if method == "zeroshot" else cfg.epochs,
                                out=f"{cfg.out}/{method}/{name}/seed{seed}",
                                progress=cfg.progress), overwrite=True)   # the card's
                for seed in (cfg.seeds if method != "zeroshot" else cfg.seeds[:1])]
        rows.append({"dataset": name, "method": method, **aggregate(runs)})
    return rows


def headroom(cfg: CardConfig, shots: int = 16) -> list[dict[str, Any]]:
    """What ``shots`` labelled images per base class can teach any classifier on the frozen
    image features (:func:`promptviz.analysis.probe.linear_head`), mean ± std over ``cfg.seeds``."""
    from promptviz.analysis.probe import linear_head
    from promptviz.data.fewshot import few_shot, subsample_classes

    clip = load_clip(cfg.backbone, cfg.device)
    rows = []
    for name in TRAIN_SETS:
        ds = load_dataset(name, cfg.data_root)
        test = subsample_classes(ds, "base").test
        heads = []
        for seed in cfg.seeds:
            base = subsample_classes(few_shot(ds, shots, seed), "base")
            heads.append(linear_head(clip, base.train, base.val, test, base.classnames,
                                     ds.template))
        row: dict[str, Any] = {"dataset": name, "n": len(heads)}
        for key in ("linear_head", "best_test"):
            row[key], row[f"{key}_std"] = mean_std([h[key] for h in heads])
        rows.append(row)
    return rows


def quality_bars(zero_shot: list[dict], zs_b2n: list[dict], coop_b2n: list[dict],
                 heads: list[dict] | None = None) -> dict:
    """The ToyWorld issue's bars: ≥3× chance everywhere, CoOp +5 on base, a shift drop;
    with ``heads`` (:func:`headroom`) also what a 16-shot linear head gains on base."""
    three_x = {r["dataset"]: r["acc"] >= 3 * r["chance"] for r in zero_shot}
    gains = [c["base_acc"] - z["base_acc"] for z, c in zip(zs_b2n, coop_b2n)]
    extra = {}
    if heads:
        for key in ("linear_head", "best_test"):
            diffs = [h[key] - z["base_acc"] for z, h in zip(zs_b2n, heads)]
            extra[f"{key}_gain_mean"] = sum(diffs) / len(diffs)
    shapes = next(r["acc"] for r in zero_shot if r["dataset"] == "toy_shapes")
    drops = {r["dataset"]: shapes - r["acc"] for r in zero_shot if r["dataset"] in SHIFTED}
    return {"three_x_chance": three_x, "all_three_x_chance": all(three_x.values()),
            "coop_base_gain_mean": sum(gains) / len(gains), "coop_base_gain_ok":
            sum(gains) / len(gains) >= 5.0, "shift_drop": drops,
            "shift_drop_ok": all(d > 0 for d in drops.values()), **extra}


def check_card(cfg: CardConfig) -> None:
    """The card's settings, its device and backbone, checked before its first run."""
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise PromptvizError(f"--seeds {' '.join(map(str, cfg.seeds))}: give one or more "
                             "different seeds (a repeated seed would count twice in the means)")
    TrainConfig(method="coop", epochs=cfg.epochs).resolved().validate()
    check_device(cfg.device)
    load_clip(cfg.backbone, cfg.device)


def make_card(cfg: CardConfig) -> dict:
    from promptviz.data.toyworld.suite import build_suite
    check_card(cfg)
    build_suite(cfg.data_root)
    zero_shot = zero_shot_accuracy(cfg)
    zs_b2n = base_to_novel(cfg, "zeroshot")
    coop_b2n = base_to_novel(cfg, "coop")
    heads = headroom(cfg)
    card = {"backbone": cfg.backbone, "seeds": list(cfg.seeds), "epochs": cfg.epochs,
            "zero_shot": zero_shot,
            "zeroshot_b2n": zs_b2n, "coop_b2n": coop_b2n, "headroom": heads,
            "bars": quality_bars(zero_shot, zs_b2n, coop_b2n, heads)}
    out = Path(cfg.out)
    atomic_write_text(out / "card.json", json.dumps(card, indent=2))
    atomic_write_text(out / "card.md", markdown(card))
    return card
