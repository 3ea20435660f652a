"""PromptKD (methods/promptkd.py): the distillation loss and the student's logits on
hand-built inputs, what trains and what does not, the transductive training set, the teacher
stage of ``promptviz train``, checkpoints and the ViT-B/16 parameter count."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from promptviz.backbone import Backbone
from promptviz.errors import PromptvizError
from promptviz.methods import PromptKD, build_method
from promptviz.methods.base import trainable_parameter_counts
from promptviz.methods.promptkd import kd_loss
from promptviz.train.loop import TrainConfig, load_method, run, run_eval

NAMES = ["red banded", "green banded", "blue banded"]
TEMPLATE = "a photo of a {}."


def _images(clip, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, clip.image_size, clip.image_size, generator=g)


def _student(clip, **options) -> PromptKD:
    torch.manual_seed(0)
    return build_method("promptkd", clip, NAMES, TEMPLATE, {"teacher": "ivlp", **options})


# ------------------------------------------------------------------------- Eq. 3 and 4
@pytest.mark.parametrize("scale", ["elements", "batch"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_is_the_papers_kl_by_hand(scale, temperature):
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    pt = (zt / temperature).softmax(-1)
    ps = (zs / temperature).softmax(-1)
    kl = (pt * (pt.log() - ps.log())).sum()                 # Σ_b Σ_c p^T (log p^T − log p^S)
    want = kl * temperature ** 2 / (35 if scale == "elements" else 5)
    assert kd_loss(zs, zt, temperature, scale) == pytest.approx(float(want), rel=1e-5)
    assert kd_loss(zt, zt, temperature, scale) == pytest.approx(0.0, abs=1e-6)


def test_student_logits_by_hand(tiny_clip):
    """``z^S = s · norm(φ(f^S)) @ norm(t^T)ᵀ``: f^S is VPT-deep's prompted image feature (the
    same prompts in a ``vpt`` method give the same feature), t^T the teacher's text."""
    m = _student(tiny_clip)
    images = _images(tiny_clip)
    vpt = build_method("vpt", tiny_clip, NAMES, TEMPLATE,
                       {"n_ctx_vision": m.n_vision, "depth_vision": m.depth_vision})
    with torch.no_grad():
        vpt.visual_prompt.copy_(m.visual_prompt)
        for a, b in zip(vpt.vision_deep, m.vision_deep):
            a.copy_(b)
        m.eval()
        f = vpt.encode_image_prompted(images).float()
        t = F.normalize(m.teacher.text_features().float(), dim=-1)
        want = tiny_clip.logit_scale * F.normalize(m.proj(f), dim=-1) @ t.t()
        assert torch.allclose(m.logits(images), want, atol=1e-5)
        assert torch.allclose(m(images), want, atol=1e-5)
        assert torch.equal(m.text_features(), m.t_teacher)
        assert torch.allclose(m.t_teacher, t)
        # and the teacher's logits are its own, on its own text
        assert torch.allclose(m.teacher_logits(images), m.teacher(images), atol=1e-5)


def test_loss_never_reads_the_labels(tiny_clip):
    m = _student(tiny_clip)
    images = _images(tiny_clip)
    m.eval()        # BatchNorm on running statistics: two calls see the same model
    a, _, terms = m.loss(images, torch.tensor([0, 1, 2, 0]))
    b, _, _ = m.loss(images, torch.tensor([2, 2, 1, 1]))
    assert a == b and float(a.detach()) == pytest.approx(1000.0 * float(terms["kd"]))
    with torch.no_grad():
        want = kd_loss(m.logits(images), m.teacher_logits(images))
    assert float(terms["kd"]) == pytest.approx(float(want), rel=1e-4)


