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


class ImageReadError(PromptvizError):
    """An image that cannot be used. Raised in a ``DataLoader`` worker, torch re-raises it in
    the main process as ``ImageReadError("Caught … Original Traceback … ImageReadError: msg")``;
    the constructor keeps only ``msg``, so the CLI still prints one line, no traceback."""

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


def read_image(path: str) -> Image.Image:
    """The image at ``path`` as RGB, or one PromptvizError naming the file and saying why it
    cannot be used: missing, unreadable (permissions), over PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``), or truncated / corrupt / not an image."""
    fix = "re-download it, or remove it from the split file"
    try:
        with Image.open(path) as im:
            image = _to_rgb(im)
            image.load()
        return image
    except FileNotFoundError:
        problem = f"the file is missing: {fix}"
    except PermissionError:
        problem = ("permission denied: give your user read access to it (e.g. chmod u+r), "
                   "or remove it from the split file")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        problem = (f"it is over PIL's decompression-bomb limit ({e}); a corrupt or hostile "
                   f"file, or a huge image: shrink it or remove it from the split file (or, "
                   f"if you trust it, raise PIL.Image.MAX_IMAGE_PIXELS)")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        problem = f"the file is truncated, corrupt or not an image ({e}): {fix}"
    raise ImageReadError(f"Cannot read image {path}: {problem}.")


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
        image = read_image(sample.impath)
        if self.transform is not None:
            image = self.transform(image)
        return image, sample.label, index


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
              ) -> torch.Tensor:
    """``[B, 3, H, W]`` images in [0, 1] normalised with a model's ``mean`` and ``std`` (what
    :func:`clip_transform`'s last step does, for batches rendered as tensors)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - m) / s


def load_images(samples: Sequence[Sample], image_size: int, mean: Sequence[float],
                std: Sequence[float]) -> torch.Tensor:
    """``samples`` read and preprocessed with :func:`clip_transform`, stacked ``[N, 3, S, S]``
    (for a handful of images to look at; use a ``DataLoader`` for a whole split)."""
    data = ImageDataset(samples, clip_transform(image_size, mean, std))
    if not len(data):
        raise PromptvizError("load_images got no samples")
    return torch.stack([data[i][0] for i in range(len(data))])
