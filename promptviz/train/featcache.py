"""The on-disk cache of frozen image-tower features for training.

CoOp, KgCoOp and TextRefiner never change the image tower, so training encodes each
training image once per augmented view (:class:`promptviz.train.inputs.TrainingInputs`) and
trains from the result. This module keeps that result on disk, so a second run with the same
images, views and backbone (another method of the same family, a rerun, a resumed
study) starts training at once.

An entry is keyed by everything its tensors depend on: the backbone's weights (a
fingerprint, not only its name), the exact list of training images and labels (dataset,
split, shot sampling and base/novel subset in one), the seed (it draws the
augmentations), the number of views, the transform, the precision, the device type and
what the method reads from the tower (``image_input.key()``). Two files per entry under
``cache_root()``: ``<key>.pt`` (the tensors) and ``<key>.json`` (what it holds, readable).
``promptviz cache list`` shows them, ``promptviz cache clear`` deletes them. The key also
holds the versions of promptviz, torch and open_clip (:func:`library_versions`): a new
release of any of them may compute the tower differently, and never reads an old entry.

Where the features live while training. The views stay in **host memory** (a
:class:`HostFeatures` per view; an entry read back from disk is memory-mapped, so it costs
page cache, not private memory) and :func:`batches` moves one batch at a time to the
training device: gathered into a pinned staging buffer and copied ``non_blocking`` on
CUDA, so the device only ever holds the batch a step reads. Before a store is built, its
size is estimated from the first encoded chunk (:func:`estimate_bytes`: images × views ×
bytes per image) and compared with :func:`host_budget` (half of the host's available
memory, or ``$PROMPTVIZ_CACHE_MAX_BYTES``); a store that would not fit is not built, and
training goes through the image tower instead.

What is stored in half precision (:func:`store_dtype`): a tensor with a token axis
(``[images, tokens, d]``, TextRefiner's per-token features: almost all of its bytes) is kept
in the autocast dtype when the features were encoded under autocast (bf16 by default on a
GPU). That is exact: those tokens come out of the tower's projection, a matmul that autocast
runs in bf16, so their values are bf16 numbers already; the step gets them back in the
dtype the method computed them in. Everything else (global features, CLS attention, every
tensor of an fp32 run) is kept as computed: small, and an fp32 run stays bit-identical
with and without the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from promptviz.checkpoint import atomic_torch_save, atomic_write_text, user_cache_dir
from promptviz.errors import PromptvizError

Views = list[tuple[dict[str, torch.Tensor], torch.Tensor]]
ENV = "PROMPTVIZ_CACHE_DIR"
BUDGET_ENV = "PROMPTVIZ_CACHE_MAX_BYTES"   # the most host memory a store may take
MEMORY_FRACTION = 0.5           # of the host's available memory, when BUDGET_ENV is unset
FORMAT = 2                      # bump when what an entry holds, or how, changes
                                # (2: half-precision tokens under autocast, "dtypes")
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
    """A short hash of every weight of ``module`` (names, dtypes, shapes and values) and of
    the kinds of module it is built from: the same weights under GELU and QuickGELU (one
    ``ViT-B-16`` state dict loaded both ways) compute different features."""
    h = hashlib.sha256(",".join(sorted({type(m).__name__ for m in module.modules()})).encode())
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of the image tower: two checkpoints that share a name (a user's own
    ``promptviz pretrain`` run vs the shipped toyclip, a fine-tuned tower) never share
    cached features. Hashing costs far less than one pass of encoding."""
    return weights_fingerprint(model.visual)


def library_versions() -> dict[str, str]:
    """The versions of the code that computes an entry: promptviz (the tower's wrapper and
    the methods' image inputs), torch (its kernels) and open_clip (the model code).
    Part of every entry's key."""
    import open_clip

    import promptviz
    return {"promptviz": promptviz.__version__, "torch": torch.__version__,
            "open_clip": open_clip.__version__}


def entry_key(facts: dict[str, Any], items: list[tuple[str, int]]) -> str:
    """The file stem of an entry: a hash of the facts and the training items."""
    h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    for path, label in items:
        h.update(f"{path}\t{label}\n".encode())
    return h.hexdigest()[:KEY_LENGTH]


