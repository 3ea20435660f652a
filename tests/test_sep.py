"""SEP: prompts rebuilt before every selected block from the block's own tokens."""

from __future__ import annotations

import json

import pytest
import torch

from promptviz.backbone import ActivationCache
from promptviz.checkpoint import load_checkpoint, save_checkpoint
from promptviz.errors import PromptvizError
from promptviz.methods import build_method
from promptviz.methods.base import parse_options, zero_shot_text_features
from promptviz.methods.sep import SEPOptions, TokenFusion

NAMES = ["red star", "blue circle", "green heart", "big_yellow_square"]
TEMPLATE = "a photo of a {}."


def _batch(n: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % len(NAMES)


def _sep(tiny_clip, **options):
    torch.manual_seed(0)
    return build_method("sep", tiny_clip, NAMES, TEMPLATE, {k: str(v) for k, v in options.items()})


def _set_gates(m, value: float) -> None:
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".s1") or name.endswith(".s2"):
                p.fill_(value)


@pytest.mark.parametrize("layers,text,vis", [("none", (1,), (1, 2)), ("1", (1,), (1,))])
def test_shapes_for_layer_sets(tiny_clip, layers, text, vis):
    m = _sep(tiny_clip, layers=layers)
    assert m.text_layers == text and m.vis_layers == vis       # tiny: 2 text / 3 visual blocks
    assert sorted(m.text_tfm) == [str(v) for v in text]
    images, labels = _batch()
    loss, logits, terms = m.loss(images, labels)
    assert logits.shape == (4, len(NAMES)) and loss.ndim == 0
    assert set(terms) == {"ce", "kg", "vis", "proto"}
    assert m.text_features().shape == (len(NAMES), tiny_clip.embed_dim)


@pytest.mark.parametrize("bad", [{"layers": "1,2"}, {"layers": "0"}, {"layers": "x"},
                                 {"mode": "sideways"}, {"n_text": "20"}, {"towers": "none"},
                                 {"score": "loudest"}])
def test_invalid_options_raise(tiny_clip, bad):
    with pytest.raises(PromptvizError):
        _sep(tiny_clip, **bad)


def test_layers_option_parsing():
    assert parse_options(SEPOptions, {"layers": "4,8"}).layers == (4, 8)
    assert parse_options(SEPOptions, {"layers": [3, 6, 9]}).layers == (3, 6, 9)   # meta.json
    assert parse_options(SEPOptions, {"layers": "none"}).layers is None


def test_gradients_reach_only_trainable(tiny_clip):
    m = _sep(tiny_clip)
    loss, _, _ = m.loss(*_batch())
    loss.backward()
    assert all(p.grad is None for p in tiny_clip.parameters())
    named = dict(m.named_parameters())
    for key in ("prompt.ctx", "visual_prompt", "W_fc", "text_tfm.1.s1", "vis_tfm.2.s2",
                "vis_tfm.1.attn.in_proj_weight", "text_tfm.1.mlp.c_fc.weight"):
        assert key in named
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("batch_attention", [True, False])
def test_fusion_with_unit_gates_returns_selected_tokens(batch_attention):
    tfm = TokenFusion(64, hidden=32, s_init=1.0, batch_attention=batch_attention)
    p, t = torch.randn(5, 3, 64), torch.randn(5, 3, 64)
    z, w = tfm(p, t, need_weights=True)
    assert torch.equal(z, t)
    assert w.shape == ((3, 5, 5) if batch_attention else (5, 3, 3))


@pytest.mark.parametrize("mode", ["faithful", "per_sample"])
def test_hook_with_unit_gates_copies_selected_tokens(tiny_clip, mode):
    m = _sep(tiny_clip, mode=mode)
    _set_gates(m, 1.0)
    images, _ = _batch()
    record, text_record, cache = {}, {}, ActivationCache()
    with torch.no_grad():
        m.encode_image_prompted(images, record=record, cache=cache)
        m.encode_text(record=text_record, cache=cache)
    k = m.options.n_visual
    for layer in m.vis_layers:
        x = cache["vis_resid", layer]                            # after the rebuild
        idx = torch.as_tensor(record[layer]["selected"])
        sel = x[:, idx] if idx.dim() == 1 else x.gather(1, idx[..., None].expand(-1, -1,
                                                                                   x.shape[-1]))
        assert idx.shape == ((k,) if mode == "faithful" else (4, k))
        assert (idx < x.shape[1] - k).all()                      # prompt positions never chosen
        assert torch.equal(x[:, -k:], sel)
    kt = m.options.n_text
    x = cache["txt_resid", 1]
    assert torch.equal(x[:, 1:1 + kt], x[:, 1 + kt:1 + 2 * kt])
    assert list(text_record[1]["selected"]) == list(range(1 + kt, 1 + 2 * kt))


