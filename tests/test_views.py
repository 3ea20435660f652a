"""Views of methods (embeddings, TextRefiner, SEP), ground-truth scores and the explorers."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from promptviz.analysis import scores
from promptviz.viz import embeddings as emb
from promptviz.viz import sep as sepv
from promptviz.viz import standalone_html
from promptviz.viz import textrefiner as trv

NAMES = ["red star", "blue circle", "green heart"]
G, PX = 4, 32                       # pv-tiny: 32 px images, 8 px patches → 4×4 grid


def _images(b: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, PX, PX, 3), dtype=np.uint8)


def _local(b: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    attn = rng.random((b, G * G))
    return {"cls_attention": attn / attn.sum(1, keepdims=True),
            "topk": np.argsort(-attn, axis=1)[:, :3],
            "slot": rng.integers(0, 5, (b, G * G + 1))}


def _read_weights(c: int = 3, m: int = 5) -> np.ndarray:
    w = np.random.default_rng(2).random((c, m))
    return w / w.sum(1, keepdims=True)


def _record(mode: str = "faithful", b: int = 3, k: int = 4) -> dict:
    rng = np.random.default_rng(3)
    sel = (lambda: np.array([0, 1, 6, 16])) if mode == "faithful" else \
        (lambda: np.stack([rng.choice(G * G + 1, k, replace=False) for _ in range(b)]))
    att = (k, b, b) if mode == "faithful" else (b, k, k)
    vision = {layer: {"selected": sel(), "attention": rng.random(att), "s1": 0.7 + layer / 10,
                      "s2": 0.75, "scores": rng.random((b, G * G + 1))} for layer in (1, 2)}
    text = {1: {"selected": np.array([7, 8, 9, 10]), "attention": rng.random((k, 3, 3)),
                "s1": 0.75, "s2": 0.7}}
    return {"mode": mode, "grid": (G, G), "vision": vision, "text": text}


def _all_figures() -> dict[str, go.Figure]:
    imgs, local, w = _images(), _local(), _read_weights()
    rec = _record()
    stages = {s: np.random.default_rng(i).normal(size=(3, 8)) for i, s in
              enumerate(("t0", "t", "t̂"))}
    return {
        "shift": emb.embedding_shift(stages, NAMES),
        "heat": trv.read_weights_heatmap(w, NAMES),
        "gallery": trv.cache_gallery(imgs, local["slot"], w, NAMES, [["a", "b"]] * 5, per_slot=2),
        "topk": trv.topk_patches_figure(imgs[0], local["cls_attention"][0], local["topk"][0]),
        "selmap": sepv.selection_map(imgs[0], sepv.selected_for_image(rec, 0), G),
        "freq": sepv.selection_frequency(sepv.selection_counts([rec])[0]),
        "text": sepv.text_selection(["⟨SOS⟩", "x", "x", "red", "star", "."], [3, 4], [1, 2]),
        "gates": sepv.fusion_scalars(sepv.record_scalars(rec), sepv.record_scalars(rec, "text")),
        "tfm": sepv.tfm_attention(rec["vision"][1]["attention"]),
    }


# --- views: shape of the figures -----------------------------------------------------

def test_project_2d_shared_basis_and_sign():
    a = np.random.default_rng(0).normal(size=(5, 6))
    out = emb.project_2d({"a": a, "b": a.copy()})
    assert out["a"].shape == (5, 2) and np.allclose(out["a"], out["b"])
    flipped = emb.project_2d({"a": -a, "b": -a})          # PCA of -a: same axes up to sign
    assert np.allclose(np.abs(flipped["a"]), np.abs(out["a"]))
    assert np.allclose(out["a"].mean(0), 0)
    with pytest.raises(ValueError, match="pca"):
        emb.project_2d({"a": a}, method="tsne")


def test_embedding_shift_traces_and_arrows():
    fig = _all_figures()["shift"]
    assert [t.name for t in fig.data] == ["t0", "t", "t̂"]
    assert len(fig.layout.annotations) == 2 * len(NAMES)
    only_two = emb.embedding_shift({"t0": np.eye(3), "t": np.eye(3)[::-1]}, NAMES)
    assert len(only_two.data) == 2 and len(only_two.layout.annotations) == len(NAMES)


def test_textrefiner_views():
    figs, local = _all_figures(), _local()
    assert len(figs["heat"].data) == 1 and figs["heat"].data[0].z.shape == (3, 5)
    topk = figs["topk"]
    assert [type(t).__name__ for t in topk.data] == ["Image", "Heatmap"]
    assert len(topk.layout.shapes) == 3
    # gallery: per shown slot, ≤ per_slot images + 1 bar chart; one outline per written patch
    gal, s = figs["gallery"], local["slot"]
    shown = [j for j in range(5) if (s == j).any()]
    n_img = sum(min(2, int(((s[:, 1:] == j).sum(1) > 0).sum())) for j in shown)
    assert sum(isinstance(t, go.Bar) for t in gal.data) == len(shown)
    assert sum(isinstance(t, go.Image) for t in gal.data) == n_img
    one = trv.cache_gallery(_images(), s, _read_weights(), NAMES, per_slot=3, slots_to_show=[2])
    per_image = (s[:, 1:] == 2).sum(1)
    top3 = np.argsort(-per_image, kind="stable")[:3]
    assert len(one.layout.shapes) == int(per_image[top3].sum())


def test_slot_words_nearest():
    words = ["red", "blue", "star"]
    feats = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    cache = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 5.0]])
    assert trv.slot_words(cache, feats, words, k=2) == [["red", "blue"], ["star", "blue"]]


def test_sep_views():
    figs, rec = _all_figures(), _record()
    sel = figs["selmap"]
    # CLS has no outline; each outline is two strokes (dark under light)
    assert len(sel.data) == 2 and len(sel.layout.shapes) == 2 * 3 * 2
    assert all("CLS selected" in a.text for a in sel.layout.annotations)
    scored = sepv.selection_map(_images()[0], {1: [2, 3]}, (G, G),
                                {1: rec["vision"][1]["scores"][0]})
    assert [type(t).__name__ for t in scored.data] == ["Image", "Heatmap"]
    counts, cls, n = sepv.selection_counts([rec, _record("per_sample")])
    assert n == 6 and set(counts) == {1, 2} and counts[1].shape == (G, G)
    assert counts[1].sum() + cls[1] == 6 * 4
    assert counts[1].ravel()[0] >= 3 and cls[1] >= 3           # faithful: counted per image
    assert len(figs["freq"].data) == 2
    assert len(figs["text"].data) == 1 and list(figs["text"].data[0].z[0]) == [0, .5, .5, 1, 1, 0]
    assert len(figs["gates"].data) == 4
    assert len(figs["tfm"].data) == 4                            # [K, B, B]: one panel per slot
    assert len(sepv.tfm_attention(np.eye(4)).data) == 1


def test_views_deterministic_and_offline(tmp_path):
    first, second = _all_figures(), _all_figures()
    for name, fig in first.items():
        assert fig.to_json() == second[name].to_json(), name
    html = standalone_html(first["gallery"], tmp_path / "g.html").read_text()
    assert "<script src=" not in html and "plotly" in html.lower()


# --- scores -------------------------------------------------------------------------

def test_slot_purity_hand_example():
    out = scores.slot_purity([0, 0, 0, 1, 1], [2, 2, 3, 4, 4], n_slots=3)
    assert out["purity"][0] == pytest.approx(2 / 3) and out["purity"][1] == 1.0
    assert math.isnan(out["purity"][2]) and out["sizes"].tolist() == [3, 2, 0]
    assert out["mean"] == pytest.approx(0.8) and out["majority"] == [2, 4, None]
    assert 0 < out["random"] < 1
    rnd = scores.random_purity(np.repeat([0, 1], 50), [50, 50], seed=1)
    assert 0.5 <= rnd < 0.7                                     # mixed labels: far from pure
    assert scores.random_purity(np.repeat([0, 1], 50), [50, 50], seed=1) == rnd


def test_on_object_share_hand_example():
    obj = np.zeros((2, 16), bool)
    obj[0, :4] = True                                           # image 0: top row is object
    obj[1, [5, 6]] = True
    assert scores.on_object_share([[0, 1, 8, 9], [5, 6, 7, -1]], obj) == pytest.approx(4 / 7)
    assert scores.on_object_share([0, 5], obj) == pytest.approx(2 / 4)   # shared by the batch
    assert scores.object_area_share(obj) == pytest.approx((4 / 16 + 2 / 16) / 2)
    assert scores.tokens_to_patches([0, 1, 17]).tolist() == [-1, 0, 16]


def test_patch_labels_from_ground_truth():
    from promptviz.data.toyworld.world import Obj
    lab = np.array([[[0, 1], [2, 0]], [[1, 1], [0, 0]]])
    assert scores.patch_object_mask(lab).tolist() == [[False, True, True, False],
                                                      [True, True, False, False]]
    assert scores.patch_object_mask(lab, targets=[1, 0])[0].tolist() == [False, False, True,
                                                                         False]

    class GT:
        def __init__(self, labels, objects):
            self.patch_labels, self.objects = labels, objects
    star = Obj("star", "red", "solid", "small", 0.5, 0.5, 0.1)
    ring = Obj("ring", "blue", "dotted", "large", 0.2, 0.2, 0.2)
    out = scores.patch_attribute_labels([GT(lab[0], [star, ring]), GT(lab[1], [ring])], "shape")
    bg, shapes = len(scores.attribute_vocabulary("shape")), scores.attribute_vocabulary("shape")
    assert out.tolist() == [[bg, shapes.index("star"), shapes.index("ring"), bg],
                            [shapes.index("ring")] * 2 + [bg] * 2]


# --- explorers ------------------------------------------------------------------------

def test_textrefiner_explorer_reacts():
    from promptviz.viz.widgets import textrefiner_explorer
    ex = textrefiner_explorer(_images(), _local(), _read_weights(), NAMES)
    assert set(ex.figures) == {"attention", "slot_in_image", "class", "slot"}
    before = {k: f.to_json() for k, f in ex.figures.items()}
    ex.controls["image"].value = 2
    assert ex.figures["attention"].to_json() != before["attention"]
    assert ex.figures["class"].to_json() == before["class"]      # does not read the image
    ex.controls["class"].value = 1
    assert ex.figures["class"].to_json() != before["class"]
    slot = ex.controls["slot"]
    slot.value = slot.options[-1][1]
    assert ex.figures["slot"].to_json() != before["slot"]
    shown = ex.outputs["slot"].outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert shown["layout"]["title"]["text"].startswith(f"slot {slot.value}:")


@pytest.mark.parametrize("mode", ["faithful", "per_sample"])
def test_sep_explorer_reacts(mode):
    from promptviz.viz.widgets import sep_explorer
    ex = sep_explorer(_images(), _record(mode), text_tokens=["⟨SOS⟩"] + ["x"] * 10)
    before = {k: f.to_json() for k, f in ex.figures.items()}
    ex.controls["block"].value = 2
    for name in ("selection", "gates", "text"):
        assert ex.figures[name].to_json() != before[name], name
    before = {k: f.to_json() for k, f in ex.figures.items()}
    ex.controls["image"].value = 1
    assert ex.figures["selection"].to_json() != before["selection"]
    assert (ex.figures["attention"].to_json() != before["attention"]) == (mode == "per_sample")


# --- integration with the methods ----------------------------------------------------

def test_methods_feed_the_views(tiny_clip, tmp_path):
    from promptviz.methods import build_method
    from promptviz.viz.widgets import sep_explorer, textrefiner_explorer
    torch.set_num_threads(1)
    imgs = _images(3, seed=5)
    x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    tr = build_method("textrefiner", tiny_clip, NAMES, "a photo of a {}.").eval()
    local, w = tr.local_tokens(x), tr.read_weights()
    words = ["red", "blue", "green", "star", "circle", "heart"]
    with torch.no_grad():
        wf = tiny_clip.encode_text(tiny_clip.tokenize(words), normalize=True)
        points = {"t0": tr.base.frozen_text_features(), "t": tr.base_text(),
                  "t̂": tr.text_features()}
    sw = trv.slot_words(tr.cache, wf, words)
    assert len(sw) == tr.cache.shape[0] and all(len(r) == 3 for r in sw)
    figs = [trv.read_weights_heatmap(w, NAMES),
            trv.cache_gallery(imgs, local["slot"], w, NAMES, sw),
            trv.topk_patches_figure(imgs[0], local["cls_attention"][0], local["topk"][0]),
            emb.embedding_shift(points, NAMES)]
    textrefiner_explorer(imgs, local, w, NAMES, slot_words=sw)
    sep = build_method("sep", tiny_clip, NAMES, "a photo of a {}.")
    rec = sep.selection_record(x)
    tokens = sepv.prompt_tokens(tiny_clip, sep.prompt.ids[0])
    assert tokens[0] == sepv.SOS and tokens[-1] == sepv.EOT
    figs += [sepv.selection_map(imgs[0], sepv.selected_for_image(rec, 0), rec["grid"]),
             sepv.selection_frequency(*sepv.selection_counts([rec])[:1]),
             sepv.text_selection(tokens, rec["text"][1]["selected"], range(1, 7)),
             sepv.fusion_scalars(sepv.record_scalars(rec), sepv.record_scalars(rec, "text")),
             sepv.tfm_attention(rec["vision"][1]["attention"])]
    ex = sep_explorer(imgs, rec, text_tokens=tokens)
    assert all(isinstance(f, go.Figure) for f in figs + list(ex.figures.values()))
    obj = np.zeros((3, G * G), bool)
    obj[:, 5] = True
    share = scores.on_object_share(scores.tokens_to_patches(rec["vision"][1]["selected"]), obj)
    assert 0.0 <= share <= 1.0 or math.isnan(share)


def test_slot_on_object_hand_example():
    slots = np.array([[0, 0, 1, 2], [1, 1, 0, 2]])
    obj = np.array([[True, False, True, False], [False, True, True, False]])
    share = scores.slot_on_object(slots, obj, 4)
    assert share[:3].tolist() == [2 / 3, 2 / 3, 0.0] and math.isnan(share[3])
    with pytest.raises(ValueError):
        scores.slot_on_object(slots, obj[:1], 4)


def test_patch_class_agreement_hand_example():
    text = np.array([[1.0, 0.0], [0.0, 1.0]])
    tokens = np.array([[[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]])      # one image of class 0
    mask = np.array([[True, True, False]])
    got = scores.patch_class_agreement(tokens, text, [0], mask)
    assert got == {"cos": 0.5, "correct": 0.5}
    assert scores.patch_class_agreement(tokens, text, [1], mask)["correct"] == 0.5
    assert scores.patch_class_agreement(tokens, text, [0], ~mask)["cos"] == pytest.approx(
        math.sqrt(0.5))


# --- explorers without a kernel ------------------------------------------------------

def _resolve(node: object, parts: list) -> object:
    """What the page's script does: put every shared part back."""
    if isinstance(node, dict):
        if "pv-ref" in node:
            return _resolve(parts[node["pv-ref"]], parts)
        return {k: _resolve(v, parts) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, parts) for v in node]
    return node


