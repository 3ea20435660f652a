"""Bad input and faults in dataset loading and the ToyWorld builder: each is refused with one
``error: …`` line (exit status 2, no traceback) naming the problem and the fix, and leaves
nothing half-written behind.

Datasets are tiny cards written into tmp_path (8x8 PNGs). Unreadable files and folders are
made with chmod when the tests run as a normal user; as root (which reads anything) the
listing and opening functions are monkeypatched to raise the PermissionError a chmod 000
would cause, so the same code paths run either way.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import warnings
from pathlib import Path

import pytest
from PIL import Image

from promptviz.cli import main
from promptviz.data import (
    ImageDataset,
    Sample,
    few_shot,
    load_dataset,
    read_image,
    scan_data_root,
    subsample_classes,
)
from promptviz.data.toyworld import suite
from promptviz.errors import PromptvizError

CLASSES = ("cat", "dog")


# ------------------------------------------------------------------------ helpers
def png(path: Path, color=(200, 30, 30), size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def make_card(folder: Path, classes=CLASSES, per_split=(2, 1, 2), card: dict | None = None,
              split: dict | None = None) -> Path:
    """A card dataset: images/<class>/<split>_<i>.png, split.json and dataset.json."""
    made = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(classes):
        for name, n in zip(made, per_split):
            for i in range(n):
                rel = f"{cls}/{name}_{i}.png"
                png(folder / "images" / rel, (label * 90, i * 40, 60))
                made[name].append([rel, label, cls])
    (folder / "split.json").write_text(json.dumps(split if split is not None else made))
    base = {"name": folder.name, "image_dir": "images", "split_file": "split.json",
            "template": "a photo of a {}."}
    (folder / "dataset.json").write_text(json.dumps(card if card is not None else base))
    return folder


def edit_split(folder: Path, fn) -> None:
    path = folder / "split.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def edit_card(folder: Path, **fields) -> None:
    path = folder / "dataset.json"
    card = json.loads(path.read_text())
    card.update(fields)
    path.write_text(json.dumps({k: v for k, v in card.items() if v is not None}))


def fails(capsys, argv: list[str], *words: str, code: int = 2) -> str:
    """Run the CLI, expect ``code`` and one ``error:`` line holding every word; no traceback."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
    return lines[0]


def train(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--method", "zeroshot", "--dataset", str(folder), "--out", str(out),
            "--quiet", "--cache-dir", "", "--shots", "2", *extra]


def no_results(out: Path) -> bool:
    return not (out / "results.json").exists()


@pytest.fixture(autouse=True)
def _user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPTVIZ_CACHE", str(tmp_path / "user_cache"))
    monkeypatch.delenv("PROMPTVIZ_DATA", raising=False)
    monkeypatch.delenv("PROMPTVIZ_DEBUG", raising=False)


@pytest.fixture
def deny(monkeypatch):
    """``deny(path)``: make ``path`` unreadable, as chmod 000 does (simulated under root)."""
    chmodded: list[tuple[Path, int]] = []
    locked: list[str] = []

    def hit(p, strict: bool = False) -> bool:
        if isinstance(p, int):
            return False
        s = os.path.abspath(os.fsdecode(os.fspath(p)))
        return any(s.startswith(t + os.sep) or (s == t and not strict) for t in locked)

    def refuse(p):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(p))

    def wrap(fn, strict: bool = False):
        def fake(p=".", *args, **kwargs):
            if hit(p, strict):
                refuse(p)
            return fn(p, *args, **kwargs)
        return fake

    def lock(path: Path) -> None:
        if os.geteuid() != 0:
            chmodded.append((path, path.stat().st_mode))
            path.chmod(0)
            return
        if not locked:
            monkeypatch.setattr(os, "listdir", wrap(os.listdir))
            monkeypatch.setattr(os, "scandir", wrap(os.scandir))
            monkeypatch.setattr(os, "stat", wrap(os.stat, strict=True))  # children only
            fake_open = wrap(builtins.open)
            monkeypatch.setattr(builtins, "open", fake_open)
            monkeypatch.setattr(io, "open", fake_open)
        locked.append(os.path.abspath(path))

    yield lock
    for path, mode in chmodded:
        path.chmod(mode)


