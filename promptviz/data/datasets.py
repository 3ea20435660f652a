"""Datasets on disk -> lists of ``Sample(impath, label, classname)``.

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

import hashlib
import json
import os
import posixpath
import re
import string
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from promptviz.errors import PromptvizError, did_you_mean

CARD_FILE = "dataset.json"
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)
_EXTENSIONS = tuple(IMAGE_EXTENSIONS)
COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
FOLDER_TEMPLATE = "a photo of a {}."
FOLDER_SPLIT_PERCENT = (60, 20, 20)  # train / val / test for a folder-per-class dir
IMAGENET_VAL_PER_CLASS = 10  # train images held out per class as ImageNet's val split
_IGNORED_DIRS = ("promptviz_fewshot",)  # our own cache folder is never a class
_SCAN_SKIP = ("lost+found",)  # unreadable by design on a mount point: not a broken dataset


# --------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Sample:
    """One labelled image: an absolute path, a dense 0-based label, a class name."""

    impath: str
    label: int
    classname: str


@dataclass
class Dataset:
    """Class names, a zero-shot template and three lists of samples."""

    name: str
    root: Path
    classnames: list[str]
    template: str
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    split_hash: str = ""
    # Train with CoOp's random-resized-crop + flip? A card says "augment": false when a crop
    # or a mirror image can change the label (ToyWorld: position, size and orientation are
    # what its classes and captions are about).
    augment: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, which: str) -> list[Sample]:
        """The samples of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in SPLITS:
            raise PromptvizError(f"Unknown split {which!r}: use one of {', '.join(SPLITS)}.")
        return getattr(self, which)

    def __repr__(self) -> str:  # never print a million samples in a notebook
        return (
            f"Dataset(name={self.name!r}, classes={self.num_classes}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)}, split_hash={self.split_hash!r}, "
            f"root='{self.root}')"
        )


@dataclass(frozen=True)
class DatasetSpec:
    """How one CoOp benchmark folder is laid out.

    ``kind`` picks the reader: ``"split_zhou"`` (a split JSON), ``"imagenet"``,
    ``"fgvc"``, ``"imagenetv2"`` (folders named by label) or ``"imagenet_wnid"``
    (test-only folders named by WordNet id; ``subset=True`` for the 200-class
    ImageNet-A and -R, whose labels are dense over the classes present).
    """

    folder: str
    title: str
    kind: str
    template: str
    image_dir: str = ""
    split_file: str = ""
    aliases: tuple[str, ...] = ()
    subset: bool = False


_PHOTO = "a photo of a {}."
KNOWN_DATASETS: dict[str, DatasetSpec] = {
    s.folder: s
    for s in [
        DatasetSpec("imagenet", "ImageNet", "imagenet", _PHOTO, "images", "classnames.txt",
                    ("imagenet1k",)),
        DatasetSpec("caltech-101", "Caltech101", "split_zhou", _PHOTO, "101_ObjectCategories",
                    "split_zhou_Caltech101.json"),
        DatasetSpec("oxford_pets", "OxfordPets", "split_zhou", "a photo of a {}, a type of pet.",
                    "images", "split_zhou_OxfordPets.json"),
        DatasetSpec("stanford_cars", "StanfordCars", "split_zhou", _PHOTO, "",
                    "split_zhou_StanfordCars.json"),
        DatasetSpec("oxford_flowers", "OxfordFlowers", "split_zhou",
                    "a photo of a {}, a type of flower.", "jpg", "split_zhou_OxfordFlowers.json",
                    ("Flowers102",)),
        DatasetSpec("food-101", "Food101", "split_zhou", "a photo of {}, a type of food.",
                    "images", "split_zhou_Food101.json"),
        DatasetSpec("fgvc_aircraft", "FGVCAircraft", "fgvc", "a photo of a {}, a type of aircraft.",
                    "images", "variants.txt"),
        DatasetSpec("sun397", "SUN397", "split_zhou", _PHOTO, "SUN397", "split_zhou_SUN397.json"),
        DatasetSpec("dtd", "DescribableTextures", "split_zhou", "{} texture.", "images",
                    "split_zhou_DescribableTextures.json", ("DTD",)),
        DatasetSpec("eurosat", "EuroSAT", "split_zhou", "a centered satellite photo of {}.",
                    "2750", "split_zhou_EuroSAT.json"),
        DatasetSpec("ucf101", "UCF101", "split_zhou", "a photo of a person doing {}.",
                    "UCF-101-midframes", "split_zhou_UCF101.json"),
        DatasetSpec("imagenetv2", "ImageNetV2", "imagenetv2", _PHOTO,
                    "imagenetv2-matched-frequency-format-val", "", ("imagenet-v2",)),
        DatasetSpec("imagenet-sketch", "ImageNetSketch", "imagenet_wnid", _PHOTO, "images"),
        DatasetSpec("imagenet-adversarial", "ImageNetA", "imagenet_wnid", _PHOTO, "imagenet-a",
                    "", ("imagenet-a",), subset=True),
        DatasetSpec("imagenet-rendition", "ImageNetR", "imagenet_wnid", _PHOTO, "imagenet-r",
                    "", ("imagenet-r",), subset=True),
    ]
}


