"""Few-shot subsets and the base/novel class split of the CoOp protocols.

``few_shot(ds, K, seed)`` keeps K training images per class (and min(K, 4)
validation images per class, as CoOp does); ``subsample_classes(ds, "base")``
keeps the first ceil(C/2) classes and ``"new"`` the rest, relabelled from 0
(it needs 2+ classes and test images in the half it keeps).
The base-to-novel protocol applies them in that order: few-shot first, on all
classes, then the class split.

The choice of images depends only on the data (its split hash, a hash of the
split's *content*), K, the seed and the label, never on the dataset's name or
folder: each class's images are sorted by path and drawn with
``random.Random("hash|K|seed|label")`` (validation shots: ``"hash|K|seed|label|val"``).
A string seed goes through SHA-512 inside Python, so the draw is the same on
every machine and run, no other code touching the global RNG can change it, and a
renamed dataset folder (or card ``name``) draws the same shots as before.

The draw is cached as JSON of paths *relative to the dataset folder*
(``<root>/promptviz_fewshot/shots16_seed1_<hash>.json``), so the cache survives
moving the folder, and a changed split file (new hash) never reuses a stale one.
The cache records which draw wrote it (:data:`DRAW`): one written by another draw
(before version 2 the dataset's name was part of the seed) is ignored and replaced,
so the cached and the freshly drawn shots are always the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import random
import re
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

from promptviz.checkpoint import user_cache_dir, usual_mode
from promptviz.data.checks import first
from promptviz.data.datasets import Dataset, Sample
from promptviz.errors import PromptvizError

VAL_SHOTS_MAX = 4
CACHE_DIRNAME = "promptviz_fewshot"
# The draw's seed string, stored in every cache file: a cache written by another draw is
# not reused. Bump the version whenever what a draw depends on changes.
DRAW = "2: split_hash|K|seed|label"


def _derived_hash(parent: str, operation: str) -> str:
    """The split hash of a dataset derived from another, so caches never collide."""
    return hashlib.sha256(f"{parent}|{operation}".encode()).hexdigest()[:12]


def _by_label(samples: list[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.label, []).append(s)
    return groups


def _sample_split(ds: Dataset, samples: list[Sample], k: int, seed: int, tag: str) -> list[Sample]:
    """K samples per class, drawn by a per-class RNG seeded with a string of the split's
    content hash, K, the seed and the label (see :data:`DRAW`): never the dataset's name."""
    chosen = []
    for label, group in sorted(_by_label(samples).items()):
        group = sorted(group, key=lambda s: s.impath)
        if len(group) <= k:
            chosen += group
            continue
        rng = random.Random(f"{ds.split_hash}|{k}|{seed}|{label}{tag}")
        chosen += sorted(rng.sample(group, k), key=lambda s: s.impath)
    return chosen


# ------------------------------------------------------------------------- cache
def cache_paths(ds: Dataset, shots: int, seed: int) -> list[Path]:
    """Where the few-shot cache of ``ds`` is looked for, in order."""
    fname = f"shots{shots}_seed{seed}_{ds.split_hash}.json"
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", ds.name) or "dataset"
    return [Path(ds.root) / CACHE_DIRNAME / fname, user_cache_dir() / "fewshot" / safe_name / fname]


def _relative(impath: str, root: Path) -> str:
    prefix = str(root) + os.sep
    rel = impath[len(prefix):] if impath.startswith(prefix) else os.path.relpath(impath, root)
    return rel.replace(os.sep, "/")


def _read_cache(ds: Dataset, shots: int, seed: int) -> tuple[list[Sample], list[Sample]] | None:
    for path in cache_paths(ds, shots, seed):
        try:
            data = json.loads(path.read_text())
            if (data["split_hash"], data["shots"], data["seed"], data.get("draw")) != (
                    ds.split_hash, shots, seed, DRAW):
                continue          # another split, K, seed or draw: sample again
            out = []
            for split in ("train", "val"):
                index = {_relative(s.impath, Path(ds.root)): s for s in getattr(ds, split)}
                out.append([index[rel] for rel in data[split]])
            return out[0], out[1]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # absent, unreadable or stale: sample again
    return None


