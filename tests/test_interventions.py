"""Interventions replace one part of a trained method and put it back afterwards."""

from __future__ import annotations

import math

import pytest
import torch

from promptviz.errors import PromptvizError
from promptviz.evaluate import evaluate
from promptviz.interventions import (
    available,
    initial_context,
    intervene,
    intervention_table,
    read_statistics,
)
from promptviz.methods import build_method

NAMES = ["red banded", "green banded", "blue banded"]


@pytest.fixture()
def refiner(tiny_clip):
    torch.manual_seed(0)
    m = build_method("textrefiner", tiny_clip, NAMES, "a photo of a {}.")
    with torch.no_grad():
        m.W.weight.normal_(0, 0.5)                 # a refiner that does something
        m.base.prompt.ctx.add_(0.3 * torch.randn_like(m.base.prompt.ctx))   # "trained"
    return m.eval()


def test_alpha_zero_is_the_wrapped_method(refiner):
    before = refiner.text_features()
    with intervene(refiner, "alpha=0"):
        assert torch.allclose(refiner.text_features(), refiner.base_text())
        assert not torch.allclose(refiner.text_features(), before)
    assert torch.equal(refiner.text_features(), before)            # restored


def test_reads_replaced(refiner):
    t = refiner.base_text()
    zero = t + refiner.options.alpha * refiner.W(torch.cat([t, torch.zeros_like(t)], -1))
    with intervene(refiner, "read=zero"):
        assert torch.allclose(refiner.text_features(), zero, atol=1e-6)
    assert read_statistics(refiner)["read_cosine"] < 0.999999
    with intervene(refiner, "read=class_mean"):
        r = refiner.read(t)
        assert torch.allclose(r, r[:1].expand_as(r))
        assert read_statistics(refiner)["read_cosine"] == pytest.approx(1.0)
    assert "read" not in vars(refiner)                            # the method's own again


def test_cache_shuffled_keeps_each_dimension_and_is_restored(refiner):
    cache = refiner.cache.clone()
    with intervene(refiner, "cache=shuffled", seed=3):
        assert not torch.equal(refiner.cache, cache)
        assert torch.equal(refiner.cache.sort(0).values, cache.sort(0).values)
    assert torch.equal(refiner.cache, cache)


def test_context_initial(refiner, tiny_clip):
    start = initial_context(refiner)
    fresh = build_method("textrefiner", tiny_clip, NAMES, "a photo of a {}.")
    assert torch.equal(start, fresh.base.prompt.ctx)              # ctx_init's embedding
    trained = refiner.base.prompt.ctx.clone()
    with intervene(refiner, "context=initial"):
        assert torch.equal(refiner.base.prompt.ctx, start)
    assert torch.equal(refiner.base.prompt.ctx, trained)


def test_read_statistics_bounds(refiner):
    s = read_statistics(refiner)
    assert 0 < s["entropy"] <= s["max_entropy"] == pytest.approx(math.log(25))
    with torch.no_grad():
        refiner.cache.copy_(refiner.cache[:1].expand_as(refiner.cache))   # all slots alike
    s = read_statistics(refiner)
    assert s["entropy"] == pytest.approx(s["max_entropy"], abs=1e-5)
    assert s["read_cosine"] == pytest.approx(1.0)


def test_table_and_unknown_names(refiner, tiny_root):
    from promptviz.data import load_dataset
    ds = load_dataset("dtd", tiny_root)
    refiner.set_classnames(ds.classnames, ds.template)
    rows = intervention_table(refiner, ds.test, ds.classnames, ds.template)
    assert [r["intervention"] for r in rows] == ["none", *available(refiner)]
    by = {r["intervention"]: r for r in rows}
    assert by["alpha=0"]["acc"] == evaluate(refiner.base, ds.test, ds.classnames, ds.template,
                                            progress=False)
    assert all(r["delta"] == pytest.approx(r["acc"] - by["none"]["acc"]) for r in rows)
    with pytest.raises(PromptvizError, match="no intervention 'read=zero' for coop"):
        with intervene(refiner.base, "read=zero"):
            pass
    with pytest.raises(PromptvizError, match="has no cache"):
        read_statistics(refiner.base)
