"""IVLP, VPT-deep and MaPLe: deep prompts in one or both towers (methods/ivlp.py, vpt.py,
maple.py), checked against a second implementation written here from the papers' equations
(open_clip's blocks called one by one, prompts swapped in by hand)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from promptviz.backbone import Backbone
from promptviz.checkpoint import load_checkpoint, save_checkpoint
from promptviz.errors import PromptvizError
from promptviz.methods import build_method
from promptviz.methods.base import trainable_parameter_counts, zero_shot_text_features
from promptviz.methods.ivlp import deep_prompt_hook
from promptviz.train.loop import TrainConfig, run

NAMES = ["red banded", "green banded", "blue banded"]
TEMPLATE = "a photo of a {}."
DEEP = ["ivlp", "vpt", "maple"]


def _images(clip: Backbone, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, clip.image_size, clip.image_size, generator=g)


def _perturb(method: torch.nn.Module, scale: float = 0.5) -> None:
    """Move every trainable tensor away from its initialisation."""
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(torch.randn_like(p) * scale)


# ------------------------------------------------------- a second implementation, by hand
def _image_by_hand(clip: Backbone, images: torch.Tensor, shallow: torch.Tensor,
                   deep: list[torch.Tensor]) -> torch.Tensor:
    """Image feature with visual prompts: appended before ln_pre, replaced before blocks
    1..len(deep) (open_clip's blocks, called here one by one)."""
    v = clip.model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], 1) + v.positional_embedding
    n = shallow.shape[0]
    x = v.ln_pre(torch.cat([x, shallow.expand(x.shape[0], -1, -1)], 1))
    for layer, block in enumerate(v.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:, :-n], deep[layer - 1].expand(x.shape[0], -1, -1)], 1)
        x = block(x)
    return v.ln_post(x[:, 0]) @ v.proj


