"""Library helpers the SEP notebook (04_sep) uses: images, ground truth, scores, counts."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from promptviz.analysis.scores import (
    object_area_share,
    object_patches_of,
    on_object_by_layer,
    on_object_share,
    tokens_to_patches,
)
from promptviz.data import load_dataset, load_images
from promptviz.data.toyworld.suite import build_suite, load_ground_truth
from promptviz.methods import build_method
from promptviz.methods.base import trainable_parameter_counts
from promptviz.viz.sep import on_object_figure


def _record(selected: dict[int, np.ndarray], batch: int, n_tokens: int = 5) -> dict:
    return {"mode": "x", "grid": (2, 2), "text": {},
            "vision": {k: {"selected": v, "scores": np.zeros((batch, n_tokens)), "s1": 0.75,
                           "s2": 0.75, "attention": np.zeros(1)} for k, v in selected.items()}}


def test_on_object_by_layer_counts_every_image_and_skips_cls():
    obj = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], bool)   # 3 images, 2×2 patches
    faithful = _record({1: np.array([1, 2]), 2: np.array([0, 3])}, batch=2)   # tokens, 0 = CLS
    per_image = _record({1: np.array([[4, 0]]), 2: np.array([[1, 2]])}, batch=1)
    shares = on_object_by_layer([faithful, per_image], obj)
    # layer 1: patches 0,1 in images 0,1 → hits 1+1 of 4; patch 3 in image 2 → 1 of 1
    assert shares[1] == pytest.approx(3 / 5)
    # layer 2: patch 2 in images 0,1 → 0+1 of 2; patches 0,1 of image 2 → 0 of 2
    assert shares[2] == pytest.approx(1 / 4)
    # one batch agrees with on_object_share
    single = on_object_by_layer(faithful, obj[:2])
    assert single[1] == pytest.approx(on_object_share(tokens_to_patches([1, 2]), obj[:2]))


def test_on_object_by_layer_checks_image_count():
    rec = _record({1: np.array([1])}, batch=2)
    with pytest.raises(ValueError):
        on_object_by_layer(rec, np.ones((3, 4), bool))
    with pytest.raises(ValueError):
        on_object_by_layer([rec, rec], np.ones((3, 4), bool))


def test_on_object_by_layer_on_a_real_sep_record(tiny_clip):
    torch.manual_seed(0)
    sep = build_method("sep", tiny_clip, ["red star", "blue circle"], "a photo of a {}.")
    images = torch.randn(3, 3, 32, 32)
    rec = sep.selection_record(images)
    g = tiny_clip.grid_size[0] * tiny_clip.grid_size[1]
    assert on_object_by_layer(rec, np.ones((3, g), bool)) == {v: 1.0 for v in sep.vis_layers}


def test_object_patches_and_load_images(tmp_path):
    build_suite(tmp_path, n_train=1, n_val=0, n_test=1, image_size=32, datasets=["toy_shapes"],
                workers=1)
    ds = load_dataset("toy_shapes", tmp_path)
    paths = [s.impath for s in ds.test[:4]]
    obj = object_patches_of(paths)
    target = object_patches_of(paths, target_only=True)
    assert obj.shape == (4, 16) and obj.dtype == bool
    assert (target <= obj).all()                   # the class object is one of the objects
    gt = load_ground_truth(paths[0])
    np.testing.assert_array_equal(obj[0], gt.patch_labels.reshape(-1) > 0)
    np.testing.assert_array_equal(target[0], gt.patch_labels.reshape(-1) == gt.target + 1)
    assert 0 < object_area_share(obj) < 1
    images = load_images(ds.test[:4], 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert images.shape == (4, 3, 32, 32) and images.min() >= -1 and images.max() <= 1


def test_trainable_parameter_counts(tiny_clip):
    coop = build_method("coop", tiny_clip, ["red star", "blue circle"], "a photo of a {}.")
    sep = build_method("sep", tiny_clip, ["red star", "blue circle"], "a photo of a {}.")
    assert trainable_parameter_counts(coop) == {"prompt": coop.prompt.ctx.numel()}
    counts = trainable_parameter_counts(sep)
    assert set(counts) == {"prompt", "visual_prompt", "text_tfm", "vis_tfm", "W_fc"}
    assert counts["text_tfm"] == sum(p.numel() for p in sep.text_tfm.parameters())
    assert sum(counts.values()) == sum(p.numel() for p in sep.trainable_parameters())


def test_on_object_figure():
    fig = on_object_figure({"faithful": {1: 0.5, 2: 0.75}, "per_sample": {1: 0.25, 2: 1.0}},
                           0.3)
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    assert list(fig.data[0].y) == [50.0, 75.0]
    two = on_object_figure({"a": {1: 0.5}}, {"any object": 0.3, "class object": 0.2})
    assert len(two.layout.shapes) == 2


def test_fusion_scalars_marks_the_start():
    from promptviz.viz.sep import fusion_scalars
    gates = {1: (0.7, 0.8), 2: (0.6, 0.9)}
    assert not fusion_scalars(gates).layout.shapes
    (line,) = fusion_scalars(gates, start=0.75).layout.shapes
    assert line.y0 == line.y1 == 0.75


def test_intervention_bars_show_each_delta():
    from promptviz.viz.results import intervention_bars
    rows = [{"intervention": "none", "acc": 80.0, "delta": 0.0},
            {"intervention": "tfm=raw", "acc": 60.0, "delta": -20.0},
            {"intervention": "ensemble=off", "acc": 82.5, "delta": 2.5}]
    fig = intervention_bars({"base": rows, "novel": rows[:2]})
    base, novel = fig.data
    assert list(base.y) == ["tfm=raw", "ensemble=off"] and list(base.x) == [-20.0, 2.5]
    assert list(base.text) == ["-20.0", "+2.5"] and list(novel.x) == [-20.0]
    assert base.name == "base (untouched 80.0)"
    assert [s.x0 for s in fig.layout.shapes] == [0]           # the zero line