def test_static_explorer_stores_every_state_of_every_view():
    """Each view holds one figure per combination of the controls it reads, and each
    stored figure, its shared parts put back, is exactly what the live explorer draws."""
    import json

    from promptviz.viz.static_explorer import _key, precompute
    from promptviz.viz.widgets import textrefiner_explorer
    ex = textrefiner_explorer(_images(), _local(), _read_weights(), NAMES)
    controls = ex.static_controls()
    data = precompute(controls, ex.views)
    n = {c.name: len(c.options) for c in controls}
    assert {v: len(d["figures"]) for v, d in data["views"].items()} == {
        "attention": n["image"], "slot_in_image": n["image"] * n["slot"],
        "class": n["class"] * n["slot"], "slot": n["slot"]}
    for value in (0, 2):
        ex.controls["image"].value = value
        stored = data["views"]["attention"]["figures"][_key([value])]
        assert _resolve(stored, data["parts"]) == json.loads(ex.figures["attention"].to_json())
    # what recurs (plotly's template, the images) is stored once: a fraction of the whole
    whole = sum(len(json.dumps(_resolve(ref, data["parts"]))) for view in data["views"].values()
                for ref in view["figures"].values())
    assert len(json.dumps(data)) < whole / 5


def test_static_explorer_html_is_stable_and_self_contained():
    from promptviz.viz.widgets import sep_explorer
    ex = sep_explorer(_images(), _record("per_sample"), text_tokens=["⟨SOS⟩"] + ["x"] * 10)
    a, b = ex.to_html(include_plotlyjs=False), ex.to_html(include_plotlyjs=False)
    assert a == b                                  # committed notebooks do not churn
    assert "<script" in a and 'src="http' not in a and "https://cdn" not in a
    assert a.count('data-control="') == 2 and a.count('class="pv-view"') == 4
    assert 'type="range"' in a
    assert len(ex.to_html()) > len(a) + 3_000_000          # plotly.js inside by default
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and "pv-explorer" in \
        bundle["text/html"]