def test_only_the_student_trains(tiny_clip):
    m = _student(tiny_clip)
    m.train()
    assert not m.teacher.training                     # the teacher stays in eval mode
    before = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    loss, _, _ = m.loss(_images(tiny_clip), torch.zeros(4, dtype=torch.long))
    loss.backward()
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trained and all(n.split(".")[0] in {"visual_prompt", "vision_deep", "proj"}
                           for n in trained)
    assert all(p.grad is not None for n, p in m.named_parameters() if n in trained)
    assert all(p.grad is None for p in m.teacher.parameters())
    state = m.trainable_state()
    assert not any(k.startswith("teacher.") for k in state)
    assert "proj.1.running_mean" in state                        # BatchNorm's statistics
    after = m.teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a teacher with state of its own (TextRefiner's cache): still not the student's
    other = _student(tiny_clip, teacher="textrefiner")
    assert "cache" in other.teacher.trainable_state()
    assert not any("teacher" in k for k in other.trainable_state())


def test_class_switch_follows_the_teacher(tiny_clip):
    m = _student(tiny_clip)
    m.set_classnames(["yellow dotted", "red banded"], TEMPLATE)
    assert m.teacher.classnames == ["yellow dotted", "red banded"]
    assert m.t_teacher.shape[0] == 2
    with torch.no_grad():
        assert m.logits(_images(tiny_clip)).shape == (4, 2)


@pytest.mark.parametrize("option, value, words", [
    ("kl_scale", "mean", "kl_scale='mean'"), ("projector", "conv", "projector='conv'"),
    ("n_ctx_vision", "0", "n_ctx_vision=0"), ("temperature", "0", "temperature=0"),
    ("teacher", "promptkd", "cannot teach itself"), ("teacher", "cocoop", "image-dependent"),
    ("teacher", "nothing", "no trained run there")])
def test_bad_options_and_teachers(tiny_clip, tmp_path, option, value, words):
    value = str(tmp_path / value) if words.startswith("no trained") else value
    with pytest.raises(PromptvizError, match=words):
        _student(tiny_clip, **{option: value})


def test_teacher_must_read_the_same_pixels(tiny_clip):
    other = Backbone(open_clip.model.CLIP(
        embed_dim=32, vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 8,
                                  "image_size": tiny_clip.image_size * 2},
        text_cfg={"layers": 1, "width": 32, "heads": 2}), "bigger-images")
    teacher = build_method("zeroshot", other, NAMES, TEMPLATE)
    with pytest.raises(PromptvizError, match="preprocessing"):
        PromptKD(tiny_clip, NAMES, TEMPLATE, teacher=teacher)


def test_defaults_are_the_authors():
    cfg = TrainConfig(method="promptkd").resolved("dtd")
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.optimizer) == (20, 0.005, 8, "sgd")
    assert PromptKD.dataset_options("dtd") == {"kd_weight": 200.0}
    assert PromptKD.dataset_options("imagenet") == {}
    o = PromptKD.Options()
    assert (o.teacher, o.n_ctx_vision, o.temperature, o.kd_weight) == ("promptsrc", 4, 1.0,
                                                                       1000.0)


