"""Datasets on disk -> lists of ``Sample(impath, label, classname)``: :func:`load_dataset`
finds the folder and picks its reader.

A folder becomes a :class:`Dataset` in one of three ways, all through
:func:`load_dataset`:

1. **A dataset card.** The folder holds ``dataset.json``::

       {"name": "toy_shapes", "image_dir": "images",
        "split_file": "split_zhou_ToyShapes.json", "template": "a photo of a {}."}

   The split file uses CoOp's ``split_zhou`` schema (below). This is how the
   ToyWorld suite and your own datasets register themselves: no code.
2. **A CoOp benchmark folder** (``KNOWN_DATASETS``, keyed by CoOp's folder
   names: ``dtd``, ``oxford_pets``, ``imagenet``, ...), laid out as in CoOp's
   DATASETS.md. Most use a ``split_zhou_<Name>.json`` file; ImageNet, its four
   variants and FGVCAircraft have layouts of their own.
3. **Any folder-per-class directory** ``DIR/<class>/<images>`` (optionally
   ``DIR/train/<class>/...``, ``DIR/val/...``, ``DIR/test/...``).

The ``split_zhou`` schema: ``{"train": [...], "val": [...], "test": [...]}``,
each a list of ``[impath, label, classname]`` with ``impath`` relative to the
image folder, labels dense ``0..C-1`` and class names written with ``_`` for
spaces. Every dataset also gets a ``split_hash``: a short hash of the *content*
of its split source (never of absolute paths), used to key caches so that a
moved dataset folder keeps its caches and an edited split file invalidates them.

What is refused at load time, each with one error naming the entry and the fix:

* a card's ``image_dir`` and ``split_file`` must be *relative* paths that stay
  inside the dataset folder (no absolute path, no ``..`` climbing out of it;
  the check is on the path as written, so a symlink placed inside the folder
  on purpose is followed); its ``template`` must hold exactly one ``{}``;
* an ``impath`` in a split file must be relative to the image folder and stay
  inside it (an absolute path or a ``..`` escape is an error, never looked up);
* an image listed twice in one split, or in both ``train`` and ``test``;
* a dataset without test images (every metric would be NaN);
* image folders that exist but cannot be read are reported as unreadable (with
  the reason), not as missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from promptviz.data.checks import first, list_dirs, unreadable_error, usable
from promptviz.data.coop_layouts import load_fgvc, load_imagenet, load_imagenet_variant
from promptviz.data.datasets import (
    CARD_FILE,
    COOP_DATASETS_MD,
    KNOWN_DATASETS,
    Dataset,
    DatasetSpec,
    find_spec,
)
from promptviz.data.readers import load_card, load_folder_per_class, load_split_zhou
from promptviz.errors import PromptvizError, did_you_mean


def load_known(spec: DatasetSpec, root: Path) -> Dataset:
    """The CoOp benchmark folder ``root``, read by the reader its ``spec`` names."""
    if spec.kind == "split_zhou":
        fix = (f"download {spec.split_file} (linked from CoOp's DATASETS.md, "
               f"{COOP_DATASETS_MD}) into {root}")
        return load_split_zhou(spec.folder, root, root / spec.image_dir, spec.split_file,
                               spec.template, fix)
    if spec.kind == "imagenet":
        return load_imagenet(spec, root)
    if spec.kind == "fgvc":
        return load_fgvc(spec, root)
    return load_imagenet_variant(spec, root)


def _load_path(folder: Path) -> Dataset:
    """A folder given by path: a card, a CoOp folder (by its name) or folder-per-class."""
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise PromptvizError(
            f"Dataset folder {folder} does not exist. Give a dataset name with --data-root, "
            f"or the path of a folder with a dataset.json card or one sub-folder per class."
        )
    if (folder / CARD_FILE).is_file():
        return load_card(folder)
    if folder.name in KNOWN_DATASETS:  # exact CoOp folder names only, not aliases
        return load_known(KNOWN_DATASETS[folder.name], folder)
    return load_folder_per_class(folder)


def looks_like_path(name: str) -> bool:
    """Whether a dataset argument names a folder (has a separator, `~`, `.`) rather than a
    known dataset."""
    return ("/" in name or os.sep in name or name.startswith(("~", "."))
            or Path(name).is_absolute())


def find_folder(root: Path, spec: DatasetSpec) -> Path | None:
    """``root/<CoOp folder>``, or a folder whose name is an alias (``DTD``, ``Food101``)."""
    if (root / spec.folder).is_dir():
        return root / spec.folder
    for d in list_dirs(root):
        known = find_spec(d)                 # an alias of spec's folder name
        if known is not None and known.folder == spec.folder:
            return root / d
    return None


def _cards_under(root: Path) -> list[str]:
    return [d for d in list_dirs(root) if (root / d / CARD_FILE).is_file()]


def load_dataset(name: str | Path, data_root: str | Path | None = None) -> Dataset:
    """Load a dataset by name (under ``data_root``) or by folder path.

    * ``load_dataset("dtd", "/data")``: CoOp's ``/data/dtd`` (aliases such as
      ``DescribableTextures`` work in any case);
    * ``load_dataset("toy_shapes", "/data")``: the card ``/data/toy_shapes/dataset.json``;
    * ``load_dataset("/path/to/folder")``: a card, a CoOp folder or a
      folder-per-class directory.

    ``data_root=None`` falls back to ``$PROMPTVIZ_DATA``. Every image listed in
    a split file is checked to exist (one error lists what is missing). A
    dataset without test images, or a folder that cannot be read, raises a
    PromptvizError too (never a bare OSError).
    """
    try:
        return usable(_load_dataset(str(name), data_root))
    except OSError as e:
        root = data_root or os.environ.get("PROMPTVIZ_DATA")
        folder = Path(root) / str(name) if root and not looks_like_path(str(name)) else name
        raise unreadable_error(e, f"dataset {name}", folder) from None


def _load_dataset(name: str, data_root: str | Path | None) -> Dataset:
    if data_root is None and os.environ.get("PROMPTVIZ_DATA"):
        data_root = os.environ["PROMPTVIZ_DATA"]
    if looks_like_path(name) or (data_root is None and Path(name).is_dir()):
        return _load_path(Path(name))
    spec = find_spec(name)
    if data_root is None:
        what = f"{spec.title} lives" if spec else "Named datasets live"
        raise PromptvizError(
            f"{what} under a data root: pass data_root (--data-root DIR) or set "
            f"PROMPTVIZ_DATA, or give the dataset's folder path instead of {name!r}."
        )
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise PromptvizError(
            f"Data root {root} does not exist. Point --data-root at the folder that holds "
            f"your datasets (CoOp's layout: {COOP_DATASETS_MD})."
        )
    if (root / name / CARD_FILE).is_file():
        return load_card(root / name)
    if spec is not None:
        folder = find_folder(root, spec)
        if folder is None:
            found = first(list_dirs(root), 10) or "nothing"
            where = f"{root / spec.folder}/{spec.image_dir}".rstrip("/")
            raise PromptvizError(
                f"{spec.title} not found: looked for the folder {root / spec.folder} "
                f"(found under {root}: {found}). Download it as in CoOp's DATASETS.md "
                f"({COOP_DATASETS_MD}): images in {where}/, split file "
                f"{spec.split_file or 'classnames.txt'}; or fix --data-root."
            )
        return load_known(spec, folder)
    if (root / name).is_dir():
        return _load_path(root / name)
    cards = _cards_under(root)
    extra = f" Dataset cards under {root}: {', '.join(cards)}." if cards else ""
    hint = did_you_mean(name, [*KNOWN_DATASETS, *cards])
    raise PromptvizError(
        f"Unknown dataset {name!r}{hint}. Known datasets: {', '.join(KNOWN_DATASETS)}.{extra} "
        f"A folder path also works: a folder with a dataset.json card, or a folder-per-class "
        f"directory (DIR/<class>/<images>)."
    )
