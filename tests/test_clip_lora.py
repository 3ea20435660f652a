"""CLIP-LoRA (Zanella & Ben Ayed): the LoRA equation on hand-built weights, zero-shot CLIP at
initialisation, a frozen and shared backbone, checkpoints, the trainable count of ViT-B/16,
the authors' defaults and the command line."""

from __future__ import annotations

import dataclasses
import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from promptviz.backbone import ActivationCache, Backbone
from promptviz.errors import PromptvizError
from promptviz.methods import METHODS, build_method
from promptviz.methods.base import parse_options
from promptviz.methods.clip_lora import CLIPLoRA, CLIPLoRAOptions, position_layers
from promptviz.train.loop import TrainConfig, budget_epochs, make_optimizer, run

NAMES = ["red banded", "green banded", "blue banded"]
TEMPLATE = "a photo of a {}."


def _images(clip, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, clip.image_size, clip.image_size, generator=g)


def _lora(clip, **options) -> CLIPLoRA:
    return build_method("clip_lora", clip, NAMES, TEMPLATE, options)


def _fill(method: CLIPLoRA, seed: int = 0, scale: float = 0.05) -> None:
    """Non-zero B (and A) everywhere, as after some training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.lora.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))


# ----------------------------------------------------------------------- defaults
def test_the_authors_defaults():
    """run_utils.py / lora.py / loralib of MaxZanella/CLIP-LoRA @ 358f0d7."""
    o, d = CLIPLoRAOptions(), CLIPLoRA.defaults
    assert (o.r, o.alpha, o.dropout, o.params, o.encoder, o.position) == \
        (2, 1.0, 0.25, "q,k,v", "both", "all")
    assert o.template == "a photo of a {}."            # every dataset, ImageNet included
    assert o.gamma == pytest.approx(1 / math.sqrt(2))  # their α/√r, not LoRA's α/r
    assert dataclasses.replace(o, scaling="linear").gamma == pytest.approx(0.5)
    assert (d.optimizer, d.lr, d.batch_size, d.weight_decay, d.warmup_epochs,
            d.iterations_per_shot, d.select) == ("adamw", 2e-4, 32, 1e-2, 0, 500, "last")
    assert METHODS["clip_lora"] is CLIPLoRA


def test_positions_are_the_authors_lists_at_12_blocks():
    theirs = {"bottom": [0, 1, 2, 3], "mid": [4, 5, 6, 7], "up": [8, 9, 10, 11],
              "half-up": [6, 7, 8, 9, 10, 11], "half-bottom": [0, 1, 2, 3, 4, 5],
              "top3": [9, 10, 11], "all": list(range(12))}
    assert {k: list(position_layers(k, 12)) for k in theirs} == theirs
    assert list(position_layers("half-up", 24)) == list(range(12, 24))   # their ViT-L/14


def test_the_step_budget_becomes_whole_epochs():
    """500 × K optimiser steps: DTD at 16 shots (47 classes, 752 images, 23 full batches of
    32) trains ceil(8000 / 23) = 348 epochs; --epochs wins; other methods keep theirs."""
    cfg = TrainConfig(method="clip_lora", shots=16, protocol="fewshot")
    got = budget_epochs(cfg.resolved("dtd"), cfg, 47 * 16, "dtd")
    assert got.epochs == 348
    assert got.weight_decay == 1e-2 and got.warmup_epochs == 0 and got.optimizer == "adamw"
    mine = TrainConfig(method="clip_lora", shots=16, epochs=3)
    assert budget_epochs(mine.resolved(), mine, 752).epochs == 3
    coop = TrainConfig(method="coop", shots=16)
    assert budget_epochs(coop.resolved(), coop, 752).epochs == 10
    assert (coop.resolved().weight_decay, coop.resolved().warmup_epochs) == (5e-4, 1)


def test_earlier_commands_keep_their_request_keys():
    """weight_decay and warmup_epochs were global settings (5e-4, 1) before they became the
    method's defaults: left unset they key a request as those values did, so the run folders
    of earlier commands still belong to the same command (checked against 1aae63c's code:
    the keys of earlier commands are unchanged)."""
    from promptviz.train.loop import request_key
    unset = TrainConfig(method="coop", dataset="dtd", shots=4)
    assert request_key(unset) == request_key(dataclasses.replace(unset, weight_decay=5e-4,
                                                                 warmup_epochs=1))
    assert request_key(unset) != request_key(dataclasses.replace(unset, weight_decay=1e-2))


def test_adamw_is_decoupled_weight_decay():
    cfg = TrainConfig(method="clip_lora").resolved()
    p = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer([p], cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["weight_decay"] == 1e-2 and opt.defaults["betas"] == (0.9, 0.999)


# ---------------------------------------------------------- the method's equations
def test_untrained_lora_is_zero_shot_clip(tiny_clip):
    """B = 0: ΔW = 0, so CLIP-LoRA starts at the pre-trained model (the paper's claim): its
    logits are zero-shot CLIP's with the same template, in both towers."""
    images = _images(tiny_clip)
    lora = _lora(tiny_clip, params="q,k,v,o").eval()
    zs = build_method("zeroshot", tiny_clip, NAMES, TEMPLATE).eval()
    assert all(not m.B.detach().any() for m in lora.lora.values())
    assert all(m.A.detach().all() for m in lora.lora.values())        # A drawn, not zero
    with torch.no_grad():
        assert torch.allclose(lora(images), zs(images), atol=1e-4, rtol=0)
        _fill(lora)                                       # and a trained one is not
        assert not torch.allclose(lora(images), zs(images), atol=1e-2)


def _attention_by_hand(block, x, q_add):
    """Block ``block``'s attention output on ``x`` ``[B, N, D]`` written out from its weights,
    with ``q_add(h)`` added to the query: softmax(q kᵀ/√d) v per head, then W_o."""
    attn = block.attn
    h = block.ln_1(x)
    d = h.shape[-1]
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = h @ w[:d].t() + b[:d] + q_add(h)              # h = W0 x + b + ΔW x
    k = h @ w[d:2 * d].t() + b[d:2 * d]
    v = h @ w[2 * d:].t() + b[2 * d:]
    heads = attn.num_heads
    split = lambda t: t.reshape(*t.shape[:2], heads, d // heads).transpose(1, 2)  # noqa: E731
    a = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads), -1)
    a = (a @ split(v)).transpose(1, 2).reshape(h.shape)
    return a @ attn.out_proj.weight.t() + attn.out_proj.bias


