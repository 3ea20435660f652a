"""Helpers of notebooks 01 (zero-shot CLIP) and 02 (CoOp): promptviz.analysis.probe and
promptviz.viz.similarity, on the tiny DTD and the pv-tiny CLIP."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from promptviz import build_method, load_dataset
from promptviz.analysis.probe import (
    attention_on_object,
    cls_attention,
    confusion_matrix,
    linear_head,
    load_images,
    per_class_accuracy,
    prompt_layout,
    text_drift,
    token_strings,
    top_confusions,
)
from promptviz.analysis.scores import object_area_share
from promptviz.train.evaluate import evaluate, predict
from promptviz.viz.similarity import confusion_heatmap, probability_bars, similarity_heatmap


def test_token_strings_start_and_end(tiny_clip):
    pieces = token_strings(tiny_clip, "a photo of a red star.")
    assert pieces[0] == "<start_of_text>" and pieces[-1] == "<end_of_text>"
    assert pieces[1:-1] == ["a", "photo", "of", "a", "red", "star", "."]
    raw = token_strings(tiny_clip, "a photo", strip_eow=False)
    assert raw[1:-1] == ["a</w>", "photo</w>"]


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_layout_marks_context_slots(tiny_clip, position):
    coop = build_method("coop", tiny_clip, ["red star", "blue"], "a photo of a {}.",
                        {"ctx_init": "", "n_ctx": 4, "class_token_position": position})
    layout = prompt_layout(coop, 0)
    ctx = ["[v1]", "[v2]", "[v3]", "[v4]"]
    name = ["red", "star"]
    body = {"end": ctx + name, "front": name + ctx, "middle": ctx[:2] + name + ctx[2:]}[position]
    assert layout == ["<start_of_text>", *body, ".", "<end_of_text>"]
    # the layout has as many entries as the non-padding tokens the text tower reads
    assert len(layout) == int((coop.prompt.ids[0] > 0).sum())


def test_prompt_layout_needs_a_prompt(tiny_clip):
    zs = build_method("zeroshot", tiny_clip, ["a", "b"], "a photo of a {}.")
    with pytest.raises(TypeError):
        prompt_layout(zs)


def test_load_images_and_cls_attention(tiny_clip, tiny_root):
    ds = load_dataset("dtd", tiny_root)
    images, raw = load_images(ds.test[:3], tiny_clip)
    s = tiny_clip.image_size
    assert images.shape == (3, 3, s, s) and raw.shape == (3, s, s, 3) and raw.dtype == np.uint8
    attn = cls_attention(tiny_clip, images)
    g = tiny_clip.grid_size[0]
    assert attn.shape == (tiny_clip.info.vision_layers, 3, g * g)
    assert (attn >= 0).all() and (attn.sum(-1) <= 1 + 1e-5).all()
    assert cls_attention(tiny_clip, images, layers=[0]).shape == (1, 3, g * g)


def test_attention_on_object_uniform_is_area_share():
    mask = np.zeros((2, 16), bool)
    mask[0, :4] = True
    mask[1, :8] = True
    uniform = np.ones((2, 16))
    assert attention_on_object(uniform, mask) == pytest.approx(object_area_share(mask))
    peaked = torch.zeros(2, 16)
    peaked[:, 0] = 1.0
    assert attention_on_object(peaked, mask) == pytest.approx(1.0)
    assert attention_on_object(np.ones(16), mask[0]) == pytest.approx(0.25)


def test_predict_agrees_with_evaluate(tiny_clip, tiny_root):
    ds = load_dataset("dtd", tiny_root)
    zs = build_method("zeroshot", tiny_clip, ds.classnames, ds.template)
    preds, labels = predict(zs, ds.test, ds.classnames, ds.template, batch_size=5)
    assert preds.shape == labels.shape == (len(ds.test),)
    acc = evaluate(zs, ds.test, ds.classnames, ds.template, progress=False)
    assert 100.0 * (preds == labels).mean() == pytest.approx(acc)
    assert labels.tolist() == [s.label for s in ds.test]


def test_linear_head_starts_at_zero_shot_and_learns_its_shots(tiny_clip, tiny_root):
    ds = load_dataset("dtd", tiny_root)
    zs = build_method("zeroshot", tiny_clip, ds.classnames, ds.template)
    acc = evaluate(zs, ds.test, ds.classnames, ds.template, progress=False)
    # scored on its own training images, the head must fit them better than zero-shot does
    r = linear_head(tiny_clip, ds.train, ds.train, ds.test, ds.classnames, ds.template,
                    max_steps=200, every=5, lr=1e-2)
    assert r["zero_shot"] == pytest.approx(acc)
    train_zs = evaluate(zs, ds.train, ds.classnames, ds.template, progress=False)
    assert r["step"] > 0 and r["val"] == r["train"] > train_zs
    assert r["best_test"] >= max(r["linear_head"], r["zero_shot"])
    # no steps: the head is the zero-shot classifier
    r0 = linear_head(tiny_clip, ds.train, ds.val, ds.test, ds.classnames, ds.template,
                     max_steps=0)
    assert r0["linear_head"] == r0["zero_shot"] and r0["step"] == 0


def test_confusion_matrix_and_top_confusions():
    labels = [0, 0, 0, 1, 1, 2]
    preds = [0, 1, 1, 1, 2, 2]
    cm = confusion_matrix(preds, labels, 3)
    assert cm.tolist() == [[1, 2, 0], [0, 1, 1], [0, 0, 1]]
    top = top_confusions(cm, ["a", "b", "c"], k=5)
    assert top[0][:2] == ("a", "b") and top[0][2] == pytest.approx(200 / 3)
    assert top[1][:2] == ("b", "c") and top[1][2] == pytest.approx(50.0)
    assert len(top) == 2                      # pairs that never happen are left out
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 2)


def test_similarity_views():
    sim = np.array([[0.3, -0.1], [0.0, 0.2], [0.1, 0.1]])
    fig = similarity_heatmap(sim, ["i0", "i1", "i2"], ["red_star", "blue"])
    assert isinstance(fig, go.Figure) and fig.data[0].x == ("red star", "blue")
    with pytest.raises(ValueError):
        similarity_heatmap(sim, ["i0"], ["a", "b"])
    boxes = similarity_heatmap(sim, ["i0", "i1", "i2"], ["a", "b"], mark_max=True).layout.shapes
    assert [(b.x0 + 0.5, b.y0 + 0.5) for b in boxes] == [(0, 0), (1, 1), (0, 2)]
    assert not fig.layout.shapes
    cm = np.array([[3, 1], [0, 4]])
    fig = confusion_heatmap(cm, ["a", "b"])
    assert np.allclose(np.asarray(fig.data[0].z), [[75, 25], [0, 100]])
    assert np.allclose(np.asarray(confusion_heatmap(cm, ["a", "b"], normalize=False).data[0].z),
                       cm)
    fig = probability_bars({"s=1": [0.5, 0.5], "s=100": torch.tensor([0.9, 0.1])}, ["a", "b"])
    assert len(fig.data) == 2
    with pytest.raises(ValueError):
        probability_bars({"x": [1.0]}, ["a", "b"])


def test_class_specific_context_refuses_other_classes_of_the_same_count(tiny_clip):
    from promptviz.errors import PromptvizError
    coop = build_method("coop", tiny_clip, ["red star", "blue"], "a photo of a {}.",
                        {"class_specific": True})
    coop.set_classnames(["red star", "blue"])          # its own classes: fine
    with pytest.raises(PromptvizError, match="class-specific"):
        coop.set_classnames(["green ring", "pink"])    # same count, other classes


def test_per_class_accuracy():
    acc = per_class_accuracy([0, 1, 1, 2], [0, 0, 1, 1], 3)
    assert acc[0] == 50.0 and acc[1] == 50.0 and np.isnan(acc[2])


def test_text_drift_is_one_at_the_template_and_falls_as_the_context_moves(tiny_clip):
    names = ["red", "blue", "green"]
    coop = build_method("coop", tiny_clip, names, "a photo of a {}.")
    assert np.allclose(text_drift(coop, names, "a photo of a {}."), 1.0, atol=1e-5)
    with torch.no_grad():
        coop.prompt.ctx.add_(torch.randn_like(coop.prompt.ctx))
    moved = text_drift(coop, names, "a photo of a {}.")
    assert moved.shape == (3,) and (moved < 0.999).all()
    cocoop = build_method("cocoop", tiny_clip, names, "a photo of a {}.")
    with pytest.raises(ValueError, match="depend on the image"):
        text_drift(cocoop, names, "a photo of a {}.")
