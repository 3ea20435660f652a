"""TextRefiner on MaPLe and PromptKD (``base_method=maple|promptkd``): the image side is the
wrapped method's prompted tower, PromptKD's loss is the authors' three distillation terms,
and training takes the wrapped method's schedule and (PromptKD) its unlabelled images."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from promptviz.backbone import Backbone
from promptviz.config import TrainConfig
from promptviz.methods import PromptKD, build_method
from promptviz.methods.promptkd import kd_loss
from promptviz.methods.textrefiner import TextRefiner
from promptviz.train.loop import load_method, run

NAMES = ["red banded", "green banded", "blue banded"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(autouse=True)
def _keep_global_rng():
    with torch.random.fork_rng(devices=[]):
        yield


def _images(clip, n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, clip.image_size, clip.image_size,
                      generator=torch.Generator().manual_seed(3))


def _wide_teacher(clip) -> Backbone:
    """A teacher CLIP with the student's preprocessing and a wider feature (48 vs 32)."""
    torch.manual_seed(5)
    return Backbone(open_clip.model.CLIP(
        embed_dim=48, vision_cfg={"layers": 2, "width": 64, "head_width": 32,
                                  "patch_size": clip.info.patch_size,
                                  "image_size": clip.image_size},
        text_cfg={"layers": 1, "width": 64, "heads": 2}), "wide")


def test_on_maple_the_image_side_is_maples_prompted_tower(tiny_clip):
    torch.manual_seed(0)
    m = build_method("textrefiner", tiny_clip, NAMES, TEMPLATE, {"base_method": "maple"})
    images = _images(tiny_clip)
    f, tokens, attn = m.encode(images)
    n_patches = (tiny_clip.image_size // tiny_clip.info.patch_size) ** 2
    assert torch.allclose(f, F.normalize(m.base.encode_image_prompted(images).float(), dim=-1),
                          atol=1e-6)
    assert tokens.shape == (4, 1 + n_patches + m.base.n_vision, tiny_clip.embed_dim)
    assert attn.shape == (4, n_patches)          # CLS → patches, not → the visual prompts
    frozen = tiny_clip.encode_image(images, normalize=True)
    assert not torch.allclose(f, frozen, atol=1e-4)
    # the loss reaches MaPLe's prompts through the image side too
    m.train()
    loss, _, terms = m.loss(images, torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert set(terms) == {"ce", "local", "reg"}
    assert m.base.prompt.ctx.grad is not None and m.base.proj.weight.grad.abs().sum() > 0
    # the prompts are the model: change them and the refined logits follow
    m.eval()
    with torch.no_grad():
        before = m(images)
        m.base.prompt.ctx.add_(0.5)
        assert not torch.allclose(m(images), before, atol=1e-4)


def test_on_promptkd_the_loss_is_the_authors_three_kd_terms(tiny_clip):
    torch.manual_seed(0)
    teacher = build_method("ivlp", _wide_teacher(tiny_clip), NAMES, TEMPLATE)
    base = PromptKD(tiny_clip, NAMES, TEMPLATE, teacher=teacher)
    m = TextRefiner(tiny_clip, NAMES, TEMPLATE, TextRefiner.Options(base_method="promptkd"),
                    base=base)
    d_t = 48
    assert m.cache.shape == (25, d_t) and m.W.in_features == 2 * d_t
    assert (m.align[0].in_features, m.align[0].out_features) == (tiny_clip.embed_dim, d_t)
    m.eval()                                          # BatchNorm on running statistics
    images, s = _images(tiny_clip), tiny_clip.logit_scale
    with torch.no_grad():
        loss, logits, terms = m.loss(images, torch.tensor([0, 1, 2, 0]))
        again, _, _ = m.loss(images, torch.tensor([2, 2, 2, 2]))      # labels never read
        # by hand
        t = F.normalize(base.teacher.text_features().float(), dim=-1)
        r = (t @ m.cache.t()).softmax(-1) @ m.cache
        t_hat = t + 0.2 * m.W(torch.cat([t, r], dim=-1))
        f = F.normalize(base.proj(base.encode_image_prompted(images).float()), dim=-1)
        zt = base.teacher(images)
        _, tokens, attn = m.encode(images)
        x = m.align(tokens.reshape(-1, tokens.shape[-1])).reshape(4, -1, d_t)
        top = attn.topk(5, dim=-1).indices + 1
        z = torch.cat([x[:, :1], x.gather(1, top[..., None].expand(-1, -1, d_t)),
                       x.mean(1, keepdim=True)], dim=1).reshape(-1, d_t)
        l1 = kd_loss(s * f @ t_hat.t(), zt)
        l2 = kd_loss(s * z @ t.t(), zt.repeat_interleave(7, dim=0))
        l3 = (F.normalize(t_hat, dim=-1) - t).abs().mean()
    assert torch.allclose(logits, s * f @ t_hat.t(), atol=1e-4)
    assert float(terms["kd"]) == pytest.approx(float(l1), rel=1e-4)
    assert float(terms["local"]) == pytest.approx(float(l2), rel=1e-4)
    assert float(terms["reg"]) == pytest.approx(float(l3), rel=1e-4)
    want = 1000 * l1 + 10 * l2 + 20 * l3
    assert float(loss) == pytest.approx(float(want), rel=1e-4) and float(again) == float(loss)


def test_on_promptkd_training_writes_the_cache_and_trains_the_student(tiny_clip):
    torch.manual_seed(0)
    m = build_method("textrefiner", tiny_clip, NAMES, TEMPLATE,
                     {"base_method": "promptkd", "teacher": "ivlp"})
    m.train()
    before = m.cache.clone()
    m.loss(_images(tiny_clip), torch.zeros(4, dtype=torch.long))[0].backward()
    assert not torch.equal(m.cache, before)                         # written in training
    assert m.base.visual_prompt.grad is not None                    # the student learns
    assert all(p.grad is None for p in m.base.teacher.parameters())
    assert not any("teacher" in k for k in m.trainable_state())


def test_the_wrapped_methods_schedule():
    maple = TrainConfig(method="textrefiner", options={"base_method": "maple"}).resolved("dtd")
    assert (maple.epochs, maple.lr, maple.batch_size, maple.select) == (5, 0.0035, 4, "last")
    kd = TrainConfig(method="textrefiner", options={"base_method": "promptkd"}).resolved("dtd")
    assert (kd.epochs, kd.lr, kd.batch_size) == (20, 0.005, 8)
    coop = TrainConfig(method="textrefiner").resolved("dtd")
    assert (coop.epochs, coop.lr, coop.batch_size, coop.select) == (10, 0.002, 32, "best_val")
    assert TextRefiner.dataset_options("dtd") == {"kd_weight": 200.0}


@pytest.mark.parametrize("transductive, images", [("true", 6 * 8), ("false", 3 * 8)])
def test_train_on_promptkd_end_to_end(tiny_root, tmp_path, transductive, images):
    out = tmp_path / "tr"
    res = run(TrainConfig(method="textrefiner", backbone="pv-tiny", dataset="dtd",
                          data_root=str(tiny_root), shots=2, epochs=1, out=str(out),
                          progress=False, options={"base_method": "promptkd", "teacher": "coop",
                                                   "transductive": transductive}))
    assert res["train_images"] == images
    assert res["unlabelled_images"] == ("all" if transductive == "true" else "base")
    assert (out / "teacher" / "results.json").is_file()
    method, meta = load_method(out)
    assert meta["config"]["batch_size"] == 8 and isinstance(method.base, PromptKD)
    assert method.base.teacher.name == "coop"