def test_the_lora_equation_on_hand_built_weights(tiny_clip):
    """With A, B set by hand on the query of image block 0, the block's attention output is
    the one of q = W_q x + b_q + γ·B A x computed independently: in eval mode with no dropout,
    in training mode with dropout on the LoRA branch's input only (the same mask, drawn from
    the same seed), and γ·B A merged into W_q gives the same (the authors' eval path)."""
    lora = _lora(tiny_clip, params="q", encoder="vision", dropout=0.5)
    width, gamma = tiny_clip.vision_width, lora.options.gamma
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(2, width, generator=g), torch.randn(width, 2, generator=g)
    with torch.no_grad():
        for m in lora.lora.values():
            m.B.zero_()
        lora.lora["vis_0_q"].A.copy_(A)
        lora.lora["vis_0_q"].B.copy_(B)
    block = tiny_clip.model.visual.transformer.resblocks[0]
    images = _images(tiny_clip, 2)
    points = ["vis.0.resid_pre", "vis.0.attn_out"]
    for training in (False, True):
        lora.train(training)
        cache = ActivationCache(points=points)
        torch.manual_seed(11)
        with torch.no_grad(), tiny_clip.hooks({}), tiny_clip.deltas(lora.deltas("vis")):
            tiny_clip.encode_image(images, cache=cache)
        x = cache["vis.0.resid_pre"]
        torch.manual_seed(11)                               # the same dropout mask
        def delta(h: torch.Tensor, training: bool = training) -> torch.Tensor:
            h = F.dropout(h, 0.5, training=True) if training else h   # the branch's input only
            return gamma * h @ A.t() @ B.t()                          # γ·B A x

        with torch.no_grad():
            want = _attention_by_hand(block, x, delta)
        assert torch.allclose(cache["vis.0.attn_out"], want, atol=1e-5, rtol=1e-5), training
    # eval: the same as merging ΔW = γ·B A into W_q (what the authors' eval mode does)
    assert torch.allclose(lora.lora["vis_0_q"].delta_weight(), gamma * B @ A)
    lora.eval()
    with torch.no_grad():
        merged = _attention_by_hand(block, x, lambda h: h @ (gamma * B @ A).t())
        cache = ActivationCache(points=points)
        with tiny_clip.deltas(lora.deltas("vis")):
            tiny_clip.encode_image(images, cache=cache)
    assert torch.allclose(cache["vis.0.attn_out"], merged, atol=1e-5, rtol=1e-5)


def test_dropout_acts_in_training_only(tiny_clip):
    lora = _lora(tiny_clip)
    _fill(lora, scale=0.2)
    images = _images(tiny_clip)
    with torch.no_grad():
        lora.eval()
        first, again = lora(images), lora(images)
        lora.train()
        torch.manual_seed(0)
        noisy = lora(images)
        torch.manual_seed(1)
        other = lora(images)
    assert torch.equal(first, again)
    assert not torch.allclose(noisy, first, atol=1e-4) and not torch.allclose(noisy, other,
                                                                              atol=1e-4)


