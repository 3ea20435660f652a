"""TextRefiner: the cache write rule, the read/refine path, the losses and the switches."""

from __future__ import annotations

import json
import math

import pytest
import torch

from promptviz.checkpoint import load_checkpoint, save_checkpoint
from promptviz.cli import main
from promptviz.errors import PromptvizError
from promptviz.methods import build_method
from promptviz.methods.textrefiner import cache_write


def _loss(m, images, labels):
    """One training loss from pixels: ``loss(inputs(images, train=True), labels)``."""
    return m.loss(m.inputs(images, train=True), labels)

NAMES = ["red star", "blue circle", "green heart", "big_yellow_square"]
TEMPLATE = "a photo of a {}."


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """These tests seed torch's global generator; give the next test file its state back."""
    with torch.random.fork_rng(devices=[]):
        yield


def _batch(n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % len(NAMES)


def _refiner(tiny_clip, seed: int = 0, **options):
    torch.manual_seed(seed)            # the MLP and W initialise from the global generator
    return build_method("textrefiner", tiny_clip, NAMES, TEMPLATE,
                        {k: str(v) for k, v in options.items()})


def test_shapes(tiny_clip):
    m = _refiner(tiny_clip).eval()
    images, _ = _batch(3)
    d, n_tokens = tiny_clip.embed_dim, tiny_clip.grid_size[0] ** 2 + 1
    with torch.no_grad():
        text = m.text_features()
        assert text.shape == (len(NAMES), d)
        assert m(images, text).shape == (3, len(NAMES))
        w = m.read_weights()
        local = m.local_tokens(images)
    assert w.shape == (len(NAMES), 25) and torch.allclose(w.sum(-1), torch.ones(len(NAMES)))
    assert local["tokens"].shape == (3, n_tokens, d)
    assert local["cls_attention"].shape == (3, n_tokens - 1)
    assert local["topk"].shape == (3, 5) and int(local["topk"].max()) < n_tokens - 1
    assert local["slot"].shape == (3, n_tokens) and int(local["slot"].max()) < 25
    # the top-k indices are the patches with the highest CLS attention
    top_vals = local["cls_attention"].gather(1, local["topk"])
    assert torch.equal(top_vals, local["cls_attention"].topk(5, dim=-1).values)


def test_other_layer_reads_that_blocks_tokens(tiny_clip):
    images, _ = _batch(2)
    last, mid = _refiner(tiny_clip).eval(), _refiner(tiny_clip, layer=1).eval()
    a, b = last.local_tokens(images), mid.local_tokens(images)
    assert a["tokens"].shape == b["tokens"].shape
    assert not torch.allclose(a["cls_attention"], b["cls_attention"])
    assert torch.isfinite(_loss(mid.train(), *_batch())[0])


def test_cache_write_hand_computed():
    # A = identity in 2-d; four tokens (not unit length: the rule normalises them first)
    cache = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tokens = torch.tensor([[2.0, 0.0], [0.3, 0.4], [0.0, 5.0], [0.8, 0.6]])
    new = cache_write(cache, tokens, momentum=0.8)
    # v = [1,0], [.6,.8], [0,1], [.8,.6]; S = v·Aᵀ = v. Top-1 slot per token (row argmax):
    # t1 → 0, t2 → 1, t3 → 1, t4 → 0. The weight P_tok[t,i] / max_t' P_tok[t',i] is
    # exp(S[t,i] − max_t' S[t',i]) (softmax's denominator cancels); both columns have max 1.
    w1, w4 = math.exp(1.0 - 1.0), math.exp(0.8 - 1.0)       # slot 0: S[:,0] = 1, .6, 0, .8
    w3, w2 = math.exp(1.0 - 1.0), math.exp(0.8 - 1.0)       # slot 1: S[:,1] = 0, .8, 1, .6
    slot0 = [0.8 * 1 + 0.2 * (w1 * 1.0 + w4 * 0.8), 0.8 * 0 + 0.2 * (w1 * 0.0 + w4 * 0.6)]
    slot1 = [0.8 * 0 + 0.2 * (w3 * 0.0 + w2 * 0.6), 0.8 * 1 + 0.2 * (w3 * 1.0 + w2 * 0.8)]
    n0, n1 = math.hypot(*slot0), math.hypot(*slot1)
    expected = torch.tensor([[slot0[0] / n0, slot0[1] / n0], [slot1[0] / n1, slot1[1] / n1]])
    assert torch.allclose(new, expected, atol=1e-6)
    assert torch.equal(cache, torch.eye(2))                  # a pure function


def test_cache_write_empty_slot_keeps_direction():
    cache = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])   # slot 2 wins no token
    tokens = torch.tensor([[1.0, 0.1], [0.2, 1.0], [0.9, 0.5]])
    new = cache_write(cache, tokens, momentum=0.8)
    assert torch.allclose(new[2], torch.tensor([-1.0, 0.0]))      # same direction, unit norm
    assert torch.allclose(new.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(new[0], cache[0]) and not torch.allclose(new[1], cache[1])


def test_cache_follows_the_seed_and_is_unit(tiny_clip):
    """The authors draw the cache from the seeded global generator: one cache per seed."""
    a, b = _refiner(tiny_clip, seed=0), _refiner(tiny_clip, seed=5)   # other global seeds
    assert not torch.equal(a.cache, b.cache) and (a.cache >= 0).all()
    assert torch.equal(a.cache, _refiner(tiny_clip, seed=0).cache)
    assert torch.allclose(a.cache.norm(dim=-1), torch.ones(25))


def test_write_in_training_only(tiny_clip):
    m = _refiner(tiny_clip).train()
    images, labels = _batch()
    before = m.cache.clone()
    _loss(m, images, labels)
    assert not torch.equal(m.cache, before)
    assert "cache" in dict(m.named_buffers())                   # still a registered buffer
    m.eval()
    after = m.cache.clone()
    with torch.no_grad():
        m(images)
        _loss(m, images, labels)                                  # no write outside training
    assert torch.equal(m.cache, after)


def test_gradients(tiny_clip):
    m = _refiner(tiny_clip).train()
    loss, logits, terms = _loss(m, *_batch())
    assert set(terms) == {"ce", "local", "reg"} and all(not v.requires_grad for v in terms.values())
    loss.backward()
    assert all(p.grad is None for p in tiny_clip.parameters())     # both towers frozen
    assert not m.cache.requires_grad and m.cache.grad is None
    for p in [m.base.prompt.ctx, m.W.weight, m.align[0].weight, m.align[3].weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_text_once_per_evaluation_equals_per_batch(tiny_clip):
    m = _refiner(tiny_clip)
    _loss(m, *_batch())                                            # a written, non-initial cache
    m.eval()
    with torch.no_grad():
        text = m.text_features()                                 # once
        for seed in (2, 3):
            images, _ = _batch(seed=seed)
            assert torch.equal(m(images, text), m(images))   # vs per batch
        assert torch.equal(m.text_features(), text)


def test_checkpoint_round_trip_with_cache(tmp_path, tiny_clip):
    m = _refiner(tiny_clip)
    for seed in (1, 2):
        _loss(m, *_batch(seed=seed))                               # moves the cache and BN stats
    with torch.no_grad():
        for p in m.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    m.eval()
    save_checkpoint(tmp_path, m.trainable_state(), {"method": "textrefiner"})
    state, _ = load_checkpoint(tmp_path)
    assert "cache" in state and "base.prompt.ctx" in state
    fresh = _refiner(tiny_clip, seed=7).eval()
    assert not torch.equal(fresh.cache, m.cache)
    fresh.load_trainable_state(state)
    images, _ = _batch(seed=3)
    with torch.no_grad():
        assert torch.equal(fresh.cache, m.cache)
        assert torch.equal(fresh(images), m(images))
        assert torch.equal(fresh.local_tokens(images)["slot"], m.local_tokens(images)["slot"])


def test_kgcoop_base_adds_its_term(tiny_clip):
    m = _refiner(tiny_clip, base_method="kgcoop", kg_weight=3.0)
    with torch.no_grad():
        m.base.prompt.ctx.add_(torch.randn_like(m.base.prompt.ctx))
    loss, _, terms = _loss(m, *_batch())
    assert float(terms["kg"]) > 1e-3
    expected = terms["ce"] + terms["local"] / 50.0 + 20.0 * terms["reg"] + 3.0 * terms["kg"]
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


def test_base_options_are_forwarded(tiny_clip):
    m = _refiner(tiny_clip, n_ctx=8, ctx_init="", class_token_position="front")
    assert m.base.prompt.ctx.shape[0] == 8 and m.base.prompt.position == "front"
    assert m.base.name == "coop"


def test_bad_options(tiny_clip):
    with pytest.raises(PromptvizError, match="not supported"):
        _refiner(tiny_clip, base_method="cocoop")
    with pytest.raises(PromptvizError, match="base_method"):
        _refiner(tiny_clip, base_method="textrefiner")
    with pytest.raises(PromptvizError, match="local_tokens"):
        _refiner(tiny_clip, local_tokens="all")
    with pytest.raises(PromptvizError, match="topk"):
        _refiner(tiny_clip, topk=100)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(PromptvizError, match="read_temperature"):
            _refiner(tiny_clip, read_temperature=bad)


def test_read_temperature_sharpens_the_read(tiny_clip):
    """τ divides the read's scores: r_c = softmax_j(q_c·A_j / τ)·A, recomputed by hand; the
    authors' τ = 1 keeps every class near the uniform mix, a small τ makes the reads differ."""
    from promptviz.analysis.interventions import read_statistics
    stats = {}
    for tau in (1.0, 0.01):
        m = _refiner(tiny_clip, read_temperature=tau).eval()
        with torch.no_grad():
            t = m.base_text()
            by_hand = (torch.nn.functional.normalize(t, dim=-1) @ m.cache.t() / tau).softmax(-1)
            assert torch.allclose(m.read_weights(), by_hand, atol=1e-6)
            assert torch.allclose(m.read(t), by_hand @ m.cache, atol=1e-6)
        stats[tau] = read_statistics(m)
    assert torch.equal(_refiner(tiny_clip, read_temperature=1.0).cache,
                       _refiner(tiny_clip, read_temperature=0.01).cache)   # same start
    assert stats[1.0]["entropy"] > stats[1.0]["max_entropy"] - 0.01      # near uniform
    assert stats[0.01]["entropy"] < stats[1.0]["entropy"] - 0.5
    assert stats[0.01]["read_cosine"] < stats[1.0]["read_cosine"]


def _one_step(tiny_clip, **options):
    m = _refiner(tiny_clip, **options).train()
    loss, _, terms = _loss(m, *_batch())
    loss.backward()
    assert torch.isfinite(loss)
    return m, terms


SWITCHES = {
    "renormalize_refined": True, "normalize_local": True, "local_text": "refined",
    "local_tokens": "topk", "write_tokens": "patches", "cache_update": "gradient",
}


@pytest.mark.parametrize("key", sorted(SWITCHES))
def test_code_vs_paper_switches(tiny_clip, key):
    ref, ref_terms = _one_step(tiny_clip)
    m, terms = _one_step(tiny_clip, **{key: SWITCHES[key]})
    if key == "renormalize_refined":
        with torch.no_grad():
            assert torch.allclose(m.text_features().norm(dim=-1), torch.ones(len(NAMES)))
            assert not torch.allclose(ref.text_features().norm(dim=-1), torch.ones(len(NAMES)))
    elif key in {"normalize_local", "local_text", "local_tokens"}:
        assert not torch.isclose(terms["local"], ref_terms["local"])
        assert torch.equal(terms["ce"], ref_terms["ce"])
    elif key == "write_tokens":
        assert torch.equal(terms["ce"], ref_terms["ce"])
        assert not torch.equal(m.cache, ref.cache)
    else:  # cache_update="gradient": A is learned by backprop, not written
        assert isinstance(m.cache, torch.nn.Parameter) and m.cache.grad.abs().sum() > 0
        assert torch.equal(m.cache.detach(), _refiner(tiny_clip).cache)
        assert "cache" in m.trainable_state()


def test_cli_train_kgcoop_base(tiny_root, tmp_path, capsys):
    out = tmp_path / "tr"
    assert main(["train", "--method", "textrefiner", "--backbone", "pv-tiny", "--dataset", "dtd",
                 "--data-root", str(tiny_root), "--out", str(out), "--epochs", "2",
                 "--shots", "4", "--quiet", "--base-method", "kgcoop",
                 "--set", "read_temperature=0.01"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "textrefiner" and res["options"]["base_method"] == "kgcoop"
    from promptviz.train.loop import load_method
    assert load_method(out)[0].options.read_temperature == 0.01   # the option came back too
    assert {"ce", "local", "reg", "kg"} <= set(res["history"][-1])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data-root", str(tiny_root), "--json",
                 "--quiet"]) == 0                                # the cache came back with it
    printed = capsys.readouterr().out
    again = json.loads(printed[printed.index("{"):])
    assert again["base_acc"] == res["base_acc"] and again["new_acc"] == res["new_acc"]
    assert load_checkpoint(out)[0]["cache"].shape == (25, 32)
