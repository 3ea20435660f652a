"""Checkpoints hold only what trains: ``model.safetensors`` + ``meta.json``.

``meta.json`` records the method, its options, the backbone spec and the class
names the prompts were trained on, so a later ``promptviz eval`` rebuilds the same
method and refuses a checkpoint from another backbone or class list. Every file is
written to a temporary name and renamed, so an interrupted save never leaves a
corrupt checkpoint behind.
"""

from __future__ import annotations

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


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it into place. The temporary
    name is unique to the writer (two processes filling one shared cache entry never write
    the same file), and a failed write removes it: ``path`` is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(out: Path, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write the trainable state and its metadata into folder ``out`` (write, then rename)."""
    out = Path(out)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(
        tensors, str(tmp), metadata={"method": str(meta.get("method", ""))}))
    atomic_write_text(out / META, json.dumps(meta, indent=2))


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``(state, meta)`` from a checkpoint folder (or its ``model.safetensors``)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    weights, meta = folder / WEIGHTS, folder / META
    if not weights.is_file() or not meta.is_file():
        raise PromptvizError(
            f"no checkpoint in {folder}: expected {WEIGHTS} and {META} there (written by "
            "`promptviz train --out DIR`); check the --checkpoint path")
    try:
        return load_file(str(weights)), json.loads(meta.read_text())
    except Exception as e:
        raise PromptvizError(f"checkpoint {folder} is unreadable ({e}); re-run the training "
                             "that wrote it") from None