# --------------------------------------------------------- 1. degenerate splits
def test_empty_test_split_is_refused(tmp_path, capsys):
    folder = make_card(tmp_path / "notest", per_split=(2, 1, 0))
    out = tmp_path / "out"
    fails(capsys, train(folder, out), "no test images", "notest")
    assert no_results(out)
    # the data-root report shows it as broken (status 1) and goes on
    make_card(tmp_path / "fine")
    assert main(["datasets", "--data-root", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "BROKEN" in text and "no test images" in text and "fine" in text


def test_folder_per_class_without_test_images(tmp_path, capsys):
    for cls in CLASSES:  # one image per class: the hashed split puts each into train
        png(tmp_path / "plain" / cls / "only.png")
    fails(capsys, train(tmp_path / "plain", tmp_path / "out"), "no test images")


def test_one_class_under_base2new(tmp_path, capsys):
    folder = make_card(tmp_path / "single", classes=("cat",))
    out = tmp_path / "out"
    fails(capsys, train(folder, out), "at least 2", "--protocol fewshot")
    assert no_results(out)
    assert main(train(folder, out, "--protocol", "fewshot")) == 0   # fine without a class split
    capsys.readouterr()


def test_half_without_test_images_under_base2new(tmp_path, capsys):
    folder = make_card(tmp_path / "half", classes=("a", "b", "c", "d"))
    edit_split(folder, lambda d: d.update(test=[e for e in d["test"] if e[1] < 2]))
    out = tmp_path / "out"
    fails(capsys, train(folder, out), "new classes (c, d) have no test images")
    assert no_results(out)


def test_classes_without_training_images(tmp_path, capsys):
    folder = make_card(tmp_path / "notrain", classes=("cat", "dog", "owl"))
    edit_split(folder, lambda d: d.update(train=[e for e in d["train"] if e[2] == "cat"]))
    out = tmp_path / "out"
    fails(capsys, train(folder, out), "2 of 3 classes have no training images (dog, owl)")
    assert no_results(out)


# ------------------------------------------------------------------- 2. --shots
@pytest.mark.parametrize("shots", ["0", "-3"])
def test_shots_below_one_refused(tmp_path, capsys, shots):
    folder = make_card(tmp_path / "ds")
    out = tmp_path / "out"
    fails(capsys, train(folder, out, "--shots", shots), f"--shots {shots}", "1 or more")
    assert no_results(out) and not (out / "model.safetensors").exists()


def test_shots_none_still_means_all_images(tmp_path):
    ds = load_dataset(make_card(tmp_path / "ds"))
    assert few_shot(ds, None, seed=1) is ds
    with pytest.raises(PromptvizError, match="--shots 0"):
        few_shot(ds, 0, seed=1)


# ------------------------------------------------------- 3. split and card gaps
def _duplicate(d):
    d["train"].append(list(d["train"][0]))


def _overlap(d):
    d["test"].append(list(d["train"][1]))


def _etc_passwd(d):
    d["train"][0][0] = "/etc/passwd"


def _escape(d):
    d["test"][0][0] = "../../outside.png"


@pytest.mark.parametrize("edit, words", [
    (_duplicate, ["1 duplicate entry in 'train'", "cat/train_0.png", "remove"]),
    (_overlap, ["1 image(s) are in both 'train' and 'test'", "cat/train_1.png"]),
    (_etc_passwd, ["entry train[0]", "'/etc/passwd' is an absolute path", "relative"]),
    (_escape, ["entry test[0]", "leads outside", "../../outside.png"]),
])
def test_split_entries_refused(tmp_path, capsys, edit, words):
    folder = make_card(tmp_path / "ds")
    png(tmp_path / "outside.png")
    edit_split(folder, edit)
    out = tmp_path / "out"
    fails(capsys, train(folder, out), *words)
    assert no_results(out)


def test_absolute_path_of_a_real_image_says_how_to_write_it(tmp_path):
    folder = make_card(tmp_path / "ds")
    real = folder.resolve() / "images" / "cat" / "train_0.png"
    edit_split(folder, lambda d: d["train"][0].__setitem__(0, str(real)))
    with pytest.raises(PromptvizError, match=r"absolute path.*\(here: 'cat/train_0.png'\)"):
        load_dataset(folder)


@pytest.mark.parametrize("field, value, words", [
    ("image_dir", "/etc", ["'image_dir' '/etc' is an absolute path", "relative"]),
    ("image_dir", "../elsewhere", ["'image_dir' '../elsewhere' leads outside", "inside"]),
    ("split_file", "../split.json", ["'split_file' '../split.json' leads outside"]),
])
def test_card_paths_confined_to_the_dataset_folder(tmp_path, capsys, field, value, words):
    folder = make_card(tmp_path / "ds")
    make_card(tmp_path / "elsewhere")
    (tmp_path / "split.json").write_text((folder / "split.json").read_text())
    edit_card(folder, **{field: value})
    fails(capsys, train(folder, tmp_path / "out"), "dataset.json", *words)


# ----------------------------------------------------------- 4. card template
@pytest.mark.parametrize("template, why", [
    ("a {} of a {}.", "2 '{}' placeholders"),
    ("a photo.", "0 '{}' placeholders"),
    ("a photo of a {name}.", "its placeholder is {name}"),
    ("a photo of a {.", "not a valid format string"),
])
def test_card_template_needs_exactly_one_placeholder(tmp_path, capsys, template, why):
    folder = make_card(tmp_path / "ds")
    edit_card(folder, template=template)
    out = tmp_path / "out"
    fails(capsys, train(folder, out), "exactly one '{}'", why)
    assert no_results(out)


def test_card_template_with_literal_braces_is_fine(tmp_path):
    folder = make_card(tmp_path / "ds")
    edit_card(folder, template="{{x}} a photo of a {}.")
    assert load_dataset(folder).template == "{{x}} a photo of a {}."


# ---------------------------------------------------------- 5. card missing keys
@pytest.mark.parametrize("card, words", [
    ({"name": "x"}, ["lacks field(s) image_dir, split_file, template"]),
    ({"image_dir": "images", "template": "{}"}, ["lacks field(s) name, split_file"]),
    (["name", "image_dir"], ["must be a JSON object"]),
    ({"name": "x", "image_dir": "images", "split_file": 3, "template": "{}"},
     ["split_file must be strings"]),
])
def test_card_missing_or_wrong_fields(tmp_path, capsys, card, words):
    folder = make_card(tmp_path / "ds", card=card)
    fails(capsys, train(folder, tmp_path / "out"), "dataset.json", *words)


# -------------------------------------------------- 6. unreadable dataset folder
def test_scan_reports_unreadable_folders_and_goes_on(tmp_path, capsys, deny):
    make_card(tmp_path / "good")
    make_card(tmp_path / "locked_card")
    (tmp_path / "dtd").mkdir()
    (tmp_path / "lost+found").mkdir()
    for d in ("locked_card", "dtd", "lost+found"):
        deny(tmp_path / d)
    assert main(["datasets", "--data-root", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    rows = {line.split()[0]: line for line in captured.out.splitlines() if line.strip()}
    assert rows["good"].endswith("ok")
    assert "BROKEN" in rows["locked_card"] and "BROKEN" in rows["dtd"]
    assert "lost+found" not in captured.out
    assert captured.out.lower().count("permission denied") == 2
    reports = {r.name: r for r in scan_data_root(tmp_path)}
    assert "chmod -R u+rX" in reports["dtd"].problem


def test_unreadable_dataset_folder_when_training(tmp_path, capsys, deny):
    folder = make_card(tmp_path / "ds")
    deny(folder)
    out = tmp_path / "out"
    fails(capsys, train(folder, out), "permission denied", f"while loading dataset {folder}",
          "chmod -R u+rX")
    assert no_results(out)
    with pytest.raises(PromptvizError, match="permission denied"):   # not a bare OSError
        load_dataset(folder)


def test_unreadable_data_root(tmp_path, capsys, deny):
    make_card(tmp_path / "root" / "ds")
    deny(tmp_path / "root")
    fails(capsys, ["datasets", "--data-root", str(tmp_path / "root")], "permission denied",
          "give your user read access")
    with pytest.raises(PromptvizError, match="permission denied"):   # not a bare OSError
        scan_data_root(tmp_path / "root")


# ---------------------------------------------- 7. unreadable is not "missing"
def test_unreadable_image_folder_is_not_reported_missing(tmp_path, capsys, deny):
    folder = make_card(tmp_path / "ds")
    deny(folder / "images" / "dog")
    line = fails(capsys, train(folder, tmp_path / "out"), "5 of 10 images", "cannot be read",
                 "permission denied", "chmod")
    assert "missing" not in line and "half-downloaded" not in line


def test_unreadable_split_file(tmp_path, capsys, deny):
    folder = make_card(tmp_path / "ds")
    deny(folder / "split.json")
    line = fails(capsys, train(folder, tmp_path / "out"), "cannot read split file",
                 "permission denied")
    assert "not found" not in line


def test_unreadable_image_file_when_reading(tmp_path, deny):
    png(tmp_path / "a.png")
    deny(tmp_path / "a.png")
    with pytest.raises(PromptvizError, match=r"a\.png: permission denied") as err:
        ImageDataset([Sample(str(tmp_path / "a.png"), 0, "a")])[0]
    assert "missing" not in str(err.value)
    with pytest.raises(PromptvizError, match=r"gone\.png: the file is missing"):
        read_image(str(tmp_path / "gone.png"))


# ------------------------------------------------- 8. bombs and corrupt images
def _with_test_image(tmp_path: Path, write) -> tuple[Path, Path]:
    folder = make_card(tmp_path / "ds")
    bad = folder / "images" / "dog" / "test_1.png"
    write(bad)
    return folder, bad


def test_decompression_bomb_image(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)   # 8x8 images pass, 64x64 is a bomb
    folder, bad = _with_test_image(tmp_path, lambda p: png(p, size=(64, 64)))
    out = tmp_path / "out"
    fails(capsys, train(folder, out), f"cannot read image {bad.resolve()}",
          "decompression-bomb", "remove it from the split file")
    assert no_results(out)


def test_decompression_bomb_warning_as_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    png(tmp_path / "big.png", size=(40, 40))                # 1600 px: a warning, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(PromptvizError, match="decompression-bomb"):
            read_image(str(tmp_path / "big.png"))


def test_truncated_image(tmp_path, capsys):
    def truncated(p: Path) -> None:
        Image.effect_noise((64, 64), 80).convert("RGB").save(p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])

    folder, bad = _with_test_image(tmp_path, truncated)
    out = tmp_path / "out"
    fails(capsys, train(folder, out), f"cannot read image {bad.resolve()}",
          "truncated, corrupt or not an image")
    assert no_results(out)


# -------------------------------------------------------- 9. toyworld build
def test_toyworld_out_is_a_file(tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("keep me")
    fails(capsys, ["toyworld", "build", "--out", str(target), "--n-train", "1", "--n-val", "0",
                   "--n-test", "1"], "is a file, not a folder", "--out")
    assert target.read_text() == "keep me"
    fails(capsys, ["toyworld", "build", "--out", str(target / "sub"), "--n-train", "1"],
          "is a file, so no folder can be made there")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_toyworld_out_read_only(tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
    else:  # root writes anywhere: make the folder refuse new entries as a read-only one does
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(ro))
        monkeypatch.setattr(suite.Path, "write_bytes", refuse)
    rendered = []
    monkeypatch.setattr(suite, "render_scenes", lambda *a, **k: rendered.append(1))
    try:
        fails(capsys, ["toyworld", "build", "--out", str(ro), "--n-train", "1", "--n-test", "1"],
              "cannot write there", "Permission denied", "a folder you can write to")
    finally:
        ro.chmod(0o755)
    assert rendered == [] and list(ro.iterdir()) == []


@pytest.mark.parametrize("flag, value, words", [
    ("--image-size", "10", "--image-size 10 (use a multiple of 8 from 16"),
    ("--image-size", "36", "--image-size 36"),
    ("--image-size", "4096", "to 512"),
    ("--n-train", "0", "--n-train 0 (use 1 or more"),
    ("--n-val", "-1", "--n-val -1 (use 0 or more"),
    ("--n-test", "0", "--n-test 0 (use 1 or more"),
    ("--datasets", "toy_nope", "--datasets toy_nope (unknown; the toyworld datasets are "
                               "toy_shapes, toy_textures"),
])
def test_toyworld_build_arguments(tmp_path, capsys, flag, value, words):
    out = tmp_path / "tw"
    fails(capsys, ["toyworld", "build", "--out", str(out), flag, value], words)
    assert not out.exists()                                 # refused before touching the disk


def test_toyworld_write_failure_leaves_nothing(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "disk")
    monkeypatch.setattr(suite, "_write_one", full)
    out = tmp_path / "tw"
    fails(capsys, ["toyworld", "build", "--out", str(out), "--image-size", "16", "--n-train",
                   "1", "--n-val", "0", "--n-test", "1", "--datasets", "toy_textures"],
          "writing ToyWorld dataset toy_textures", "no space left on device")
    assert list(out.iterdir()) == []


def test_subsample_classes_needs_two_classes(tmp_path):
    ds = load_dataset(make_card(tmp_path / "one", classes=("cat",)))
    with pytest.raises(PromptvizError, match="needs at least 2"):
        subsample_classes(ds, "base")
    assert subsample_classes(ds, "all") is ds


def test_bad_image_in_a_dataloader_worker_is_still_one_line(tmp_path):
    import torch

    (tmp_path / "bad.png").write_bytes(b"not an image")
    loader = torch.utils.data.DataLoader(ImageDataset([Sample(str(tmp_path / "bad.png"), 0,
                                                              "x")]),
                                         num_workers=1, collate_fn=list)
    with pytest.raises(PromptvizError) as err:
        next(iter(loader))
    msg = str(err.value)
    assert msg.startswith(f"Cannot read image {tmp_path / 'bad.png'}: the file is truncated")
    assert "\n" not in msg and "Traceback" not in msg