def _norm(name: str) -> str:
    """Alias key: lower case, no ``-``, ``_`` or spaces (``Caltech101`` == ``caltech-101``)."""
    return re.sub(r"[-_ ]+", "", name.lower())


_ALIASES: dict[str, str] = {}
for _spec in KNOWN_DATASETS.values():
    for _a in (_spec.folder, _spec.title, *_spec.aliases):
        _ALIASES[_norm(_a)] = _spec.folder


def find_spec(name: str) -> DatasetSpec | None:
    """The known dataset called ``name`` (folder name or alias, any case), or None."""
    key = _ALIASES.get(_norm(name))
    return KNOWN_DATASETS[key] if key else None


# ------------------------------------------------------------------------ helpers
def _short_hash(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[:12]


def _hash01(text: str) -> float:
    """A stable pseudo-random number in [0, 1) from a string (not Python's ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2.0**64


def _clean(classname: str) -> str:
    return " ".join(classname.replace("_", " ").split())


def _list_images(folder: Path) -> list[str]:
    """Sorted image file names in one folder, from one cheap ``os.scandir``."""
    with os.scandir(folder) as it:
        return sorted(
            e.name for e in it
            if e.name.lower().endswith(_EXTENSIONS) and e.name[0] != "." and e.is_file()
        )


def _list_dirs(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(
            e.name for e in it
            if e.is_dir() and not e.name.startswith(".") and e.name not in _IGNORED_DIRS
        )


def _first(items: list[str], n: int = 5) -> str:
    """``a, b, c`` or ``a, b, c (+7 more)``."""
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _os_reason(e: OSError) -> str:
    """``permission denied``, ``input/output error``...: the reason of an OSError, in words."""
    return (e.strerror or str(e) or type(e).__name__).lower()


def _unreadable_error(e: OSError, what: str, folder: str | Path | None = None) -> PromptvizError:
    """One error for a file or folder that exists (or may) but cannot be read; ``folder``
    (the dataset's, where known) is what the suggested ``chmod`` repairs."""
    where = str(e.filename or what)
    fix = (f"give your user read access to it and the folders holding it (e.g. chmod -R u+rX "
           f"{folder or where})" if isinstance(e, PermissionError)
           else "check the path and the disk it is on")
    context = f" while loading {what}" if where not in what else ""
    return PromptvizError(f"Cannot read {where} ({_os_reason(e)}){context}: {fix}.")


def _escapes(rel: str) -> bool:
    """Whether a relative path climbs out of its base folder with ``..``."""
    norm = posixpath.normpath(rel.replace(os.sep, "/"))
    return norm == ".." or norm.startswith("../")


def _check_inside(rel: str, base: Path, what: str, where: str) -> None:
    """Refuse an absolute ``rel`` or one whose ``..`` leads out of ``base`` (checked as
    written, so a symlink put inside ``base`` on purpose still works)."""
    if os.path.isabs(rel):
        hint = ""
        if rel.startswith(f"{base}{os.sep}"):
            hint = f" (here: {rel[len(str(base)) + 1:]!r})"
        raise PromptvizError(
            f"{where}: {what} {rel!r} is an absolute path, but it must be relative to {base} "
            f"and stay inside it: write the path relative to that folder{hint}."
        )
    if _escapes(rel):
        raise PromptvizError(
            f"{where}: {what} {rel!r} leads outside {base} ('..'), but it must stay inside "
            f"that folder: move the files into {base} and write the path relative to it."
        )


def _check_split_lists(keys: dict[str, list[str]], source: str) -> None:
    """Refuse an image listed twice in one split, or in both train and test."""
    for split, items in keys.items():
        seen: set[str] = set()
        dups = []
        for k in items:
            if k in seen:
                dups.append(k)
            seen.add(k)
        if dups:
            raise PromptvizError(
                f"{source}: {len(dups)} duplicate entr{'y' if len(dups) == 1 else 'ies'} in "
                f"{split!r}; listed more than once: {_first(sorted(set(dups)))}. Each image "
                f"may appear once per split: remove the repeated entries."
            )
    both = sorted(set(keys.get("train", ())) & set(keys.get("test", ())))
    if both:
        raise PromptvizError(
            f"{source}: {len(both)} image(s) are in both 'train' and 'test', e.g. "
            f"{_first(both)}; testing on training images makes the accuracy meaningless. "
            f"Remove each of them from one of the two splits."
        )


def _check_images(rel_paths: Iterable[str], image_dir: Path, source: str) -> None:
    """Raise one error listing every image of ``source`` missing under ``image_dir``.

    One ``os.listdir`` per distinct sub-folder instead of one ``stat`` per image:
    SUN397's 40k images live in ~400 folders. A name the listing lacks gets a
    real ``os.path.exists`` too (case-insensitive file systems). A folder that
    exists but cannot be listed (permissions, I/O error) makes its images
    *unreadable*, reported as such rather than as missing.
    """
    wanted = list(dict.fromkeys(rel_paths))
    listings: dict[str, set[str] | None] = {}
    missing, unreadable = [], []
    blocked: dict[str, str] = {}  # folder -> reason it cannot be listed
    for rel in wanted:
        parent, _, fname = rel.rpartition("/")
        if parent not in listings:
            try:
                listings[parent] = set(os.listdir(image_dir / parent))
            except (FileNotFoundError, NotADirectoryError):
                listings[parent] = None
            except OSError as e:
                listings[parent] = None
                blocked[parent] = _os_reason(e)
        names = listings[parent]
        if parent in blocked:
            unreadable.append(rel)
            continue
        found = names is not None and (fname in names or os.path.exists(image_dir / rel))
        if not found:
            missing.append(rel)
    if unreadable:
        folders = [f"{image_dir / p}".rstrip("/") + f" ({r})" for p, r in blocked.items()]
        raise PromptvizError(
            f"{len(unreadable)} of {len(wanted)} images listed in {source} cannot be read: "
            f"the folder(s) holding them cannot be listed: {_first(folders, 3)}. The files "
            f"may well be there: give your user read access (e.g. chmod -R u+rX {image_dir})."
        )
    if not missing:
        return
    where = (f"{image_dir}" if os.path.isdir(image_dir)
             else f"{image_dir} (this folder does not exist)")
    raise PromptvizError(
        f"{len(missing)} of {len(wanted)} images listed in {source} are missing from {where}; "
        f"first {min(5, len(missing))}: {_first(missing)}. The dataset looks half-downloaded, "
        f"or --data-root points at the wrong copy: finish downloading/extracting the images so "
        f"these paths exist under {image_dir} (layout: {COOP_DATASETS_MD})."
    )


def _read_json(path: Path, what: str) -> tuple[object, bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PromptvizError(f"{what.capitalize()} {path} not found.") from None
    except OSError as e:
        fix = ("give your user read access (chmod u+r)" if isinstance(e, PermissionError)
               else "check that it is a readable file")
        raise PromptvizError(f"Cannot read {what} {path} ({_os_reason(e)}): {fix}.") from None
    try:
        return json.loads(raw), raw
    except ValueError as e:
        raise PromptvizError(
            f"{what.capitalize()} {path} is not valid JSON ({e}); re-download or rewrite it."
        ) from None


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
    data, raw = _read_json(split_path, "split file")
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
            _check_inside(item[0], image_dir, "image path", f"{split_path}: entry {split}[{i}]")
            keys[split].append(posixpath.normpath(item[0]))
            names.setdefault(item[1], set()).add(item[2])
    if not names:
        raise PromptvizError(f"Split file {split_path} lists no images.")
    _check_split_lists(keys, str(split_path))
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
            f"{_first(absent, 10)} never occur. Relabel the classes 0..C-1."
        )
    classnames = [_clean(next(iter(names[i]))) for i in range(num_classes)]
    base = str(image_dir)  # os.path.join on strings: pathlib is 5x slower per path
    splits = {
        s: [Sample(os.path.join(base, p), lab, classnames[lab]) for p, lab, _ in data[s]]
        for s in SPLITS
    }
    return classnames, splits, _short_hash([raw])


def _load_split_zhou(
    name: str, root: Path, image_dir: Path, split_file: str, template: str, fix: str
) -> Dataset:
    split_path = root / split_file
    classnames, splits, h = read_split_zhou(split_path, image_dir, fix)
    cut = len(str(image_dir)) + 1  # impaths are image_dir + "/" + rel: strip the prefix
    rels = (s.impath[cut:].replace(os.sep, "/") for ss in splits.values() for s in ss)
    _check_images(rels, image_dir, split_path.name)
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


def _load_card(folder: Path) -> Dataset:
    card_path = folder / CARD_FILE
    card, _ = _read_json(card_path, "dataset card")
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
        _check_inside(card[key], folder, f"{key!r}", f"Dataset card {card_path}")
    augment = card.get("augment", True)
    if not isinstance(augment, bool):
        raise PromptvizError(f"Dataset card {card_path}: 'augment' must be true or false "
                             f"(got {augment!r}); leave it out for CoOp's crop + flip.")
    ds = _load_split_zhou(card["name"].strip(), folder, folder / card["image_dir"],
                          card["split_file"], card["template"],
                          f"fix 'split_file' in {card_path} or write that file")
    return replace(ds, augment=augment)


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
        names.append(_clean(words))
    if len(set(wnids)) != len(wnids):
        dup = sorted({w for w in wnids if wnids.count(w) > 1})
        raise PromptvizError(f"{path}: WordNet id(s) listed twice: {_first(dup)}.")
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
    present = set(_list_dirs(folder))
    missing = [w for w in wanted if w not in present]
    if missing:
        raise PromptvizError(
            f"{what}: {len(missing)} of {len(wanted)} class folders are missing from {folder}; "
            f"first {min(5, len(missing))}: {_first(missing)}. The dataset looks half-downloaded "
            f"or unpacked in the wrong place; finish extracting it ({COOP_DATASETS_MD})."
        )


def _load_imagenet(spec: DatasetSpec, root: Path) -> Dataset:
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
    if val_dir.is_dir() and not _list_dirs(val_dir) and _list_images(val_dir):
        raise PromptvizError(
            f"ImageNet: {val_dir} holds images directly; sort them into one folder per wnid "
            f"(images/val/<wnid>/...) as described in {COOP_DATASETS_MD}."
        )
    _class_folders(train_dir, wnids, "ImageNet train")
    _class_folders(val_dir, wnids, "ImageNet val")
    chunks = [b"imagenet: val = crc32 hold-out v1", names_path.read_bytes()]
    train, val, test = [], [], []
    for label, (wnid, cname) in enumerate(zip(wnids, classnames)):
        files = _list_images(train_dir / wnid)
        n_val = min(IMAGENET_VAL_PER_CLASS, len(files) // 5)
        held = set(sorted(files, key=lambda f: zlib.crc32(f.encode()))[:n_val])
        base, test_base = f"{train_dir / wnid}{os.sep}", f"{val_dir / wnid}{os.sep}"
        for f in files:
            (val if f in held else train).append(Sample(base + f, label, cname))
        test_files = _list_images(val_dir / wnid)
        test += [Sample(test_base + f, label, cname) for f in test_files]
        chunks.append(f"train/{wnid}/{'/'.join(files)}|val/{wnid}/{'/'.join(test_files)}".encode())
    return Dataset(spec.folder, root, classnames, spec.template, train, val, test,
                   _short_hash(chunks))


def _load_imagenet_variant(spec: DatasetSpec, root: Path) -> Dataset:
    """ImageNet-V2/-Sketch/-A/-R: test-only sets sharing ImageNet's class list."""
    wnids, all_names, names_path = _imagenet_classnames(root)
    folder = root / spec.image_dir
    if spec.kind == "imagenetv2":  # folders named 0..999 by ImageNet label
        wanted = [str(i) for i in range(len(wnids))]
        _class_folders(folder, wanted, spec.title)
        extra = sorted(set(_list_dirs(folder)) - set(wanted))
        keep = list(range(len(wnids)))
    else:
        present = set(_list_dirs(folder)) if folder.is_dir() else set()
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
            f"{spec.title}: folder(s) {_first(extra)} in {folder} are not classes of "
            f"{names_path}; remove them or fix classnames.txt."
        )
    classnames = [all_names[i] for i in keep]
    test, chunks = [], [names_path.read_bytes()]
    for label, sub in enumerate(wanted):
        files = _list_images(folder / sub)
        base = f"{folder / sub}{os.sep}"
        test += [Sample(base + f, label, classnames[label]) for f in files]
        chunks.append(f"{sub}/{'/'.join(files)}".encode())
    return Dataset(spec.folder, root, classnames, spec.template, [], [], test,
                   _short_hash(chunks))


# --------------------------------------------------------------------- FGVCAircraft
def _load_fgvc(spec: DatasetSpec, root: Path) -> Dataset:
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
            _check_inside(f"{image_id}.jpg", image_dir, "image", f"{path}:{lineno}")
            splits[split].append(Sample(str(image_dir / f"{image_id}.jpg"), label,
                                        classnames[label]))
    _check_split_lists({s: [Path(x.impath).name for x in ss] for s, ss in splits.items()},
                       "images_variant_{train,val,test}.txt")
    rels = (Path(s.impath).name for ss in splits.values() for s in ss)
    _check_images(rels, image_dir, "images_variant_*.txt")
    h = _short_hash(p.read_bytes() for p in files)
    return Dataset(spec.folder, root, classnames, spec.template, splits["train"],
                   splits["val"], splits["test"], h)


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


def _load_folder_per_class(folder: Path) -> Dataset:
    """``DIR/<class>/<images>`` or ``DIR/{train,val,test}/<class>/<images>``."""
    explicit = (folder / "train").is_dir()
    if explicit and not (folder / "test").is_dir():
        raise PromptvizError(
            f"{folder} has a train/ folder but no test/ folder: add test/<class>/<images> "
            f"(val/ is optional), or drop train/ to let promptviz split the class folders."
        )
    split_dirs = [s for s in SPLITS if (folder / s).is_dir()] if explicit else [""]
    classes = sorted({c for s in split_dirs for c in _list_dirs(folder / s)})
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
                files = _list_images(d) if d.is_dir() else []
                rels[s] += [(f"{s}/{cls}/{f}", label) for f in files]
        else:
            files = [f"{cls}/{f}" for f in _list_images(folder / cls)]
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
    h = _short_hash([rule.encode(), "\n".join(listing).encode()])
    return Dataset(folder.name, folder, classnames, FOLDER_TEMPLATE, splits["train"],
                   splits["val"], splits["test"], h)


# ------------------------------------------------------------------- load_dataset
def _load_known(spec: DatasetSpec, root: Path) -> Dataset:
    if spec.kind == "split_zhou":
        fix = (f"download {spec.split_file} (linked from CoOp's DATASETS.md, "
               f"{COOP_DATASETS_MD}) into {root}")
        return _load_split_zhou(spec.folder, root, root / spec.image_dir, spec.split_file,
                                spec.template, fix)
    if spec.kind == "imagenet":
        return _load_imagenet(spec, root)
    if spec.kind == "fgvc":
        return _load_fgvc(spec, root)
    return _load_imagenet_variant(spec, root)


def _load_path(folder: Path) -> Dataset:
    """A folder given by path: a card, a CoOp folder (by its name) or folder-per-class."""
    folder = folder.expanduser().resolve()
    if not folder.is_dir():
        raise PromptvizError(
            f"Dataset folder {folder} does not exist. Give a dataset name with --data-root, "
            f"or the path of a folder with a dataset.json card or one sub-folder per class."
        )
    if (folder / CARD_FILE).is_file():
        return _load_card(folder)
    if folder.name in KNOWN_DATASETS:  # exact CoOp folder names only, not aliases
        return _load_known(KNOWN_DATASETS[folder.name], folder)
    return _load_folder_per_class(folder)


def looks_like_path(name: str) -> bool:
    """Whether a dataset argument names a folder (has a separator, `~`, `.`) rather than a
    known dataset."""
    return ("/" in name or os.sep in name or name.startswith(("~", "."))
            or Path(name).is_absolute())


def find_folder(root: Path, spec: DatasetSpec) -> Path | None:
    """``root/<CoOp folder>``, or a folder whose name is an alias (``DTD``, ``Food101``)."""
    if (root / spec.folder).is_dir():
        return root / spec.folder
    for d in _list_dirs(root):
        if _ALIASES.get(_norm(d)) == spec.folder:
            return root / d
    return None


def _cards_under(root: Path) -> list[str]:
    return [d for d in _list_dirs(root) if (root / d / CARD_FILE).is_file()]


def _usable(ds: Dataset) -> Dataset:
    """``ds``, or an error when it cannot be evaluated (no test images: NaN metrics)."""
    if not ds.test:
        raise PromptvizError(
            f"Dataset {ds.name} ({ds.root}) has no test images, so every accuracy would be "
            f"NaN: add test images (the 'test' list of its split file, or test/<class>/ "
            f"folders; a folder-per-class directory needs 2+ images in some class)."
        )
    return ds


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
        return _usable(_load_dataset(str(name), data_root))
    except OSError as e:
        root = data_root or os.environ.get("PROMPTVIZ_DATA")
        folder = Path(root) / str(name) if root and not looks_like_path(str(name)) else name
        raise _unreadable_error(e, f"dataset {name}", folder) from None


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
        return _load_card(root / name)
    if spec is not None:
        folder = find_folder(root, spec)
        if folder is None:
            found = _first(_list_dirs(root), 10) or "nothing"
            where = f"{root / spec.folder}/{spec.image_dir}".rstrip("/")
            raise PromptvizError(
                f"{spec.title} not found: looked for the folder {root / spec.folder} "
                f"(found under {root}: {found}). Download it as in CoOp's DATASETS.md "
                f"({COOP_DATASETS_MD}): images in {where}/, split file "
                f"{spec.split_file or 'classnames.txt'}; or fix --data-root."
            )
        return _load_known(spec, folder)
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


# --------------------------------------------------------------------- scan/report
@dataclass
class DatasetReport:
    """One row of ``promptviz datasets``: what was found in a folder and whether it loads."""

    name: str
    folder: str
    ok: bool
    num_classes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problem: str | None = None


def scan_data_root(data_root: str | Path) -> list[DatasetReport]:
    """Try to load every CoOp folder and every dataset card directly under ``data_root``.

    Folders that are neither (random downloads, folder-per-class dirs) are
    skipped; broken datasets are reported with their error, never raised. A
    folder that cannot be read (permissions) is reported as broken with the
    reason, since it may well be a dataset; the scan goes on with the others.
    """
    root = Path(data_root).expanduser().resolve()
    try:
        if not root.is_dir():
            raise PromptvizError(
                f"Data root {root} does not exist; pass an existing --data-root.")
        entries = _list_dirs(root)
    except OSError as e:
        raise _unreadable_error(e, f"data root {root}") from None
    reports = []
    for d in entries:
        folder = root / d
        spec = find_spec(d)
        is_card = False
        try:
            with os.scandir(folder) as it:  # an unreadable folder fails here, not half-way
                next(it, None)
            is_card = (folder / CARD_FILE).is_file()
            if not is_card and spec is None:
                continue
            ds = _usable(_load_card(folder) if is_card else _load_known(spec, folder))
        except (PromptvizError, OSError) as e:
            if isinstance(e, OSError) and d in _SCAN_SKIP:
                continue
            problem = str(e) if isinstance(e, PromptvizError) else str(
                _unreadable_error(e, str(folder), folder))
            reports.append(DatasetReport(spec.folder if spec and not is_card else d, str(folder),
                                         False, problem=problem))
            continue
        counts = {s: len(ds.split(s)) for s in SPLITS}
        reports.append(DatasetReport(ds.name, str(folder), True, ds.num_classes, counts))
    return reports


def format_report(reports: list[DatasetReport], root: str | Path | None = None) -> str:
    """A plain-text table of :func:`scan_data_root`'s reports, problems spelled out below;
    given the scanned ``root``, an empty report names it and says how to fill it."""
    header = ("name", "folder", "classes", "train", "val", "test", "status")
    rows, notes = [], []
    for r in reports:
        status = "ok"
        if not r.ok:
            notes.append(f"[{len(notes) + 1}] {r.name}: {r.problem}")
            status = f"BROKEN, see [{len(notes)}]"
        nums = [str(r.num_classes) if r.ok else "-"] + [
            str(r.counts.get(s, "-")) if r.ok else "-" for s in SPLITS
        ]
        rows.append((r.name, Path(r.folder).name, *nums, status))
    lines = []
    if rows:
        widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            cells = [str(c).rjust(w) if 2 <= i <= 5 else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
    else:
        where = f" under {root}" if root is not None else ""
        lines.append(f"No datasets found{where} (no CoOp dataset folders and no dataset.json "
                     "cards).")
        if root is not None:
            lines.append(f"Build the ToyWorld suite there: promptviz toyworld build --out {root}"
                         " (or pass --data-root with your CoOp datasets).")
    if notes:
        lines += ["", *notes]
    present = {find_spec(r.name).folder for r in reports if find_spec(r.name)}
    absent = [k for k in KNOWN_DATASETS if k not in present]
    if absent:
        lines += ["", f"Known CoOp datasets not found here: {', '.join(absent)}."]
    return "\n".join(lines)
