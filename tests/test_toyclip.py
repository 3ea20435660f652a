"""The shipped toyclip: loads offline through the common loader and is the model we measured."""

from __future__ import annotations

import difflib
import json
import re

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
    the measurement (the numbers its template types itself are pinned in
    :data:`TEMPLATE_NUMBERS` below)."""
    from promptviz.tools.modelcard.render import CARD_JSON, PROVENANCE, model_card
    folder = TOYCLIP_WEIGHTS.parent
    card = json.loads((folder / CARD_JSON).read_text())
    prov = json.loads((folder / PROVENANCE).read_text())
    assert model_card(card, prov) == (folder / "MODEL_CARD.md").read_text()
    assert quality_bars(card["zero_shot"], card["zeroshot_b2n"], card["coop_b2n"],
                        card["headroom"]) == card["bars"]


NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*")      # not the 16 of fp16
# Every number that model_card types itself, in the order the card shows them: facts of
# design and records of earlier experiments (their runs are gone, their weights replaced),
# none of them measured by `promptviz toyworld card` or read from the pretraining run.
# A number that card.json, provenance.json or the papers' table holds does not belong here:
# render it from there.
TEMPLATE_NUMBERS = (
    "64 8 8 8 64 "                  # the image tower's input: 64-px images, 8-px patches
    "0.1 0.9 0.98 100 "             # AdamW's weight decay and betas, the temperature's cap
    "100 10 14 18 700 1,250 "       # earlier: contrastive runs from scratch
    "64 70 70 20 "                  # the warm start's patch targets, shares of clean scenes
    "1000 16 29.3 57.0 26.9 56.6 "  # earlier: the 1000-step warm start's linear probe
    "0 16 16 3 5 "                  # the suite's seed, 16 shots, the bars (3x, +5)
    "10 9 6 3 9 5 5 10 4 16 16 "    # ToyWorld's vocabulary, 10 shapes, the other 4 sets
    "200 200 1,000 3.0 69.7 72.7 0.4 1.2 30 0.3 0.5 "  # earlier: 200 shots, noisy captions
    "16 16 11 16 56.5 92.2 72.1 97.6 "  # ViT-B/16 on 11 datasets; the papers' EuroSAT, Flowers
    "0.4 21.9 3 "                   # earlier: a run with the specialist names in 0.4 %
    "0.08 1 10 70.8 29.6 48.2 71.0 "  # earlier: CoOp's augmentation, 10 epochs
    "7 8").split()                  # the shifted styles' shares of the pretraining stream


def _moved(value, count: list[int]):
    """``value`` with every number moved by a different thousand (so that the differences
    and means made from them move too); ``n``, which picks a cell's format, stays."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        count[0] += 1
        return value + 1000 * count[0]
    if isinstance(value, dict):
        return {k: v if k == "n" else _moved(v, count) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, count) for v in value]
    return value


def test_the_cards_prose_reads_its_numbers_from_the_measurements(monkeypatch):
    """Rendered from a card.json, a provenance.json and a papers' table whose numbers have
    all changed, the card changes every number but the template's own (TEMPLATE_NUMBERS):
    a measurement typed into the prose would stay behind, and fail here."""
    from promptviz.tools.modelcard import render
    folder = TOYCLIP_WEIGHTS.parent
    card = json.loads((folder / render.CARD_JSON).read_text())
    prov = json.loads((folder / render.PROVENANCE).read_text())
    shipped = render.model_card(card, prov)

    other = {k: _moved(v, [0]) for k, v in card.items() if k != "bars"}
    other["bars"] = quality_bars(other["zero_shot"], other["zeroshot_b2n"], other["coop_b2n"],
                                 other["headroom"])
    shift = str.maketrans("0123456789", "1234567890")         # every digit changes
    other_prov = {k: v.translate(shift) for k, v in prov.items()}
    monkeypatch.setattr(render, "REFERENCE_B2N",
                        {k: tuple(x + 1000 for x in v) for k, v in render.REFERENCE_B2N.items()})
    text = render.model_card(other, other_prov)

    before, after = list(NUMBER.finditer(shipped)), NUMBER.findall(text)
    assert len(before) == len(after)
    stayed = [m for m, new in zip(before, after) if m.group() == new]
    typed = [m.group() for m in stayed]
    if typed != TEMPLATE_NUMBERS:
        ops = difflib.SequenceMatcher(a=TEMPLATE_NUMBERS, b=typed, autojunk=False).get_opcodes()
        new = [f"{m.group()!r} in ...{shipped[max(0, m.start() - 50):m.end() + 10]!r}"
               for tag, _, _, j1, j2 in ops if tag != "equal" for m in stayed[j1:j2]]
        gone = [n for tag, i1, i2, _, _ in ops if tag != "equal" for n in TEMPLATE_NUMBERS[i1:i2]]
        raise AssertionError("numbers in the card that do not follow the measurements (render "
                             "them from card.json / provenance.json):\n" + "\n".join(new)
                             + f"\nin TEMPLATE_NUMBERS but not in the card: {gone}")
    # ... and the changed measurements are the ones shown, in the prose too
    assert all(v in text for v in other_prov.values())
    coop = {r["dataset"]: r for r in other["coop_b2n"]}
    gain = {z["dataset"]: c["base_acc"] - z["base_acc"]
            for z, c in zip(other["zeroshot_b2n"], other["coop_b2n"])}
    zero_shot = {r["dataset"]: r for r in other["zero_shot"]}
    paint = float(re.findall(r"--paint-names (\S+)", other_prov["command"])[-1])
    for quoted in (f"for only {paint * 100:g} % of the colours",
                   f"instead of {paint * 100:g} %,",
                   f"chance ({3 * zero_shot['toy_paints']['chance']:.1f} %)",
                   f"without it: {coop['toy_fine']['base_acc']:.1f} %",
                   f"from {render.REFERENCE_B2N['CLIP'][0]:.1f} % to",
                   f"ToyPaints ({gain['toy_paints']:+.1f} points)"):
        assert " ".join(quoted.split()) in " ".join(text.split()), quoted


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
