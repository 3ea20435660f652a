"""ToyWorld: determinism, pixel-exact ground truth, captions, and the on-disk suite."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptviz.data import load_dataset, scan_data_root
from promptviz.data.toyworld import (
    caption,
    patch_attributes,
    patch_labels,
    render_scenes,
    sample_batch,
)
from promptviz.data.toyworld.captions import COLOUR_WORDS, PAINT_WORDS, SHAPE_WORDS, WEAVE_WORDS
from promptviz.data.toyworld.render import object_masks, patch_coverage
from promptviz.data.toyworld.suite import DATASETS, build_suite, class_folder, load_ground_truth
from promptviz.data.toyworld.world import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    position_name,
    restyle,
    sample_scene,
)
from promptviz.errors import PromptvizError


def _one(r, **main) -> Scene:
    return sample_scene(r, n_objects=1, style="filled", main=main)


def test_stream_is_deterministic_and_seed_dependent():
    a = sample_batch(16, torch.Generator().manual_seed(0), 32)
    b = sample_batch(16, torch.Generator().manual_seed(0), 32)
    c = sample_batch(16, torch.Generator().manual_seed(1), 32)
    assert a.images.shape == (16, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.instance.shape == (16, 32, 32) and a.instance.dtype == torch.uint8
    assert 0 <= a.images.min() and a.images.max() <= 1
    assert len(a) == len(a.captions) == len(a.scenes) == 16
    assert torch.equal(a.images, b.images) and torch.equal(a.instance, b.instance)
    assert a.captions == b.captions
    assert not torch.equal(a.images, c.images) and a.captions != c.captions
    g = torch.Generator().manual_seed(0)
    first, second = sample_batch(4, g, 32), sample_batch(4, g, 32)
    assert not torch.equal(first.images, second.images)  # the generator advances


def test_stream_leaves_global_rngs_alone():
    states = torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    sample_batch(8, torch.Generator().manual_seed(3), 32)
    assert torch.equal(states[0], torch.random.get_rng_state())
    assert np.array_equal(states[1], np.random.get_state()[1])
    assert states[2] == random.getstate()


def test_stream_mixes_styles_and_backgrounds():
    batch = sample_batch(256, torch.Generator().manual_seed(0), 32)
    styles = [s.style for s in batch.scenes]
    assert styles.count("filled") > 128 and len(set(styles)) == 5
    assert len({s.background for s in batch.scenes}) == 5
    assert {len(s.objects) for s in batch.scenes} == {1, 2, 3}


def test_solid_filled_objects_have_their_colour():
    r = random.Random(0)
    scenes = [_one(r, colour=c, pattern="solid") for c in COLOURS]
    images, instance = render_scenes(scenes, 64)
    for img, inst, scene in zip(images, instance, scenes):
        obj = scene.objects[0]
        mean = img[:, inst == 1].mean(1)
        assert torch.allclose(mean, torch.tensor(obj.rgb), atol=1e-4)
        assert torch.allclose(mean, torch.tensor(COLOURS[obj.colour]), atol=0.05)


def test_pixel_counts_follow_size_classes():
    r = random.Random(1)
    for shape in SHAPES:
        scenes = [_one(r, shape=shape, size=s, position="center") for s in SIZES]
        _, instance = render_scenes(scenes, 64)
        counts = (instance == 1).sum((1, 2)).tolist()
        assert 0 < counts[0] < counts[1] < counts[2], (shape, counts)


def test_position_names_match_mask_centroids():
    r = random.Random(2)
    scenes = [_one(r, position=p, size=s) for p in POSITIONS for s in ("small", "medium")
              for _ in range(3)]
    _, instance = render_scenes(scenes, 64)
    for scene, inst in zip(scenes, instance):
        ys, xs = torch.nonzero(inst == 1, as_tuple=True)
        cx, cy = (xs.float().mean() + 0.5) / 64, (ys.float().mean() + 0.5) / 64
        assert position_name(float(cx), float(cy)) == scene.objects[0].position


def test_later_objects_occlude_earlier_ones():
    big = Obj("square", "red", "solid", "large", 0.5, 0.5, 0.25, rgb=COLOURS["red"])
    small = Obj("circle", "blue", "solid", "small", 0.5, 0.5, 0.1, rgb=COLOURS["blue"])
    images, instance = render_scenes([Scene([big, small]), Scene([small, big])], 64)
    assert instance[0, 32, 32] == 2 and instance[0, 32, 20] == 1
    assert torch.allclose(images[0, :, 32, 32], torch.tensor(COLOURS["blue"]))
    assert (instance[1] == 1).sum() == 0  # fully hidden under the big square
    masks = object_masks(instance, 2)
    assert masks.shape == (2, 2, 64, 64) and not (masks[:, 0] & masks[:, 1]).any()


def test_patch_labels_agree_with_instance_map():
    batch = sample_batch(12, torch.Generator().manual_seed(4), 64)
    labels = patch_labels(batch.instance, 8)
    assert labels.shape == (12, 8, 8) and labels.dtype == torch.uint8
    inst = batch.instance.numpy()
    for b in range(12):
        for i in range(8):
            for j in range(8):
                counts = np.bincount(inst[b, 8 * i:8 * i + 8, 8 * j:8 * j + 8].ravel(), minlength=4)
                assert labels[b, i, j] == counts.argmax()
    # numpy in, numpy out; coverage sums to one; thresholded labels are covered enough
    np_labels = patch_labels(inst[0], 8)
    assert isinstance(np_labels, np.ndarray) and np.array_equal(np_labels, labels[0].numpy())
    cov = patch_coverage(batch.instance, 8, num_objects=3)
    assert torch.allclose(cov.sum(1), torch.ones(12, 8, 8))
    rim = patch_labels(batch.instance, 8, min_coverage=0.25)
    hit = rim > 0
    assert (cov.gather(1, rim.long()[:, None])[:, 0][hit] >= 0.25).all()
    assert (rim[labels > 0] == labels[labels > 0]).all()
    shapes = patch_attributes(labels[0], batch.scenes[0].objects, "shape")
    assert shapes.shape == (8, 8) and set(shapes.ravel()) <= {"background", *SHAPES}
    with pytest.raises(PromptvizError):
        patch_labels(batch.instance, 7)


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z -]", " ", text.lower()) + " "


def test_captions_name_the_shape_with_synonyms_and_vary():
    r = random.Random(5)
    scenes = [sample_scene(r) for _ in range(400)]
    caps = [caption(s, r) for s in scenes]
    named = [any(f" {w} " in _words(c) for w in SHAPE_WORDS[s.objects[s.target].shape])
             for s, c in zip(scenes, caps)]
    assert np.mean(named) > 0.85
    used = {w for c in caps for ws in SHAPE_WORDS.values() for w in ws if f" {w} " in _words(c)}
    assert used - set(SHAPES), "synonyms are used"
    assert {"disc", "donut", "crimson"} & {w for c in caps for w in _words(c).split()}
    assert len(set(caps)) > 380
    again = {caption(scenes[0], r) for _ in range(30)}
    assert len(again) > 10  # many ways to say the same thing
    assert any(c.startswith(("a sketch", "a drawing", "an outline", "a line", "a pencil"))
               for s, c in zip(scenes, caps) if s.style == "sketch")
    colour_words = {w for ws in COLOUR_WORDS.values() for w in ws}
    for s, c in zip(scenes, caps):
        if s.style == "shifted":  # its pixels no longer show the colour
            assert not colour_words & set(_words(c).split()), c


def test_noisy_captions_miss_the_main_shape_and_noise_zero_changes_nothing():
    r = random.Random(7)
    scenes = [sample_scene(r) for _ in range(300)]
    clean = [caption(s, random.Random(i)) for i, s in enumerate(scenes)]
    assert clean == [caption(s, random.Random(i), 0.0) for i, s in enumerate(scenes)]

    def names_main(s, c):
        main = s.objects[s.target].shape
        return any(f" {w} " in _words(c) for w in SHAPE_WORDS[main])
    # only scenes whose other objects have other shapes can tell
    alone = [(s, i) for i, s in enumerate(scenes)
             if sum(o.shape == s.objects[s.target].shape for o in s.objects) == 1]
    rate = {p: np.mean([names_main(s, caption(s, random.Random(i), p)) for s, i in alone])
            for p in (0.0, 0.5, 1.0)}
    assert rate[0.0] > 0.85 and rate[1.0] < 0.15
    assert rate[1.0] < rate[0.5] - 0.2 < rate[0.0] - 0.4


def test_paint_names_only_when_asked_and_the_shipped_stream_is_unchanged():
    import hashlib
    r = random.Random(7)
    scenes = [sample_scene(r, style="filled") for _ in range(300)]
    plain = [caption(s, random.Random(i)) for i, s in enumerate(scenes)]
    paint = [caption(s, random.Random(i), paint=1.0) for i, s in enumerate(scenes)]
    common = {w for ws in COLOUR_WORDS.values() for w in ws}
    specialist = set(PAINT_WORDS.values())

    def colour_words(captions, words):
        return sum(f" {w} " in _words(c) for c in captions for w in words)
    assert colour_words(plain, specialist) == 0 and colour_words(plain, common) > 200
    assert colour_words(paint, common) == 0 and colour_words(paint, specialist) > 200
    some = [caption(s, random.Random(i), paint=0.1) for i, s in enumerate(scenes)]
    assert 0 < colour_words(some, specialist) < colour_words(some, common) / 4
    # paint=0 draws no extra random numbers: the captions toyclip's shipped contrastive
    # run was trained on (scenes of the full stream, seeded as below) stay what they were
    r = random.Random(7)
    stream = [sample_scene(r) for _ in range(300)]
    text = "\n".join(caption(s, random.Random(i)) for i, s in enumerate(stream))
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "74cf9c12a10eb45e"


def test_weave_words_are_never_in_a_caption_and_both_halves_have_every_pattern():
    """ToyWeaves' class names pair a shape word toyclip knows with a textile word no
    caption uses (not even with paint names on), and base and novel classes share patterns."""
    r = random.Random(11)
    scenes = [sample_scene(r) for _ in range(400)]
    texts = [_words(caption(s, random.Random(i), paint=p)) for i, s in enumerate(scenes)
             for p in (0.0, 1.0)]
    assert not [w for w in WEAVE_WORDS.values() for t in texts if f" {w} " in t]
    spec = DATASETS["toy_weaves"]
    half = len(spec.classnames) // 2          # base = the first half (subsample_classes)
    for names in (spec.classnames[:half], spec.classnames[half:]):
        assert {n.split()[0] for n in names} == set(WEAVE_WORDS.values())
    assert all(n.split()[1] in SHAPE_WORDS for n in spec.classnames)


def test_caption_is_deterministic_given_rng():
    scene = sample_scene(np.random.default_rng(0))
    assert caption(scene, np.random.default_rng(1)) == caption(scene, np.random.default_rng(1))


def test_restyle_keeps_objects():
    scene = sample_scene(random.Random(6), style="filled", background="dark")
    twin = restyle(scene, "sketch", random.Random(0))
    assert twin.style == "sketch" and twin.background == "light" and scene.style == "filled"
    assert [vars(o) for o in twin.objects] == [vars(o) for o in scene.objects]
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_bad_attributes_raise_user_errors():
    with pytest.raises(PromptvizError, match="unknown ToyWorld shape"):
        sample_scene(random.Random(0), main={"shape": "dodecahedron"})
    with pytest.raises(PromptvizError):
        build_suite("/nonexistent-never", datasets=["toy_nope"])


def test_build_suite_writes_coop_layout(tmp_path):
    folders = build_suite(tmp_path, n_train=2, n_val=1, n_test=2, image_size=32)
    assert [f.name for f in folders] == list(DATASETS)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    shapes_card = json.loads((tmp_path / "toy_shapes" / "dataset.json").read_text())
    for folder in folders:
        card = json.loads((folder / "dataset.json").read_text())
        assert set(card) == {"name", "image_dir", "split_file", "template", "classnames",
                             "domain", "base_dataset", "augment"}
        assert card["augment"] is False and load_dataset(str(folder)).augment is False
        assert card["split_file"] == f"split_zhou_{card['name']}.json" and "{}" in card["template"]
        split = json.loads((folder / card["split_file"]).read_text())
        assert list(split) == ["train", "val", "test"]
        C = len(card["classnames"])
        shifted = card["base_dataset"] is not None
        if shifted:
            assert card["classnames"] == shapes_card["classnames"]
            assert split["train"] == split["val"] == [] and len(split["test"]) == 2 * C
        else:
            assert [len(split[s]) for s in ("train", "val", "test")] == [2 * C, C, 2 * C]
        for name in ("train", "val", "test"):
            if split[name]:
                assert sorted({lab for _, lab, _ in split[name]}) == list(range(C))
        for impath, label, cname in split["test"][::3]:
            assert cname == class_folder(card["classnames"][label]) and cname.islower()
            path = folder / card["image_dir"] / impath
            assert np.array(Image.open(path)).shape == (32, 32, 3)
            gt = load_ground_truth(path)
            assert gt.instance.shape == (32, 32) and gt.patch_labels.shape == (4, 4)
            assert np.array_equal(gt.patch_labels, patch_labels(gt.instance, 8))
            assert gt.style == card["domain"] and gt.classname == card["classnames"][label]
            main = gt.objects[gt.target]
            assert main.radius == max(o.radius for o in gt.objects)
            assert gt.target_mask.sum() > 0 and gt.boxes[gt.target] is not None
            if shifted:  # the same scene as the base dataset's image at the same path
                base = load_ground_truth(tmp_path / card["base_dataset"] / "images" / impath)
                assert [vars(o) for o in base.objects] == [vars(o) for o in gt.objects]
            classname = card["classnames"][label]
            if card["name"].startswith("ToyShapes"):
                assert main.shape == classname
            elif card["name"] == "ToyTextures":
                assert main.pattern == classname
            elif card["name"] == "ToyFine":
                assert f"{main.colour} {main.shape}" == classname
            elif card["name"] == "ToyPaints":
                assert PAINT_WORDS[main.colour] == classname
            elif card["name"] == "ToyWeaves":
                assert f"{WEAVE_WORDS[main.pattern]} {main.shape}" == classname
            else:
                assert main.position in classname
    # the core loader reads every dataset back, and `promptviz datasets` lists them
    for folder in folders:
        ds = load_dataset(folder.name, tmp_path)
        card = json.loads((folder / "dataset.json").read_text())
        assert ds.classnames == card["classnames"] and ds.template == card["template"]
        assert len(ds.test) == 2 * ds.num_classes and Path(ds.test[0].impath).is_file()
    reports = {Path(r.folder).name: r for r in scan_data_root(tmp_path)}
    assert all(reports[f.name].ok for f in folders)
    stamp = (tmp_path / "toy_fine" / "build.json").stat().st_mtime_ns
    assert build_suite(tmp_path, n_train=2, n_val=1, n_test=2, image_size=32) == folders
    assert (tmp_path / "toy_fine" / "build.json").stat().st_mtime_ns == stamp
    # other settings rebuild a dataset in place
    build_suite(tmp_path, seed=1, n_train=1, n_val=1, n_test=1, image_size=32,
                datasets=["toy_textures"])
    split = json.loads((tmp_path / "toy_textures" / "split_zhou_ToyTextures.json").read_text())
    assert len(split["test"]) == len(DATASETS["toy_textures"].classnames)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_ground_truth_names_missing_sidecars(tmp_path):
    with pytest.raises(PromptvizError, match="missing"):
        load_ground_truth(tmp_path / "cat" / "0001.png")
