"""Is this machine ready for the real-CLIP runs? Checks that never download anything.

The GPU notebook and scripts ask three questions before they start a long job:
is there a CUDA GPU, are the backbone's weights already on disk, and are the
datasets where the data root says? :func:`check_real_clip` answers all three in
one :class:`Readiness`, which is truthy when everything is there and otherwise
carries one readable reason per missing piece::

    ready = check_real_clip("ViT-B-16:openai", data_root=None, datasets=["dtd"])
    if ready:
        run(TrainConfig(backbone=ready.backbone, data_root=ready.data_root, ...))
    else:
        print(ready.reason)

Weights are looked up where open_clip would put them (the Hugging Face hub cache
and ``~/.cache/clip``) with ``huggingface_hub.try_to_load_from_cache``, which
reads the local cache only. The data root defaults to ``$PROMPTVIZ_DATA``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from promptviz.data.datasets import CARD_FILE, COOP_DATASETS_MD, find_spec
from promptviz.data.load import find_folder

URL_CACHE = Path("~/.cache/clip")        # where open_clip keeps weights fetched by URL
HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class Readiness:
    """The answer to "can the real-CLIP cells run here?": truthy when they can.

    ``reason`` says what is missing (or, when ready, what was found); ``backbone``
    is a spec :func:`promptviz.load_clip` loads from local files, ``data_root``
    the resolved data folder.
    """

    ready: bool
    reason: str
    backbone: str | None = None
    data_root: str | None = None

    def __bool__(self) -> bool:
        return self.ready


def cuda_ready() -> Readiness:
    """Whether PyTorch sees a CUDA GPU."""
    if not torch.cuda.is_available():
        return Readiness(False, "no CUDA GPU is visible to PyTorch (torch.cuda.is_available() "
                                "is False); these runs take hours on a CPU")
    return Readiness(True, f"CUDA GPU: {torch.cuda.get_device_name(0)}")


def local_weights(backbone: str) -> str | None:
    """A spec that loads ``backbone`` from files already on this machine, or None.

    ``NAME:TAG`` (e.g. ``ViT-B-16:openai``) is looked up in the Hugging Face hub cache
    and in open_clip's URL cache (``~/.cache/clip``); nothing is downloaded. A spec
    that names a file is returned when the file exists; a bare open_clip name (random
    weights) and the built-in ``toyclip`` / ``pv-tiny`` need no download.
    """
    import open_clip

    from promptviz.backbone import BUILTIN, WEIGHT_SUFFIXES
    if backbone in BUILTIN:
        weights = BUILTIN[backbone]
        return backbone if weights is None or weights.is_file() else None
    name, _, tag = backbone.partition(":")
    if not tag:
        if os.sep in backbone or Path(backbone).suffix in WEIGHT_SUFFIXES:   # a weight file
            return backbone if Path(backbone).expanduser().is_file() else None
        return backbone                # an open_clip name alone: random weights, no download
    if Path(tag).expanduser().is_file():
        return backbone
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return None
    quick = bool(cfg.get("quick_gelu")) and not name.endswith("quickgelu")
    hub = cfg.get("hf_hub", "")
    if hub:   # open_clip's convention: "org/repo/" (default file names) or "org/repo/file"
        repo, filename = os.path.split(hub)
        names = list(HF_WEIGHT_FILES) if not filename else (
            [filename.rsplit(".", 1)[0] + ".safetensors", filename]
            if filename.endswith((".bin", ".pth")) else [filename])
        for fname in names:
            path = _hf_cached(repo, fname)
            if path:
                return f"{name}{'-quickgelu' if quick else ''}:{path}"
    url = cfg.get("url", "")
    if url:
        path = URL_CACHE.expanduser() / os.path.basename(url)
        if path.is_file():
            # OpenAI's own archives load through open_clip's OpenAI loader (QuickGELU).
            return str(path) if "openaipublic" in url else f"{name}:{path}"
    return None


def _hf_cached(repo: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def weights_ready(backbone: str) -> Readiness:
    """Whether ``backbone``'s weights are on disk (see :func:`local_weights`)."""
    spec = local_weights(backbone)
    if spec is None:
        return Readiness(False, f"the {backbone} weights are not on this machine (looked in the "
                                f"Hugging Face cache and {URL_CACHE}); with internet, the first "
                                f"load_clip({backbone!r}) downloads them; without, copy the file "
                                "here and use NAME:/path/to/weights")
    return Readiness(True, f"weights: {spec}", backbone=spec)


def data_ready(data_root: str | Path | None, datasets: Sequence[str]) -> Readiness:
    """Whether ``data_root`` (default ``$PROMPTVIZ_DATA``) holds every dataset in ``datasets``.

    A quick look, not a full check: the dataset folder, its image folder and its split
    file must exist (``promptviz datasets --data-root DIR`` checks every image).
    """
    if data_root is None:
        data_root = os.environ.get("PROMPTVIZ_DATA")
    if not data_root:
        return Readiness(False, "no data root: set PROMPTVIZ_DATA=/path/to/datasets (CoOp's "
                                f"DATASETS.md layout, {COOP_DATASETS_MD}) or pass data_root")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        return Readiness(False, f"the data root {root} does not exist")
    missing = [f"{d} ({why})" for d in datasets if (why := _dataset_problem(root, d))]
    if missing:
        return Readiness(False, f"under {root}: missing {'; '.join(missing)}; see CoOp's "
                                f"DATASETS.md ({COOP_DATASETS_MD})", data_root=str(root))
    return Readiness(True, f"data: {', '.join(datasets)} under {root}", data_root=str(root))


def _dataset_problem(root: Path, name: str) -> str:
    """Empty when ``root`` looks like it holds dataset ``name``; else what is missing."""
    if (root / name / CARD_FILE).is_file():
        return ""
    spec = find_spec(name)
    if spec is None:
        return "" if (root / name).is_dir() else f"no folder {root / name}"
    folder = find_folder(root, spec)
    if folder is None:
        return f"no folder {root / spec.folder}"
    if spec.image_dir and not (folder / spec.image_dir).is_dir():
        return f"no image folder {folder / spec.image_dir}"
    if spec.split_file and not (folder / spec.split_file).is_file():
        return f"no split file {folder / spec.split_file}"
    return ""


def check_real_clip(backbone: str = "ViT-B-16:openai", data_root: str | Path | None = None,
                    datasets: Sequence[str] = ("dtd",), device: str = "cuda") -> Readiness:
    """CUDA (when ``device`` is CUDA), local weights and the datasets, in one answer."""
    parts = [weights_ready(backbone), data_ready(data_root, datasets)]
    if device.startswith("cuda"):
        parts.insert(0, cuda_ready())
    ok = all(parts)
    reasons = [p.reason for p in parts if p.ready == ok]     # what was found, or what is not
    head = "ready:" if ok else "skipped; missing here:"
    return Readiness(ok, "\n  - ".join([head, *reasons]),
                     backbone=parts[-2].backbone, data_root=parts[-1].data_root)
