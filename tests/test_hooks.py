"""Named hook points (TransformerLens-style): record any block's residual stream, attention
pattern, attention and MLP outputs by name, and edit them, without changing what the
towers compute when nothing is edited."""

from __future__ import annotations

import pytest
import torch

from promptviz.backbone import POINTS, ActivationCache, load_clip
from promptviz.errors import PromptvizError


@pytest.fixture(scope="module")
def clip():
    return load_clip("pv-tiny")


def _images(clip, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, clip.image_size, clip.image_size, generator=g)


def test_recording_every_point_changes_nothing(clip):
    images, ids = _images(clip), clip.tokenize(["a photo of a cat.", "a red square."])
    cache = ActivationCache(points=["vis.*", "txt.*"])
    with torch.no_grad():
        assert torch.equal(clip.encode_image(images, cache=cache), clip.model.encode_image(images))
        text = clip.encode_text_embeddings(clip.token_embedding(ids), ids, cache=cache)
        assert torch.equal(text, clip.model.encode_text(ids))
    n = clip.info.vision_layers
    assert all(f"{tower}.{layer}.{p}" in cache
               for tower, layers in (("vis", n), ("txt", clip.info.text_layers))
               for layer in range(layers) for p in POINTS)
    for layer in range(n):
        pre, post = cache[f"vis.{layer}.resid_pre"], cache[f"vis.{layer}.resid_post"]
        assert torch.equal(pre, cache["vis_resid", layer])
        assert torch.equal(post, pre + cache[f"vis.{layer}.attn_out"]
                           + cache[f"vis.{layer}.mlp_out"])
        if layer + 1 < n:
            assert torch.equal(post, cache[f"vis.{layer + 1}.resid_pre"])
        pattern = cache[f"vis.{layer}.attn_pattern"]
        assert pattern.shape == (3, pre.shape[1], pre.shape[1])
        assert torch.allclose(pattern.sum(-1), torch.ones(3, pre.shape[1]), atol=1e-5)


def test_a_block_run_by_parts_is_open_clips_block(clip):
    """An edit that keeps every value forces every block through the part-by-part path:
    the features are open_clip's, bit for bit, in both towers."""
    images, ids = _images(clip), clip.tokenize(["a photo of a cat."])
    keep = {"vis.*.attn_out": lambda x: None, "txt.*.mlp_out": lambda x: None}
    with torch.no_grad(), clip.hooks(keep):
        assert torch.equal(clip.encode_image(images), clip.model.encode_image(images))
        assert torch.equal(clip.encode_text(ids), clip.model.encode_text(ids))


def test_an_edit_acts_where_named_and_is_undone(clip):
    images = _images(clip)
    last = clip.info.vision_layers - 1
    with torch.no_grad():
        clean = clip.encode_image(images)
        cache = ActivationCache(points=[f"vis.{last}.*"])
        with clip.hooks({f"vis.{last}.mlp_out": torch.zeros_like}):
            edited = clip.encode_image(images, cache=cache)
        after = clip.encode_image(images)
    assert not torch.allclose(edited, clean, atol=1e-4)
    assert torch.equal(after, clean)                                  # undone
    assert torch.equal(cache[f"vis.{last}.mlp_out"], torch.zeros_like(cache[f"vis.{last}.mlp_out"]))
    assert torch.equal(cache[f"vis.{last}.resid_post"],
                       cache[f"vis.{last}.resid_pre"] + cache[f"vis.{last}.attn_out"])
    # the text tower has its own points: doubling a block's input changes the text feature
    ids = clip.tokenize(["a photo of a cat."])
    with torch.no_grad(), clip.hooks({"txt.0.resid_pre": lambda x: 2 * x}):
        doubled = clip.encode_text(ids)
    assert not torch.allclose(doubled, clip.model.encode_text(ids), atol=1e-4)


@pytest.mark.parametrize("name", ["vis.99.mlp_out", "vis.0.attn_pattern", "mlp_out", "img.*"])
def test_unknown_or_read_only_points_are_refused(clip, name):
    with pytest.raises(PromptvizError, match="e.g. 'vis.3.mlp_out'"):
        with clip.hooks({name: torch.zeros_like}):
            pass


