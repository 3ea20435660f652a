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

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from promptviz.checkpoint import atomic_torch_save, atomic_write_text
from promptviz.errors import PromptvizError

Views = list[tuple[dict[str, torch.Tensor], torch.Tensor]]
ENV = "PROMPTVIZ_CACHE_DIR"


def cache_root(cache_dir: str | None = None) -> Path:
    """Where features are cached: ``cache_dir``, else ``$PROMPTVIZ_CACHE_DIR``, else
    ``~/.cache/promptviz/features``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return Path.home() / ".cache" / "promptviz" / "features"


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a few of the image tower's weights: two checkpoints that share a
    name (a user's own ``promptviz pretrain`` run vs the shipped toyclip) never share
    cached features."""
    h = hashlib.sha256()
    visual = model.visual
    for t in (visual.conv1.weight, visual.positional_embedding, visual.proj):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def entry_key(facts: dict[str, Any], items: list[tuple[str, int]]) -> str:
    """The file stem of an entry: a hash of the facts and the training items."""
    h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    for path, label in items:
        h.update(f"{path}\t{label}\n".encode())
    return h.hexdigest()[:24]


def load(root: Path, key: str, device: torch.device) -> Views | None:
    """The cached views of ``key`` on ``device``, or ``None`` when there is no entry."""
    path = root / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
        return [(dict(feats), labels) for feats, labels in saved["views"]]
    except Exception:
        raise PromptvizError(
            f"the cached features {path} are unreadable; delete that file (or run "
            f"`promptviz cache clear`) and train again") from None


def store(root: Path, key: str, views: Views, facts: dict[str, Any]) -> Path | None:
    """Write an entry (tensors first, then the description; both atomically). A failed
    write (a full disk) leaves nothing behind and only warns."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PromptvizError(f"cannot create the feature cache folder {root} ({e.strerror}); "
                             "pass --cache-dir to put it elsewhere or --no-feature-cache") from None
    path = root / f"{key}.pt"
    cpu = [({k: t.detach().cpu() for k, t in feats.items()}, labels.cpu())
           for feats, labels in views]
    try:
        atomic_torch_save({"views": cpu}, path)
    except (OSError, RuntimeError) as e:            # a full disk: train on from memory
        path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
        warnings.warn(f"could not write the feature cache entry {path} ({e}); training "
                      "goes on without it", stacklevel=2)
        return None
    info = dict(facts, bytes=path.stat().st_size,
                created=time.strftime("%Y-%m-%d %H:%M:%S"),
                tensors={k: list(t.shape) for k, t in cpu[0][0].items()})
    atomic_write_text(root / f"{key}.json", json.dumps(info, indent=1) + "\n")
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
    """Delete every entry under ``root``; returns (files, bytes) removed."""
    n = size = 0
    if not root.is_dir():
        return 0, 0
    files = {*root.glob("*.pt"), *root.glob("*.json"), *root.glob(".*.tmp")}
    for p in files:
        size += p.stat().st_size
        p.unlink()
        n += 1
    return n, size
