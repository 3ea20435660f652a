"""The data side of the method interface (``promptviz.train.inputs``) and CLIP-Adapter, the method
the README's walkthrough adds: a method declares what it reads from an image and computes
``logits(x)`` / ``loss(x, y)``; training feeds it the same ``x`` from the feature cache or
from the images, so both paths train identically."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from promptviz.errors import PromptvizError
from promptviz.methods import METHODS, build_method
from promptviz.methods.inputs import FrozenFeatures, Pixels
from promptviz.train import featcache
from promptviz.train.loop import TrainConfig, run

NAMES = ["red banded", "green banded", "blue banded"]
TEMPLATE = "a photo of a {}."


def _images(clip, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, clip.image_size, clip.image_size, generator=g)


PIXEL_METHODS = {"sep", "ivlp", "vpt", "maple", "promptsrc", "clip_lora", "promptkd"}


# ------------------------------------------------------------------------ the data side
def test_every_method_declares_its_input_and_computes_from_it(tiny_clip):
    """``method(images)`` is ``logits(inputs(images))`` for every method; the frozen inputs
    are the tower's features, SEP's are the pixels."""
    images = _images(tiny_clip)
    for name in METHODS:
        m = build_method(name, tiny_clip, NAMES, TEMPLATE).eval()
        x = m.inputs(images)
        with torch.no_grad():
            assert torch.equal(m(images), m.logits(x)), name
        if name in PIXEL_METHODS:       # their trainable parts change the image pass
            assert isinstance(m.image_input, Pixels) and x is images, name
        else:
            assert m.image_input.frozen and set(x) == {"f"}, name


def test_frozen_features_are_the_towers():
    from promptviz.backbone import load_clip
    clip = load_clip("pv-tiny")
    images = _images(clip)
    raw = clip.encode_image(images)
    assert torch.equal(FrozenFeatures()(clip, images)["f"], F.normalize(raw, dim=-1))
    assert torch.equal(FrozenFeatures(normalize=False)(clip, images)["f"], raw)
    x = FrozenFeatures(tokens_layer=1)(clip, images, train=True)
    assert set(x) == {"f", "tokens", "attn"} and x["tokens"].shape[:2] == (4, 1 + 4 ** 2)
    assert set(FrozenFeatures(tokens_layer=1)(clip, images)) == {"f"}     # inference: f only
    keys = [FrozenFeatures().key(), FrozenFeatures(normalize=False).key(),
            FrozenFeatures(tokens_layer=1).key(), FrozenFeatures(tokens_layer=0).key()]
    assert len({str(k) for k in keys}) == 4                 # what is read is in the cache key


# ------------------------------------------------------------------------- CLIP-Adapter
def test_adapter_equation_on_hand_built_weights(tiny_clip):
    """``f* = α·A(f) + (1−α)·f`` with ``A = ReLU(ReLU(f W1ᵀ) W2ᵀ)``; logits ``s·norm(f*)·t0ᵀ``."""
    m = build_method("clip_adapter", tiny_clip, NAMES, TEMPLATE, {"ratio": "0.3"})
    d = tiny_clip.embed_dim
    w1, w2 = m.adapter[0].weight, m.adapter[2].weight
    assert w1.shape == (d // 4, d) and w2.shape == (d, d // 4)
    with torch.no_grad():
        w1.copy_(torch.eye(d)[: d // 4])                    # keeps the first d/4 coordinates
        w2.copy_(2 * torch.eye(d)[:, : d // 4])             # and doubles them back in place
    f = torch.randn(2, d)
    a = torch.zeros_like(f)
    a[:, : d // 4] = 2 * f[:, : d // 4].clamp(min=0)        # ReLU(2·ReLU(f)) on those coords
    want = tiny_clip.logit_scale * F.normalize(0.3 * a + 0.7 * f, dim=-1) @ m.t0.t()
    with torch.no_grad():
        assert torch.allclose(m.logits({"f": f}), want, atol=1e-5)
    paper = build_method("clip_adapter", tiny_clip, NAMES, TEMPLATE, {"final_relu": "false"})
    assert len(paper.adapter) == 3 and len(m.adapter) == 4


def test_ratio_zero_is_zero_shot_and_counts(tiny_clip):
    images = _images(tiny_clip)
    zs = build_method("zeroshot", tiny_clip, NAMES, TEMPLATE).eval()
    ad = build_method("clip_adapter", tiny_clip, NAMES, TEMPLATE, {"ratio": "0"}).eval()
    with torch.no_grad():
        assert torch.allclose(ad(images), zs(images), atol=1e-5)
        assert not torch.allclose(build_method("clip_adapter", tiny_clip, NAMES,
                                               TEMPLATE).eval()(images), zs(images), atol=1e-3)
    d = tiny_clip.embed_dim                 # 2·d·d/4 (ViT-B/16, d = 512: 131,072)
    assert sum(p.numel() for p in ad.trainable_parameters()) == 2 * d * (d // 4)
    with pytest.raises(PromptvizError, match="ratio=1.5"):
        build_method("clip_adapter", tiny_clip, NAMES, TEMPLATE, {"ratio": "1.5"})


@pytest.mark.parametrize("method", ["clip_adapter", "textrefiner"])
def test_cached_features_and_pixels_train_identically(tiny_root, tmp_path, method):
    """The same method code trains from the feature cache and from the images: the same
    losses every epoch and bit-identical weights (fp32, no augmentation)."""
    cfg = dict(method=method, backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root),
               shots=4, epochs=3, batch_size=4, augment=False, progress=False, select="last",
               cache_dir="")
    res = {}
    for cached in (True, False):
        torch.manual_seed(0)
        res[cached] = run(TrainConfig(out=str(tmp_path / str(cached)), feature_cache=cached,
                                      **cfg))
    a, b = (load_file(tmp_path / str(c) / "model.safetensors") for c in (True, False))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in res[True]["history"]] == [h["loss"] for h in res[False]["history"]]
    assert res[True]["history"][0]["loss"] != res[True]["history"][-1]["loss"]      # it trained


def test_adapter_reads_its_own_cache_entry(tiny_root, tmp_path):
    """CLIP-Adapter reads the un-normalised feature: it never shares CoOp's cache entry."""
    cache = tmp_path / "cache"
    cfg = dict(backbone="pv-tiny", dataset="dtd", data_root=str(tiny_root), shots=2, epochs=1,
               batch_size=4, progress=False, cache_dir=str(cache))
    run(TrainConfig(method="coop", out=str(tmp_path / "coop"), **cfg))
    res = run(TrainConfig(method="clip_adapter", out=str(tmp_path / "ad"), **cfg))
    assert sorted(e["features"] for e in featcache.entries(cache)) == ["f", "f_raw"]
    assert res["trainable_params"] == 2 * 32 * 8 and 0 <= res["hm"] <= 100


def test_readme_walkthrough_is_the_file():
    """The README's walkthrough shows the method as it is: every line of its code block is a
    line of ``promptviz/methods/clip_adapter.py``, in the same order."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("### Adding a method", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    shown = [line for line in block.splitlines() if line.strip()]
    source = (root / "promptviz" / "methods" / "clip_adapter.py").read_text().splitlines()
    pos = 0
    for line in shown:
        assert line in source[pos:], f"README walkthrough line not in the file: {line!r}"
        pos = source.index(line, pos) + 1
    assert len(shown) > 20


def test_readme_parameter_count_is_vit_b16s():
    """The walkthrough's ViT-B/16 count is the formula checked above (``2·d·d/4``, on the
    class itself in ``test_ratio_zero_is_zero_shot_and_counts``) at ViT-B/16's width."""
    from pathlib import Path

    import open_clip
    d = open_clip.get_model_config("ViT-B-16")["embed_dim"]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Adding a method", 1)[1].split("\n## ", 1)[0]
    assert f"`2·d·d/4`: {2 * d * (d // 4):,} for ViT-B/16" in section