def test_trainable_parameters_for_vit_b16():
    """Student ViT-B/16 (4 visual tokens in 9 blocks) and a teacher of width 768 (ViT-L/14's
    feature width): 9·4·768 + (512·768 + 768) + 2·768 + (768·768 + 768) = 1,013,760."""
    torch.manual_seed(0)
    bb = Backbone(open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16")), "ViT-B-16")
    wide = Backbone(open_clip.model.CLIP(      # only the teacher's feature width matters
        embed_dim=768, vision_cfg={"layers": 1, "width": 64, "head_width": 32, "patch_size": 16,
                                   "image_size": 224},
        text_cfg={"layers": 1, "width": 64, "heads": 2}), "width-768")
    m = PromptKD(bb, NAMES, TEMPLATE, teacher=build_method("zeroshot", wide, NAMES, TEMPLATE))
    counts = trainable_parameter_counts(m)
    assert counts["visual_prompt"] + counts["vision_deep"] == 9 * 4 * 768 == 27_648
    assert counts["proj"] == 512 * 768 + 768 + 2 * 768 + 768 * 768 + 768 == 986_112
    assert sum(counts.values()) == 1_013_760
    # TextRefiner on it: W (2·768 → 768) and the alignment MLP 512 → 768 → 768 on top
    from promptviz.methods.textrefiner import TextRefiner
    tr = TextRefiner(bb, NAMES, TEMPLATE, TextRefiner.Options(base_method="promptkd"), base=m)
    counts = trainable_parameter_counts(tr)
    assert counts["W"] == 2 * 768 * 768 and counts["align"] == 986_112
    assert sum(counts.values()) == 1_013_760 + 1_179_648 + 986_112 == 3_179_520


# ------------------------------------------------------------- promptviz train, two stages
_CFG = dict(method="promptkd", backbone="pv-tiny", dataset="dtd", shots=2, epochs=2,
            progress=False, options={"teacher": "coop"})


def test_train_trains_the_teacher_then_distils_on_all_images(tiny_root, tmp_path):
    out = tmp_path / "kd"
    res = run(TrainConfig(data_root=str(tiny_root), out=str(out), **_CFG))
    teacher = json.loads((out / "teacher" / "results.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    # the teacher: the labelled shots of the base classes, its own defaults
    assert teacher["method"] == "coop" and teacher["shots"] == 2 and teacher["epochs"] == 10
    assert json.loads((out / "teacher" / "meta.json").read_text())["classnames"] == \
        meta["classnames"][:3]
    # the student: every training image (8 per class) of all 6 classes, unlabelled
    assert res["unlabelled_images"] == "all" and res["train_images"] == 6 * 8
    assert len(meta["classnames"]) == 6
    assert meta["options"]["teacher"] == str((out / "teacher").resolve())
    # a rerun reuses the finished teacher
    stamp = (out / "teacher" / "results.json").stat().st_mtime_ns
    again = run(TrainConfig(data_root=str(tiny_root), out=str(out), **_CFG))
    assert (out / "teacher" / "results.json").stat().st_mtime_ns == stamp
    assert again["hm"] == res["hm"]
    # the checkpoint brings its teacher back, and scores what the run scored
    method, _ = load_method(out)
    assert isinstance(method, PromptKD) and method.teacher.name == "coop"
    assert run_eval(out, progress=False)["hm"] == pytest.approx(res["hm"])


def test_a_teacher_folder_is_used_as_it_is(tiny_root, tmp_path):
    first = tmp_path / "kd"
    run(TrainConfig(data_root=str(tiny_root), out=str(first), **_CFG))
    cfg = {**_CFG, "options": {"teacher": str(first / "teacher")}}
    res = run(TrainConfig(data_root=str(tiny_root), out=str(tmp_path / "b"), **cfg))
    assert not (tmp_path / "b" / "teacher").exists() and res["train_images"] == 48
    with pytest.raises(PromptvizError, match="no trained run"):
        run(TrainConfig(data_root=str(tiny_root), out=str(tmp_path / "c"),
                        **{**_CFG, "options": {"teacher": str(tmp_path / "nothing")}}))
    assert not (tmp_path / "c").exists()


def test_a_refused_student_trains_no_teacher(tiny_root, tmp_path):
    """Bad student options, or an --out that holds another run, are refused before the
    teacher stage writes anything."""
    with pytest.raises(PromptvizError, match="kl_scale"):
        run(TrainConfig(data_root=str(tiny_root), out=str(tmp_path / "a"),
                        **{**_CFG, "options": {"teacher": "coop", "kl_scale": "mean"}}))
    assert not (tmp_path / "a").exists()
    other = tmp_path / "b"
    run(TrainConfig(method="zeroshot", backbone="pv-tiny", dataset="dtd", shots=2,
                    data_root=str(tiny_root), out=str(other), progress=False))
    with pytest.raises(PromptvizError, match="holds another run"):
        run(TrainConfig(data_root=str(tiny_root), out=str(other), **_CFG))
    assert not (other / "teacher").exists()
    # a teacher backbone that reads other pixels (toyclip's size, not pv-tiny's)
    with pytest.raises(PromptvizError, match="preprocessing"):
        run(TrainConfig(data_root=str(tiny_root), out=str(tmp_path / "c"),
                        **{**_CFG, "options": {"teacher": "coop",
                                               "teacher_backbone": "toyclip"}}))
    assert not (tmp_path / "c" / "teacher").exists()


# ------------------------------------------------------------- interventions and the view
def test_interventions_on_the_student(tiny_clip):
    from promptviz.analysis.interventions import available, intervene, teacher_student
    m = _student(tiny_clip).eval()
    images = _images(tiny_clip)
    assert available(m) == ("vision_prompts=off", "vision_prompts=random", "deep=off")
    with torch.no_grad():
        before = m(images)
        frozen = tiny_clip.encode_image(images).float()
        want = tiny_clip.logit_scale * F.normalize(m.proj(frozen), dim=-1) @ m.t_teacher.t()
        with intervene(m, "vision_prompts=off"):
            assert torch.allclose(m(images), want, atol=1e-5)     # the tower without prompts
        with intervene(m, "deep=off"):
            shallow_only = m(images)
        assert not torch.allclose(shallow_only, before, atol=1e-5)
        assert torch.equal(m(images), before)                     # everything undone
    seen = teacher_student(m, images, batch_size=3)
    with torch.no_grad():
        assert (seen["teacher"] == m.teacher(images).argmax(-1).numpy()).all()
        assert (seen["student"] == before.argmax(-1).numpy()).all()
        kl = kd_loss(before, m.teacher_logits(images), scale="batch")
    assert (seen["kl"] >= -1e-6).all() and seen["kl"].mean() == pytest.approx(float(kl),
                                                                               rel=1e-4)