# ------------------------------------------------------------- projection deltas (LoRA)
def _zero_delta(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def test_projection_deltas_run_the_attention_from_its_weights(clip):
    """A zero delta on every projection of every block sends both towers through the
    attention computed from the weights (``Backbone._attention``): open_clip's features up
    to rounding, in fp32 and under bf16 autocast; a non-zero delta acts on the block named
    only, its attention pattern is the adapted one, and all of it is undone after."""
    images, ids = _images(clip), clip.tokenize(["a photo of a cat.", "a red square."])
    every = {f"{t}.{layer}.{p}": _zero_delta for t, n in (("vis", clip.info.vision_layers),
                                                          ("txt", clip.info.text_layers))
             for layer in range(n) for p in "qkvo"}
    with torch.no_grad():
        image0, text0 = clip.model.encode_image(images), clip.model.encode_text(ids)
        with clip.deltas(every):
            assert torch.allclose(clip.encode_image(images), image0, atol=1e-5, rtol=0)
            assert torch.allclose(clip.encode_text(ids), text0, atol=1e-5, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16), clip.deltas(every):
            image_bf16 = clip.encode_image(images)
        assert image_bf16.dtype == torch.bfloat16
        assert torch.allclose(image_bf16.float(), image0, atol=0.1, rtol=0.05)
        shift = {"vis.1.v": lambda x: torch.ones(*x.shape[:-1], clip.vision_width)}
        cache = ActivationCache(points=["vis.*.attn_out", "vis.*.attn_pattern"])
        with clip.hooks({}), clip.deltas(shift):
            shifted = clip.encode_image(images, cache=cache)
        plain = ActivationCache(points=["vis.*.attn_out", "vis.*.attn_pattern"])
        clip.encode_image(images, cache=plain)
        assert torch.equal(clip.encode_image(images), clip.model.encode_image(images))
    assert clip._deltas == {}                                             # undone
    assert not torch.allclose(shifted, image0, atol=1e-4)
    assert torch.allclose(cache["vis.0.attn_out"], plain["vis.0.attn_out"], atol=1e-5)
    assert not torch.allclose(cache["vis.1.attn_out"], plain["vis.1.attn_out"], atol=1e-3)
    # v moves the output, not the pattern; q moves the pattern, recorded from the deltas' path
    assert torch.allclose(cache["vis.1.attn_pattern"], plain["vis.1.attn_pattern"], atol=1e-5)
    turned = ActivationCache(points=["vis.1.attn_pattern"])
    with torch.no_grad(), clip.deltas({"vis.1.q": lambda x: 3 * x}):
        clip.encode_image(images, cache=turned)
    pattern = turned["vis.1.attn_pattern"]
    assert not torch.allclose(pattern, plain["vis.1.attn_pattern"], atol=1e-3)
    assert torch.allclose(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5)


@pytest.mark.parametrize("name", ["vis.99.q", "vis.0.w", "txt.q", "img.0.q", "vis.0.q.x"])
def test_unknown_projections_are_refused(clip, name):
    with pytest.raises(PromptvizError, match="e.g. 'vis.3.q'"):
        with clip.deltas({name: _zero_delta}):
            pass


# ------------------------------------------------------- interventions on hook points
def test_hook_point_ablation_as_an_intervention(tiny_clip, tiny_root):
    """``intervene(m, "vis.L.attn_out=zero")`` ablates through the backbone's hook points,
    and ``intervention_table`` encodes a frozen-input method's images again under it: its
    row is the accuracy measured by hand under the same edit."""
    from promptviz.analysis.interventions import intervene, intervention_table
    from promptviz.data import load_dataset, load_images
    from promptviz.methods import build_method
    ds = load_dataset("dtd", str(tiny_root))
    m = build_method("zeroshot", tiny_clip, ds.classnames, ds.template).eval()
    images = load_images(ds.test, tiny_clip.image_size, tiny_clip.mean, tiny_clip.std)
    with torch.no_grad():
        own = m(images).argmax(-1)                         # labels: the clean predictions
        with tiny_clip.hooks({"vis.*.attn_out": torch.zeros_like}):
            ablated = m(images).argmax(-1)
    assert not torch.equal(own, ablated)                  # the ablation moves predictions
    rows = intervention_table(m, images, ds.classnames, ds.template, labels=own,
                              names=["vis.*.attn_out=zero", "txt.0.mlp_out=zero"])
    assert rows[0]["acc"] == 100.0
    assert rows[1]["acc"] == pytest.approx(100.0 * float((ablated == own).float().mean()))
    assert rows[1]["acc"] < 100.0
    with intervene(m, "vis.*.attn_out=zero"), torch.no_grad():
        assert torch.equal(m(images).argmax(-1), ablated)
    with torch.no_grad():
        assert torch.equal(m(images).argmax(-1), own)     # undone
    with pytest.raises(PromptvizError, match="e.g. 'vis.3.mlp_out'"):
        with intervene(m, "vis.99.mlp_out=zero"):
            pass
