"""The shipped toyclip: loads offline through the common loader and is the model we measured."""

from __future__ import annotations

import json

import numpy as np

from promptviz.backbone import TOYCLIP_WEIGHTS, load_clip
from promptviz.tools.modelcard.measure import quality_bars
from promptviz.tools.modelcard.reference import REFERENCE, reference_logits
from promptviz.tools.modelcard.render import markdown


def test_toyclip_loads_through_the_common_loader():
    clip = load_clip("toyclip")
    assert clip.image_size == 64 and clip.info.patch_size == 8
    assert TOYCLIP_WEIGHTS.stat().st_size <= 25 * 2**20
    assert clip.logit_scale > 1.0


def test_toyclip_reproduces_reference_logits():
    ref = json.loads((TOYCLIP_WEIGHTS.parent / REFERENCE).read_text())
    now = reference_logits("toyclip", ref["seed"])
    assert now["captions"] == ref["captions"]          # the ToyWorld stream is unchanged
    assert np.allclose(now["logits"], ref["logits"], atol=2e-3)


def test_coop_improves_on_the_dtd_style_template(tmp_path):
    """CoOp on ToyTextures beats toyclip's DTD-style hand-crafted template ("{} texture.",
    a phrase its captions never use), on novel classes too. Measured here: zero-shot
    91.7 / 90.0 / HM 90.8, CoOp 93.3 / 95.0 / HM 94.2 (60 test images per half). The
    issue's larger target, CoOp +5 on base classes on average, is not met by toyclip
    (see assets/toyclip/MODEL_CARD.md)."""
    from promptviz.data.toyworld.suite import build_suite
    from promptviz.train.loop import TrainConfig, run
    build_suite(tmp_path, n_train=16, n_val=2, n_test=20, datasets=["toy_textures"])
    common = dict(backbone="toyclip", dataset="toy_textures", data_root=str(tmp_path),
                  shots=16, seed=1, progress=False)
    zs = run(TrainConfig(method="zeroshot", out=str(tmp_path / "zs"), **common))
    coop = run(TrainConfig(method="coop", out=str(tmp_path / "coop"), epochs=10, **common))
    assert coop["hm"] > zs["hm"] and coop["new_acc"] > zs["new_acc"]


def test_card_bars_and_table_report_the_linear_head():
    zero_shot = [{"dataset": d, "classes": 10, "template": "a photo of a {}.", "acc": a,
                  "chance": 10.0} for d, a in (("toy_shapes", 60.0), ("toy_shapes_sketch", 25.0))]
    zs = [{"dataset": d, "base_acc": b, "new_acc": 50.0, "hm": 50.0, "n": 1}
          for d, b in (("toy_shapes", 60.0), ("toy_fine", 40.0))]
    coop = [{**r, "base_acc": r["base_acc"] + g, "base_acc_std": 0.5, "new_acc_std": 0.0,
             "hm_std": 0.0, "n": 3} for r, g in zip(zs, (8.0, 4.0))]
    heads = [{"dataset": r["dataset"], "n": 3, "linear_head": r["base_acc"] + g,
              "linear_head_std": 0.0, "best_test": r["base_acc"] + 2 * g, "best_test_std": 0.0}
             for r, g in zip(zs, (1.0, 3.0))]
    bars = quality_bars(zero_shot, zs, coop, heads)
    assert bars["coop_base_gain_mean"] == 6.0 and bars["coop_base_gain_ok"]
    assert bars["linear_head_gain_mean"] == 2.0 and bars["best_test_gain_mean"] == 4.0
    assert not bars["all_three_x_chance"] and bars["shift_drop"] == {"toy_shapes_sketch": 35.0}
    card = {"seeds": [1, 2, 3], "zero_shot": zero_shot, "zeroshot_b2n": zs, "coop_b2n": coop,
            "headroom": heads, "bars": bars}
    md = markdown(card)
    assert "| linear head base | ceiling |" in md and "| 61.0 ± 0.0 | 62.0 ± 0.0 |" in md
    assert "linear head **+2.0**, ceiling **+4.0**" in md
    del card["headroom"]                                  # cards written before the head
    assert "linear head" not in markdown(card)


def test_the_shipped_card_is_rendered_from_its_measurements():
    """MODEL_CARD.md is ``model_card(card.json, provenance.json)`` as written by
    ``promptviz toyworld card --update-card``: no number in it was typed in by hand after
    the measurement (the ones its template still carries are flagged in issue #21)."""
    from promptviz.tools.modelcard.render import CARD_JSON, PROVENANCE, model_card
    folder = TOYCLIP_WEIGHTS.parent
    card = json.loads((folder / CARD_JSON).read_text())
    prov = json.loads((folder / PROVENANCE).read_text())
    assert model_card(card, prov) == (folder / "MODEL_CARD.md").read_text()
    assert quality_bars(card["zero_shot"], card["zeroshot_b2n"], card["coop_b2n"],
                        card["headroom"]) == card["bars"]


def test_readme_quotes_the_cards_coop_gains():
    """The README's status paragraph quotes the card's CoOp gains; re-read them here."""
    from pathlib import Path

    from promptviz.tools.modelcard.render import CARD_JSON
    card = json.loads((TOYCLIP_WEIGHTS.parent / CARD_JSON).read_text())
    gains = {z["dataset"]: c["base_acc"] - z["base_acc"]
             for z, c in zip(card["zeroshot_b2n"], card["coop_b2n"])}
    others = [g for name, g in gains.items() if name != "toy_paints"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    readme = " ".join(readme.split())
    assert f"+{card['bars']['coop_base_gain_mean']:.1f} points over zero-shot" in readme
    assert f"ToyPaints (+{gains['toy_paints']:.1f})" in readme
    assert f"CoOp gains +{sum(others) / len(others):.1f} on average" in readme
