"""The readers of the general formats: CoOp's ``split_zhou`` JSON files, dataset cards
(``dataset.json``) and folder-per-class directories, each read and checked into a
:class:`Dataset`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import string
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from promptviz.data.checks import (
    check_images,
    check_inside,
    check_split_lists,
    first,
    list_dirs,
    list_images,
    read_json,
)
from promptviz.data.datasets import CARD_FILE, IMAGE_EXTENSIONS, SPLITS, Dataset, Sample
from promptviz.errors import PromptvizError

FOLDER_TEMPLATE = "a photo of a {}."
FOLDER_SPLIT_PERCENT = (60, 20, 20)  # train / val / test for a folder-per-class dir


# ------------------------------------------------------------------------ helpers
def short_hash(chunks: Iterable[bytes]) -> str:
    """12 hex digits of a SHA-256 over ``chunks``: a dataset's ``split_hash``."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _hash01(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (not Python's ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def clean(classname: str) -> str:
    """A class name as written in a file, with spaces for ``_``."""
    return " ".join(classname.replace("_", " ").split())


# ---------------------------------------------------------------- split_zhou files
def read_split_zhou(
    split_path: Path, image_dir: Path, fix: str = "check the path"
) -> tuple[list[str], dict[str, list[Sample]], str]:
    """Parse and validate a ``split_zhou`` JSON file.

    Returns ``(classnames, {"train"|"val"|"test": samples}, split_hash)``.
    Raises a PromptvizError naming the file and the offending entry when the
    schema is wrong, labels are not dense, or a label has two class names;
    ``fix`` completes the message for a missing file.
    """
    if not split_path.is_file():
        raise PromptvizError(f"Split file {split_path} not found: {fix}.")
    data, raw = read_json(split_path, "split file")
    if not isinstance(data, dict) or any(k not in data for k in SPLITS):
        raise PromptvizError(
            f"Split file {split_path} must be a JSON object with keys train, val and test, "
            f"each a list of [impath, label, classname]."
        )
    names: dict[int, set[str]] = {}
    keys: dict[str, list[str]] = {}  # normalised impaths, to find repeats and overlaps
    for split in SPLITS:
        if not isinstance(data[split], list):
            raise PromptvizError(f"{split_path}: {split!r} must be a list of entries.")
        keys[split] = []
        for i, item in enumerate(data[split]):
            ok = (
                isinstance(item, (list, tuple)) and len(item) == 3
                and isinstance(item[0], str) and item[0].strip() != ""
                and isinstance(item[2], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool) and item[1] >= 0
            )
            if not ok:
                raise PromptvizError(
                    f"{split_path}: entry {split}[{i}] is {item!r}; every entry must be "
                    f"[impath (non-empty str), label (int >= 0), classname (str)]."
                )
            check_inside(item[0], image_dir, "image path", f"{split_path}: entry {split}[{i}]")
            keys[split].append(posixpath.normpath(item[0]))
            names.setdefault(item[1], set()).add(item[2])
    if not names:
        raise PromptvizError(f"Split file {split_path} lists no images.")
    check_split_lists(keys, str(split_path))
    for label in sorted(names):
        if len(names[label]) > 1:
            shown = ", ".join(repr(n) for n in sorted(names[label]))
            raise PromptvizError(
                f"{split_path}: label {label} is used with {len(names[label])} class names "
                f"({shown}); every label must map to exactly one class name. Fix the file."
            )
    num_classes = max(names) + 1
    absent = [str(i) for i in range(num_classes) if i not in names]
    if absent:
        raise PromptvizError(
            f"{split_path}: labels must be dense 0..{num_classes - 1}, but label(s) "
            f"{first(absent, 10)} never occur. Relabel the classes 0..C-1."
        )
    classnames = [clean(next(iter(names[i]))) for i in range(num_classes)]
    base = str(image_dir)  # os.path.join on strings: pathlib is 5x slower per path
    splits = {
        s: [Sample(os.path.join(base, p), lab, classnames[lab]) for p, lab, _ in data[s]]
        for s in SPLITS
    }
    return classnames, splits, short_hash([raw])


def load_split_zhou(
    name: str, root: Path, image_dir: Path, split_file: str, template: str, fix: str
) -> Dataset:
    """A dataset from a split file, every image it lists checked to exist."""
    split_path = root / split_file
    classnames, splits, h = read_split_zhou(split_path, image_dir, fix)
    cut = len(str(image_dir)) + 1  # impaths are image_dir + "/" + rel: strip the prefix
    rels = (s.impath[cut:].replace(os.sep, "/") for ss in splits.values() for s in ss)
    check_images(rels, image_dir, split_path.name)
    return Dataset(name, root, classnames, template, splits["train"], splits["val"],
                   splits["test"], h)


