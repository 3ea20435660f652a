"""Interventions replace one part of a trained method and put it back afterwards."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from promptviz.analysis.interventions import (
    available,
    initial_context,
    intervene,
    intervention_table,
    read_statistics,
    selection_control,
)
from promptviz.errors import PromptvizError
from promptviz.methods import build_method
from promptviz.train.evaluate import evaluate

NAMES = ["red banded", "green banded", "blue banded"]


@pytest.fixture()
def refiner(tiny_clip):
    torch.manual_seed(0)
    m = build_method("textrefiner", tiny_clip, NAMES, "a photo of a {}.")
    with torch.no_grad():
        m.W.weight.normal_(0, 0.5)                 # a refiner that does something
        m.base.prompt.ctx.add_(0.3 * torch.randn_like(m.base.prompt.ctx))   # "trained"
    return m.eval()


def test_alpha_zero_is_the_wrapped_method(refiner):
    before = refiner.text_features()
    with intervene(refiner, "alpha=0"):
        assert torch.allclose(refiner.text_features(), refiner.base_text())
        assert not torch.allclose(refiner.text_features(), before)
    assert torch.equal(refiner.text_features(), before)            # restored


def test_reads_replaced(refiner):
    t = refiner.base_text()
    zero = t + refiner.options.alpha * refiner.W(torch.cat([t, torch.zeros_like(t)], -1))
    with intervene(refiner, "read=zero"):
        assert torch.allclose(refiner.text_features(), zero, atol=1e-6)
    assert read_statistics(refiner)["read_cosine"] < 0.999999
    with intervene(refiner, "read=class_mean"):
        r = refiner.read(t)
        assert torch.allclose(r, r[:1].expand_as(r))
        assert read_statistics(refiner)["read_cosine"] == pytest.approx(1.0)
    assert "read" not in vars(refiner)                            # the method's own again


def test_cache_shuffled_keeps_each_dimension_and_is_restored(refiner):
    cache = refiner.cache.clone()
    with intervene(refiner, "cache=shuffled", seed=3):
        assert not torch.equal(refiner.cache, cache)
        assert torch.equal(refiner.cache.sort(0).values, cache.sort(0).values)
    assert torch.equal(refiner.cache, cache)


def test_context_initial(refiner, tiny_clip):
    start = initial_context(refiner)
    fresh = build_method("textrefiner", tiny_clip, NAMES, "a photo of a {}.")
    assert torch.equal(start, fresh.base.prompt.ctx)              # ctx_init's embedding
    trained = refiner.base.prompt.ctx.clone()
    with intervene(refiner, "context=initial"):
        assert torch.equal(refiner.base.prompt.ctx, start)
    assert torch.equal(refiner.base.prompt.ctx, trained)


def test_read_statistics_bounds(refiner):
    s = read_statistics(refiner)
    assert 0 < s["entropy"] <= s["max_entropy"] == pytest.approx(math.log(25))
    with torch.no_grad():
        refiner.cache.copy_(refiner.cache[:1].expand_as(refiner.cache))   # all slots alike
    s = read_statistics(refiner)
    assert s["entropy"] == pytest.approx(s["max_entropy"], abs=1e-5)
    assert s["read_cosine"] == pytest.approx(1.0)


def test_table_and_unknown_names(refiner, tiny_root):
    from promptviz.data import load_dataset
    ds = load_dataset("dtd", tiny_root)
    refiner.set_classnames(ds.classnames, ds.template)
    rows = intervention_table(refiner, ds.test, ds.classnames, ds.template)
    assert [r["intervention"] for r in rows] == ["none", *available(refiner)]
    by = {r["intervention"]: r for r in rows}
    assert by["alpha=0"]["acc"] == evaluate(refiner.base, ds.test, ds.classnames, ds.template,
                                            progress=False)
    assert all(r["delta"] == pytest.approx(r["acc"] - by["none"]["acc"]) for r in rows)
    with pytest.raises(PromptvizError, match="no intervention 'read=zero' for coop"):
        with intervene(refiner.base, "read=zero"):
            pass
    with pytest.raises(PromptvizError, match="has no cache"):
        read_statistics(refiner.base)


def test_table_encodes_a_frozen_image_side_once(refiner, tiny_root, monkeypatch):
    """TextRefiner's interventions all act on the text: its table sends each test image
    through the image tower once, and every accuracy equals a full evaluation's."""
    from promptviz.data import load_dataset
    ds = load_dataset("dtd", tiny_root)
    refiner.set_classnames(ds.classnames, ds.template)
    expected = {}
    for name in ("none", "read=zero", "alpha=0", "context=initial"):
        with intervene(refiner, name) if name != "none" else torch.no_grad():
            expected[name] = evaluate(refiner, ds.test, ds.classnames, ds.template,
                                      progress=False)
    calls = []
    encode = refiner.backbone.encode_image
    monkeypatch.setattr(refiner.backbone, "encode_image",
                        lambda x, *a, **k: calls.append(len(x)) or encode(x, *a, **k))
    rows = intervention_table(refiner, ds.test, ds.classnames, ds.template, batch_size=2,
                              names=["read=zero", "alpha=0", "context=initial"])
    assert sum(calls) == len(ds.test)                       # one pass over the test images
    assert {r["intervention"]: r["acc"] for r in rows} == expected