def test_per_sample_is_batch_independent(tiny_clip):
    m = _sep(tiny_clip, mode="per_sample")
    images, _ = _batch(5)
    with torch.no_grad():
        text = m.text_features()
        together = m.logits(images, text)
        alone = torch.cat([m.logits(images[i:i + 1], text) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_faithful_depends_on_batch_company(tiny_clip):
    """The authors' code: the visual TFM attends across the batch (documented behaviour)."""
    m = _sep(tiny_clip)
    images, _ = _batch(5)
    with torch.no_grad():
        text = m.text_features()
        together = m.logits(images, text)
        alone = m.logits(images[:1], text)
        other = m.logits(torch.cat([images[:1], _batch(3, seed=7)[0]]), text)
    assert not torch.allclose(together[:1], alone, atol=1e-4)
    assert not torch.allclose(together[:1], other[:1], atol=1e-4)


def test_text_once_equals_per_call(tiny_clip):
    m = _sep(tiny_clip)
    images, _ = _batch()
    with torch.no_grad():
        assert torch.equal(m.logits(images, m.text_features()), m.logits(images))


def test_prototypes_lazy_init_and_explicit(tiny_clip):
    m = _sep(tiny_clip)
    images, labels = _batch()
    m.loss(images, labels)                                       # lazy: first batch per class
    f0 = m.image_features(images)
    assert torch.allclose(m.W_fc, f0, atol=1e-6) and (m.proto_count == 1).all()
    feats = torch.randn(8, tiny_clip.embed_dim)
    m.init_prototypes((feats, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])))
    norm = torch.nn.functional.normalize(feats, dim=-1)
    unit_mean = torch.nn.functional.normalize(norm[2:4].mean(0), dim=-1)   # unit rows
    assert torch.allclose(m.W_fc[1], unit_mean, atol=1e-6) and (m.proto_count == 2).all()


def test_set_classnames_keeps_prototypes(tiny_clip):
    m = _sep(tiny_clip)
    m.loss(*_batch())
    w = m.W_fc.detach().clone()
    m.set_classnames(["cat", "dog"], TEMPLATE)
    assert torch.equal(m.W_fc, w)
    assert m.text_features().shape == (2, tiny_clip.embed_dim)
    assert torch.allclose(m.t0, zero_shot_text_features(tiny_clip, ["cat", "dog"], TEMPLATE))
    with pytest.raises(PromptvizError, match="prototype"):
        m.loss(*_batch(2))


def test_selection_record(tiny_clip):
    m = _sep(tiny_clip)
    rec = m.selection_record(_batch()[0])
    assert sorted(rec["vision"]) == [1, 2] and sorted(rec["text"]) == [1]
    v = rec["vision"][1]
    assert v["selected"].shape == (4,) and v["attention"].shape == (4, 4, 4)
    assert v["scores"].shape == (4, 17) and v["s1"] == pytest.approx(0.75)
    assert rec["text"][1]["attention"].shape == (6, len(NAMES), len(NAMES))


def test_checkpoint_round_trip(tiny_clip, tmp_path):
    m = _sep(tiny_clip)
    m.loss(*_batch())
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(tmp_path, m.trainable_state(), {"method": "sep"})
    state, _ = load_checkpoint(tmp_path)
    assert "W_fc" in state and "proto_count" in state
    fresh = build_method("sep", tiny_clip, NAMES, TEMPLATE)
    fresh.load_trainable_state(state)
    images, _ = _batch()
    with torch.no_grad():
        assert torch.allclose(m.logits(images), fresh.logits(images), atol=1e-6)
    assert torch.equal(fresh.proto_count, m.proto_count)


@pytest.mark.parametrize("extra", [[], ["--set", "mode=per_sample", "--set", "layers=1"]])
def test_cli_train(tiny_root, tmp_path, extra):
    from promptviz.cli import main
    out = tmp_path / "run"
    rc = main(["train", "--method", "sep", "--backbone", "pv-tiny", "--dataset", "dtd",
               "--data-root", str(tiny_root), "--out", str(out), "--epochs", "2",
               "--shots", "4", "--quiet", *extra])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "sep" and {"base_acc", "new_acc", "hm"} <= set(res)
    assert {"ce", "kg", "vis", "proto"} <= set(res["history"][-1])


@pytest.mark.parametrize("towers,text,vis,replaced", [("text", (1,), (), "tfm=raw_vision"),
                                                     ("vision", (), (1, 2), "tfm=raw_text")])
def test_one_tower_sep_is_both_with_the_other_rebuild_removed(tiny_clip, towers, text, vis,
                                                               replaced):
    from promptviz.analysis.interventions import intervene
    one, both = _sep(tiny_clip, towers=towers), _sep(tiny_clip)
    assert (one.text_layers, one.vis_layers) == (text, vis)
    assert len(one.text_tfm) == len(text) and len(one.vis_tfm) == len(vis)
    state = one.trainable_state()                  # the same draws, fewer TFMs
    assert all(torch.equal(v, both.trainable_state()[k]) for k, v in state.items())
    images, labels = _batch()
    with torch.no_grad(), intervene(both, replaced):
        assert torch.allclose(one.logits(images), both.logits(images), atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(one.logits(images), both.logits(images), atol=1e-4)
    assert one.loss(images, labels)[0].isfinite()
    assert sorted(one.selection_record(images)["vision"]) == list(vis)


def test_score_option_trains_with_the_rule_the_intervention_swaps_in(tiny_clip):
    from promptviz.analysis.interventions import intervene
    images, _ = _batch()
    energy, by_attention = _sep(tiny_clip), _sep(tiny_clip, score="cls_attention")
    with torch.no_grad(), intervene(energy, "selection=cls_attention"):
        assert torch.allclose(by_attention.logits(images), energy.logits(images), atol=1e-6)
    picks = {name: _sep(tiny_clip, mode="per_sample", score=name).selection_record(images)
             ["vision"][1]["selected"] for name in ("energy", "random")}
    assert picks["energy"].shape == picks["random"].shape == (4, 4)
    assert (picks["energy"] != picks["random"]).any()

