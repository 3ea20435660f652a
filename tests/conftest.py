"""Shared fixtures: a tiny CoOp-layout dataset drawn on the fly, and a tiny CLIP.

Everything is generated; nothing is downloaded. The dataset mimics CoOp's DTD
layout (``dtd/images/<class>/…`` + ``split_zhou_DescribableTextures.json``) with
six "texture" classes that differ in colour and stripe direction, so a prompt
can actually learn something in a few CPU steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("PROMPTVIZ_PROGRESS", "0")

CLASSES = ["red_banded", "green_banded", "blue_banded", "red_dotted", "green_dotted",
           "blue_dotted"]
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 70, 230)}


def _draw(cls: str, idx: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(1000 * CLASSES.index(cls) + idx)
    colour, kind = cls.split("_")
    img = np.full((size, size, 3), 235, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    phase = rng.integers(0, 6)
    mask = ((yy + phase) // 3) % 2 == 0 if kind == "banded" else \
        (((yy + phase) % 6) < 2) & (((xx + phase) % 6) < 2)
    img[mask] = COLOURS[colour]
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def make_tiny_dtd(root: Path, per_split: tuple[int, int, int] = (8, 2, 4)) -> Path:
    """Write a tiny DTD-shaped dataset under ``root/dtd`` and return ``root``."""
    folder = root / "dtd"
    split = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(CLASSES):
        (folder / "images" / cls).mkdir(parents=True, exist_ok=True)
        i = 0
        for name, n in zip(("train", "val", "test"), per_split):
            for _ in range(n):
                rel = f"{cls}/{cls}_{i:03d}.png"
                _draw(cls, i).save(folder / "images" / rel)
                split[name].append([rel, label, cls])
                i += 1
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding the tiny DTD. Treat as read-only (copy before breaking it)."""
    return make_tiny_dtd(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_clip():
    from promptviz.backbone import load_clip
    return load_clip("pv-tiny")


@pytest.fixture(autouse=True, scope="session")
def _feature_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Cached image features go to a folder of this test session, not ~/.cache."""
    old = os.environ.get("PROMPTVIZ_CACHE_DIR")
    os.environ["PROMPTVIZ_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield
    if old is None:
        os.environ.pop("PROMPTVIZ_CACHE_DIR", None)
    else:
        os.environ["PROMPTVIZ_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global RNG state (method init draws from it)."""
    import torch
    torch.manual_seed(0)
