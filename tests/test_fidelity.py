"""The training defaults are the authors' (facts read from their configs and scripts), and the
mixed-precision path that runs on a GPU also runs, and is exercised, on the CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import promptviz.train.loop as train_mod
from promptviz.backbone import load_clip
from promptviz.errors import PromptvizError
from promptviz.methods import METHODS, build_method
from promptviz.methods.sep import SEP, SEP_TEMPLATES
from promptviz.train.loop import TrainConfig, run

NAMES = ["red banded", "green banded", "blue banded"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("pv-tiny")


def _images(clip, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, clip.image_size, clip.image_size, generator=g)


# ------------------------------------------------------------------ defaults by method
def test_per_method_defaults_are_the_authors():
    d = {name: cls.defaults for name, cls in METHODS.items()}
    assert d["textrefiner"].select == "best_val"                   # TEST.FINAL_MODEL best_val
    assert {d[m].select for m in ("coop", "cocoop", "kgcoop", "sep")} == {"last"}
    assert (d["kgcoop"].epochs, d["kgcoop"].batch_size, d["kgcoop"].lr) == (100, 128, 0.002)
    assert (d["cocoop"].epochs, d["cocoop"].batch_size) == (10, 1)
    assert (d["sep"].optimizer, d["sep"].lr, d["sep"].adam_eps, d["sep"].eval_batch_size) == \
        ("adam", 0.0025, 1e-3, 500)
    assert d["coop"].eval_batch_size == 128
    # CLIP-Adapter: its authors ship no schedule (CoOp's here); the module is their code's
    ad = d["clip_adapter"]
    assert (ad.epochs, ad.lr, ad.optimizer, ad.batch_size, ad.select) == \
        (10, 0.002, "sgd", 32, "last")
    o = METHODS["clip_adapter"].Options()
    assert (o.reduction, o.ratio, o.final_relu) == (4, 0.2, True)
    assert METHODS["clip_adapter"].image_input.key() == {"features": "f_raw"}  # un-normalised


@pytest.mark.parametrize("dataset, protocol, want", [
    ("imagenet", "base2new", (10, 128)), ("sun397", "base2new", (10, 128)),
    ("imagenet", "fewshot", (3, 32)), ("dtd", "base2new", (50, 32)),
    (None, "base2new", (50, 32))])
def test_sep_per_dataset_schedules(dataset, protocol, want):
    cfg = TrainConfig(method="sep", protocol=protocol).resolved(dataset)
    assert (cfg.epochs, cfg.batch_size) == want
    # what the user sets wins over the per-dataset default
    assert TrainConfig(method="sep", protocol=protocol, epochs=7).resolved(dataset).epochs == 7


def test_zero_and_other_settings_are_not_replaced_by_defaults():
    """``--epochs 0`` means no training; an explicit value is never swapped for a default."""
    cfg = TrainConfig(method="coop", epochs=0, lr=0.5, batch_size=3).resolved()
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (0, 0.5, 3)


@pytest.mark.parametrize("field, value, words", [
    ("precision", "fp8", "--precision fp8"), ("lr", 0.0, "--lr 0.0"),
    ("lr", float("nan"), "--lr nan"), ("batch_size", 0, "--batch-size 0"),
    ("epochs", -2, "--epochs -2"), ("select", "best", "--select best"),
    ("eval_batch_size", -1, "--eval-batch-size -1")])
def test_bad_settings_are_refused_before_anything_runs(tiny_root, tmp_path, field, value, words):
    out = tmp_path / "o"
    cfg = TrainConfig(method="coop", backbone="pv-tiny", dataset="dtd",
                      data_root=str(tiny_root), out=str(out), progress=False, **{field: value})
    with pytest.raises(PromptvizError, match=words.replace("+", r"\+")):
        run(cfg)
    assert not out.exists()


# ------------------------------------------------------------------------------- SEP
def test_sep_uses_its_own_templates_for_t0(tiny_root, tmp_path):
    assert SEP_TEMPLATES == {
        "fgvc_aircraft": "a photo of an aircraft {}.",
        "dtd": "a photo of a {}, a type of texture.",
        "stanford_cars": "a photo of a {}, a type of car.",
        "food-101": "a photo of a {}, a type of food."}
    assert SEP.dataset_options("imagenet") == {}
    out = tmp_path / "sep"                  # the tiny dataset is a DTD: SEP's t0 template
    run(TrainConfig(method="sep", backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
                    shots=2, epochs=0, out=str(out), progress=False))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["options"]["template"] == "a photo of a {}, a type of texture."
    assert meta["template"] == "{} texture."          # the dataset's own is kept for the rest
    # and the user's choice wins
    run(TrainConfig(method="sep", backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
                    shots=2, epochs=0, out=str(tmp_path / "sep2"), progress=False,
                    options={"template": "{} pattern."}))
    assert json.loads((tmp_path / "sep2" / "meta.json").read_text())["options"]["template"] \
        == "{} pattern."


def test_sep_fusion_modules_start_identical_across_layers():
    torch.manual_seed(0)
    sep = build_method("sep", load_clip("toyclip"), NAMES, "{} texture.")   # 3 and 2 layers
    for tfms in (sep.text_tfm, sep.vis_tfm):
        states = [m.state_dict() for m in tfms.values()]
        assert len(states) > 1
        for s in states[1:]:
            assert all(torch.equal(s[k], states[0][k]) for k in s)
        first = next(iter(tfms.values()))
        assert first.attn.in_proj_weight.data_ptr() != \
            list(tfms.values())[1].attn.in_proj_weight.data_ptr()      # copies, not shared


def test_sep_prototypes_are_unit_class_means(clip):
    sep = build_method("sep", clip, NAMES, "{} texture.")
    images, labels = _images(clip, 6), torch.tensor([0, 0, 1, 1, 2, 2])
    sep.init_prototypes([(images, labels)])
    assert torch.allclose(sep.W_fc.norm(dim=-1), torch.ones(3), atol=1e-5)
    f = clip.encode_image(images, normalize=True).float()
    mean0 = F.normalize(f[:2].mean(0), dim=-1)
    assert torch.allclose(sep.W_fc[0], mean0, atol=1e-5)


def test_sep_prototype_check_leaves_the_step_once_ready(clip, monkeypatch):
    sep = build_method("sep", clip, NAMES, "{} texture.")
    calls = {"n": 0}
    original = SEP._lazy_prototypes

    def counted(self, *a):
        calls["n"] += 1
        return original(self, *a)

    monkeypatch.setattr(SEP, "_lazy_prototypes", counted)
    sep.loss(_images(clip, 3), torch.tensor([0, 1, 1]))        # class 2 not seen yet
    sep.loss(_images(clip, 3, 1), torch.tensor([2, 0, 1]))     # now every class has one
    sep.loss(_images(clip, 3, 2), torch.tensor([2, 0, 1]))
    assert calls["n"] == 2 and sep._prototypes_ready
    assert torch.allclose(sep.W_fc.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("opts, attention, selection, mode", [
    ({}, "batch", "batch", "faithful"),
    ({"mode": "per_sample"}, "sample", "image", "per_sample"),
    ({"attention": "sample"}, "sample", "batch", "mixed"),
    ({"selection": "image"}, "batch", "image", "mixed"),
    ({"mode": "per_sample", "selection": "batch"}, "sample", "batch", "mixed")])
def test_sep_code_vs_paper_switches_alone(clip, opts, attention, selection, mode):
    sep = build_method("sep", clip, NAMES, "{} texture.", opts)
    assert (sep.options.attention, sep.options.selection, sep.options.mode) == \
        (attention, selection, mode)
    tfm = next(iter(sep.vis_tfm.values()))
    assert tfm.batch_attention == (attention == "batch")
    rec = sep.selection_record(_images(clip, 3))
    layer = min(rec["vision"])
    k = sep.options.n_visual
    assert rec["vision"][layer]["selected"].shape == ((k,) if selection == "batch" else (3, k))
    assert rec["vision"][layer]["attention"].shape == \
        ((k, 3, 3) if attention == "batch" else (3, k, k))
    # a saved options dict rebuilds the same method
    again = build_method("sep", clip, NAMES, "{} texture.",
                         {f: getattr(sep.options, f) for f in ("mode", "attention", "selection")})
    assert (again.options.attention, again.options.selection) == (attention, selection)


def test_sep_mode_errors_are_clear(clip):
    with pytest.raises(PromptvizError, match="attention=batch"):
        build_method("sep", clip, NAMES, "{} texture.", {"mode": "paper"})
    with pytest.raises(PromptvizError, match="use batch or image"):
        build_method("sep", clip, NAMES, "{} texture.", {"selection": "token"})


# ----------------------------------------------------------------------- TextRefiner
def test_textrefiner_cache_follows_the_runs_seed(clip):
    def cache(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return build_method("textrefiner", clip, NAMES, "{} texture.").cache.clone()

    assert torch.equal(cache(1), cache(1)) and not torch.equal(cache(1), cache(2))
    assert (cache(3) > 0).all()                              # norm(U[0,1)): all positive


def test_best_val_keeps_the_best_epochs_state(tiny_root, tmp_path, monkeypatch):
    """Scripted validation scores 50, 90, 70: the checkpoint holds the state after epoch 2,
    and the results say so."""
    scores, states = iter([50.0, 90.0, 70.0]), []

    def scripted(method, *args, **kw):
        states.append({k: v.clone() for k, v in method.trainable_state().items()})
        return next(scores)

    monkeypatch.setattr(train_mod, "evaluate", scripted)
    monkeypatch.setattr(train_mod, "protocol_predictions",
                        lambda *a: {"acc": (np.zeros(1, np.int64), np.zeros(1, np.int64))})
    out = tmp_path / "tr"
    res = run(TrainConfig(method="textrefiner", backbone="pv-tiny", dataset="dtd",
                          data_root=str(tiny_root), protocol="fewshot", shots=4, epochs=3,
                          batch_size=8, out=str(out), progress=False))
    assert res["select"] == "best_val" and res["selected_epoch"] == 2
    assert [h["val_acc"] for h in res["history"]] == [50.0, 90.0, 70.0]
    from safetensors.torch import load_file
    saved = load_file(out / "model.safetensors")
    assert all(torch.equal(saved[k], states[1][k].cpu()) for k in saved)
    assert not all(torch.equal(saved[k], states[2][k].cpu()) for k in saved)


def test_last_is_kept_when_asked_and_best_val_needs_a_val_split(tiny_root, tmp_path):
    res = run(TrainConfig(method="textrefiner", backbone="pv-tiny", dataset="dtd",
                          data_root=str(tiny_root), protocol="fewshot", shots=4, epochs=2,
                          batch_size=8, select="last", out=str(tmp_path / "a"), progress=False))
    assert res["selected_epoch"] == 2 and "val_acc" not in res["history"][0]


# --------------------------------------------------------- mixed precision on the CPU
@pytest.mark.parametrize("method", ["coop", "textrefiner", "sep", "cocoop", "maple", "vpt",
                                    "promptsrc", "promptkd"])
def test_bf16_autocast_trains_and_evaluates(tiny_root, tmp_path, method):
    """The GPU's default path (bf16 autocast over fp32 weights) on the CPU: training from
    cached features and from pixels, evaluation, and finite fp32 weights at the end."""
    res = run(TrainConfig(method=method, backbone="pv-tiny", dataset="dtd",
                          data_root=str(tiny_root), shots=2, epochs=1, batch_size=3,
                          precision="bf16", out=str(tmp_path / method), progress=False))
    assert np.isfinite(res["history"][0]["loss"]) and 0 <= res["base_acc"] <= 100
    from safetensors.torch import load_file
    state = load_file(tmp_path / method / "model.safetensors")
    floats = [v for v in state.values() if v.is_floating_point()]
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)


def test_fp16_uses_a_gradient_scaler(tiny_root, tmp_path, monkeypatch):
    seen = []
    original = torch.amp.GradScaler.scale

    def spy(self, loss):
        seen.append(self.is_enabled())
        return original(self, loss)

    monkeypatch.setattr(torch.amp.GradScaler, "scale", spy)
    run(TrainConfig(method="coop", backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
                    shots=2, epochs=1, batch_size=3, precision="fp16",
                    out=str(tmp_path / "fp16"), progress=False))
    assert seen and all(seen)


def test_views_take_features_made_under_bf16_autocast(clip):
    """Every view input a notebook computes from a method, computed under bf16 autocast (as
    on a GPU), goes through the views: bf16 tensors must not reach numpy."""
    from promptviz.analysis.probe import cls_attention
    from promptviz.arrays import to_uint8_image
    from promptviz.viz.embeddings import project_2d
    from promptviz.viz.sep import record_scalars, selection_map, tfm_attention
    from promptviz.viz.textrefiner import (
        cache_gallery,
        read_weights_heatmap,
        topk_patches_figure,
    )
    images = _images(clip, 3)
    torch.manual_seed(0)
    sep = build_method("sep", clip, NAMES, "{} texture.")
    tr = build_method("textrefiner", clip, NAMES, "{} texture.")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec = sep.selection_record(images)
        local = tr.local_tokens(images)
        reads = tr.read_weights()
        attn = cls_attention(clip, images)
        text = {"sep": sep.text_features(), "textrefiner": tr.text_features()}
    pics = np.stack([to_uint8_image(x.permute(1, 2, 0).numpy()) for x in images])
    layer = min(rec["vision"])
    selection_map(pics[0], {layer: rec["vision"][layer]["selected"]}, rec["grid"],
                  {layer: rec["vision"][layer]["scores"][0]})
    tfm_attention(rec["vision"][layer]["attention"])
    assert all(np.isfinite(v).all() for v in record_scalars(rec).values())
    read_weights_heatmap(reads, NAMES)
    cache_gallery(pics, local["slot"], reads, NAMES)
    topk_patches_figure(pics[0], local["cls_attention"][0], local["topk"][0])
    topk_patches_figure(pics[0], attn[-1, 0], local["topk"][0])
    project_2d(text)
