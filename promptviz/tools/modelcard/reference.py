"""toyclip's reference logits: its logits on a fixed ToyWorld batch against the ten shape
prompts, which depend only on a seed. ``assets/toyclip/reference_logits.json`` keeps them,
and a test checks that the shipped weights and the loading path still give these numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from promptviz.backbone import load_clip
from promptviz.checkpoint import atomic_write_text

REFERENCE = "reference_logits.json"


def reference_logits(backbone: str = "toyclip", seed: int = 1234) -> dict[str, Any]:
    """toyclip's logits on a fixed ToyWorld batch against the ten shape prompts.

    The batch and the prompts depend only on ``seed`` (the generator is deterministic),
    so a test can check that the shipped weights and the loading path still give these
    numbers.
    """
    import torch

    from promptviz.data.toyworld import sample_batch
    from promptviz.data.toyworld.world import SHAPES
    from promptviz.data.transforms import normalise

    clip = load_clip(backbone)
    batch = sample_batch(8, torch.Generator().manual_seed(seed), clip.image_size)
    prompts = [f"a photo of a {s}." for s in SHAPES]
    with torch.no_grad():
        f = clip.encode_image(normalise(batch.images, clip.mean, clip.std), normalize=True)
        t = clip.encode_text(clip.tokenize(prompts), normalize=True)
        logits = clip.logit_scale * f @ t.t()
    return {"seed": seed, "prompts": prompts, "captions": batch.captions,
            "logits": [[round(float(v), 4) for v in row] for row in logits]}


def write_reference(path: str | Path, backbone: str = "toyclip") -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(reference_logits(backbone), indent=1))
    return path
