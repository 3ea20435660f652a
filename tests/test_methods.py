"""The four base methods behind one interface."""

from __future__ import annotations

import pytest
import torch

from promptviz.checkpoint import load_checkpoint, save_checkpoint
from promptviz.errors import PromptvizError
from promptviz.methods import build_method, nearest_words
from promptviz.methods.base import zero_shot_text_features


def _loss(m, images, labels):
    """One training loss from pixels: ``loss(inputs(images, train=True), labels)``."""
    return m.loss(m.inputs(images, train=True), labels)

NAMES = ["red star", "blue circle", "green heart", "big_yellow_square"]
TEMPLATE = "a photo of a {}."


def _batch(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3])[:n]


def test_coop_with_template_init_equals_zero_shot(tiny_clip):
    coop = build_method("coop", tiny_clip, NAMES, TEMPLATE)
    zs = build_method("zeroshot", tiny_clip, NAMES, TEMPLATE)
    # "a photo of a" as initial context reproduces "a photo of a {class}." exactly
    assert torch.allclose(coop.text_features(), zs.text_features(), atol=1e-6)
    assert coop.prompt.n_ctx == 4


@pytest.mark.parametrize("method", ["zeroshot", "coop", "kgcoop", "cocoop"])
def test_shapes_and_gradients_reach_only_trainable(tiny_clip, method):
    m = build_method(method, tiny_clip, NAMES, TEMPLATE)
    images, labels = _batch()
    loss, logits, terms = _loss(m, images, labels)
    assert logits.shape == (4, len(NAMES)) and loss.ndim == 0 and "ce" in terms
    if method == "zeroshot":
        assert m.trainable_parameters() == []
        return
    loss.backward()
    assert all(p.grad is None for p in tiny_clip.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trainable_parameters())


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_class_token_positions(tiny_clip, position):
    m = build_method("coop", tiny_clip, NAMES, TEMPLATE,
                     {"ctx_init": "", "n_ctx": "4", "class_token_position": position})
    emb = m.prompt()
    assert emb.shape == (len(NAMES), 32, tiny_clip.text_width)
    # the class-name tokens sit where the position says
    name_ids = tiny_clip.tokenize([NAMES[0]])[0, 1:1 + m.prompt.name_lens[0]]
    name_emb = tiny_clip.model.token_embedding(name_ids)
    start = {"end": 1 + 4, "front": 1, "middle": 1 + 2}[position]
    assert torch.equal(emb[0, start:start + len(name_ids)], name_emb)


def test_class_specific_context(tiny_clip):
    m = build_method("coop", tiny_clip, NAMES, TEMPLATE, {"class_specific": "true"})
    assert m.prompt.ctx.shape == (len(NAMES), 4, tiny_clip.text_width)
    with pytest.raises(PromptvizError, match="class-specific"):
        m.set_classnames(["a", "b"])


def test_set_classnames_changes_candidates(tiny_clip):
    m = build_method("kgcoop", tiny_clip, NAMES, TEMPLATE)
    m.set_classnames(["cat", "dog"], TEMPLATE)
    assert m.text_features().shape == (2, tiny_clip.embed_dim)
    assert torch.allclose(m.t0, zero_shot_text_features(tiny_clip, ["cat", "dog"], TEMPLATE))


def test_kgcoop_term_zero_at_template_init(tiny_clip):
    m = build_method("kgcoop", tiny_clip, NAMES, TEMPLATE)
    _, _, terms = _loss(m, *_batch())
    assert abs(float(terms["kg"])) < 1e-6
    with torch.no_grad():
        m.prompt.ctx.add_(torch.randn_like(m.prompt.ctx))
    _, _, terms = _loss(m, *_batch())
    assert float(terms["kg"]) > 1e-3


def test_cocoop_text_depends_on_image(tiny_clip):
    m = build_method("cocoop", tiny_clip, NAMES, TEMPLATE, {"images_per_chunk": "2"})
    assert m.text_features() is None and m.text_depends_on_image
    images, _ = _batch(3)
    with torch.no_grad():
        m.meta_net[-1].weight.normal_(0, 0.5)
        full = m(images)
        one = m(images[1:2])
    assert torch.allclose(full[1:2], one, atol=1e-5)     # per-image, batch-independent
    assert full.shape == (3, len(NAMES))


@pytest.mark.parametrize("extra", [{}, {"ctx_init": ""}])
def test_cocoop_refuses_class_specific_context(tiny_clip, extra):
    from promptviz.methods.cocoop import CoCoOp, CoCoOpOptions
    words = r"cocoop does not support class_specific=true.*shared across classes.*--method coop"
    with pytest.raises(PromptvizError, match=words):
        build_method("cocoop", tiny_clip, NAMES, TEMPLATE, {"class_specific": "true", **extra})
    with pytest.raises(PromptvizError, match=words):
        CoCoOp(tiny_clip, NAMES, TEMPLATE, CoCoOpOptions(class_specific=True, **extra))
    assert build_method("cocoop", tiny_clip, NAMES, TEMPLATE,
                        {"class_specific": "false", **extra}).prompt.ctx.dim() == 2


def test_cocoop_class_specific_refused_before_training(tiny_root, tmp_path):
    from promptviz.train.loop import TrainConfig, run
    out = tmp_path / "cocoop-csc"       # few-shot: base2new's own CSC check cannot catch it
    cfg = TrainConfig(method="cocoop", backbone="pv-tiny", dataset="dtd",
                      data_root=str(tiny_root), protocol="fewshot", shots=2, seed=1,
                      epochs=1, batch_size=6, out=str(out), progress=False,
                      feature_cache=False, options={"class_specific": "true"})
    with pytest.raises(PromptvizError, match="cocoop does not support class_specific=true"):
        run(cfg)
    assert not out.exists() or not any(out.iterdir())


def test_bad_options(tiny_clip):
    with pytest.raises(PromptvizError, match="unknown option"):
        build_method("coop", tiny_clip, NAMES, TEMPLATE, {"nctx": "4"})
    with pytest.raises(PromptvizError, match="not a valid int"):
        build_method("coop", tiny_clip, NAMES, TEMPLATE, {"n_ctx": "four"})
    with pytest.raises(PromptvizError, match="unknown method"):
        build_method("coop2", tiny_clip, NAMES, TEMPLATE)


@pytest.mark.parametrize("method", ["coop", "kgcoop", "cocoop"])
def test_checkpoint_round_trip_identical_logits(tmp_path, tiny_clip, method):
    m = build_method(method, tiny_clip, NAMES, TEMPLATE)
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    images, _ = _batch()
    save_checkpoint(tmp_path, m.trainable_state(), {"method": method})
    state, meta = load_checkpoint(tmp_path)
    fresh = build_method(method, tiny_clip, NAMES, TEMPLATE)
    fresh.load_trainable_state(state)
    with torch.no_grad():
        assert torch.equal(fresh(images), m(images))


def test_checkpoint_of_other_shape_is_refused(tmp_path, tiny_clip):
    m = build_method("coop", tiny_clip, NAMES, TEMPLATE, {"ctx_init": "", "n_ctx": "8"})
    fresh = build_method("coop", tiny_clip, NAMES, TEMPLATE)
    with pytest.raises(PromptvizError, match="shape"):
        fresh.load_trainable_state(m.trainable_state())


def test_nearest_words_of_init_phrase(tiny_clip):
    m = build_method("coop", tiny_clip, NAMES, TEMPLATE)
    words = [row[0][0] for row in nearest_words(m.prompt.ctx, tiny_clip)]
    assert words == ["a", "photo", "of", "a"]
