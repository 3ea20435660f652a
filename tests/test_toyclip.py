"""The shipped toyclip: loads offline through the common loader and is the model we measured."""

from __future__ import annotations

import json

import numpy as np

from promptviz.backbone import TOYCLIP_WEIGHTS, load_clip
from promptviz.modelcard import REFERENCE, reference_logits


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
    from promptviz.toyworld.suite import build_suite
    from promptviz.train import TrainConfig, run
    build_suite(tmp_path, n_train=16, n_val=2, n_test=20, datasets=["toy_textures"])
    common = dict(backbone="toyclip", dataset="toy_textures", data_root=str(tmp_path),
                  shots=16, seed=1, progress=False)
    zs = run(TrainConfig(method="zeroshot", out=str(tmp_path / "zs"), **common))
    coop = run(TrainConfig(method="coop", out=str(tmp_path / "coop"), epochs=10, **common))
    assert coop["hm"] > zs["hm"] and coop["new_acc"] > zs["new_acc"]