# ------------------------------------------------------------- a frozen, shared backbone
def test_only_a_and_b_train_and_the_shared_backbone_stays_pre_trained(tiny_clip):
    """Gradients reach A and B only; one AdamW step changes neither the backbone's weights
    nor its modules; a zero-shot method on the same backbone object gives open_clip's
    features while CLIP-LoRA's graph is alive and after its step, also under bf16."""
    names = ["red banded", "green banded", "blue banded"]
    lora = _lora(tiny_clip)
    zs = build_method("zeroshot", tiny_clip, names, TEMPLATE)
    before = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    modules = [id(m) for m in tiny_clip.modules()]
    images, labels = _images(tiny_clip), torch.tensor([0, 1, 2, 0])
    fresh = lambda: zero_shot(tiny_clip, names)                            # noqa: E731
    opt = make_optimizer(lora.trainable_parameters(),
                         TrainConfig(method="clip_lora", lr=1e-2).resolved())
    for step in range(2):                      # step 0: grads reach B only (B = 0 ⇒ ∂A = 0)
        lora.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=step == 1):
            loss, logits, _ = lora.loss(images, labels)
        assert torch.allclose(zs.text_features(), fresh(), atol=1e-6)  # graph alive: still CLIP
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in tiny_clip.parameters())
    trained = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trained == {f"lora.{k}.{ab}" for k in lora.lora for ab in "AB"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.trainable_parameters())
    assert all(torch.equal(before[k], v) for k, v in tiny_clip.state_dict().items())
    assert [id(m) for m in tiny_clip.modules()] == modules and tiny_clip._deltas == {}
    with torch.no_grad():
        zs.eval()
        assert torch.equal(zs.text_features(), fresh())
        assert torch.equal(tiny_clip.encode_image(images), tiny_clip.model.encode_image(images))
        lora.eval()
        assert not torch.allclose(lora.text_features(), fresh(), atol=1e-4)  # LoRA moved


