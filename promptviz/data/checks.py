"""What the readers share: folder listings, and the checks behind every refusal at load
time (paths that must stay inside their folder, images listed twice or in two splits,
images missing or unreadable, files that cannot be read, datasets without test images).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from promptviz.data.datasets import COOP_DATASETS_MD, IMAGE_EXTENSIONS, Dataset
from promptviz.errors import PromptvizError

_EXTENSIONS = tuple(IMAGE_EXTENSIONS)
_IGNORED_DIRS = ("promptviz_fewshot",)  # our own cache folder is never a class


# ----------------------------------------------------------------------- listings
def list_images(folder: Path) -> list[str]:
    """Sorted image file names in one folder, from one cheap ``os.scandir``."""
    with os.scandir(folder) as it:
        return sorted(
            e.name for e in it
            if e.name.lower().endswith(_EXTENSIONS) and e.name[0] != "." and e.is_file()
        )


def list_dirs(folder: Path) -> list[str]:
    """Sorted sub-folder names, without hidden ones and our own cache folder."""
    with os.scandir(folder) as it:
        return sorted(
            e.name for e in it
            if e.is_dir() and not e.name.startswith(".") and e.name not in _IGNORED_DIRS
        )


def first(items: list[str], n: int = 5) -> str:
    """``a, b, c`` or ``a, b, c (+7 more)``."""
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


# ------------------------------------------------------------------------- checks
def _os_reason(e: OSError) -> str:
    """``permission denied``, ``input/output error``...: the reason of an OSError, in words."""
    return (e.strerror or str(e) or type(e).__name__).lower()


def unreadable_error(e: OSError, what: str, folder: str | Path | None = None) -> PromptvizError:
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


def check_inside(rel: str, base: Path, what: str, where: str) -> None:
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


def check_split_lists(keys: dict[str, list[str]], source: str) -> None:
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
                f"{split!r}; listed more than once: {first(sorted(set(dups)))}. Each image "
                f"may appear once per split: remove the repeated entries."
            )
    both = sorted(set(keys.get("train", ())) & set(keys.get("test", ())))
    if both:
        raise PromptvizError(
            f"{source}: {len(both)} image(s) are in both 'train' and 'test', e.g. "
            f"{first(both)}; testing on training images makes the accuracy meaningless. "
            f"Remove each of them from one of the two splits."
        )


def check_images(rel_paths: Iterable[str], image_dir: Path, source: str) -> None:
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
            f"the folder(s) holding them cannot be listed: {first(folders, 3)}. The files "
            f"may well be there: give your user read access (e.g. chmod -R u+rX {image_dir})."
        )
    if not missing:
        return
    where = (f"{image_dir}" if os.path.isdir(image_dir)
             else f"{image_dir} (this folder does not exist)")
    raise PromptvizError(
        f"{len(missing)} of {len(wanted)} images listed in {source} are missing from {where}; "
        f"first {min(5, len(missing))}: {first(missing)}. The dataset looks half-downloaded, "
        f"or --data-root points at the wrong copy: finish downloading/extracting the images so "
        f"these paths exist under {image_dir} (layout: {COOP_DATASETS_MD})."
    )


def read_json(path: Path, what: str) -> tuple[object, bytes]:
    """A JSON file and its raw bytes; ``what`` (e.g. "split file") names it in errors."""
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


def usable(ds: Dataset) -> Dataset:
    """``ds``, or an error when it cannot be evaluated (no test images: NaN metrics)."""
    if not ds.test:
        raise PromptvizError(
            f"Dataset {ds.name} ({ds.root}) has no test images, so every accuracy would be "
            f"NaN: add test images (the 'test' list of its split file, or test/<class>/ "
            f"folders; a folder-per-class directory needs 2+ images in some class)."
        )
    return ds