def _write_cache(
    ds: Dataset, shots: int, seed: int, train: list[Sample], val: list[Sample]
) -> Path | None:
    root = Path(ds.root)
    data = {
        "dataset": ds.name, "split_hash": ds.split_hash, "shots": shots, "seed": seed,
        "draw": DRAW,
        "train": [_relative(s.impath, root) for s in train],
        "val": [_relative(s.impath, root) for s in val],
    }
    for path in cache_paths(ds, shots, seed):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        except OSError:
            continue  # read-only dataset folder: try the user cache
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=0)
            usual_mode(tmp)
            os.replace(tmp, path)  # atomic: readers never see half a file
            return path
        except OSError:
            Path(tmp).unlink(missing_ok=True)   # a full disk: no half file left behind
            continue
    warnings.warn(f"Could not write the few-shot cache of {ds.name} anywhere; continuing "
                  f"without it.", stacklevel=3)
    return None


# ----------------------------------------------------------------------- public
def few_shot(ds: Dataset, shots: int | None, seed: int) -> Dataset:
    """K training images per class and min(K, 4) validation images per class.

    ``shots=None`` means all images (``ds`` is returned as is); otherwise K must
    be 1 or more. A class with fewer than K images keeps all of them, with one
    warning; a class with *no* training image (in a dataset that has some) is an
    error naming the classes. The test split is untouched. The result's
    ``split_hash`` is derived from ``ds.split_hash``, K and the seed, so caches
    keyed by it never collide.
    """
    if shots is None:
        return ds
    if isinstance(shots, bool) or not isinstance(shots, numbers.Integral) or shots < 1:
        raise PromptvizError(
            f"--shots {shots} is not a number of training images per class: use 1 or more "
            f"(CoOp's protocols use 1, 2, 4, 8 or 16; library callers pass shots=None for "
            f"all images)."
        )
    shots, seed = int(shots), int(seed)
    if ds.train:
        have = {s.label for s in ds.train}
        empty = [ds.classnames[i] for i in range(ds.num_classes) if i not in have]
        if empty:
            raise PromptvizError(
                f"{ds.name}: {len(empty)} of {ds.num_classes} classes have no training images "
                f"({first(empty)}), so --shots {shots} cannot draw any for them: add "
                f"training images for these classes to the dataset's train split, or remove "
                f"the classes."
            )
    short = [lab for lab, g in _by_label(ds.train).items() if len(g) < shots]
    if short:
        warnings.warn(
            f"{ds.name}: {len(short)} of {ds.num_classes} classes have fewer than {shots} "
            f"training images; using all of their images.", stacklevel=2
        )
    cached = _read_cache(ds, shots, seed)
    if cached is not None:
        train, val = cached
    else:
        train = _sample_split(ds, ds.train, shots, seed, "")
        val = _sample_split(ds, ds.val, min(shots, VAL_SHOTS_MAX), seed, "|val")
        _write_cache(ds, shots, seed, train, val)
    return replace(ds, train=train, val=val,
                   split_hash=_derived_hash(ds.split_hash, f"shots{shots}-seed{seed}"))


def subsample_classes(ds: Dataset, which: str) -> Dataset:
    """Keep the base (first ceil(C/2) labels) or new (the rest) classes, relabelled from 0.

    ``"all"`` returns ``ds`` unchanged. Applies to every split.
    """
    if which == "all":
        return ds
    if which not in ("base", "new"):
        raise PromptvizError(f"Unknown class subset {which!r}: use 'base', 'new' or 'all'.")
    if ds.num_classes < 2:
        raise PromptvizError(
            f"{ds.name} has {ds.num_classes} class(es), but the base-to-novel protocol "
            f"(--protocol base2new) splits the classes into a base and a new half and needs "
            f"at least 2: use --protocol fewshot, or add classes to the dataset."
        )
    m = math.ceil(ds.num_classes / 2)
    lo, hi = (0, m) if which == "base" else (m, ds.num_classes)

    def keep(samples: list[Sample]) -> list[Sample]:
        return [replace(s, label=s.label - lo) for s in samples if lo <= s.label < hi]

    test = keep(ds.test)
    if not test:
        raise PromptvizError(
            f"{ds.name}: its {which} classes ({first(ds.classnames[lo:hi])}) have no test "
            f"images, so their accuracy would be NaN: add test images for them, or use "
            f"--protocol fewshot."
        )
    return replace(ds, classnames=ds.classnames[lo:hi], train=keep(ds.train), val=keep(ds.val),
                   test=test, split_hash=_derived_hash(ds.split_hash, which))