def load(root: Path, key: str, device: torch.device | str) -> Views | None:
    """The cached views of ``key``, memory-mapped from the entry (host memory: the page
    cache), to be trained on ``device``; ``None`` when there is no entry, or when the entry
    is unreadable (it is deleted, with a warning, and encoded afresh)."""
    path = root / f"{key}.pt"
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        dtypes = {k: _dtype(v) for k, v in saved["dtypes"].items()}
        return [(HostFeatures(feats, device, dtypes), labels) for feats, labels in saved["views"]]
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
    dtypes = {k: str(getattr(views[0][0], "dtypes", {}).get(k, t.dtype))
              for k, t in cpu[0][0].items()}
    try:
        atomic_torch_save({"views": cpu, "dtypes": dtypes}, path)
        info = dict(facts, bytes=path.stat().st_size,
                    created=time.strftime("%Y-%m-%d %H:%M:%S"),
                    tensors={k: list(t.shape) for k, t in cpu[0][0].items()},
                    stored_as={k: str(t.dtype) for k, t in cpu[0][0].items()})
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


# ------------------------------------------------------------ the store in host memory
class HostFeatures(dict):
    """One cached view's features by name, ``[images, ...]`` tensors in host memory (or
    memory-mapped from an entry), some in a narrower dtype than the method computed them in
    (:func:`store_dtype`). ``device`` is where training reads them, ``dtypes`` the dtype each
    is handed back in; :func:`batches` does both, one batch at a time."""

    def __init__(self, tensors: dict[str, torch.Tensor], device: torch.device | str,
                 dtypes: dict[str, torch.dtype] | None = None) -> None:
        super().__init__(tensors)
        self.device = torch.device(device)
        self.dtypes = {k: (dtypes or {}).get(k, t.dtype) for k, t in tensors.items()}