@pytest.mark.parametrize("name", ["zeroshot", "cocoop"])
def test_table_untouched_row_is_the_evaluation(name, tiny_clip, tiny_root):
    """The features encoded once serve methods without interventions too, CoCoOp's
    image-conditioned text included: the untouched row is what evaluate() gives, and (for
    zero-shot) each image is scored with its own features (labels = its own predictions)."""
    from promptviz.data import load_dataset
    ds = load_dataset("dtd", tiny_root)
    torch.manual_seed(0)
    m = build_method(name, tiny_clip, ds.classnames, ds.template).eval()
    if name == "cocoop":
        with torch.no_grad():
            for p in m.trainable_parameters():
                p.add_(0.3 * torch.randn_like(p))           # a meta-net that does something
    rows = intervention_table(m, ds.test, ds.classnames, ds.template, batch_size=3)
    assert rows == [{"intervention": "none", "delta": 0.0,
                     "acc": evaluate(m, ds.test, ds.classnames, ds.template, progress=False)}]
    if name == "cocoop":
        return                          # the tiny model's CoCoOp picks one class for every image
    from promptviz.data import load_images
    images = load_images(ds.test, tiny_clip.image_size, tiny_clip.mean, tiny_clip.std)
    with torch.no_grad():
        own = torch.cat([m(images[i:i + 3]) for i in range(0, len(images), 3)]).argmax(-1)
    assert len(set(own.tolist())) > 1                       # the check below can fail
    (row,) = intervention_table(m, images, ds.classnames, ds.template, batch_size=3, labels=own)
    assert row["acc"] == 100.0


# -- SEP -------------------------------------------------------------------------------
SEP_NAMES = ["red star", "blue circle", "green heart", "yellow square"]


@pytest.fixture()
def sep(tiny_clip):
    torch.manual_seed(0)
    m = build_method("sep", tiny_clip, SEP_NAMES, "a photo of a {}.", {"mode": "per_sample"})
    with torch.no_grad():                       # gates away from 0.75: the TFMs do something
        for name, p in m.named_parameters():
            if name.endswith((".s1", ".s2")):
                p.fill_(0.3)
    return m.eval()


def _images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rule", ["random", "cls_attention", "lowest"])
def test_selection_rules_change_what_is_selected(sep, rule):
    from promptviz.backbone import Backbone
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 17 + 4, sep.backbone.vision_width, generator=g)
    energy = sep.token_scores(1, x, 17)
    with intervene(sep, f"selection={rule}", seed=5):
        scores = sep.token_scores(1, x, 17)
        record = sep.selection_record(_images())["vision"]
    expected = {"lowest": -energy,
                "cls_attention": Backbone._attention_weights(
                    sep.backbone.model.visual.transformer.resblocks[1], x)[:, 0, :17]}
    if rule in expected:
        assert torch.allclose(scores, expected[rule])
    else:
        assert ((0 <= scores) & (scores < 1)).all()
    top = scores.topk(4).indices.sort().values
    assert not torch.equal(top, energy.topk(4).indices.sort().values)
    plain = sep.selection_record(_images())["vision"]
    assert (record[1]["selected"] != plain[1]["selected"]).any()
    assert torch.equal(sep.token_scores(1, x, 17), energy)          # restored
    assert "token_scores" not in vars(sep)


def test_random_selection_follows_its_seed(sep):
    with intervene(sep, "selection=random", seed=1):
        a = sep.selection_record(_images())["vision"][1]["selected"]
    with intervene(sep, "selection=random", seed=1):
        b = sep.selection_record(_images())["vision"][1]["selected"]
    with intervene(sep, "selection=random", seed=2):
        c = sep.selection_record(_images())["vision"][1]["selected"]
    assert (a == b).all() and (a != c).any()


def test_tfm_raw_is_sep_without_the_rebuild(sep):
    images = _images()
    with torch.no_grad():
        raw_text = F.normalize(sep.backbone.encode_text_embeddings(sep.prompt(), sep.prompt.ids)
                               .float(), dim=-1)
        raw_image = F.normalize(sep.backbone.encode_image(images, extra_tokens=sep.visual_prompt)
                                .float(), dim=-1)
        t, f = sep.text_features(), sep.fused_image_features(images)[0]
        with intervene(sep, "tfm=raw"):
            assert torch.allclose(sep.text_features(), F.normalize(raw_text + sep.t0, dim=-1),
                                  atol=1e-6)
            f0 = sep.image_features(images).float()
            assert torch.allclose(sep.fused_image_features(images)[0],
                                  F.normalize(raw_image + f0, dim=-1), atol=1e-6)
        with intervene(sep, "tfm=raw_text"):
            assert not torch.allclose(sep.text_features(), t)
            assert torch.equal(sep.fused_image_features(images)[0], f)
        with intervene(sep, "tfm=raw_vision"):
            assert torch.equal(sep.text_features(), t)
            assert not torch.allclose(sep.fused_image_features(images)[0], f)
        assert torch.equal(sep.text_features(), t)                  # restored
        assert "fuse" not in vars(sep)


