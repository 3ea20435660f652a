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
