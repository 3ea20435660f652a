"""Checkpoints hold only what trains: ``model.safetensors`` + ``meta.json``.

``meta.json`` records the method, its options, the backbone spec and the class
names the prompts were trained on, so a later ``promptviz eval`` rebuilds the same
method and refuses a checkpoint from another backbone or class list. Every file is
written to a temporary name and renamed, so an interrupted save never leaves a
corrupt checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from promptviz.errors import PromptvizError

WEIGHTS = "model.safetensors"
META = "meta.json"


def load_state(path: Path) -> dict[str, Any]:
    """A state file written by training or pretraining (``resume.pt``, ``state.pt``), loaded
    onto the CPU and without running pickled code (``weights_only``). The caller moves what
    belongs on the device: RNG states must stay CPU byte tensors, or ``set_rng_state``
    raises on a GPU run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise PromptvizError(f"{path} is unreadable or not a promptviz state file; delete it "
                             "to start from scratch") from None


_UMASK = os.umask(0)
os.umask(_UMASK)


def usual_mode(path: str | Path) -> None:
    """Give a written file the mode a plain ``open()`` would (0666 less the umask): the
    safetensors writer and ``mkstemp`` create files only their owner can read, which other
    users of a shared machine (or a container) then cannot load."""
    os.chmod(path, 0o666 & ~_UMASK)


def user_cache_dir() -> Path:
    """``$PROMPTVIZ_CACHE`` or ``~/.cache/promptviz``: where caches go when the dataset
    folder is read-only."""
    return Path(os.environ.get("PROMPTVIZ_CACHE") or "~/.cache/promptviz").expanduser()


def check_folder(out: Path, flag: str = "--out") -> None:
    """Refuse, before anything is written, an ``out`` that cannot become a folder this
    process can write to: a file, a path below a file, a read-only place."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PromptvizError(f"{flag} {out} is a file, not a folder; give a folder path")
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PromptvizError(f"{flag} {out}: {existing} is a file, so no folder can be made "
                             f"there; give another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PromptvizError(f"{flag} {out}: {existing} is not writable; give a folder you "
                             "can write to")


def make_folder(out: Path, flag: str = "--out") -> bool:
    """Make ``out`` (:func:`check_folder` first) and prove it can be written by writing and
    removing a probe file; on failure nothing it made is left. Returns whether it made it."""
    out = Path(out)
    check_folder(out, flag)
    created = not out.exists()
    probe = out / f".promptviz-write-test-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
            if created and not any(out.iterdir()):
                out.rmdir()
        raise PromptvizError(f"{flag} {out}: cannot write there ({e.strerror or e}); give a "
                             "folder you can write to") from None
    return created


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it into place. The temporary
    name is unique to the writer (two processes filling one shared cache entry never write
    the same file), and a failed write removes it: ``path`` is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(out: Path, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write the trainable state and its metadata into folder ``out``: both files go to
    temporary names first and are renamed only when both are whole, so a failure (a full
    disk) never leaves weights without their ``meta.json``, or the reverse."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp_w, tmp_m = out / f".{WEIGHTS}.{tag}.tmp", out / f".{META}.{tag}.tmp"
    try:
        save_file(tensors, str(tmp_w), metadata={"method": str(meta.get("method", ""))})
        usual_mode(tmp_w)
        tmp_m.write_text(json.dumps(meta, indent=2))
        (out / META).unlink(missing_ok=True)     # never the new weights beside the old meta
        os.replace(tmp_w, out / WEIGHTS)
        os.replace(tmp_m, out / META)
    except BaseException:
        tmp_w.unlink(missing_ok=True)
        tmp_m.unlink(missing_ok=True)
        raise


META_KEYS = ("method", "options", "backbone", "dataset", "protocol", "shots", "seed",
             "classnames", "template", "config")


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()
                    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``(state, meta)`` from a checkpoint folder (or its ``model.safetensors``);
    ``meta`` must hold the ``required`` keys (``META_KEYS``: all that ``promptviz train``
    writes)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    weights, meta_path = folder / WEIGHTS, folder / META
    if not weights.is_file() or not meta_path.is_file():
        raise PromptvizError(
            f"no checkpoint in {folder}: expected {WEIGHTS} and {META} there (written by "
            "`promptviz train --out DIR`); check the --checkpoint path")
    try:
        state, meta = load_file(str(weights)), json.loads(meta_path.read_text())
    except Exception as e:
        raise PromptvizError(f"checkpoint {folder} is unreadable ({_first_line(e)}); re-run "
                             "the training that wrote it") from None
    missing = [k for k in required if k not in meta] if isinstance(meta, dict) else required
    if missing:
        raise PromptvizError(f"{meta_path} lacks {', '.join(missing)}: it was not written by "
                             "`promptviz train` or was edited; re-run the training that "
                             "wrote it")
    return state, meta


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