def test_ensemble_off(sep):
    images = _images()
    with torch.no_grad():
        t = sep.text_features()
        with intervene(sep, "ensemble=off"):
            assert torch.allclose(sep.text_features(),
                                  F.normalize(sep.encode_text().float(), dim=-1))
            assert torch.allclose(sep.fused_image_features(images)[0], F.normalize(
                sep.encode_image_prompted(images).float(), dim=-1))
        assert sep.options.ensemble and torch.equal(sep.text_features(), t)


def test_sep_table_moves(sep, tiny_root):
    from promptviz.data import load_dataset
    ds = load_dataset("dtd", tiny_root)
    sep.set_classnames(ds.classnames, ds.template)
    rows = intervention_table(sep, ds.test, ds.classnames, ds.template)
    assert [r["intervention"] for r in rows] == ["none", *available(sep)]
    assert rows[0]["acc"] == evaluate(sep, ds.test, ds.classnames, ds.template, progress=False)
    with pytest.raises(PromptvizError, match="without its labels"):
        intervention_table(sep, torch.zeros(2, 3, 32, 32), ds.classnames, ds.template)


def test_selection_control_counts_what_the_blank_shares(sep):
    images = _images(5)
    rows = selection_control(sep, images)
    rec = sep.selection_record(images)["vision"]
    blank = sep.selection_record(torch.zeros_like(images[:1]))["vision"]
    assert [r["layer"] for r in rows] == list(sep.vis_layers)
    for r in rows:
        sel, ref = rec[r["layer"]]["selected"], set(blank[r["layer"]]["selected"].ravel().tolist())
        assert r["blank"] == sorted(ref)
        shared = sum(len(ref & set(s.tolist())) for s in sel)
        assert r["overlap"] == pytest.approx(shared / sel.size)
        assert r["chance"] == pytest.approx(4 / 17)
        assert r["top_share"] < 1.0                  # random-ish weights, random images
    # a selection that ignores the image: every image picks the blank's tokens
    with intervene(sep, "selection=random", seed=0):
        def fixed(layer: int, x: torch.Tensor, n: int) -> torch.Tensor:
            return torch.arange(n, dtype=torch.float32).expand(x.shape[0], n)
        sep.token_scores = fixed
        rows = selection_control(sep, images, object_patches=torch.zeros(5, 16, dtype=torch.bool))
    assert all(r["overlap"] == 1.0 and r["top_share"] == 1.0 and r["blank"] == [13, 14, 15, 16]
               and r["on_object"] == 0.0 for r in rows)
    with pytest.raises(PromptvizError, match="not textrefiner"):
        selection_control(build_method("textrefiner", sep.backbone, SEP_NAMES, "{}"), images)


def test_interventions_nest_and_are_undone_after_an_error(sep):
    images = _images()
    with torch.no_grad():
        t, f = sep.text_features(), sep.fused_image_features(images)[0]
        with intervene(sep, "tfm=raw_vision"):
            vision_only = sep.fused_image_features(images)[0]
            with intervene(sep, "tfm=raw_text"):
                assert not torch.allclose(sep.text_features(), t)
            assert torch.equal(sep.text_features(), t)               # inner undone ...
            assert torch.equal(sep.fused_image_features(images)[0], vision_only)  # outer kept
        with pytest.raises(RuntimeError, match="inside"):
            with intervene(sep, "selection=lowest"), intervene(sep, "ensemble=off"):
                raise RuntimeError("inside")
        assert torch.equal(sep.fused_image_features(images)[0], f)
        assert sep.options.ensemble and "token_scores" not in vars(sep)
        assert "fuse" not in vars(sep)


def test_selection_control_with_one_choice_per_batch(tiny_clip):
    torch.manual_seed(0)
    m = build_method("sep", tiny_clip, SEP_NAMES, "a photo of a {}.").eval()   # faithful
    images = _images(5)
    rows = selection_control(m, images, object_patches=torch.ones(5, 16, dtype=torch.bool))
    rec = m.selection_record(images)["vision"]
    for r in rows:
        chosen = set(rec[r["layer"]]["selected"].tolist())
        assert r["overlap"] == pytest.approx(len(chosen & set(r["blank"])) / 4)
        assert r["top_share"] == 1.0 and r["top_token"] in chosen     # by construction
        assert r["on_object"] == (0.0 if chosen == {0} else 1.0)      # CLS is not a patch


def test_table_refuses_nan_scores_and_mismatched_labels(sep):
    images = _images(4)
    with pytest.raises(PromptvizError, match="4 images and 3 labels"):
        intervention_table(sep, images, SEP_NAMES, "{}", labels=torch.arange(3))
    with torch.no_grad():
        sep.visual_prompt.fill_(float("nan"))
    with pytest.raises(PromptvizError, match="NaN or infinite"):
        intervention_table(sep, images, SEP_NAMES, "{}", labels=torch.arange(4), names=[])