def store_dtype(t: torch.Tensor, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype a cached batch ``t`` (``[B, ...]``) is kept in: the autocast dtype for a
    floating tensor with a token axis (``[B, tokens, d]``) encoded under autocast, else its
    own. See the module's docstring for why that is exact."""
    return _stored(tuple(t.shape[1:]), t.dtype, autocast_dtype)


def _stored(shape: tuple[int, ...], dtype: torch.dtype, autocast: torch.dtype | None
            ) -> torch.dtype:
    """:func:`store_dtype` of a tensor with per-image ``shape`` computed in ``dtype``."""
    if (autocast is not None and dtype.is_floating_point and len(shape) >= 2
            and autocast.itemsize < dtype.itemsize):
        return autocast
    return dtype


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on ``device`` here, or None when it is off."""
    if hasattr(torch, "get_autocast_dtype"):                 # torch >= 2.4
        if not torch.is_autocast_enabled(device.type):
            return None
        return torch.get_autocast_dtype(device.type)
    if device.type == "cuda":                                 # torch 2.3
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    if device.type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return None


class ViewBuilder:
    """One view's :class:`HostFeatures`, filled chunk by chunk as the tower encodes: each
    chunk goes to host memory at once, in its :func:`store_dtype`, so the device never holds
    more than the chunk being encoded. The shapes (and :attr:`bytes_per_image`) are known
    after the first chunk, before anything is allocated (:meth:`allocate`)."""

    def __init__(self, n_images: int, device: torch.device) -> None:
        self.n, self.device, self.pos = n_images, torch.device(device), 0
        self.tensors: dict[str, torch.Tensor] = {}
        self.layout: dict[str, tuple[tuple[int, ...], torch.dtype, torch.dtype]] = {}
        self.labels = torch.empty(n_images, dtype=torch.long)

    def describe(self, feats: dict[str, torch.Tensor], autocast: torch.dtype | None) -> None:
        """Read the per-image shapes and dtypes (computed and stored) off a first chunk."""
        self.layout = {k: (tuple(t.shape[1:]), t.dtype, store_dtype(t, autocast))
                       for k, t in feats.items()}

    @property
    def bytes_per_image(self) -> int:
        """Host bytes one image takes in this view: every stored tensor, and its label."""
        return 8 + sum(math.prod(shape) * stored.itemsize
                       for shape, _, stored in self.layout.values())

    def bytes_per_image_under(self, autocast: torch.dtype | None) -> int:
        """:attr:`bytes_per_image` had the features been encoded under ``autocast`` (e.g. a
        CPU measurement's estimate for a bf16 GPU run: same shapes, other dtypes)."""
        return 8 + sum(math.prod(shape) * _stored(shape, computed, autocast).itemsize
                       for shape, computed, _ in self.layout.values())

    def allocate(self) -> None:
        self.tensors = {k: torch.empty((self.n, *shape), dtype=stored)
                        for k, (shape, _, stored) in self.layout.items()}

    def add(self, feats: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        b = len(labels)
        for k, t in feats.items():          # narrowed on the device: half the copy
            self.tensors[k][self.pos:self.pos + b].copy_(t.detach().to(self.tensors[k].dtype))
        self.labels[self.pos:self.pos + b] = labels
        self.pos += b

    def view(self) -> tuple[HostFeatures, torch.Tensor]:
        if self.pos != self.n:
            raise RuntimeError(f"the view holds {self.pos} of {self.n} images")
        dtypes = {k: computed for k, (_, computed, _) in self.layout.items()}
        return HostFeatures(self.tensors, self.device, dtypes), self.labels


def estimate_bytes(bytes_per_image: int, images: int, views: int) -> int:
    """Host memory of a store: images × views × bytes per image (:class:`ViewBuilder`)."""
    return bytes_per_image * images * views


def available_host_bytes() -> int | None:
    """The host memory available to a new allocation (Linux ``MemAvailable``; elsewhere the
    free physical pages); None when unknown."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def host_budget() -> int | None:
    """The most host memory a feature store may take: ``$PROMPTVIZ_CACHE_MAX_BYTES`` (bytes,
    or with a K/M/G/T suffix), else :data:`MEMORY_FRACTION` of :func:`available_host_bytes`
    (None, no limit, when that is unknown)."""
    value = os.environ.get(BUDGET_ENV, "").strip()
    if value:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", value, re.I)
        if not m:
            raise PromptvizError(f"${BUDGET_ENV}={value!r} is not a size (e.g. 8G or 500000000)")
        return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))
    available = available_host_bytes()
    return None if available is None else int(MEMORY_FRACTION * available)


def fits(bytes_per_image: int, images: int, views: int) -> bool:
    """Whether a store of ``views`` views of ``images`` images fits :func:`host_budget`; when
    it does not, a one-line warning says so (training then reads the images)."""
    need, budget = estimate_bytes(bytes_per_image, images, views), host_budget()
    if budget is None or need <= budget:
        return True
    warnings.warn(
        f"the feature cache ({images} images × {views} views × {format_bytes(bytes_per_image)})"
        f" would take {format_bytes(need)} of host memory, more than the "
        f"{format_bytes(budget)} it may use (${BUDGET_ENV}, else {MEMORY_FRACTION:.0%} of the "
        "available memory): training from the images instead (slower)",
        stacklevel=2)
    return False


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def batches(feats: HostFeatures, labels: torch.Tensor, order: Sequence[int], batch_size: int,
            drop_last: bool) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor,
                                                torch.Tensor]]:
    """``(features, labels, indices)`` of each batch of one epoch over ``order``, on
    ``feats.device``, the features in the dtype the method computed them in. The features
    are gathered in host memory and moved one batch at a time (on CUDA through a pinned
    staging buffer, ``non_blocking``); labels and indices go to the device once per epoch."""
    device = feats.device
    host_order = torch.as_tensor(order, dtype=torch.long)
    order_dev = host_order.to(device)            # one copy per epoch, none per step
    labels = labels.to(device)
    on_host = all(t.device.type == "cpu" for t in feats.values())
    stage = _Staging(feats, batch_size) if device.type == "cuda" and on_host else None
    stop = len(host_order) - len(host_order) % batch_size if drop_last else len(host_order)
    for j, i in enumerate(range(0, stop, batch_size)):
        idx, dev_idx = host_order[i:i + batch_size], order_dev[i:i + batch_size]
        if stage is not None:
            moved = stage.move(idx, j)
        else:                              # a CPU run (or features already on the device)
            moved = {k: t.index_select(0, idx if t.device.type == "cpu" else dev_idx)
                     .to(device) for k, t in feats.items()}
        out = {k: t if t.dtype == feats.dtypes[k] else t.to(feats.dtypes[k])
               for k, t in moved.items()}
        yield out, labels[dev_idx], dev_idx


class _Staging:
    """Two sets of pinned buffers, one batch each: batch ``j`` is gathered into set
    ``j % 2`` and copied from there ``non_blocking``; before a set is written again, the
    event recorded after its last copy is waited for (normally long done)."""

    def __init__(self, feats: HostFeatures, batch_size: int) -> None:
        self.feats = feats
        self.sets = [{k: torch.empty((batch_size, *t.shape[1:]), dtype=t.dtype,
                                     pin_memory=True) for k, t in feats.items()}
                     for _ in range(2)]
        self.copied: list[Any] = [None, None]

    def move(self, idx: torch.Tensor, j: int) -> dict[str, torch.Tensor]:
        s, device = j % 2, self.feats.device
        if self.copied[s] is not None:
            self.copied[s].synchronize()
        out = {}
        for k, t in self.feats.items():
            buf = self.sets[s][k][:len(idx)]
            torch.index_select(t, 0, idx, out=buf)
            out[k] = buf.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        self.copied[s] = event
        return out


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a dtype: {name!r}")
    return dtype
