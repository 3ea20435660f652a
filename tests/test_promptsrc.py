"""PromptSRC (methods/promptsrc.py): the agreement terms, the template ensemble and GPA on
hand-built inputs, and GPA through training, resuming and the final checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from promptviz.errors import PromptvizError
from promptviz.methods import PromptSRC, build_method
from promptviz.methods.base import zero_shot_text_features
from promptviz.methods.promptsrc import TEMPLATES, gpa_weights
from promptviz.train.loop import TrainConfig, run

NAMES = ["red banded", "green banded", "blue banded"]
TEMPLATE = "a photo of a {}."


def _images(clip, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, clip.image_size, clip.image_size, generator=g)


def test_gpa_weights_are_a_normalised_gaussian_over_epochs():
    w = gpa_weights(20, 15.0, 1.0)                         # the authors' base-to-novel setting
    assert sum(w) == pytest.approx(1.0) and max(w) == w[14]            # epoch 15
    assert w[13] / w[14] == pytest.approx(math.exp(-0.5)) and w[13] == pytest.approx(w[15])
    assert w[0] < 1e-20                                      # the first epochs barely count
    assert gpa_weights(3, 15.0, 1.0) == pytest.approx([0, 0, 1], abs=1e-5)  # μ ≫ E: the last
    assert gpa_weights(3, 2.0, 1e9) == pytest.approx([1 / 3] * 3)   # σ → ∞: a plain mean


def test_gpa_averages_the_epochs_weights(tiny_clip):
    """Drive end_epoch by hand with θ_e = e: the model ends at Σ_e g(e)·e."""
    m = build_method("promptsrc", tiny_clip, NAMES, TEMPLATE, {"gpa_mean": 3, "gpa_std": 1})
    w = gpa_weights(4, 3.0, 1.0)
    for e in range(1, 5):
        with torch.no_grad():
            for p in m.trainable_parameters():
                p.fill_(float(e))
        m.end_epoch(e, 4)
    assert set(m.training_state()) == {f"gpa.{n}" for n, p in m.named_parameters()
                                       if p.requires_grad}
    m.end_training()
    want = sum(wi * e for wi, e in zip(w, range(1, 5)))
    for p in m.trainable_parameters():
        assert torch.allclose(p, torch.full_like(p, want))
    assert m.training_state() == {}                          # nothing left for the checkpoint
    off = build_method("promptsrc", tiny_clip, NAMES, TEMPLATE, {"gpa": "false"})
    off.end_epoch(1, 4)
    assert off.training_state() == {}


def test_frozen_text_is_the_template_ensemble(tiny_clip):
    m = build_method("promptsrc", tiny_clip, NAMES, TEMPLATE)
    assert len(TEMPLATES) == 60 and TEMPLATES[0] == "a bad photo of a {}."
    feats = []
    for t in TEMPLATES:
        ids = tiny_clip.tokenize([t.format(c) for c in NAMES])
        feats.append(tiny_clip.model.encode_text(ids))       # open_clip's own, un-normalised
    want = F.normalize(torch.stack(feats).mean(0), dim=-1)
    assert torch.allclose(m.frozen_text_features(), want, atol=1e-5)
    one = build_method("promptsrc", tiny_clip, NAMES, TEMPLATE, {"n_templates": 0})
    assert torch.allclose(one.frozen_text_features(),
                          zero_shot_text_features(tiny_clip, NAMES, TEMPLATE), atol=1e-6)
    one.set_classnames(NAMES, "a drawing of a {}.")     # same classes, another template
    assert torch.allclose(one.frozen_text_features(),
                          zero_shot_text_features(tiny_clip, NAMES, "a drawing of a {}."),
                          atol=1e-6)


def test_agreement_terms_vanish_when_prompted_equals_frozen(tiny_clip):
    """Text prompts only in block 0, initialised from "a photo of a", and no visual prompts:
    the prompted model is frozen CLIP, so L1, L1 and KL are 0 against the one-template t̃;
    moving the prompts makes each text-side term positive."""
    m = build_method("promptsrc", tiny_clip, NAMES, TEMPLATE,
                     {"depth_text": 1, "n_ctx_vision": 0, "n_templates": 0})
    images, labels = _images(tiny_clip), torch.tensor([0, 1, 2, 0])
    _, _, terms = m.loss(images, labels)
    for k in ("scl_text", "scl_image", "scl_logits"):
        assert float(terms[k]) == pytest.approx(0.0, abs=1e-6), k
    with torch.no_grad():
        m.prompt.ctx.add_(torch.randn_like(m.prompt.ctx) * 0.3)
    _, _, terms = m.loss(images, labels)
    assert float(terms["scl_text"]) > 1e-4 and float(terms["scl_logits"]) > 1e-6


@pytest.mark.parametrize("scale", ["elements", "batch"])
def test_loss_is_the_papers_sum_by_hand(tiny_clip, scale):
    m = build_method("promptsrc", tiny_clip, NAMES, TEMPLATE, {"kl_scale": scale})
    images, labels = _images(tiny_clip), torch.tensor([0, 1, 2, 0])
    loss, logits, terms = m.loss(images, labels)
    with torch.no_grad():
        s = tiny_clip.logit_scale
        t = m.text_features()
        f = F.normalize(m.encode_image_prompted(images), dim=-1)
        t0, f0 = m.frozen_text_features(), tiny_clip.encode_image(images, normalize=True)
        p, p0 = (s * f @ t.t()).softmax(-1), (s * f0 @ t0.t()).softmax(-1)
        kl = (p0 * (p0.log() - p.log())).sum() / (p.numel() if scale == "elements" else 4)
        want = (F.cross_entropy(s * f @ t.t(), labels) + 25 * (t - t0).abs().mean()
                + 10 * (f - f0).abs().mean() + kl)
    assert float(terms["scl_logits"]) == pytest.approx(float(kl), rel=1e-4)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-4)


def test_bad_options(tiny_clip):
    for opts, words in [({"n_ctx_text": 0}, "n_ctx_text=0"), ({"kl_scale": "mean"}, "kl_scale"),
                        ({"gpa_std": 0}, "gpa_std=0"), ({"n_templates": 81}, "n_templates=81")]:
        with pytest.raises(PromptvizError, match=words):
            build_method("promptsrc", tiny_clip, NAMES, TEMPLATE, opts)


def test_defaults_are_the_authors():
    d, o = PromptSRC.defaults, PromptSRC.Options()
    assert (d.epochs, d.lr, d.batch_size, d.optimizer, d.select) == (20, 0.0025, 4, "sgd", "last")
    assert (o.n_ctx_text, o.n_ctx_vision, o.depth_text, o.text_weight, o.image_weight) == \
        (4, 4, None, 25.0, 10.0)
    assert (o.gpa_mean, o.gpa_std, o.n_templates, o.kl_scale) == (15.0, 1.0, 60, "elements")
    assert TrainConfig(method="promptsrc", protocol="fewshot").resolved("dtd").epochs == 50
    assert PromptSRC.dataset_options("dtd", "fewshot") == {"gpa_mean": 45.0, "gpa_std": 5.0}
    assert PromptSRC.dataset_options("sun397", "fewshot") == {"gpa_mean": 30.0, "gpa_std": 30.0}
    assert PromptSRC.dataset_options("dtd", "base2new") == {}


def test_trainable_parameters_for_vit_b16():
    """4 + 4 tokens in 9 blocks: 9·4·512 + 9·4·768 = 46,080 (the paper: 46 K)."""
    import open_clip

    from promptviz.backbone import Backbone
    from promptviz.methods.base import trainable_parameter_counts
    bb = Backbone(open_clip.model.CLIP(**open_clip.get_model_config("ViT-B-16")), "ViT-B-16")
    m = build_method("promptsrc", bb, NAMES, TEMPLATE)
    assert sum(trainable_parameter_counts(m).values()) == 9 * 4 * (512 + 768) == 46_080


# ------------------------------------------------------------- GPA through the train loop
_CFG = dict(method="promptsrc", backbone="pv-tiny", dataset="dtd", shots=2, epochs=3,
            batch_size=2, progress=False, options={"gpa_mean": "2", "gpa_std": "1"})


def test_trained_model_is_the_gpa_of_its_epochs(tiny_root, tmp_path, monkeypatch):
    seen: list[dict[str, torch.Tensor]] = []
    original = PromptSRC.end_epoch

    def record(self, epoch, epochs):
        seen.append({k: v.detach().clone() for k, v in self.trainable_state().items()})
        return original(self, epoch, epochs)

    monkeypatch.setattr(PromptSRC, "end_epoch", record)
    run(TrainConfig(data_root=str(tiny_root), out=str(tmp_path / "a"), **_CFG))
    saved = load_file(tmp_path / "a" / "model.safetensors")
    w = gpa_weights(3, 2.0, 1.0)
    assert len(seen) == 3 and not any(k.startswith("gpa.") for k in saved)
    for k, v in saved.items():
        want = sum(wi * s[k] for wi, s in zip(w, seen))
        assert torch.allclose(v, want, atol=1e-6), k
        assert not torch.allclose(v, seen[-1][k], atol=1e-6), k   # not simply the last epoch


@pytest.mark.parametrize("drop_sum", [False, True])
def test_resume_carries_the_running_sum(tiny_root, tmp_path, monkeypatch, drop_sum):
    """Stop after epoch 2, resume: the result equals the uninterrupted run's — and differs
    when the resume file's GPA sum is dropped (so the equality is not a restart's)."""
    cfg = dict(_CFG, data_root=str(tiny_root))
    run(TrainConfig(out=str(tmp_path / "full"), **cfg))
    calls = {"n": 0}
    original = PromptSRC.loss

    def flaky(self, x, y):
        calls["n"] += 1
        if calls["n"] == 2 * 3 + 1:                        # 3 steps per epoch: epoch 3's first
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(PromptSRC, "loss", flaky)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(TrainConfig(out=str(out), **cfg))
    monkeypatch.setattr(PromptSRC, "loss", original)
    saved = torch.load(out / "resume.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["training"]
    if drop_sum:
        saved["training"] = {}
        torch.save(saved, out / "resume.pt")
    run(TrainConfig(out=str(out), **cfg))
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    same = all(torch.equal(a[k], b[k]) for k in a)
    assert same is not drop_sum
