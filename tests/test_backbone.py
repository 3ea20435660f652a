"""The backbone: equality with open_clip, every loading path, hooks and caches."""

from __future__ import annotations

import open_clip
import pytest
import torch

from promptviz.backbone import ActivationCache, load_clip, save_clip
from promptviz.errors import PromptvizError

TEXTS = ["a photo of a cat.", "a red star", "{} texture.", "x"]


def _images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_no_prompt_equals_open_clip(tiny_clip):
    ids = tiny_clip.tokenize(TEXTS)
    ours = tiny_clip.encode_text(ids)
    theirs = tiny_clip.model.encode_text(ids)
    assert ours.shape == (4, tiny_clip.embed_dim)
    assert torch.equal(ours, theirs)
    img = _images()
    assert torch.equal(tiny_clip.encode_image(img), tiny_clip.model.encode_image(img))


def test_text_from_embeddings_equals_token_ids(tiny_clip):
    ids = tiny_clip.tokenize(TEXTS)
    emb = tiny_clip.model.token_embedding(ids)
    assert torch.equal(tiny_clip.encode_text_embeddings(emb, ids), tiny_clip.model.encode_text(ids))


def test_cache_records_every_layer(tiny_clip):
    cache = ActivationCache(attn_layers=[0, 2])
    tiny_clip.encode_image(_images(), cache=cache)
    n = 1 + 16   # CLS + 4x4 patches
    for layer in range(3):
        assert cache["vis_resid", layer].shape == (3, n, tiny_clip.vision_width)
    attn = cache["vis_attn", 2]
    assert attn.shape == (3, n, n)
    assert torch.allclose(attn.sum(-1), torch.ones(3, n), atol=1e-5)
    assert cache.cls_attention(0).shape == (3, n - 1)
    assert cache["vis_proj"].shape == (3, n, tiny_clip.embed_dim)
    # CLS through ln_post + proj is exactly the image feature
    assert torch.allclose(cache["vis_proj"][:, 0], tiny_clip.encode_image(_images()), atol=1e-6)
    tcache = ActivationCache()
    ids = tiny_clip.tokenize(TEXTS)
    tiny_clip.encode_text_embeddings(tiny_clip.token_embedding(ids), ids, cache=tcache)
    assert tcache["txt_resid", 1].shape == (4, 32, tiny_clip.text_width)


def test_attention_matches_manual_computation(tiny_clip):
    cache = ActivationCache(attn_layers=[1])
    tiny_clip.encode_image(_images(1), cache=cache)
    block = tiny_clip.model.visual.transformer.resblocks[1]
    x = block.ln_1(cache["vis_resid", 1])
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    q, k, _ = (x @ w.t() + b).chunk(3, dim=-1)
    heads = block.attn.num_heads
    q = q.view(1, -1, heads, q.shape[-1] // heads).transpose(1, 2)
    k = k.view(1, -1, heads, k.shape[-1] // heads).transpose(1, 2)
    manual = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1).mean(1)
    assert torch.allclose(cache["vis_attn", 1], manual, atol=1e-5)


def test_hook_and_extra_tokens(tiny_clip):
    img = _images(2)
    seen = []
    out = tiny_clip.encode_image(img, hook=lambda layer, x: seen.append((layer, x.shape)) or x)
    assert [s[0] for s in seen] == [0, 1, 2]
    assert torch.equal(out, tiny_clip.encode_image(img))
    extra = torch.zeros(4, tiny_clip.vision_width)
    cache = ActivationCache()
    with_extra = tiny_clip.encode_image(img, extra_tokens=extra, cache=cache)
    assert cache["vis_resid", 0].shape[1] == 17 + 4
    assert not torch.allclose(with_extra, out)


def test_frozen(tiny_clip):
    assert not any(p.requires_grad for p in tiny_clip.parameters())
    tiny_clip.train()
    assert not tiny_clip.model.training


def test_openai_format_file(tmp_path, tiny_clip):
    # OpenAI's files hold fp16 weights; the reference is the same model rounded to fp16.
    path = tmp_path / "tiny-openai.pt"
    torch.save({k: v.half() for k, v in tiny_clip.model.state_dict().items()}, path)
    reference = load_clip("pv-tiny")
    reference.model.load_state_dict({k: v.half().float()
                                     for k, v in tiny_clip.model.state_dict().items()})
    loaded = load_clip(str(path))
    ids = tiny_clip.tokenize(TEXTS)
    assert torch.allclose(loaded.encode_text(ids), reference.encode_text(ids), atol=1e-5)
    assert torch.allclose(loaded.encode_image(_images()), reference.encode_image(_images()),
                          atol=1e-5)


def test_name_with_weight_file_and_safetensors(tmp_path, tiny_clip):
    pt = tmp_path / "weights.pt"
    torch.save(tiny_clip.model.state_dict(), pt)
    a = load_clip(f"pv-tiny:{pt}", seed=123)          # another seed: weights must come from file
    assert torch.equal(a.encode_image(_images()), tiny_clip.encode_image(_images()))
    cfg = open_clip.get_model_config("pv-tiny")
    st = tmp_path / "tiny.safetensors"
    save_clip(tiny_clip.model, st, cfg, half=False)
    b = load_clip(str(st))
    assert torch.equal(b.encode_image(_images()), tiny_clip.encode_image(_images()))


def test_random_weights_are_deterministic():
    a, b = load_clip("pv-tiny", seed=0), load_clip("pv-tiny", seed=0)
    assert torch.equal(a.encode_image(_images()), b.encode_image(_images()))


@pytest.mark.parametrize("spec, words", [
    ("no-such-model", "unknown backbone"),
    ("/does/not/exist.pt", "does not exist"),
    ("pv-tiny:nosuchtag", "no pretrained tag"),
])
def test_bad_backbones(spec, words):
    with pytest.raises(PromptvizError, match=words):
        load_clip(spec)


def test_wrong_weights_for_name(tmp_path, tiny_clip):
    pt = tmp_path / "weights.pt"
    torch.save(tiny_clip.model.state_dict(), pt)
    with pytest.raises(PromptvizError, match="do not fit"):
        load_clip(f"ViT-B-32:{pt}")


def test_blocks_attend_with_scaled_dot_product_attention(tiny_clip, monkeypatch):
    """Every block runs open_clip's own attention, which calls PyTorch's fused
    ``scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA). Capturing a
    layer's attention map is an extra, separate computation: it never replaces the block's."""
    import torch.nn.functional as F

    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(a[0].shape) or fused(*a, **k))
    layers = len(tiny_clip.model.visual.transformer.resblocks)
    # a prompt that needs gradients, as in training: open_clip's path, not MHA's fast path
    prompt = torch.zeros(1, 1, tiny_clip.vision_width, requires_grad=True)
    tiny_clip.encode_image(_images(2), extra_tokens=prompt.expand(2, -1, -1),
                           cache=ActivationCache(attn_layers=[1]))
    assert len(calls) == layers and all(s[0] == 2 for s in calls)
    calls.clear()
    ids = tiny_clip.tokenize(TEXTS)
    emb = tiny_clip.token_embedding(ids).detach().requires_grad_(True)
    tiny_clip.encode_text_embeddings(emb, ids)
    assert len(calls) == len(tiny_clip.model.transformer.resblocks)