# ------------------------------------------------------------------- dataset card
def _template_problem(template: str) -> str | None:
    """Why ``template`` cannot be ``template.format(classname)`` with one slot, or None."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        return f"it is not a valid format string ({e})"
    if len(fields) != 1:
        return f"it has {len(fields)} '{{}}' placeholders"
    if fields[0] not in ("", "0"):
        return f"its placeholder is {{{fields[0]}}}, not {{}}"
    try:
        template.format("x")
    except (ValueError, IndexError, KeyError, AttributeError, TypeError) as e:
        return f"it cannot be filled in ({e})"
    return None


def load_card(folder: Path) -> Dataset:
    """The dataset a card ``folder/dataset.json`` describes, the card checked first."""
    card_path = folder / CARD_FILE
    card, _ = read_json(card_path, "dataset card")
    schema = ('{"name": "my_data", "image_dir": "images", "split_file": '
              '"split_zhou_MyData.json", "template": "a photo of a {}."}')
    keys = ("name", "image_dir", "split_file", "template")
    if not isinstance(card, dict):
        raise PromptvizError(
            f"Dataset card {card_path} must be a JSON object with the fields "
            f"{', '.join(keys)}; a card looks like {schema}."
        )
    absent = [k for k in keys if k not in card]
    if absent:
        raise PromptvizError(
            f"Dataset card {card_path} lacks field(s) {', '.join(absent)}; add "
            f"{'it' if len(absent) == 1 else 'them'}: a card looks like {schema}."
        )
    bad = [k for k in keys if not isinstance(card[k], str)]
    if bad:
        raise PromptvizError(
            f"Dataset card {card_path}: field(s) {', '.join(bad)} must be strings; "
            f"a card looks like {schema}."
        )
    if not card["name"].strip():
        raise PromptvizError(f"Dataset card {card_path}: 'name' must be non-empty; "
                             f"a card looks like {schema}.")
    problem = _template_problem(card["template"])
    if problem:
        raise PromptvizError(
            f"Dataset card {card_path}: 'template' must contain exactly one '{{}}' where the "
            f"class name goes, like \"a photo of a {{}}.\" (got {card['template']!r}: "
            f"{problem}); write a literal brace as '{{{{' or '}}}}'."
        )
    for key in ("image_dir", "split_file"):
        check_inside(card[key], folder, f"{key!r}", f"Dataset card {card_path}")
    augment = card.get("augment", True)
    if not isinstance(augment, bool):
        raise PromptvizError(f"Dataset card {card_path}: 'augment' must be true or false "
                             f"(got {augment!r}); leave it out for CoOp's crop + flip.")
    ds = load_split_zhou(card["name"].strip(), folder, folder / card["image_dir"],
                         card["split_file"], card["template"],
                         f"fix 'split_file' in {card_path} or write that file")
    return replace(ds, augment=augment)


# ---------------------------------------------------------------- folder-per-class
def _hash_split(rels: list[str]) -> dict[str, list[str]]:
    """60/20/20 by a hash of each path: adding files never moves the old ones.

    Tiny classes are patched so train always gets one image and test gets one
    when the class has two or more.
    """
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    cut_train, cut_val = FOLDER_SPLIT_PERCENT[0] / 100, sum(FOLDER_SPLIT_PERCENT[:2]) / 100
    for u, rel in sorted((_hash01(rel), rel) for rel in rels):
        out["train" if u < cut_train else "val" if u < cut_val else "test"].append(rel)
    if not out["train"] and rels:
        src = "val" if out["val"] else "test"
        out["train"].append(out[src].pop(0))
    if not out["test"] and len(rels) >= 2:
        src = "val" if out["val"] else "train"
        out["test"].append(out[src].pop())
    return {s: sorted(v) for s, v in out.items()}


def load_folder_per_class(folder: Path) -> Dataset:
    """``DIR/<class>/<images>`` or ``DIR/{train,val,test}/<class>/<images>``."""
    explicit = (folder / "train").is_dir()
    if explicit and not (folder / "test").is_dir():
        raise PromptvizError(
            f"{folder} has a train/ folder but no test/ folder: add test/<class>/<images> "
            f"(val/ is optional), or drop train/ to let promptviz split the class folders."
        )
    split_dirs = [s for s in SPLITS if (folder / s).is_dir()] if explicit else [""]
    classes = sorted({c for s in split_dirs for c in list_dirs(folder / s)})
    if not classes:
        raise PromptvizError(
            f"{folder} is not a dataset: no dataset.json card and no class folders. Use "
            f"DIR/<class name>/<images> (or DIR/train/<class>/..., DIR/test/<class>/...)."
        )
    classnames = [" ".join(re.sub(r"[_-]+", " ", c).split()) for c in classes]
    rels: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    listing = []
    for label, cls in enumerate(classes):
        if explicit:
            for s in split_dirs:
                d = folder / s / cls
                files = list_images(d) if d.is_dir() else []
                rels[s] += [(f"{s}/{cls}/{f}", label) for f in files]
        else:
            files = [f"{cls}/{f}" for f in list_images(folder / cls)]
            for s, chosen in _hash_split(files).items():
                rels[s] += [(r, label) for r in chosen]
    total = 0
    for s in SPLITS:
        listing += [f"{s}:{r}" for r, _ in rels[s]]
        total += len(rels[s])
    if total == 0:
        raise PromptvizError(
            f"{folder}: the class folders hold no images (extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    base = f"{folder}{os.sep}"
    splits = {s: [Sample(base + r, lab, classnames[lab]) for r, lab in rels[s]]
              for s in SPLITS}
    rule = "explicit splits" if explicit else f"hashed split {FOLDER_SPLIT_PERCENT} v1"
    h = short_hash([rule.encode(), "\n".join(listing).encode()])
    return Dataset(folder.name, folder, classnames, FOLDER_TEMPLATE, splits["train"],
                   splits["val"], splits["test"], h)
