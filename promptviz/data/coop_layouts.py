"""The CoOp benchmark folders with layouts of their own: ImageNet, its four variants
(test-only sets sharing its class list) and FGVCAircraft; every other CoOp folder is read
from its ``split_zhou`` file (:mod:`promptviz.data.readers`).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from promptviz.data.checks import (
    check_images,
    check_inside,
    check_split_lists,
    first,
    list_dirs,
    list_images,
)
from promptviz.data.datasets import COOP_DATASETS_MD, SPLITS, Dataset, DatasetSpec, Sample
from promptviz.data.readers import clean, short_hash
from promptviz.errors import PromptvizError

IMAGENET_VAL_PER_CLASS = 10  # train images held out per class as ImageNet's val split


# ----------------------------------------------------------------------- ImageNet
def _read_classnames_txt(path: Path) -> tuple[list[str], list[str]]:
    """``<wnid> <class name words>`` per line -> (wnids, class names)."""
    wnids, names = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not words.strip():
            raise PromptvizError(f"{path}:{lineno}: expected '<wnid> <class name>', got {line!r}.")
        wnids.append(wnid)
        names.append(clean(words))
    if len(set(wnids)) != len(wnids):
        dup = sorted({w for w in wnids if wnids.count(w) > 1})
        raise PromptvizError(f"{path}: WordNet id(s) listed twice: {first(dup)}.")
    return wnids, names


def _imagenet_classnames(root: Path) -> tuple[list[str], list[str], Path]:
    """A variant's ``classnames.txt``, or the one of the sibling ``imagenet/`` folder."""
    for path in (root / "classnames.txt", root.parent / "imagenet" / "classnames.txt"):
        if path.is_file():
            return (*_read_classnames_txt(path), path)
    raise PromptvizError(
        f"classnames.txt not found in {root} nor in {root.parent / 'imagenet'}. Copy ImageNet's "
        f"classnames.txt (lines '<wnid> <class name>', linked from {COOP_DATASETS_MD}) there."
    )


def _class_folders(folder: Path, wanted: list[str], what: str) -> None:
    if not folder.is_dir():
        raise PromptvizError(
            f"{what}: folder {folder} not found. Expected one sub-folder per class "
            f"(see {COOP_DATASETS_MD}); check --data-root."
        )
    present = set(list_dirs(folder))
    missing = [w for w in wanted if w not in present]
    if missing:
        raise PromptvizError(
            f"{what}: {len(missing)} of {len(wanted)} class folders are missing from {folder}; "
            f"first {min(5, len(missing))}: {first(missing)}. The dataset looks half-downloaded "
            f"or unpacked in the wrong place; finish extracting it ({COOP_DATASETS_MD})."
        )