def _text_by_hand(clip: Backbone, shallow: torch.Tensor, deep: list[torch.Tensor],
                  init: str = "a photo of a") -> torch.Tensor:
    """Text features of "{init} {name}." with its first n token embeddings replaced by
    ``shallow`` and the n states at positions 1..n replaced before blocks 1..len(deep)."""
    m, n = clip.model, shallow.shape[0]
    ids = clip.tokenize([f"{init} {c}." for c in NAMES])
    x = m.token_embedding(ids)
    x = torch.cat([x[:, :1], shallow.expand(len(NAMES), -1, -1), x[:, 1 + n:]], 1)
    x = x + m.positional_embedding
    for layer, block in enumerate(m.transformer.resblocks):
        if 1 <= layer <= len(deep):
            x = torch.cat([x[:, :1], deep[layer - 1].expand(len(NAMES), -1, -1), x[:, 1 + n:]], 1)
        x = block(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    return x[torch.arange(len(NAMES)), ids.argmax(-1)] @ m.text_projection


def test_hook_replaces_exactly_the_prompt_states():
    deep = [torch.full((2, 5), 7.0)]
    txt, vis = deep_prompt_hook(deep, "txt", 2), deep_prompt_hook(deep, "vis", 2)
    x = torch.arange(3 * 6 * 5, dtype=torch.float).reshape(3, 6, 5)
    assert torch.equal(txt(0, x), x) and torch.equal(txt(2, x), x)     # only blocks 1..len
    t, v = txt(1, x), vis(1, x)
    assert (t[:, 1:3] == 7).all() and torch.equal(t[:, [0, 3, 4, 5]], x[:, [0, 3, 4, 5]])
    assert (v[:, 4:] == 7).all() and torch.equal(v[:, :4], x[:, :4])


@pytest.mark.parametrize("name", DEEP)
def test_features_equal_the_equations_by_hand(tiny_clip, name):
    """Both towers' features equal the by-hand forward with the method's own prompts (MaPLe's
    visual prompts computed here as ``W_l P_l + b_l`` from the text prompts, Eq. 5)."""
    m = build_method(name, tiny_clip, NAMES, TEMPLATE, {} if name == "vpt" else
                     {"depth": 2} if name == "maple" else {"depth_text": 2, "depth_vision": 3})
    _perturb(m)
    images = _images(tiny_clip)
    if name == "maple":
        p = [m.prompt.ctx, *m.text_deep]
        lin = [m.proj, *m.couplings]
        vis = [p_l @ f.weight.t() + f.bias for p_l, f in zip(p, lin)]   # P̃_l = W_l P_l + b_l
        shallow, deep = vis[0], vis[1:]
        assert len(m.text_deep) == 1 and len(m.couplings) == 1
    else:
        shallow, deep = m.visual_prompt, list(m.vision_deep)
        assert len(deep) == tiny_clip.info.vision_layers - 1          # depth: every block
    with torch.no_grad():
        want = _image_by_hand(tiny_clip, images, shallow, deep)
        assert torch.allclose(m.encode_image_prompted(images), want, atol=1e-5)
        if name == "vpt":     # no text prompts: the frozen "a photo of a {}." features
            assert torch.allclose(m.text_features(), zero_shot_text_features(
                tiny_clip, NAMES, "a photo of a {}."), atol=1e-6)
        else:
            want = _text_by_hand(tiny_clip, m.prompt.ctx, list(m.text_deep))
            assert torch.allclose(m.encode_text(), want, atol=1e-5)
            # the text prompts' other tokens are still the init phrase's rest: "of a"
            assert m.prompt.ctx.shape[0] == 2 and m.prompt.placeholder == "a photo of a"


def test_shallow_text_only_ivlp_starts_as_zero_shot(tiny_clip):
    """IVLP's text prompt starts as the words it replaces ("a photo" of "a photo of a"): with
    prompts in block 0 only and none in the image tower, untrained IVLP is zero-shot CLIP."""
    m = build_method("ivlp", tiny_clip, NAMES, TEMPLATE, {"depth_text": 1, "n_ctx_vision": 0})
    zs = build_method("zeroshot", tiny_clip, NAMES, TEMPLATE)
    images = _images(tiny_clip)
    with torch.no_grad():
        assert torch.allclose(m(images), zs(images), atol=1e-4)
        _perturb(m, 0.05)
        assert not torch.allclose(m(images), zs(images), atol=1e-4)   # and the prompt counts


def test_maple_couples_the_towers_ivlp_does_not(tiny_clip):
    """Intervention: a loss on the image features alone reaches MaPLe's text prompts (through
    the coupling functions) and none of IVLP's."""
    images = _images(tiny_clip)
    for name, reaches in (("maple", True), ("ivlp", False)):
        m = build_method(name, tiny_clip, NAMES, TEMPLATE, {"depth": 2} if name == "maple"
                         else {"depth_text": 2})
        m.encode_image_prompted(images).pow(2).sum().backward()
        text_grads = [p.grad for p in (m.prompt.ctx, *m.text_deep)]
        assert all((g is not None and g.abs().sum() > 0) for g in text_grads) == reaches, name
        assert reaches or all(g is None for g in text_grads)


def test_maple_couplings_start_as_copies_and_visual_prompts_follow_text(tiny_clip):
    m = build_method("maple", tiny_clip, NAMES, TEMPLATE, {"depth": 2, "ctx_init": ""})
    assert torch.equal(m.couplings[0].weight, m.proj.weight) is False     # F_0: its own draw
    with pytest.raises(PromptvizError, match="depth=3"):      # pv-tiny's text tower: 2 blocks
        build_method("maple", tiny_clip, NAMES, TEMPLATE, {"depth": 3})
    rows = m.coupled_prompts()
    assert [tuple(r["text"].shape) for r in rows] == [(2, 64)] * 2
    assert [tuple(r["vision"].shape) for r in rows] == [(2, 128)] * 2


def test_depths_from_the_command_line_are_numbers(tiny_clip):
    """``--set depth=2`` arrives as a string (the default None says no type)."""
    assert build_method("maple", tiny_clip, NAMES, TEMPLATE, {"depth": "2"}).depth_text == 2
    m = build_method("ivlp", tiny_clip, NAMES, TEMPLATE, {"depth_text": "1",
                                                           "depth_vision": "none"})
    assert (m.depth_text, m.depth_vision) == (1, 3)
    with pytest.raises(PromptvizError, match="depth='two' is not a whole number"):
        build_method("maple", tiny_clip, NAMES, TEMPLATE, {"depth": "two"})


def test_bad_options_name_the_option(tiny_clip):
    for name, opts, words in [("ivlp", {"n_ctx_text": 0, "n_ctx_vision": 0}, "n_ctx_text=0"),
                              ("ivlp", {"depth_vision": 9}, "depth_vision=9"),
                              ("maple", {"n_ctx": 0}, "n_ctx=0"),
                              ("vpt", {"depth_vision": 0}, "depth_vision=0")]:
        with pytest.raises(PromptvizError, match=words):
            build_method(name, tiny_clip, NAMES, TEMPLATE, opts)


@pytest.mark.parametrize("name", DEEP)
def test_checkpoint_round_trip_identical_logits(tmp_path, tiny_clip, name):
    m = build_method(name, tiny_clip, NAMES, TEMPLATE)
    _perturb(m, 0.1)
    save_checkpoint(tmp_path, m.trainable_state(), {"method": name})
    state, _ = load_checkpoint(tmp_path)
    fresh = build_method(name, tiny_clip, NAMES, TEMPLATE)
    images = _images(tiny_clip)
    with torch.no_grad():
        assert not torch.equal(fresh(images), m(images))
        fresh.load_trainable_state(state)
        assert torch.equal(fresh(images), m(images))


# ------------------------------------------------------------ counts for ViT-B/16
@pytest.fixture(scope="module")
def vit_b16() -> Backbone:
    """ViT-B/16's shapes with random weights (no download): 12 + 12 blocks, widths 512/768."""
    torch.manual_seed(0)
    return Backbone(open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16")), "ViT-B-16")


def test_trainable_parameters_equal_the_formula_for_vit_b16(vit_b16):
    """n tokens × width per prompted block, plus MaPLe's coupling maps (D_t·D_v + D_v each).
    The MaPLe paper reports 3.55 M trainable parameters for its ViT-B/16 setting."""
    dt, dv = 512, 768
    counts = {n: sum(trainable_parameter_counts(build_method(n, vit_b16, NAMES, TEMPLATE))
                     .values()) for n in DEEP}
    assert counts["ivlp"] == 12 * 2 * dt + 12 * 2 * dv == 30_720      # 2+2 tokens, J = 12
    assert counts["vpt"] == 12 * 8 * dv == 73_728                       # 8 tokens, J = 12
    assert counts["maple"] == 9 * 2 * dt + 9 * (dt * dv + dv) == 3_555_072  # n = 2, J = 9
    m = build_method("maple", vit_b16, NAMES, TEMPLATE)
    assert (m.depth_text, len(m.couplings)) == (9, 8)


# ------------------------------------------------------------------- the CLI trains them
@pytest.mark.parametrize("name", DEEP)
def test_train_end_to_end(tiny_root, tmp_path, name):
    res = run(TrainConfig(method=name, backbone="pv-tiny", dataset="dtd",
                          data_root=str(tiny_root), shots=2, epochs=1, out=str(tmp_path / name),
                          progress=False))
    assert 0 <= res["hm"] <= 100 and len(res["history"]) == 1
    meta = json.loads((tmp_path / name / "meta.json").read_text())
    assert meta["method"] == name and res["trainable_params"] > 0
    assert res["epochs"] == 1 and meta["config"]["batch_size"] == 4    # the authors' batch


def test_maple_cross_dataset_source_defaults():
    cfg = TrainConfig(method="maple", protocol="fewshot").resolved("imagenet")
    assert (cfg.epochs, cfg.lr) == (2, 0.0026)
    from promptviz.methods import MaPLe
    assert MaPLe.dataset_options("imagenet", "fewshot") == {"depth": 3}
    assert MaPLe.dataset_options("imagenet", "base2new") == {}


def test_defaults_are_the_authors():
    """MaPLe repository @ 69bce21: the IVLP, VPT and MaPLe base-to-novel configs."""
    from promptviz.methods import METHODS
    d = {n: METHODS[n].defaults for n in DEEP}
    assert {(x.epochs, x.batch_size, x.optimizer, x.select) for x in d.values()} == \
        {(5, 4, "sgd", "last")}
    assert (d["ivlp"].lr, d["vpt"].lr, d["maple"].lr) == (0.0035, 0.0025, 0.0035)
    o = {n: METHODS[n].Options() for n in DEEP}
    assert (o["ivlp"].n_ctx_text, o["ivlp"].n_ctx_vision, o["ivlp"].ctx_init) == \
        (2, 2, "a photo of a")
    assert (o["vpt"].n_ctx_text, o["vpt"].n_ctx_vision, o["vpt"].template) == \
        (0, 8, "a photo of a {}.")
    assert (o["maple"].n_ctx, o["maple"].ctx_init, o["maple"].depth) == (2, "a photo of a", None)


# ------------------------------------------------------------------- interventions
def test_interventions_on_deep_prompts(tiny_clip):
    from promptviz.analysis.interventions import available, intervene
    images = _images(tiny_clip)
    m = build_method("ivlp", tiny_clip, NAMES, TEMPLATE)
    _perturb(m, 0.3)
    assert available(m) == ("text_prompts=initial", "vision_prompts=off",
                            "vision_prompts=random", "deep=off")
    assert available(build_method("vpt", tiny_clip, NAMES, TEMPLATE)) == \
        ("vision_prompts=off", "vision_prompts=random", "deep=off")
    with torch.no_grad():
        trained = m(images)
        with intervene(m, "vision_prompts=off"):       # the image side is frozen CLIP's
            f = F.normalize(tiny_clip.encode_image(images), dim=-1)
            assert torch.allclose(m(images), tiny_clip.logit_scale * f @ m.text_features().t(),
                                  atol=1e-4)
        with intervene(m, "deep=off"):                 # = block 0's prompts only, both towers
            want = _image_by_hand(tiny_clip, images, m.visual_prompt, [])
            assert torch.allclose(m.encode_image_prompted(images), want, atol=1e-5)
            want = _text_by_hand(tiny_clip, m.prompt.ctx, [])
            assert torch.allclose(m.encode_text(), want, atol=1e-5)
        with intervene(m, "vision_prompts=random", seed=3):
            shallow, deep = m.vision_prompts()
            assert torch.allclose(shallow.norm(dim=-1), m.visual_prompt.norm(dim=-1))
            assert not torch.allclose(shallow, m.visual_prompt)
            first = m(images)
        with intervene(m, "vision_prompts=random", seed=3):
            assert torch.equal(m(images), first)       # the seed decides the draw
        torch.manual_seed(0)
        fresh = build_method("ivlp", tiny_clip, NAMES, TEMPLATE)   # the seed-0 start
        with intervene(m, "text_prompts=initial", seed=0):
            assert torch.equal(m.prompt.ctx, fresh.prompt.ctx)
            assert all(torch.equal(a, b) for a, b in zip(m.text_deep, fresh.text_deep))
        assert torch.equal(m(images), trained)         # every intervention undone


def test_maple_text_reset_moves_the_image_side_ivlp_does_not(tiny_clip):
    """The coupling seen through an intervention: resetting MaPLe's text prompts changes its
    image features; IVLP's image features do not depend on its text prompts."""
    from promptviz.analysis.interventions import intervene
    images = _images(tiny_clip)
    for name, moves in (("maple", True), ("ivlp", False)):
        m = build_method(name, tiny_clip, NAMES, TEMPLATE)
        _perturb(m, 0.3)
        with torch.no_grad():
            before = m.encode_image_prompted(images)
            with intervene(m, "text_prompts=initial"):
                after = m.encode_image_prompted(images)
        assert (not torch.allclose(before, after, atol=1e-5)) is moves, name


def test_prompt_shift_is_per_block_and_per_tower(tiny_clip):
    from promptviz.analysis.interventions import prompt_shift
    a = build_method("maple", tiny_clip, NAMES, TEMPLATE)
    b = build_method("maple", tiny_clip, NAMES, TEMPLATE)
    b.load_trainable_state(a.trainable_state())
    assert prompt_shift(a, b) == {"text": [0.0, 0.0], "vision": [0.0, 0.0]}
    with torch.no_grad():
        a.text_deep[0].mul_(3.0)                # block 1's text prompt, and through F_1 its
    shift = prompt_shift(a, b)                  # visual prompt; block 0 untouched
    assert shift["text"][0] == 0.0 and shift["text"][1] == pytest.approx(2.0, rel=1e-5)
    assert shift["vision"][0] == 0.0 and shift["vision"][1] > 0
    v = build_method("vpt", tiny_clip, NAMES, TEMPLATE)
    assert set(prompt_shift(v, v)) == {"vision"}
