"""ToyWorld: a procedural image-caption world whose every pixel's meaning is known.

The pieces, each a short module:

- :mod:`~promptviz.data.toyworld.world` -- the vocabulary (shapes, colours, patterns,
  sizes, positions, backgrounds, styles) and random scenes built from it;
- :mod:`~promptviz.data.toyworld.render` -- a vectorised torch renderer that draws a
  batch of scenes plus their instance maps, and per-patch ground truth;
- :mod:`~promptviz.data.toyworld.captions` -- noisy, partial, synonym-rich captions;
- :mod:`~promptviz.data.toyworld.suite` -- downstream classification datasets in
  CoOp's on-disk layout, with ground-truth sidecars.

This module composes the first three into the stream toyclip is pretrained on::

    g = torch.Generator().manual_seed(0)
    batch = sample_batch(256, g)      # batch.images [256, 3, 64, 64] in [0, 1]
    batch.captions[0]                 # 'a photo of a crimson striped star.'
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from promptviz.data.toyworld.captions import caption
from promptviz.data.toyworld.render import patch_attributes, patch_labels, render_scenes
from promptviz.data.toyworld.suite import DATASETS, GroundTruth, build_suite, load_ground_truth
from promptviz.data.toyworld.world import COLOURS, Obj, Scene, sample_scene

__all__ = ["DATASETS", "GroundTruth", "Obj", "Scene", "ToyBatch", "build_suite", "caption",
           "load_ground_truth", "patch_attributes", "patch_labels", "render_scenes",
           "sample_batch", "sample_scene"]


@dataclass
class ToyBatch:
    """A batch of the pretraining stream.

    ``images`` is float ``[B, 3, H, W]`` in [0, 1] (the caller normalises),
    ``instance`` is uint8 ``[B, H, W]`` (0 = background, k = ``scenes[i].objects[k-1]``).
    """

    images: torch.Tensor
    captions: list[str]
    scenes: list[Scene]
    instance: torch.Tensor

    def __len__(self) -> int:
        return len(self.captions)


def _clean_scene(rng: random.Random) -> Scene:
    main = {"pattern": "solid"} if rng.random() < 0.5 else {}
    return sample_scene(rng, n_objects=1, style="filled",
                        background=rng.choice(("light", "dark")), main=main)


def sample_batch(batch_size: int, generator: torch.Generator, image_size: int = 64,
                 colour: str | None = None, clean: float = 0.0,
                 caption_noise: float = 0.0, paint_names: float = 0.0) -> ToyBatch:
    """Sample ``batch_size`` random scenes, render them and caption each once.

    Everything is drawn from ``generator`` (it advances, so successive calls
    give new batches); the same generator state gives identical tensors and
    captions. Styles and backgrounds follow :data:`~promptviz.data.toyworld.world.STREAM_STYLES`
    and ``STREAM_BACKGROUNDS``: mostly clean photos, some sketches, noise,
    colour shifts and blur.

    Two knobs make a curriculum (see :mod:`promptviz.train.pretrain`): ``clean`` is the share
    of *clean* scenes — one medium or large object, filled, on a plain light or dark
    background, half of them without a pattern — where a shape is easiest to see;
    ``colour`` paints every object of the batch in one colour, so that colour, the
    easiest cue, cannot tell the captions apart. ``caption_noise`` is passed to
    :func:`~promptviz.data.toyworld.captions.caption` (alt-text carelessness), ``paint_names``
    as its ``paint`` (the chance of a specialist colour name).
    """
    rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
    scenes = [_clean_scene(rng) if clean and rng.random() < clean else sample_scene(rng)
              for _ in range(batch_size)]
    if colour is not None:      # every object in this colour: a batch colour cannot sort out
        for obj in (o for s in scenes for o in s.objects):
            obj.colour = colour
            obj.rgb = tuple(min(max(c + rng.uniform(-0.04, 0.04), 0.0), 1.0)
                            for c in COLOURS[colour])
    images, instance = render_scenes(scenes, image_size, generator)
    captions = [caption(s, rng, caption_noise, paint_names) for s in scenes]
    return ToyBatch(images=images, captions=captions, scenes=scenes, instance=instance)
