"""The on-disk cache of frozen image-tower features for training.

CoOp, KgCoOp and TextRefiner never change the image tower, so the training loop encodes
each training image once per augmented view (``train.encode_views``) and trains from
the result. This module keeps that result on disk, so a second run with the same
images, views and backbone (another method of the same family, a rerun, a resumed
study) starts training at once.

An entry is keyed by everything its tensors depend on: the backbone's weights (a
fingerprint, not only its name), the exact list of training images and labels (dataset,
split, shot sampling and base/novel subset in one), the seed (it draws the
augmentations), the number of views, the transform, the precision, the device type and
what the method reads from the tower (``Method.image_key``). Two files per entry under
``cache_root()``: ``<key>.pt`` (the tensors) and ``<key>.json`` (what it holds, readable).
``promptviz cache list`` shows them, ``promptviz cache clear`` deletes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from promptviz.checkpoint import atomic_torch_save, atomic_write_text
from promptviz.data.fewshot import user_cache_dir

Views = list[tuple[dict[str, torch.Tensor], torch.Tensor]]
ENV = "PROMPTVIZ_CACHE_DIR"
FORMAT = 1                      # bump when what an entry holds, or how, changes
KEY_LENGTH = 24                 # hex digits of an entry's file stem
# the files of an entry, and the temporaries of an interrupted write (checkpoint.atomic_write)
ENTRY_FILE = re.compile(rf"^\.?[0-9a-f]{{{KEY_LENGTH}}}\.(pt|json)(\.\d+-[0-9a-f]{{8}}\.tmp)?$")


def cache_root(cache_dir: str | None = None) -> Path:
    """Where features are cached: ``cache_dir``, else ``$PROMPTVIZ_CACHE_DIR``, else
    ``features/`` in promptviz's user cache (``$PROMPTVIZ_CACHE`` or ``~/.cache/promptviz``).
    (``cache_dir=""``, memory only, is the caller's business: nothing is read or written.)"""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return user_cache_dir() / "features"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of every weight of ``module`` (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of the image tower: two checkpoints that share a name (a user's own
    ``promptviz pretrain`` run vs the shipped toyclip, a fine-tuned tower) never share
    cached features. Hashing costs far less than one pass of encoding."""
    return weights_fingerprint(model.visual)


def entry_key(facts: dict[str, Any], items: list[tuple[str, int]]) -> str:
    """The file stem of an entry: a hash of the facts and the training items."""
    h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    for path, label in items:
        h.update(f"{path}\t{label}\n".encode())
    return h.hexdigest()[:KEY_LENGTH]


def load(root: Path, key: str, device: torch.device) -> Views | None:
    """The cached views of ``key`` on ``device``; ``None`` when there is no entry, or when
    the entry is unreadable (it is deleted, with a warning, and encoded afresh)."""
    path = root / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        return [(dict(feats), labels) for feats, labels in saved["views"]]
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as e:
        warnings.warn(f"the cached features {path} are unreadable ({type(e).__name__}); "
                      "deleting the entry and encoding the images again", stacklevel=2)
        path.unlink(missing_ok=True)
        (root / f"{key}.json").unlink(missing_ok=True)
        return None


def store(root: Path, key: str, views: Views, facts: dict[str, Any]) -> Path | None:
    """Write an entry: tensors first, then the description, each atomically. When either
    cannot be written (a read-only or full disk) nothing of the entry is left behind, a
    warning says so and training goes on from memory."""
    path, meta = root / f"{key}.pt", root / f"{key}.json"
    cpu = [({k: t.detach().cpu() for k, t in feats.items()}, labels.cpu())
           for feats, labels in views]
    try:
        atomic_torch_save({"views": cpu}, path)
        info = dict(facts, bytes=path.stat().st_size,
                    created=time.strftime("%Y-%m-%d %H:%M:%S"),
                    tensors={k: list(t.shape) for k, t in cpu[0][0].items()})
        atomic_write_text(meta, json.dumps(info, indent=1) + "\n")
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        warnings.warn(f"could not write the feature cache entry {path} ({e}); training goes "
                      "on without it (--cache-dir puts the cache elsewhere)", stacklevel=2)
        return None
    return path


def entries(root: Path) -> list[dict[str, Any]]:
    """What the cache holds: one description per entry (``key`` added), oldest first."""
    out = []
    for meta in sorted(root.glob("*.json"), key=lambda p: p.stat().st_mtime):
        if not (root / f"{meta.stem}.pt").is_file():
            continue
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
        out.append({"key": meta.stem, **info})
    return out


def clear(root: Path) -> tuple[int, int]:
    """Delete every entry under ``root`` (and nothing else: a folder given by mistake keeps
    its other files); returns (files, bytes) removed."""
    n = size = 0
    if not root.is_dir():
        return 0, 0
    for p in root.iterdir():
        if p.is_file() and ENTRY_FILE.match(p.name):
            size += p.stat().st_size
            p.unlink()
            n += 1
    return n, size
