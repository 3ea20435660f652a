"""The dataset records and the registry of CoOp's benchmark folders.

Every reader returns a :class:`Dataset` of :class:`Sample` lists; a :class:`DatasetSpec`
says how one CoOp benchmark folder is laid out, :data:`KNOWN_DATASETS` holds them all
and :func:`find_spec` finds one by folder name or alias. How a folder on disk becomes a
Dataset is :mod:`promptviz.data.load`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from promptviz.errors import PromptvizError

CARD_FILE = "dataset.json"
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)
COOP_DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


# --------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Sample:
    """One labelled image: an absolute path, a dense 0-based label, a class name."""

    impath: str
    label: int
    classname: str


@dataclass
class Dataset:
    """Class names, a zero-shot template and three lists of samples."""

    name: str
    root: Path
    classnames: list[str]
    template: str
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    split_hash: str = ""
    # Train with CoOp's random-resized-crop + flip? A card says "augment": false when a crop
    # or a mirror image can change the label (ToyWorld: position, size and orientation are
    # what its classes and captions are about).
    augment: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, which: str) -> list[Sample]:
        """The samples of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in SPLITS:
            raise PromptvizError(f"Unknown split {which!r}: use one of {', '.join(SPLITS)}.")
        return getattr(self, which)

    def __repr__(self) -> str:  # never print a million samples in a notebook
        return (
            f"Dataset(name={self.name!r}, classes={self.num_classes}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)}, split_hash={self.split_hash!r}, "
            f"root='{self.root}')"
        )


@dataclass(frozen=True)
class DatasetSpec:
    """How one CoOp benchmark folder is laid out.

    ``kind`` picks the reader: ``"split_zhou"`` (a split JSON), ``"imagenet"``,
    ``"fgvc"``, ``"imagenetv2"`` (folders named by label) or ``"imagenet_wnid"``
    (test-only folders named by WordNet id; ``subset=True`` for the 200-class
    ImageNet-A and -R, whose labels are dense over the classes present).
    """

    folder: str
    title: str
    kind: str
    template: str
    image_dir: str = ""
    split_file: str = ""
    aliases: tuple[str, ...] = ()
    subset: bool = False


_PHOTO = "a photo of a {}."
KNOWN_DATASETS: dict[str, DatasetSpec] = {
    s.folder: s
    for s in [
        DatasetSpec("imagenet", "ImageNet", "imagenet", _PHOTO, "images", "classnames.txt",
                    ("imagenet1k",)),
        DatasetSpec("caltech-101", "Caltech101", "split_zhou", _PHOTO, "101_ObjectCategories",
                    "split_zhou_Caltech101.json"),
        DatasetSpec("oxford_pets", "OxfordPets", "split_zhou", "a photo of a {}, a type of pet.",
                    "images", "split_zhou_OxfordPets.json"),
        DatasetSpec("stanford_cars", "StanfordCars", "split_zhou", _PHOTO, "",
                    "split_zhou_StanfordCars.json"),
        DatasetSpec("oxford_flowers", "OxfordFlowers", "split_zhou",
                    "a photo of a {}, a type of flower.", "jpg", "split_zhou_OxfordFlowers.json",
                    ("Flowers102",)),
        DatasetSpec("food-101", "Food101", "split_zhou", "a photo of {}, a type of food.",
                    "images", "split_zhou_Food101.json"),
        DatasetSpec("fgvc_aircraft", "FGVCAircraft", "fgvc", "a photo of a {}, a type of aircraft.",
                    "images", "variants.txt"),
        DatasetSpec("sun397", "SUN397", "split_zhou", _PHOTO, "SUN397", "split_zhou_SUN397.json"),
        DatasetSpec("dtd", "DescribableTextures", "split_zhou", "{} texture.", "images",
                    "split_zhou_DescribableTextures.json", ("DTD",)),
        DatasetSpec("eurosat", "EuroSAT", "split_zhou", "a centered satellite photo of {}.",
                    "2750", "split_zhou_EuroSAT.json"),
        DatasetSpec("ucf101", "UCF101", "split_zhou", "a photo of a person doing {}.",
                    "UCF-101-midframes", "split_zhou_UCF101.json"),
        DatasetSpec("imagenetv2", "ImageNetV2", "imagenetv2", _PHOTO,
                    "imagenetv2-matched-frequency-format-val", "", ("imagenet-v2",)),
        DatasetSpec("imagenet-sketch", "ImageNetSketch", "imagenet_wnid", _PHOTO, "images"),
        DatasetSpec("imagenet-adversarial", "ImageNetA", "imagenet_wnid", _PHOTO, "imagenet-a",
                    "", ("imagenet-a",), subset=True),
        DatasetSpec("imagenet-rendition", "ImageNetR", "imagenet_wnid", _PHOTO, "imagenet-r",
                    "", ("imagenet-r",), subset=True),
    ]
}


def _norm(name: str) -> str:
    """Alias key: lower case, no ``-``, ``_`` or spaces (``Caltech101`` == ``caltech-101``)."""
    return re.sub(r"[-_ ]+", "", name.lower())


_ALIASES: dict[str, str] = {}
for _spec in KNOWN_DATASETS.values():
    for _a in (_spec.folder, _spec.title, *_spec.aliases):
        _ALIASES[_norm(_a)] = _spec.folder


def find_spec(name: str) -> DatasetSpec | None:
    """The known dataset called ``name`` (folder name or alias, any case), or None."""
    key = _ALIASES.get(_norm(name))
    return KNOWN_DATASETS[key] if key else None
