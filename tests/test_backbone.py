"""The backbone: equality with open_clip, every loading path, hooks and caches."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import open_clip
import pytest
import torch

from promptviz.backbone import (
    CONFIG_DIR,
    ActivationCache,
    Backbone,
    activation_of,
    load_clip,
    save_clip,
)
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


# ------------------------------------------------------------------ activation (GELU / QuickGELU)
# pv-tiny and toyclip are QuickGELU configs; a GELU config shows which activation was built.
GELU_CONFIG = "pv-test-gelu"


@pytest.fixture(scope="module")
def gelu_clip(tmp_path_factory):
    """A tiny random CLIP whose config uses GELU (as open_clip's ViT-B-16 does)."""
    cfg = {**json.loads((CONFIG_DIR / "pv-tiny.json").read_text()), "quick_gelu": False}
    path = tmp_path_factory.mktemp("configs") / f"{GELU_CONFIG}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    clip = load_clip(GELU_CONFIG, seed=0, random_weights=True)
    assert clip.activation == "GELU"
    return clip


def _features(clip) -> tuple[torch.Tensor, torch.Tensor]:
    return clip.encode_image(_images()), clip.encode_text(clip.tokenize(TEXTS))


def _same(a, b) -> bool:
    return all(torch.allclose(x, y, atol=1e-5) for x, y in zip(_features(a), _features(b)))


def _with_weights(clip, quick_gelu: bool, half: bool = False):
    """The same weights in a model with the given activation (and optionally fp16-rounded)."""
    model = open_clip.create_model(GELU_CONFIG, quick_gelu=quick_gelu)
    state = clip.model.state_dict()
    model.load_state_dict({k: v.half().float() if half else v for k, v in state.items()})
    return Backbone(model, "reference")


def _torchscript(clip, path):
    """Save ``clip`` as a TorchScript archive, the format of OpenAI's own ``ViT-B-16.pt``."""
    images, text = _images(1), clip.tokenize(["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # torch.jit is deprecated upstream
        traced = torch.jit.trace_module(clip.model, {"encode_image": (images,),
                                                     "encode_text": (text,)})
        torch.jit.save(traced, str(path))
    return path


def test_file_name_does_not_choose_the_activation(gelu_clip, tmp_path, capsys):
    # a GELU state dict in a file whose name says "openai" still loads as GELU
    path = tmp_path / "openai-ViT-B-16-open_clip_pytorch_model.bin"
    torch.save(gelu_clip.model.state_dict(), path)
    loaded = load_clip(f"{GELU_CONFIG}:{path}", seed=1)
    assert loaded.activation == "GELU" and activation_of(loaded.model) == "GELU"
    assert _same(loaded, gelu_clip)
    assert not _same(loaded, _with_weights(gelu_clip, quick_gelu=True))
    # and says so, with how to ask for QuickGELU
    err = capsys.readouterr().err
    assert f"backbone {GELU_CONFIG}:{path}: GELU (the {GELU_CONFIG} config's activation" in err
    assert f"{GELU_CONFIG}-quickgelu:{path}" in err


def test_quickgelu_name_selects_quickgelu(gelu_clip, tmp_path, capsys):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(gelu_clip.model.state_dict(), path)
    loaded = load_clip(f"{GELU_CONFIG}-quickgelu:{path}")
    assert loaded.activation == "QuickGELU" and "-quickgelu name" in loaded.activation_source
    assert _same(loaded, _with_weights(gelu_clip, quick_gelu=True))
    assert not _same(loaded, gelu_clip)
    assert f"backbone {GELU_CONFIG}-quickgelu:{path}: QuickGELU" in capsys.readouterr().err
    # random weights too, and for a config with no -quickgelu twin in open_clip
    assert load_clip(f"{GELU_CONFIG}-quickgelu", random_weights=True).activation == "QuickGELU"


def test_openai_torchscript_archive_is_detected_by_content(gelu_clip, tmp_path, capsys):
    # OpenAI's CLIP (QuickGELU, fp16 weights) as a TorchScript archive, under a name that
    # says nothing
    openai = _with_weights(gelu_clip, quick_gelu=True, half=True)
    path = _torchscript(openai, tmp_path / "weights.pt")
    named = load_clip(f"{GELU_CONFIG}:{path}")          # the config says GELU, the file wins
    assert named.activation == "QuickGELU" and "TorchScript" in named.activation_source
    assert _same(named, openai)
    assert "QuickGELU (weights.pt is a TorchScript archive" in capsys.readouterr().err
    bare = load_clip(str(path))                          # OpenAI's loader, as open_clip's
    assert bare.activation == "QuickGELU" and _same(bare, openai)


def test_gelu_torchscript_archive_keeps_gelu(gelu_clip, tmp_path):
    # an archive's code names its activation: a GELU archive is not read as OpenAI's
    path = _torchscript(gelu_clip, tmp_path / "ViT-B-16-openai.pt")
    named = load_clip(f"{GELU_CONFIG}:{path}")
    assert named.activation == "GELU" and _same(named, gelu_clip)
    assert load_clip(str(path)).activation == "GELU"
    with pytest.raises(PromptvizError, match="asks for QuickGELU but .* uses GELU"):
        load_clip(f"{GELU_CONFIG}-quickgelu:{path}")


def test_openai_state_dict_entries_are_detected_by_content(gelu_clip, tmp_path):
    # OpenAI's archive's state dict (with its non-weight entries) saved as a plain file
    state = dict(gelu_clip.model.state_dict())
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(32),
                 vocab_size=torch.tensor(49408))
    path = tmp_path / "state.pt"
    torch.save(state, path)
    loaded = load_clip(f"{GELU_CONFIG}:{path}")
    assert loaded.activation == "QuickGELU" and "input_resolution" in loaded.activation_source
    assert _same(loaded, _with_weights(gelu_clip, quick_gelu=True))


def test_activation_is_reported(tiny_clip, tmp_path, capsys):
    assert tiny_clip.activation == "QuickGELU"                  # pv-tiny's config
    load_clip("pv-tiny")
    assert capsys.readouterr().err == ""                         # built-ins load quietly
    path = tmp_path / "weights.pt"
    torch.save(tiny_clip.model.state_dict(), path)
    load_clip(f"pv-tiny:{path}")
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"backbone pv-tiny:{path}: QuickGELU (the pv-tiny config's activation)"]
    bare = tmp_path / "bare.pt"
    torch.save(tiny_clip.model.state_dict(), bare)
    assert "read as OpenAI's CLIP" in load_clip(str(bare)).activation_source


# ------------------------------------------------------------------ dependency floors
def _floor(text: str, package: str) -> str:
    found = re.search(rf"(?<![\w-]){re.escape(package)}>=([0-9.]+)", text)
    assert found, f"no {package}>= floor declared"
    return found.group(1)


def _version(v: str) -> tuple[int, ...]:
    """``"3.1"``, ``"3.1.0"`` and ``"3.1.0+cpu"`` → ``(3, 1, 0)``."""
    parts = [int(p) for p in re.findall(r"\d+", v.split("+")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def test_dependency_floors_are_declared_alike_and_met():
    """pyproject.toml, environment.yml and the Makefile's floor run name one open_clip
    floor; `make test` runs this file against exactly that version (PROMPTVIZ_OPEN_CLIP_FLOOR
    is set there)."""
    root = Path(__file__).resolve().parents[1]
    pyproject, env = (root / "pyproject.toml").read_text(), (root / "environment.yml").read_text()
    make = re.search(r"^OPEN_CLIP_FLOOR\s*:?=\s*(\S+)", (root / "Makefile").read_text(), re.M)
    floor = _floor(pyproject, "open_clip_torch")
    assert _version(floor) == _version(_floor(env, "open_clip_torch")) == _version(make.group(1))
    assert _floor(pyproject, "torch") == _floor(env, "torch")
    assert _version(open_clip.__version__) >= _version(floor)
    assert _version(torch.__version__) >= _version(_floor(pyproject, "torch"))
    pinned = os.environ.get("PROMPTVIZ_OPEN_CLIP_FLOOR")
    if pinned:
        assert _version(open_clip.__version__) == _version(pinned) == _version(floor), \
            open_clip.__file__