def test_static_explorer_keeps_the_first_options_and_says_so():
    from promptviz.viz.widgets import textrefiner_explorer
    ex = textrefiner_explorer(_images(), _local(), _read_weights(), NAMES)
    ex.static_keep = {"image": 2, "slot": 1}
    html = ex.to_html(include_plotlyjs=False)
    assert "the first 2 of 3 images" in html and "the first 1 of " in html
    assert [len(c.options) for c in ex.static_controls()] == [2, 1, 3]


def test_static_explorer_refuses_too_many_states():
    from promptviz.viz.static_explorer import TooManyStates, precompute
    from promptviz.viz.widgets import textrefiner_explorer
    ex = textrefiner_explorer(_images(), _local(), _read_weights(), NAMES)
    with pytest.raises(TooManyStates, match=r"view 'slot_in_image' reads \['image', 'slot'\]"
                                            r".*fewer images"):
        precompute(ex.static_controls(), ex.views, max_states=8)


# --- faults found on the screenshots (#23 item 6) ------------------------------------------

def test_sep_views_say_block_and_show_what_they_name():
    rec = _record("per_sample")
    fig = sepv.selection_map(_images()[0], sepv.selected_for_image(rec, 0), rec["grid"],
                             {k: v["scores"][0] for k, v in rec["vision"].items()},
                             numbered=True)
    titles = [a.text for a in fig.layout.annotations]
    assert "block 1" in titles and not any(t.startswith("layer") for t in titles)
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert heat[0].showscale and heat[0].colorbar.title.text == "energy"   # a colour bar
    numbers = [a.text for a in fig.layout.annotations if a.text not in titles[:2]]
    assert numbers == [str(k) for k, t in enumerate(sepv.selected_for_image(rec, 0)[1])
                       if t > 0] + [str(k) for k, t in enumerate(
                           sepv.selected_for_image(rec, 0)[2]) if t > 0]
    # outlines visible on a red object: a dark line under a light one, never red alone
    colours = {s.line.color for s in fig.layout.shapes}
    assert colours == {"#111111", "#ffffff"}
    assert "blue" not in sepv.text_selection(["a", "b"], [1]).layout.xaxis.title.text
    assert "blue" in sepv.text_selection(["a", "x"], [0], [1]).layout.xaxis.title.text
    att = sepv.tfm_attention(np.ones((2, 2)), labels=["prompt 0", "prompt 1"],
                             column_labels=["token 0", "token 1"])
    assert list(att.data[0].x) == ["token 0", "token 1"] and list(att.data[0].y)[0] == \
        "prompt 0"


