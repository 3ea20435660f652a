"""Library helpers the TextRefiner notebook (03_textrefiner) uses: a shared read scale."""

from __future__ import annotations

import numpy as np
import pytest

from promptviz.viz.textrefiner import read_weights_heatmap

NAMES = ["red circle", "red_star", "blue square"]


def _weights() -> np.ndarray:
    w = np.full((3, 4), 0.25)
    w[0] = [0.40, 0.20, 0.20, 0.20]          # largest |w − 1/4| = 0.15
    w[1] = [0.22, 0.26, 0.26, 0.26]
    return w


def test_read_heatmap_default_scale_unchanged():
    trace = read_weights_heatmap(_weights(), NAMES).data[0]
    assert trace.zmin == 0 and trace.zmid is None and trace.zmax is None
    assert trace.colorscale[0][1].replace(" ", "") == "rgb(247,251,255)"   # Blues, from 0
    assert list(trace.y) == ["red circle", "red star", "blue square"]


def test_read_heatmap_centred_at_uniform():
    trace = read_weights_heatmap(_weights(), NAMES, zmid=0.25).data[0]
    assert trace.zmid == pytest.approx(0.25)
    assert trace.zmax == pytest.approx(0.40)                        # 0.25 + 0.15
    assert trace.zmin == pytest.approx(0.10)                        # symmetric around zmid
    # RdBu_r, diverging: dark blue below the centre, dark red above
    assert trace.colorscale[0][1].replace(" ", "") == "rgb(5,48,97)"
    assert trace.colorscale[-1][1].replace(" ", "") == "rgb(103,0,31)"


def test_two_heatmaps_share_one_scale():
    w = _weights()
    flat = np.full((3, 4), 0.25)
    a = read_weights_heatmap(w, NAMES, zmid=0.25, zmax=0.5).data[0]
    b = read_weights_heatmap(flat, NAMES, zmid=0.25, zmax=0.5).data[0]
    for trace in (a, b):
        assert (trace.zmin, trace.zmid, trace.zmax) == pytest.approx((0.0, 0.25, 0.5))
    # a uniform matrix alone still gets a valid (non-degenerate) range
    c = read_weights_heatmap(flat, NAMES, zmid=0.25).data[0]
    assert c.zmax > c.zmid > c.zmin


def test_probe_accuracy_reads_what_is_there_and_nothing_else():
    import torch

    from promptviz.analysis.probe import probe_accuracy
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    signal = torch.nn.functional.one_hot(y, 4).float() * 6 + torch.randn(200, 4, generator=g)
    noise = torch.randn(200, 16, generator=g)
    x = torch.cat([signal, noise], dim=1)
    assert probe_accuracy(x[:100], y[:100], x[100:], y[100:]) > 95      # label in the features
    assert probe_accuracy(noise[:100], y[:100], noise[100:], y[100:]) < 45  # chance is 25 %


def test_global_and_local_features_are_the_image_feature_and_pooled_patches(tiny_clip):
    import torch

    from promptviz.analysis.probe import global_and_local_features
    from promptviz.backbone import ActivationCache
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = global_and_local_features(tiny_clip, images, batch_size=2)     # batches joined
    last = tiny_clip.info.vision_layers - 1
    cache = ActivationCache(attn_layers=[last])
    with torch.no_grad():
        f = tiny_clip.encode_image(images, cache=cache, normalize=True)
    patches = torch.nn.functional.normalize(cache["vis_proj"][:, 1:], dim=-1)
    norm = torch.nn.functional.normalize
    assert torch.allclose(out["global"], f, atol=1e-5)
    assert torch.allclose(out["patch_mean"], norm(patches.mean(1), dim=-1), atol=1e-5)
    assert torch.allclose(out["patch_max"], norm(patches.amax(1), dim=-1), atol=1e-5)
    assert not torch.allclose(out["patch_mean"], out["global"], atol=1e-2)


def test_pipelines_draw_every_box_and_arrow_and_refuse_typos():
    from promptviz.errors import PromptvizError
    from promptviz.viz.pipeline import KINDS, PIPELINES, method_pipeline, pipeline_diagram
    for name, p in PIPELINES.items():
        fig = method_pipeline(name)
        assert len(fig.layout.shapes) == len(p["boxes"])
        labels = {a.text for a in fig.layout.annotations}
        assert all(b["label"] in labels for b in p["boxes"])
        n_arrows = sum(1 for a in fig.layout.annotations if a.showarrow)
        assert n_arrows == len(p["arrows"])
        legend = [t.name for t in fig.data]
        assert legend == [KINDS[k][2] for k in KINDS if k in {b["kind"] for b in p["boxes"]}]
    box = {"id": "a", "label": "a", "x": 0, "y": 0, "kind": "data"}
    with pytest.raises(PromptvizError, match="names a box"):
        pipeline_diagram([box], [("a", "b")])
    with pytest.raises(PromptvizError, match="kind"):
        pipeline_diagram([{**box, "kind": "magic"}], [])
    with pytest.raises(PromptvizError, match="no pipeline"):
        method_pipeline("maple")