def load_imagenet(spec: DatasetSpec, root: Path) -> Dataset:
    """ImageNet: ``images/train/<wnid>/*`` is train, ``images/val/<wnid>/*`` is test.

    The val split is held out of train: per class the ``IMAGENET_VAL_PER_CLASS``
    (10) images with the smallest CRC-32 of their file name, never more than a fifth of
    the class. CoOp reuses the test set as val; a disjoint hold-out is more honest
    and costs nothing in few-shot training (16 of ~1300 images per class).
    """
    names_path = root / "classnames.txt"
    if not names_path.is_file():
        raise PromptvizError(
            f"ImageNet: {names_path} not found. CoOp's layout needs classnames.txt (lines "
            f"'<wnid> <class name>', linked from {COOP_DATASETS_MD}) in {root}."
        )
    wnids, classnames = _read_classnames_txt(names_path)
    train_dir, val_dir = root / "images" / "train", root / "images" / "val"
    if val_dir.is_dir() and not list_dirs(val_dir) and list_images(val_dir):
        raise PromptvizError(
            f"ImageNet: {val_dir} holds images directly; sort them into one folder per wnid "
            f"(images/val/<wnid>/...) as described in {COOP_DATASETS_MD}."
        )
    _class_folders(train_dir, wnids, "ImageNet train")
    _class_folders(val_dir, wnids, "ImageNet val")
    chunks = [b"imagenet: val = crc32 hold-out v1", names_path.read_bytes()]
    train, val, test = [], [], []
    for label, (wnid, cname) in enumerate(zip(wnids, classnames)):
        files = list_images(train_dir / wnid)
        n_val = min(IMAGENET_VAL_PER_CLASS, len(files) // 5)
        held = set(sorted(files, key=lambda f: zlib.crc32(f.encode()))[:n_val])
        base, test_base = f"{train_dir / wnid}{os.sep}", f"{val_dir / wnid}{os.sep}"
        for f in files:
            (val if f in held else train).append(Sample(base + f, label, cname))
        test_files = list_images(val_dir / wnid)
        test += [Sample(test_base + f, label, cname) for f in test_files]
        chunks.append(f"train/{wnid}/{'/'.join(files)}|val/{wnid}/{'/'.join(test_files)}".encode())
    return Dataset(spec.folder, root, classnames, spec.template, train, val, test,
                   short_hash(chunks))


def load_imagenet_variant(spec: DatasetSpec, root: Path) -> Dataset:
    """ImageNet-V2/-Sketch/-A/-R: test-only sets sharing ImageNet's class list."""
    wnids, all_names, names_path = _imagenet_classnames(root)
    folder = root / spec.image_dir
    if spec.kind == "imagenetv2":  # folders named 0..999 by ImageNet label
        wanted = [str(i) for i in range(len(wnids))]
        _class_folders(folder, wanted, spec.title)
        extra = sorted(set(list_dirs(folder)) - set(wanted))
        keep = list(range(len(wnids)))
    else:
        present = set(list_dirs(folder)) if folder.is_dir() else set()
        extra = sorted(present - set(wnids))
        if spec.subset:  # A and R: 200 classes, labels dense in ImageNet order
            keep = [i for i, w in enumerate(wnids) if w in present]
            if not keep:
                _class_folders(folder, wnids[:1], spec.title)  # raises a clear error
        else:
            _class_folders(folder, wnids, spec.title)
            keep = list(range(len(wnids)))
        wanted = [wnids[i] for i in keep]
    if extra:
        raise PromptvizError(
            f"{spec.title}: folder(s) {first(extra)} in {folder} are not classes of "
            f"{names_path}; remove them or fix classnames.txt."
        )
    classnames = [all_names[i] for i in keep]
    test, chunks = [], [names_path.read_bytes()]
    for label, sub in enumerate(wanted):
        files = list_images(folder / sub)
        base = f"{folder / sub}{os.sep}"
        test += [Sample(base + f, label, classnames[label]) for f in files]
        chunks.append(f"{sub}/{'/'.join(files)}".encode())
    return Dataset(spec.folder, root, classnames, spec.template, [], [], test,
                   short_hash(chunks))


# --------------------------------------------------------------------- FGVCAircraft
def load_fgvc(spec: DatasetSpec, root: Path) -> Dataset:
    """``images/<id>.jpg``; ``images_variant_<split>.txt`` lines ``<id> <variant>``."""
    files = [root / "variants.txt"] + [root / f"images_variant_{s}.txt" for s in SPLITS]
    for path in files:
        if not path.is_file():
            raise PromptvizError(
                f"FGVCAircraft: {path} not found. CoOp's layout puts variants.txt and "
                f"images_variant_{{train,val,test}}.txt in {root} ({COOP_DATASETS_MD})."
            )
    classnames = [v.strip() for v in files[0].read_text().splitlines() if v.strip()]
    index = {v: i for i, v in enumerate(classnames)}
    image_dir = root / spec.image_dir
    splits: dict[str, list[Sample]] = {}
    for split, path in zip(SPLITS, files[1:]):
        splits[split] = []
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            image_id, _, variant = line.strip().partition(" ")
            if not image_id:
                continue
            label = index.get(variant.strip())
            if label is None:
                raise PromptvizError(
                    f"{path}:{lineno}: variant {variant.strip()!r} is not listed in "
                    f"{files[0]}; the two files come from different downloads."
                )
            check_inside(f"{image_id}.jpg", image_dir, "image", f"{path}:{lineno}")
            splits[split].append(Sample(str(image_dir / f"{image_id}.jpg"), label,
                                        classnames[label]))
    check_split_lists({s: [Path(x.impath).name for x in ss] for s, ss in splits.items()},
                      "images_variant_{train,val,test}.txt")
    rels = (Path(s.impath).name for ss in splits.values() for s in ss)
    check_images(rels, image_dir, "images_variant_*.txt")
    h = short_hash(p.read_bytes() for p in files)
    return Dataset(spec.folder, root, classnames, spec.template, splits["train"],
                   splits["val"], splits["test"], h)
