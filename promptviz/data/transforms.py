"""Images on disk -> normalised tensors, the way CLIP and CoOp do it.

``clip_transform`` is CLIP's evaluation preprocessing (resize the shorter side
with bicubic interpolation, centre crop, normalise with the model's mean/std);
``train_transform`` is CoOp's training augmentation (random resized crop with
scale (0.08, 1) and a horizontal flip). Take ``image_size``, ``mean`` and
``std`` from the backbone so toyclip (small images) and ViT-B/16 (224 px) share
the code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from promptviz.data.datasets import Sample
from promptviz.errors import PromptvizError

BICUBIC = T.InterpolationMode.BICUBIC


def _to_rgb(image: Image.Image) -> Image.Image:
    """Greyscale, palette and RGBA images become 3-channel RGB (a named function
    rather than a lambda, so DataLoader workers can pickle the transform)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def _size(image_size: int | Sequence[int]) -> int:
    return int(image_size) if isinstance(image_size, int) else int(max(image_size))


def clip_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """CLIP's eval preprocessing: bicubic resize of the shorter side, centre crop,
    to a float tensor in [0, 1], normalise. Output: ``(3, image_size, image_size)``."""
    size = _size(image_size)
    return T.Compose([
        _to_rgb,
        T.Resize(size, interpolation=BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(tuple(mean), tuple(std)),
    ])


def train_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """CoOp's training augmentation: random resized crop (scale 0.08..1, bicubic),
    random horizontal flip, to tensor, normalise."""
    size = _size(image_size)
    return T.Compose([
        _to_rgb,
        T.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(tuple(mean), tuple(std)),
    ])


class ImageDataset(torch.utils.data.Dataset):
    """A list of samples as a torch dataset: item ``i`` is ``(image, label, i)``.

    The index comes back so feature caches can be written in place
    (``features[index] = model(images)``) whatever order a sampler uses.
    With ``transform=None`` the image is returned as an RGB PIL image.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            with Image.open(sample.impath) as im:
                image = _to_rgb(im)
                image.load()
        except OSError as e:
            raise PromptvizError(
                f"Cannot read image {sample.impath} ({e}). The file is missing, truncated or "
                f"not an image: re-download it, or remove it from the split file."
            ) from None
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label, index


def load_images(samples: Sequence[Sample], image_size: int, mean: Sequence[float],
                std: Sequence[float]) -> torch.Tensor:
    """``samples`` read and preprocessed with :func:`clip_transform`, stacked ``[N, 3, S, S]``
    (for a handful of images to look at; use a ``DataLoader`` for a whole split)."""
    data = ImageDataset(samples, clip_transform(image_size, mean, std))
    if not len(data):
        raise PromptvizError("load_images got no samples")
    return torch.stack([data[i][0] for i in range(len(data))])
