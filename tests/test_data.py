"""Tests for promptviz.data: every on-disk layout, few-shot sampling, caches, errors.

All datasets here are tiny and generated into tmp_path (8x8 PNGs)."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from promptviz.data import (
    KNOWN_DATASETS,
    ImageDataset,
    Sample,
    clip_transform,
    few_shot,
    format_report,
    load_dataset,
    scan_data_root,
    subsample_classes,
    train_transform,
)
from promptviz.data import fewshot as fewshot_module
from promptviz.errors import PromptvizError

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


# ------------------------------------------------------------------ data makers
def png(path: Path, color=(200, 30, 30), size=(8, 8), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)


def make_split_zhou(folder: Path, split_name: str, classes: list[str], per_split=(6, 3, 2),
                    image_dir: str = "images") -> dict:
    """A split_zhou dataset: images/<class>/<split>_<i>.png and the JSON file."""
    split = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(classes):
        for name, n in zip(split, per_split):
            for i in range(n):
                rel = f"{cls}/{name}_{i}.png"
                png(folder / image_dir / rel, (label * 40, i * 20, 100))
                split[name].append([rel, label, cls])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / split_name).write_text(json.dumps(split))
    return split


def make_dtd(data: Path, classes=("banded", "zig_zagged", "honey_combed"), **kw) -> Path:
    make_split_zhou(data / "dtd", "split_zhou_DescribableTextures.json", list(classes), **kw)
    return data / "dtd"


def make_card(folder: Path, classes: list[str], name: str = "toy_shapes", **kw) -> Path:
    make_split_zhou(folder, "split_zhou_ToyShapes.json", classes, **kw)
    card = {"name": name, "image_dir": "images", "split_file": "split_zhou_ToyShapes.json",
            "template": "a toy {}.", "extra": "ignored"}
    (folder / "dataset.json").write_text(json.dumps(card))
    return folder


WNIDS = ["n001", "n002", "n003"]
NAMES = ["tench", "goldfish", "great white shark"]


def make_imagenet(data: Path, train_per_class=10, val_per_class=2) -> Path:
    root = data / "imagenet"
    for w in WNIDS:
        for i in range(train_per_class):
            png(root / "images" / "train" / w / f"{w}_{i}.JPEG")
        for i in range(val_per_class):
            png(root / "images" / "val" / w / f"val_{w}_{i}.JPEG")
    (root / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in zip(WNIDS, NAMES)))
    return root


# --------------------------------------------------------------------- layouts
def test_split_zhou_round_trip(tmp_path):
    root = make_dtd(tmp_path)
    ds = load_dataset("dtd", tmp_path)
    assert ds.name == "dtd" and ds.root == root.resolve()
    assert ds.classnames == ["banded", "zig zagged", "honey combed"]
    assert ds.template == "{} texture."
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 9, 6)
    assert ds.num_classes == 3
    for s in ds.train + ds.val + ds.test:
        assert Path(s.impath).is_absolute() and Path(s.impath).is_file()
        assert s.classname == ds.classnames[s.label]
    assert ds.train[6] == Sample(str(root.resolve() / "images/zig_zagged/train_0.png"), 1,
                                 "zig zagged")
    assert len(ds.split_hash) == 12
    # aliases in any case, and the folder path itself, give the same dataset
    for other in (load_dataset("DescribableTextures", tmp_path), load_dataset(str(root))):
        assert other.train == ds.train and other.split_hash == ds.split_hash
    assert "classes=3" in repr(ds)


def test_known_templates():
    t = {k: s.template for k, s in KNOWN_DATASETS.items()}
    assert t["oxford_pets"] == "a photo of a {}, a type of pet."
    assert t["eurosat"] == "a centered satellite photo of {}."
    assert t["food-101"] == "a photo of {}, a type of food."
    assert t["ucf101"] == "a photo of a person doing {}."
    assert t["imagenet-rendition"] == t["sun397"] == "a photo of a {}."
    assert len(KNOWN_DATASETS) == 15


def test_card_dataset_by_name_and_path(tmp_path):
    folder = make_card(tmp_path / "toy_shapes", ["red_circle", "blue_square"])
    ds = load_dataset("toy_shapes", tmp_path)
    assert ds.name == "toy_shapes" and ds.template == "a toy {}."
    assert ds.classnames == ["red circle", "blue square"]
    assert [len(ds.train), len(ds.val), len(ds.test)] == [12, 6, 4]
    by_path = load_dataset(str(folder))
    assert by_path.train == ds.train and by_path.split_hash == ds.split_hash
    assert ds.augment is True                    # CoOp's crop + flip unless the card says no


def test_card_augment_flag(tmp_path):
    folder = make_card(tmp_path / "toy", ["a", "b"])
    card = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**card, "augment": False}))
    assert load_dataset(str(folder)).augment is False
    (folder / "dataset.json").write_text(json.dumps({**card, "augment": "no"}))
    with pytest.raises(PromptvizError, match="'augment' must be true or false"):
        load_dataset(str(folder))


def test_card_missing_fields(tmp_path):
    folder = make_card(tmp_path / "toy", ["a", "b"])
    (folder / "dataset.json").write_text(json.dumps({"name": "toy", "image_dir": "images"}))
    with pytest.raises(PromptvizError, match="split_file, template"):
        load_dataset(str(folder))
    card = {"name": "toy", "image_dir": "images", "split_file": "nope.json", "template": "{}"}
    (folder / "dataset.json").write_text(json.dumps(card))
    with pytest.raises(PromptvizError, match=r"nope.json not found: fix 'split_file' in"):
        load_dataset(str(folder))


def test_folder_per_class_hashed_split(tmp_path):
    root = tmp_path / "my_pets"
    for cls in ("tabby_cat", "golden-retriever", "parrot"):
        for i in range(20):
            png(root / cls / f"img_{i:03d}.png")
    ds = load_dataset(str(root))
    assert ds.name == "my_pets" and ds.template == "a photo of a {}."
    assert ds.classnames == ["golden retriever", "parrot", "tabby cat"]  # sorted by folder
    all_paths = [s.impath for s in ds.train + ds.val + ds.test]
    assert len(all_paths) == len(set(all_paths)) == 60
    for label in range(3):
        assert any(s.label == label for s in ds.train)
        assert any(s.label == label for s in ds.test)
    assert 24 <= len(ds.train) <= 48  # ~60 % by hash
    # deterministic, and adding files does not move the old ones
    again = load_dataset(str(root))
    assert again.train == ds.train and again.split_hash == ds.split_hash
    png(root / "parrot" / "img_new.png")
    grown = load_dataset(str(root))
    assert set(s.impath for s in ds.train) <= set(s.impath for s in grown.train)
    assert grown.split_hash != ds.split_hash


def test_folder_per_class_tiny_classes(tmp_path):
    for cls, n in (("one", 1), ("two", 2)):
        for i in range(n):
            png(tmp_path / "tiny" / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path / "tiny"))
    assert sorted(s.label for s in ds.train) == [0, 1]
    assert [s.label for s in ds.test] == [1]


def test_folder_per_class_explicit_splits(tmp_path):
    root = tmp_path / "flowers"
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for cls in ("rose", "sun_flower"):
            for i in range(n):
                png(root / split / cls / f"{i}.png")
    ds = load_dataset(str(root))
    assert ds.classnames == ["rose", "sun flower"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 4, 6)
    assert all("/test/" in s.impath for s in ds.test)
    shutil.rmtree(root / "test")
    with pytest.raises(PromptvizError, match="no test/ folder"):
        load_dataset(str(root))


def test_imagenet_layout_and_variants(tmp_path):
    make_imagenet(tmp_path)
    ds = load_dataset("ImageNet", tmp_path)
    assert ds.name == "imagenet" and ds.classnames == NAMES
    # val: min(10, n // 5) = 2 train images per class held out, disjoint from train
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 6)
    assert not {s.impath for s in ds.train} & {s.impath for s in ds.val}
    assert all("/images/val/" in s.impath for s in ds.test)
    assert [s.label for s in ds.test] == [0, 0, 1, 1, 2, 2]

    # ImageNet-A: a subset of classes, labels dense in ImageNet order, names from the sibling
    for w in ("n003", "n001"):
        png(tmp_path / "imagenet-adversarial" / "imagenet-a" / w / "a.jpg")
    a = load_dataset("imagenet-a", tmp_path)
    assert a.classnames == ["tench", "great white shark"]
    assert [(s.label, s.classname) for s in a.test] == [(0, "tench"), (1, "great white shark")]
    assert a.train == [] and a.val == []

    # ImageNet-V2: folders named by label, classnames.txt in its own folder wins
    for label in range(3):
        png(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label)
            / "x.jpeg")
    (tmp_path / "imagenetv2" / "classnames.txt").write_text("n001 a\nn002 b\nn003 c\n")
    v2 = load_dataset("imagenetv2", tmp_path)
    assert v2.classnames == ["a", "b", "c"] and [s.label for s in v2.test] == [0, 1, 2]

    # ImageNet-Sketch needs every class: a missing folder is a half-download
    png(tmp_path / "imagenet-sketch" / "images" / "n001" / "s.jpg")
    with pytest.raises(PromptvizError, match=r"2 of 3 class folders are missing.*n002, n003"):
        load_dataset("imagenet-sketch", tmp_path)


def test_fgvc_layout(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Boeing 737-800"]
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for split, per in (("train", 3), ("val", 1), ("test", 2)):
        lines = []
        for v in variants:
            for _ in range(per):
                png(root / "images" / f"{n:07d}.jpg")
                lines.append(f"{n:07d} {v}")
                n += 1
        (root / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    ds = load_dataset("FGVCAircraft", tmp_path)
    assert ds.classnames == variants
    assert ds.template == "a photo of a {}, a type of aircraft."
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 3, 6)
    assert ds.test[-1].classname == "Boeing 737-800" and ds.test[-1].label == 2
    (root / "images_variant_val.txt").write_text("0000009 Concorde\n")
    with pytest.raises(PromptvizError, match="'Concorde' is not listed"):
        load_dataset("fgvc_aircraft", tmp_path)


# -------------------------------------------------------------------- few-shot
@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTVIZ_CACHE", str(tmp_path / "user_cache"))
    make_card(tmp_path / "data" / "toy", [f"class_{c}" for c in "abcd"], name="toy",
              per_split=(10, 6, 2))
    return load_dataset("toy", tmp_path / "data")


def _rel(ds):
    return [(str(Path(s.impath).relative_to(ds.root)), s.label) for s in ds.train + ds.val]


def test_few_shot_counts_and_determinism(toy):
    shutil.rmtree(toy.root / "promptviz_fewshot", ignore_errors=True)
    a = few_shot(toy, 2, seed=1)
    for label in range(4):
        assert sum(s.label == label for s in a.train) == 2
        assert sum(s.label == label for s in a.val) == 2  # min(K, 4)
    assert a.test == toy.test
    assert a.split_hash != toy.split_hash
    shutil.rmtree(toy.root / "promptviz_fewshot")  # sample again, no cache
    random.seed(12345)  # the global RNG must not matter
    b = few_shot(toy, 2, seed=1)
    assert a.train == b.train and a.val == b.val
    c = few_shot(toy, 2, seed=2)
    assert c.train != a.train
    k8 = few_shot(toy, 8, seed=1)
    assert [sum(s.label == lab for s in k8.val) for lab in range(4)] == [4, 4, 4, 4]
    assert few_shot(toy, None, seed=1) is toy
    with pytest.raises(PromptvizError, match="--shots 0"):
        few_shot(toy, 0, seed=1)


def test_few_shot_uses_documented_rng(toy):
    got = few_shot(toy, 3, seed=7)
    for label in range(4):
        group = sorted((s for s in toy.train if s.label == label), key=lambda s: s.impath)
        rng = random.Random(f"{toy.split_hash}|3|7|{label}")      # no dataset name in it
        want = sorted(rng.sample(group, 3), key=lambda s: s.impath)
        assert [s for s in got.train if s.label == label] == want


def _renamed_copy(ds, folder: Path, name: str):
    """``ds``'s folder copied to ``folder`` (its few-shot cache too, as a rename keeps it)
    with ``name`` in its card: the same split file, another dataset name."""
    shutil.copytree(ds.root, folder)
    card = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**card, "name": name}))
    other = load_dataset(str(folder))
    assert other.name == name != ds.name and other.split_hash == ds.split_hash
    return other


def test_few_shot_draw_ignores_the_dataset_name(toy, tmp_path, monkeypatch):
    first = few_shot(toy, 3, seed=5)                      # drawn, and cached in toy's folder
    renamed = _renamed_copy(toy, tmp_path / "elsewhere" / "renamed", "renamed")
    cache = Path(renamed.root) / "promptviz_fewshot" / f"shots3_seed5_{toy.split_hash}.json"
    assert cache.is_file()

    def boom(*args, **kwargs):
        raise AssertionError("sampled again instead of reading the cache")

    with monkeypatch.context() as m:                      # with the cache: its shots
        m.setattr(fewshot_module, "_sample_split", boom)
        assert _rel(few_shot(renamed, 3, seed=5)) == _rel(first)
    cache.unlink()                                        # without it: drawn again, the same
    assert _rel(few_shot(renamed, 3, seed=5)) == _rel(first)
    assert cache.is_file()
    shutil.rmtree(toy.root / "promptviz_fewshot")          # and the original, drawn afresh
    assert _rel(few_shot(toy, 3, seed=5)) == _rel(first)


def test_few_shot_cache_of_another_draw_is_not_reused(toy):
    fresh = few_shot(toy, 3, seed=5)
    cache = toy.root / "promptviz_fewshot" / f"shots3_seed5_{toy.split_hash}.json"
    data = json.loads(cache.read_text())
    assert data["draw"] == fewshot_module.DRAW
    # a cache written by the old, name-seeded draw: same split, K and seed, other shots
    unused = [str(Path(s.impath).relative_to(toy.root)) for s in toy.train]
    unused = [p for p in unused if p not in data["train"]]
    old = {**{k: v for k, v in data.items() if k != "draw"}, "train": unused[:12]}
    cache.write_text(json.dumps(old))
    again = few_shot(toy, 3, seed=5)
    assert _rel(again) == _rel(fresh)
    assert json.loads(cache.read_text())["draw"] == fewshot_module.DRAW   # replaced


def test_few_shot_short_classes_warn(toy):
    with pytest.warns(UserWarning, match="4 of 4 classes have fewer than 50"):
        ds = few_shot(toy, 50, seed=1)
    assert len(ds.train) == len(toy.train)


def test_few_shot_cache_survives_moving_the_folder(toy, tmp_path, monkeypatch):
    first = few_shot(toy, 4, seed=3)
    cache = toy.root / "promptviz_fewshot" / f"shots4_seed3_{toy.split_hash}.json"
    data = json.loads(cache.read_text())
    assert all(not Path(p).is_absolute() and p.startswith("images/") for p in data["train"])

    new_parent = tmp_path / "moved" / "elsewhere"
    new_parent.parent.mkdir()
    shutil.move(str(tmp_path / "data"), str(new_parent))
    moved = load_dataset(str(new_parent / "toy"))
    assert moved.split_hash == toy.split_hash

    def boom(*args, **kwargs):
        raise AssertionError("sampled again instead of reading the cache")

    monkeypatch.setattr(fewshot_module, "_sample_split", boom)
    again = few_shot(moved, 4, seed=3)
    assert _rel(again) == _rel(first)
    assert all(s.impath.startswith(str(new_parent)) for s in again.train)


def test_few_shot_cache_keyed_by_split_hash(toy):
    few_shot(toy, 2, seed=1)
    split_path = toy.root / "split_zhou_ToyShapes.json"
    split = json.loads(split_path.read_text())
    split["train"].append(["class_a/val_0.png", 0, "class_a"])
    split_path.write_text(json.dumps(split))
    changed = load_dataset(str(toy.root))
    assert changed.split_hash != toy.split_hash
    few_shot(changed, 2, seed=1)
    names = sorted(p.name for p in (toy.root / "promptviz_fewshot").glob("*.json"))
    assert names == sorted([f"shots2_seed1_{toy.split_hash}.json",
                            f"shots2_seed1_{changed.split_hash}.json"])


def test_few_shot_cache_falls_back_to_user_cache(toy, tmp_path):
    (toy.root / "promptviz_fewshot").write_text("not a folder")  # dataset folder unusable
    a = few_shot(toy, 1, seed=1)
    fallback = tmp_path / "user_cache" / "fewshot" / "toy" / f"shots1_seed1_{toy.split_hash}.json"
    assert fallback.is_file()
    assert few_shot(toy, 1, seed=1).train == a.train


def test_folder_dataset_ignores_its_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTVIZ_CACHE", str(tmp_path / "c"))
    for cls in ("x", "y"):
        for i in range(6):
            png(tmp_path / "plain" / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path / "plain"))
    few_shot(ds, 1, seed=1)
    assert (tmp_path / "plain" / "promptviz_fewshot").is_dir()
    again = load_dataset(str(tmp_path / "plain"))
    assert again.classnames == ["x", "y"] and again.split_hash == ds.split_hash


# ------------------------------------------------------------------- base/new
def test_base_new_split_odd_number_of_classes(tmp_path):
    make_card(tmp_path / "five", [f"c{i}" for i in range(5)], name="five", per_split=(2, 1, 1))
    ds = load_dataset(str(tmp_path / "five"))
    base, new = subsample_classes(ds, "base"), subsample_classes(ds, "new")
    assert base.classnames == ["c0", "c1", "c2"] and new.classnames == ["c3", "c4"]
    for part, offset in ((base, 0), (new, 3)):
        for split in ("train", "val", "test"):
            samples = part.split(split)
            assert sorted({s.label for s in samples}) == list(range(part.num_classes))
            assert all(s.classname == f"c{s.label + offset}" for s in samples)
    assert len(base.train) == 6 and len(new.test) == 2
    assert len({ds.split_hash, base.split_hash, new.split_hash}) == 3
    assert subsample_classes(ds, "all") is ds
    with pytest.raises(PromptvizError, match="base"):
        subsample_classes(ds, "novel")


# ---------------------------------------------------------------------- errors
def test_missing_images_one_error(tmp_path):
    root = make_dtd(tmp_path)
    gone = [f"banded/train_{i}.png" for i in range(6)] + ["zig_zagged/test_1.png"]
    for rel in gone:
        (root / "images" / rel).unlink()
    with pytest.raises(PromptvizError) as err:
        load_dataset("dtd", tmp_path)
    msg = str(err.value)
    assert "7 of 33 images" in msg and "split_zhou_DescribableTextures.json" in msg
    assert ", ".join(gone[:5]) in msg and gone[5] not in msg
    assert str(root.resolve() / "images") in msg and "half-downloaded" in msg


def test_missing_image_folder(tmp_path):
    root = make_dtd(tmp_path)
    shutil.rmtree(root / "images")
    with pytest.raises(PromptvizError, match=r"33 of 33 images.*does not exist"):
        load_dataset("dtd", tmp_path)


def test_inconsistent_labels(tmp_path):
    folder = make_card(tmp_path / "bad", ["a_cat", "a_dog"])
    split_path = folder / "split_zhou_ToyShapes.json"
    split = json.loads(split_path.read_text())
    split["test"][0] = [split["test"][0][0], 1, "a_cat"]  # label 1 is also "a_cat"
    split_path.write_text(json.dumps(split))
    bad_label = r"split_zhou_ToyShapes.json: label 1 .*'a_cat'.*'a_dog'"
    with pytest.raises(PromptvizError, match=bad_label):
        load_dataset(str(folder))
    split = {"train": [["a_cat/train_0.png", 0, "a"], ["a_dog/train_0.png", 2, "c"]],
             "val": [], "test": []}
    split_path.write_text(json.dumps(split))
    with pytest.raises(PromptvizError, match=r"dense 0\.\.2.*label\(s\) 1 never occur"):
        load_dataset(str(folder))


def test_unknown_and_missing_datasets(tmp_path):
    make_card(tmp_path / "my_card", ["a"], name="my_card")
    with pytest.raises(PromptvizError) as err:
        load_dataset("imagenette", tmp_path)
    msg = str(err.value)
    assert all(k in msg for k in ("dtd", "imagenet", "caltech-101", "eurosat", "my_card"))
    assert "folder path also works" in msg
    with pytest.raises(PromptvizError, match=r"looked for the folder .*dtd.*DATASETS\.md"):
        load_dataset("dtd", tmp_path)
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(PromptvizError, match="split_zhou_DescribableTextures.json not found"):
        load_dataset("dtd", tmp_path)
    with pytest.raises(PromptvizError, match="does not exist"):
        load_dataset("dtd", tmp_path / "nowhere")


# ---------------------------------------------------------------------- report
def test_scan_data_root_reports_ok_and_broken(tmp_path):
    make_dtd(tmp_path)
    broken = make_card(tmp_path / "toy_broken", ["a", "b"], name="toy_broken")
    (broken / "images" / "a" / "test_0.png").unlink()
    (tmp_path / "downloads").mkdir()  # not a dataset: skipped
    reports = {r.name: r for r in scan_data_root(tmp_path)}
    assert set(reports) == {"dtd", "toy_broken"}
    assert reports["dtd"].ok and reports["dtd"].num_classes == 3
    assert reports["dtd"].counts == {"train": 18, "val": 9, "test": 6}
    assert not reports["toy_broken"].ok and "1 of 22 images" in reports["toy_broken"].problem
    text = format_report(list(reports.values()))
    assert "dtd" in text and "BROKEN" in text and "1 of 22 images" in text
    assert "not found here" in text and "oxford_pets" in text


# ------------------------------------------------------------------ transforms
def test_transforms_and_image_dataset(tmp_path):
    png(tmp_path / "white.png", (255, 255, 255), size=(40, 30))
    png(tmp_path / "grey.png", size=(30, 50), mode="L")
    samples = [Sample(str(tmp_path / "white.png"), 0, "white"),
               Sample(str(tmp_path / "grey.png"), 1, "grey")]
    ds = ImageDataset(samples, clip_transform(16, MEAN, STD))
    image, label, index = ds[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert (label, index) == (0, 0)
    assert torch.allclose(image, torch.ones_like(image))  # (1 - 0.5) / 0.5
    assert ds[1][0].shape == (3, 16, 16) and len(ds) == 2
    aug = ImageDataset(samples, train_transform(16, MEAN, STD))
    assert aug[1][0].shape == (3, 16, 16) and aug[1][0].dtype == torch.float32
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    images, labels, indices = next(iter(loader))
    assert images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 1]
    assert indices.tolist() == [0, 1]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PromptvizError, match="Cannot read image"):
        ImageDataset([Sample(str(tmp_path / "broken.png"), 0, "x")])[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ImageDataset(samples)[0][0].mode == "RGB"
