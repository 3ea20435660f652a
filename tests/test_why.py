"""Why this prediction: promptviz.analysis.why (scores, maps, confusions) and its views and
explorer, on the tiny DTD and the pv-tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptviz import build_method, load_dataset
from promptviz.analysis.probe import cls_attention, confusion_matrix, load_images
from promptviz.analysis.why import explain, spread
from promptviz.data import subsample_classes
from promptviz.train.evaluate import evaluate, predict
from promptviz.viz.why import RIGHT, WRONG, looked_at_figure, top_classes
from promptviz.viz.widgets import BUSY, why_explorer


@pytest.fixture(scope="module")
def halves(tiny_root):
    ds = load_dataset("dtd", tiny_root)
    return {"base": subsample_classes(ds, "base"), "novel": subsample_classes(ds, "new")}


@pytest.fixture(scope="module")
def trained(tiny_clip, halves):
    base = halves["base"]
    torch.manual_seed(0)
    methods = {name: build_method(m, tiny_clip, base.classnames, base.template, opts)
               for name, m, opts in (("zero-shot", "zeroshot", None), ("CoOp", "coop", None),
                                     ("TextRefiner", "textrefiner", None),
                                     ("SEP", "sep", {"mode": "faithful"}))}
    with torch.no_grad():            # a learned context away from the template's words
        methods["CoOp"].prompt.ctx.add_(0.5 * torch.randn_like(methods["CoOp"].prompt.ctx))
    return methods


@pytest.fixture(scope="module")
def why(trained, halves):
    return explain(trained, halves, per_half=3, batch_size=5)


def test_each_images_logits_are_its_methods_over_its_halfs_classes(why, trained, halves,
                                                                   tiny_clip):
    assert why.halves == ["base"] * 3 + ["novel"] * 3
    for half, rows in (("base", slice(0, 3)), ("novel", slice(3, 6))):
        d = halves[half]
        samples = spread(d.test, 3)
        assert why.labels[rows] == [s.classname for s in samples]
        x, raw = load_images(samples, tiny_clip)
        assert np.array_equal(why.images[rows], raw)
        for name, m in trained.items():
            m.set_classnames(list(d.classnames), d.template)
            with torch.no_grad():
                want = m(x).float().numpy()
            assert np.allclose(np.stack(why.logits[name][rows]), want, atol=1e-5), name
    # the learned context moved CoOp's scores away from zero-shot's
    assert not np.allclose(np.stack(why.logits["CoOp"]), np.stack(why.logits["zero-shot"]))


def test_confusion_diagonals_give_back_evaluate(why, trained, halves):
    for name, m in trained.items():
        for half, d in halves.items():
            cm = why.confusion[name][half]
            assert cm.shape == (len(d.classnames),) * 2 and cm.sum() == len(d.test)
            acc = evaluate(m, d.test, list(d.classnames), d.template, 5, progress=False)
            assert 100.0 * np.trace(cm) / cm.sum() == pytest.approx(acc), (name, half)


def test_frozen_towers_share_a_map_textrefiner_and_sep_have_their_own(why, trained):
    assert np.array_equal(why.heat["zero-shot"], why.heat["CoOp"])     # text-side methods
    g2 = why.heat["zero-shot"].shape[1]
    assert all(h.shape == (6, g2) for h in why.heat.values())
    # the frozen map is the last block's CLS attention and its marks are its top 5
    for b in range(6):
        top = np.argsort(-why.heat["zero-shot"][b], kind="stable")[:5]
        assert sorted(why.marked["zero-shot"][b]) == sorted(top)
    # TextRefiner marks what its local loss reads; SEP what it selected (patches only)
    assert all(len(m) == trained["TextRefiner"].options.topk for m in why.marked["TextRefiner"])
    assert all(((m >= 0) & (m < g2)).all() for m in why.marked["SEP"])
    assert not np.allclose(why.heat["SEP"], why.heat["zero-shot"])
    assert "shared by the batch" in why.looked["SEP"]                  # faithful mode
    assert why.looked["zero-shot"].startswith("CLS attention")


def test_frozen_map_is_cls_attention_of_the_last_block(trained, halves, tiny_clip):
    from promptviz.analysis.why import looked_at
    d = halves["base"]
    x, _ = load_images(spread(d.test, 4), tiny_clip)
    heat, marked, _ = looked_at(trained["zero-shot"], x, k=3)
    last = tiny_clip.info.vision_layers - 1
    assert np.allclose(heat, cls_attention(tiny_clip, x, [last])[0].numpy())
    assert [len(m) for m in marked] == [3] * 4


def test_top_classes_orders_and_colours(why):
    b = 0
    half = why.halves[b]
    names = why.classnames[half]
    fig = top_classes({m: why.logits[m][b] for m in why.methods}, names, true=why.labels[b])
    assert len(fig.data) == len(why.methods)
    for trace, m in zip(fig.data, why.methods, strict=True):
        z = why.logits[m][b]
        assert list(trace.x) == sorted(z, reverse=True)[:len(trace.x)]
        top = names[int(np.argmax(z))]
        colours = list(trace.marker.color)
        if top == why.labels[b]:
            assert colours[0] == RIGHT
        else:
            assert colours[0] == WRONG
            assert colours.count(RIGHT) == (why.labels[b].replace("_", " ") in list(trace.y))
    heads = [a.text for a in fig.layout.annotations]
    assert all(("✓" in h) != ("✗" in h) for h in heads)
    with pytest.raises(ValueError, match="logits for"):
        top_classes({"x": [1.0, 2.0]}, names)


def test_looked_at_figure_outlines_each_methods_marks(why):
    b = 4
    fig = looked_at_figure(why.images[b], {m: why.heat[m][b] for m in why.methods},
                           {m: why.marked[m][b] for m in why.methods}, why.looked)
    n_marks = sum(len(why.marked[m][b]) for m in why.methods)
    assert len(fig.layout.shapes) == 2 * n_marks                   # dark under light
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == len(why.methods)
    assert all(np.isclose(np.max(t.z), 1.0) for t in heat)        # each scaled to its max


def test_why_explorer_redraws_only_what_a_control_reads(why):
    ex = why_explorer(why)
    assert set(ex.views) == {"scores", "looked", "confusion_base", "confusion_novel"}
    before = {k: f.to_json() for k, f in ex.figures.items()}
    ex.controls["image"].value = 4
    after = {k: f.to_json() for k, f in ex.figures.items()}
    assert {k for k in before if before[k] != after[k]} == {"scores", "looked"}
    assert "novel" in ex.figures["scores"].layout.title.text
    ex.controls["method"].value = "SEP"
    again = {k: f.to_json() for k, f in ex.figures.items()}
    assert {k for k in after if after[k] != again[k]} == {"confusion_base", "confusion_novel"}
    assert ex.figures["confusion_novel"].layout.title.text.startswith("SEP · novel:")
    html = ex.to_html(include_plotlyjs=False)
    assert 'data-control="method"' in html and 'data-control="image"' in html


def test_explorer_says_it_is_drawing_while_it_renders(why):
    ex = why_explorer(why)
    seen = []
    ex.busy.observe(lambda change: seen.append(change["new"]), names="value")
    ex.controls["image"].value = 2
    assert seen == [BUSY, ""]
    assert ex.busy.value == ""
    assert ex.busy in ex.children[0].children                     # shown beside the controls


def test_saved_predictions_are_used_instead_of_predicting_again(trained, halves, why):
    d = halves["novel"]
    n = len(d.classnames)
    own, labels = predict(trained["CoOp"], d.test, list(d.classnames), d.template, 5)
    fake = (own + 1) % n                                   # never what CoOp predicts
    again = explain(trained, halves, per_half=1, batch_size=5,
                    predictions={"CoOp": {"novel": (fake, labels)}})
    cm = again.confusion["CoOp"]["novel"]
    assert np.array_equal(cm, confusion_matrix(fake, labels, n))
    assert not np.array_equal(cm, confusion_matrix(own, labels, n))
    for m in ("zero-shot", "SEP"):                                      # predicted as before
        assert np.array_equal(again.confusion[m]["novel"], why.confusion[m]["novel"])
    assert np.array_equal(again.confusion["CoOp"]["base"], why.confusion["CoOp"]["base"])