def test_sep_explorer_shows_the_picked_images_prompt():
    from promptviz.viz.widgets import sep_explorer
    tokens = {c: ["⟨SOS⟩", "x", "x", c, ".", "⟨EOT⟩"] for c in ("star", "heart")}
    ex = sep_explorer(_images(), _record("per_sample"), image_labels=["star", "heart", "star"],
                      text_tokens=tokens)
    before = ex.figures["text"]
    assert "star" in before.data[0].text[0] and "blue" in before.layout.xaxis.title.text
    ex.controls["image"].value = 1
    assert "heart" in ex.figures["text"].data[0].text[0]
    with pytest.raises(ValueError, match="needs image_labels"):
        sep_explorer(_images(), _record("per_sample"), text_tokens=tokens)


def test_class_reads_figure_marks_the_uniform_read():
    w = _read_weights()
    fig = trv.class_reads_figure(w, NAMES, 0)
    line = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(line) == 1 and line[0].y0 == pytest.approx(1 / w.shape[1])


def test_textrefiner_explorer_says_when_a_slot_is_empty():
    from promptviz.viz.widgets import textrefiner_explorer
    local = _local()
    local["slot"] = np.where(local["slot"] == 4, 0, local["slot"])      # nothing in slot 4
    ex = textrefiner_explorer(_images(), local, _read_weights(), NAMES)
    ex.controls["slot"].value = 4
    fig = ex.figures["slot"]
    assert not fig.data and "slot 4 is empty" in fig.layout.annotations[0].text


def test_textrefiner_explorer_names_background_slots_with_ground_truth():
    """Nearest words describe a slot's vector, not whether it holds objects: with the
    object share of each slot, background slots say so and object slots come first."""
    from promptviz.viz.widgets import textrefiner_explorer
    words = [["yellow"], ["red"], ["pink"], ["yellow"], ["orange"]]
    share = [0.0, 0.6, 0.3, np.nan, 0.05]
    ex = textrefiner_explorer(_images(), _local(), _read_weights(), NAMES, slot_words=words,
                              object_share=share)
    labels = [label for label, _ in ex.controls["slot"].options]
    assert [j for _, j in ex.controls["slot"].options] == [1, 2, 4, 0, 3]
    assert labels[0].endswith("60 % on objects) · red")
    assert labels[2].endswith(" 5 % on objects) · background")
    assert labels[3].endswith(" 0 % on objects) · background")
    assert labels[4].endswith("tokens) · yellow")               # no patches: no share
    ex.controls["slot"].value = 0
    assert "background" in ex.figures["slot"].to_json()
    with pytest.raises(ValueError, match="3 values for 5 slots"):
        textrefiner_explorer(_images(), _local(), _read_weights(), NAMES, object_share=[0] * 3)