def zero_shot(clip, names: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(clip.model.encode_text(clip.tokenize(
            [TEMPLATE.format(n) for n in names])).float(), dim=-1)


def test_an_error_inside_leaves_no_delta_behind(tiny_clip):
    lora = _lora(tiny_clip)
    with pytest.raises(RuntimeError):
        lora(torch.rand(2, 3, 5, 5))                      # wrong image size: fails in the tower
    assert tiny_clip._deltas == {}


# -------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tiny_clip):
    lora = _lora(tiny_clip, encoder="both", params="q,v,o")
    _fill(lora)
    state = lora.trainable_state()
    assert set(state) == {f"lora.{k}.{ab}" for k in lora.lora for ab in "AB"}
    again = _lora(tiny_clip, encoder="both", params="q,v,o")
    again.load_trainable_state(state)
    images = _images(tiny_clip)
    with torch.no_grad():
        assert torch.equal(again.eval()(images), lora.eval()(images))
    with pytest.raises(PromptvizError, match="does not fit"):
        _lora(tiny_clip, params="q").load_trainable_state(state)


# ------------------------------------------------------------------ trainable count
def test_trainable_count_of_vit_b16():
    """r·(d_in + d_out) per adapted matrix, q, k, v of all 12 blocks of both towers:
    12 × 3 × 2·(512 + 512) (text) + 12 × 3 × 2·(768 + 768) (vision) = 73,728 + 110,592 =
    184,320 for r = 2 (shapes only: the towers are built on the meta device)."""
    with torch.device("meta"):
        model = open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16"))
        lora = CLIPLoRA(Backbone(model, "ViT-B-16"), NAMES, TEMPLATE, CLIPLoRAOptions())
    counts = {t: sum(p.numel() for k, p in lora.named_parameters()
                     if p.requires_grad and k.startswith(f"lora.{t}_")) for t in ("txt", "vis")}
    assert counts == {"txt": 12 * 3 * 2 * (512 + 512), "vis": 12 * 3 * 2 * (768 + 768)}
    assert sum(p.numel() for p in lora.trainable_parameters()) == 184_320
    assert lora.lora["vis_0_q"].A.shape == (2, 768) and lora.lora["txt_0_v"].B.shape == (512, 2)


# --------------------------------------------------------------------- options
@pytest.mark.parametrize("option, value", [
    ("r", "0"), ("encoder", "audio"), ("params", "q,x"), ("position", "middle"),
    ("scaling", "log"), ("dropout", "1.5"), ("alpha", "-1")])
def test_bad_options_name_the_option(option, value):
    with pytest.raises(PromptvizError, match=f"{option}="):
        parse_options(CLIPLoRAOptions, {option: value})


def test_a_position_with_no_block_in_a_shallow_tower_is_refused(tiny_clip):
    with pytest.raises(PromptvizError, match="position='bottom'"):   # text: 2 blocks
        _lora(tiny_clip, position="bottom")


@pytest.mark.parametrize("encoder, towers", [("text", {"txt"}), ("vision", {"vis"})])
def test_one_encoder_adapts_one_tower(tiny_clip, encoder, towers):
    lora = _lora(tiny_clip, encoder=encoder)
    assert {k.split("_")[0] for k in lora.lora} == towers
    _fill(lora)
    zs = build_method("zeroshot", tiny_clip, NAMES, TEMPLATE)
    images = _images(tiny_clip)
    with torch.no_grad():
        lora.eval()
        same_text = torch.allclose(lora.text_features(), zs.text_features(), atol=1e-6)
        same_image = torch.allclose(lora.image_features(images),
                                    tiny_clip.encode_image(images, normalize=True), atol=1e-6)
    assert (same_text, same_image) == ((False, True) if encoder == "text" else (True, False))


# ------------------------------------------------------------------ command line
def test_train_end_to_end(tiny_root, tmp_path, monkeypatch):
    cfg = dict(method="clip_lora", backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
               shots=2, progress=False)
    res = run(TrainConfig(out=str(tmp_path / "one"), epochs=1, **cfg))
    assert json.loads((tmp_path / "one" / "results.json").read_text())["epochs"] == 1
    assert 0 <= res["base_acc"] <= 100 and 0 <= res["new_acc"] <= 100
    assert res["trainable_params"] == 6144 and len(res["history"]) == 1
    assert math.isfinite(res["history"][0]["loss"])
    # without --epochs the step budget decides: 2 steps per shot × 2 shots, 3 base classes
    # × 2 shots = 6 images = one step per epoch -> 4 epochs
    small = dataclasses.replace(CLIPLoRA.defaults, iterations_per_shot=2)
    monkeypatch.setattr(CLIPLoRA, "defaults", small)
    res = run(TrainConfig(out=str(tmp_path / "budget"), **cfg))
    assert res["epochs"] == 4 and len(res["history"]) == 4


@pytest.mark.parametrize("option, value", [("r", "0"), ("encoder", "audio")])
def test_train_refuses_bad_options(tiny_root, tmp_path, option, value):
    out = tmp_path / "o"
    cfg = TrainConfig(method="clip_lora", backbone="pv-tiny", dataset="dtd", epochs=1, shots=2,
                      data_root=str(tiny_root), out=str(out), progress=False,
                      options={option: value})
    with pytest.raises(PromptvizError, match=f"{option}="):
        run(cfg)
    assert not out.exists()


# ------------------------------------------------------------ views and interventions
def test_lora_update_is_delta_over_pretrained_per_block(tiny_clip):
    from promptviz.analysis.interventions import lora_update
    m = _lora(tiny_clip)
    assert lora_update(m) == {"text": [0.0] * 2, "vision": [0.0] * 3}     # B = 0
    with torch.no_grad():
        lora = m.lora["vis_1_v"]
        lora.B.fill_(0.1)
    w0 = tiny_clip.model.visual.transformer.resblocks[1].attn.in_proj_weight.chunk(3)
    want = (lora.delta_weight().norm() / torch.cat(w0).norm()).item()   # q, k, v together
    got = lora_update(m)
    assert got["vision"][1] == pytest.approx(want, rel=1e-5)
    assert got["vision"][0] == got["vision"][2] == 0.0 and got["text"] == [0.0, 0.0]


def test_lora_tower_interventions(tiny_clip):
    from promptviz.analysis.interventions import available, intervene
    m = _lora(tiny_clip).eval()                  # eval: no dropout on the LoRA branch
    _fill(m)
    images = _images(tiny_clip)
    zs = build_method("zeroshot", tiny_clip, NAMES, TEMPLATE)
    assert available(m) == ("lora=text_off", "lora=vision_off")
    with torch.no_grad():
        adapted = m(images)
        with intervene(m, "lora=text_off"):
            assert torch.allclose(m.text_features(), zs.text_features(), atol=1e-5)
            assert not torch.allclose(m(images), adapted)
        with intervene(m, "lora=vision_off"):
            f = tiny_clip.encode_image(images, normalize=True)
            assert torch.allclose(m.image_features(images), f, atol=1e-5)
        assert torch.equal(m(images), adapted)
