"""The downstream ToyWorld suite: classification datasets in CoOp's on-disk layout.

Like the real benchmark suite it mixes coarse objects, textures, fine-grained
classes that share attributes, a spatial task and domain-shifted test sets:

- ``toy_shapes`` (ToyShapes): 10 shapes, "star", "crescent"...; "a photo of a {}."
- ``toy_textures`` (ToyTextures): 6 patterns, "striped"...; "{} texture." (like DTD)
- ``toy_fine`` (ToyFine): 36 colour x shape classes sharing attributes, "red star",
  "orange star", "red cross"...; "a photo of a {}." -- the hard case
- ``toy_scenes`` (ToyScenes): 9 positions, "a shape in the top left"...; "a photo of {}."
- ``toy_paints`` (ToyPaints): 9 colours under their specialist names, "vermilion",
  "ultramarine"...; "a photo of a {} shape." -- words the pretraining captions seldom
  use, like the flower, aircraft and land-use names of the real suite
- ``toy_weaves`` (ToyWeaves): 16 pattern x shape classes, the pattern under a textile name
  no caption uses, "gingham hexagon"...; "a photo of a {}." -- classes of one shape differ
  only in a local texture behind a word toyclip cannot read; base classes are circles and
  squares, novel ones hexagons and diamonds, so both halves share the four pattern words
- ``toy_shapes_sketch`` / ``_noisy`` / ``_shifted`` (ToyShapesSketch...): ToyShapes'
  classes, test split only, drawn in another style (domain generalisation).

In every image the class is defined by the main (largest) object, drawn last
so nothing hides it; 0-2 smaller distractors and varied backgrounds make the
task non-trivial. The domain-shifted copies re-draw *the same scenes* as
ToyShapes' test split in another style, so image ``star/0040.png`` of
``toy_shapes_sketch`` is the sketch of ``star/0040.png`` of ``toy_shapes``.

Each dataset folder holds ``images/<class>/<idx>.png`` with ground-truth
sidecars ``<idx>.gt.json`` and ``<idx>.mask.png`` (the instance map),
``split_zhou_<Name>.json``, a ``dataset.json`` card and a ``build.json``
stamp. Each folder is built in a temporary directory and renamed into place,
so a folder either is complete or is not there; rebuilding with the same
settings is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from promptviz.checkpoint import make_folder
from promptviz.data.toyworld.captions import PAINT_WORDS, WEAVE_WORDS
from promptviz.data.toyworld.render import patch_labels, render_scenes
from promptviz.data.toyworld.world import (
    COLOURS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    VERSION,
    Obj,
    Scene,
    restyle,
    sample_scene,
)
from promptviz.errors import PromptvizError

SUITE_VERSION = 2
SPLITS = ("train", "val", "test")
GT_PATCH = 8  # patch size of the patch-label grid stored in the sidecars

FINE_COLOURS = ("red", "orange", "pink", "purple", "blue", "green")
FINE_SHAPES = ("circle", "hexagon", "square", "diamond", "star", "cross")
WEAVE_SHAPES = ("circle", "square", "hexagon", "diamond")  # base: the first two, novel: the rest
POSITION_CLASSES = {
    "top left": "a shape in the top left", "top": "a shape at the top",
    "top right": "a shape in the top right", "left": "a shape on the left",
    "center": "a shape in the center", "right": "a shape on the right",
    "bottom left": "a shape in the bottom left", "bottom": "a shape at the bottom",
    "bottom right": "a shape in the bottom right",
}


@dataclass(frozen=True)
class DatasetSpec:
    """What one dataset is: its classes (``mains[i]`` fixes class i's main object) and look."""

    folder: str
    name: str
    template: str
    classnames: tuple[str, ...]
    mains: tuple[dict, ...]
    sizes: tuple[str, ...] = ("medium", "large")  # sizes of the main object
    n_objects: tuple[int, ...] = (1, 1, 2, 2, 3)  # drawn uniformly: scenes of 1-3 objects
    domain: str = "filled"
    base: str | None = None  # a domain-shifted copy re-draws this dataset's test scenes


def _specs() -> dict[str, DatasetSpec]:
    shapes = DatasetSpec("toy_shapes", "ToyShapes", "a photo of a {}.", SHAPES,
                         tuple({"shape": s} for s in SHAPES))
    fine = [(c, s) for c in FINE_COLOURS for s in FINE_SHAPES]
    specs = [
        shapes,
        DatasetSpec("toy_textures", "ToyTextures", "{} texture.", PATTERNS,
                    tuple({"pattern": p} for p in PATTERNS), sizes=("large",),
                    n_objects=(1, 2)),
        DatasetSpec("toy_fine", "ToyFine", "a photo of a {}.",
                    tuple(f"{c} {s}" for c, s in fine),
                    tuple({"colour": c, "shape": s} for c, s in fine)),
        DatasetSpec("toy_scenes", "ToyScenes", "a photo of {}.",
                    tuple(POSITION_CLASSES[p] for p in POSITIONS),
                    tuple({"position": p} for p in POSITIONS), sizes=("small", "medium"),
                    n_objects=(1,)),
        DatasetSpec("toy_paints", "ToyPaints", "a photo of a {} shape.",
                    tuple(PAINT_WORDS[c] for c in COLOURS), tuple({"colour": c} for c in COLOURS)),
    ]
    weaves = [(s, p) for s in WEAVE_SHAPES for p in WEAVE_WORDS]
    specs.append(DatasetSpec("toy_weaves", "ToyWeaves", "a photo of a {}.",
                             tuple(f"{WEAVE_WORDS[p]} {s}" for s, p in weaves),
                             tuple({"shape": s, "pattern": p} for s, p in weaves)))
    for style in ("sketch", "noisy", "shifted"):
        specs.append(DatasetSpec(f"toy_shapes_{style}", f"ToyShapes{style.title()}",
                                 shapes.template, shapes.classnames, shapes.mains,
                                 domain=style, base=shapes.folder))
    return {s.folder: s for s in specs}


DATASETS: dict[str, DatasetSpec] = _specs()


def class_folder(classname: str) -> str:
    """'red star' -> 'red_star': the cleaned classname used in folders and split files."""
    return classname.lower().replace(" ", "_")


# --- sampling ---------------------------------------------------------------------

def _rng(seed: int, *parts: str) -> random.Random:
    return random.Random("/".join(["toyworld", str(seed), *parts]))  # str seeds are stable


def _scenes(spec: DatasetSpec, seed: int, counts: dict[str, int]) -> dict[str, list]:
    """(label, idx, scene) triples per split; each split has its own RNG stream."""
    if spec.base is not None:  # the base dataset's test scenes, restyled
        base = _scenes(DATASETS[spec.base], seed, counts)
        r = _rng(seed, spec.folder, "style")
        return {"train": [], "val": [],
                "test": [(lab, idx, restyle(sc, spec.domain, r)) for lab, idx, sc in base["test"]]}
    out, first = {}, 0
    for split in SPLITS:
        r = _rng(seed, spec.folder, split)
        out[split] = [(label, first + i, sample_scene(r, n_objects=r.choice(spec.n_objects),
                                                       style=spec.domain,
                                                       main={**main, "size": r.choice(spec.sizes)}))
                      for label, main in enumerate(spec.mains) for i in range(counts[split])]
        first += counts[split]
    return out


# --- writing ------------------------------------------------------------------------

def _boxes(instance: torch.Tensor, k_max: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Visible area ``[B, K]`` and box ``[B, K, 4]`` (x0, y0, x1, y1) of objects 1..K."""
    masks = instance[:, None] == torch.arange(1, k_max + 1).view(1, k_max, 1, 1).byte()
    ar = torch.arange(instance.shape[-1])
    rows, cols = masks.any(-1), masks.any(-2)  # [B, K, H], [B, K, W]
    big = instance.shape[-1] + 1

    def lo_hi(hit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.where(hit, ar, big).amin(-1), torch.where(hit, ar, -1).amax(-1) + 1

    (x0, x1), (y0, y1) = lo_hi(cols), lo_hi(rows)
    return masks.sum((-1, -2)).numpy(), torch.stack([x0, y0, x1, y1], -1).numpy()


def _gt_record(scene: Scene, area: np.ndarray, box: np.ndarray, labels: np.ndarray,
               classname: str, image_size: int) -> dict:
    d = scene.to_dict()
    for k, od in enumerate(d["objects"]):
        od["id"], od["area"] = k + 1, int(area[k])
        od["bbox"] = box[k].tolist() if area[k] else None  # [x0, y0, x1, y1), pixels
    d.update(image_size=image_size, patch_size=GT_PATCH, classname=classname,
             patch_labels=labels.tolist(), version=VERSION)
    return d


def _write_one(base: str, image: np.ndarray, instance: np.ndarray, gt: dict) -> None:
    Image.fromarray(image).save(base + ".png", compress_level=6)
    Image.fromarray(instance).save(base + ".mask.png", compress_level=6)
    Path(base + ".gt.json").write_text(json.dumps(gt, separators=(",", ":")))


def _build_one(spec: DatasetSpec, root: Path, seed: int, image_size: int,
               counts: dict[str, int], workers: int) -> Path:
    final = root / spec.folder
    stamp = {"dataset": spec.folder, "suite_version": SUITE_VERSION, "toyworld_version": VERSION,
             "seed": seed, "image_size": image_size, "counts": counts}
    stamp["hash"] = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:16]
    try:
        if json.loads((final / "build.json").read_text()).get("hash") == stamp["hash"]:
            return final  # already built with these settings
    except (OSError, ValueError):
        pass
    splits = _scenes(spec, seed, counts)
    todo = [(split, lab, idx, sc) for split in SPLITS for lab, idx, sc in splits[split]]
    gen = torch.Generator().manual_seed(
        int.from_bytes(hashlib.sha256(f"{seed}/{spec.folder}".encode()).digest()[:7], "big"))
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.", dir=root))
    try:
        for name in spec.classnames:
            (tmp / "images" / class_folder(name)).mkdir(parents=True)
        split_json: dict[str, list] = {s: [] for s in SPLITS}
        with ThreadPoolExecutor(workers) as pool:
            jobs = []
            for start in range(0, len(todo), 512):
                chunk = todo[start:start + 512]
                images, instance = render_scenes([c[3] for c in chunk], image_size, gen)
                labels = patch_labels(instance, GT_PATCH).numpy()
                area, box = _boxes(instance)
                images = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                instance = instance.numpy()
                for i, (split, lab, idx, sc) in enumerate(chunk):
                    cname = class_folder(spec.classnames[lab])
                    rel = f"{cname}/{idx:04d}.png"
                    split_json[split].append([rel, lab, cname])
                    gt = _gt_record(sc, area[i], box[i], labels[i], spec.classnames[lab],
                                    image_size)
                    jobs.append(pool.submit(_write_one, f"{tmp}/images/{cname}/{idx:04d}",
                                            images[i], instance[i], gt))
            for job in jobs:
                job.result()  # re-raise any write error
        split_file = f"split_zhou_{spec.name}.json"
        (tmp / split_file).write_text(json.dumps(split_json))
        card = {"name": spec.name, "image_dir": "images", "split_file": split_file,
                "template": spec.template, "classnames": list(spec.classnames),
                "domain": spec.domain, "base_dataset": spec.base,
                # a crop or a mirror image changes position, size and orientation, which
                # ToyWorld's labels and captions are about: train on the images as they are
                "augment": False}
        (tmp / "dataset.json").write_text(json.dumps(card, indent=1))
        (tmp / "build.json").write_text(json.dumps(stamp, indent=1))  # written last
        old = None
        if final.exists():  # swap: move the stale folder aside, rename the new one in
            old = Path(tempfile.mkdtemp(prefix=f".{spec.folder}.old.", dir=root))
            final.rename(old / "stale")
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


MAX_IMAGE_SIZE = 512  # 512 scenes are rendered at once: 512 px already needs ~2 GB


def _check_build_args(image_size: int, n_train: int, n_val: int, n_test: int,
                      datasets: list[str] | None, workers: int) -> list[str]:
    """The dataset folders to build, or one error naming every bad argument by its flag."""
    def whole(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    bad = []
    if not (whole(image_size) and image_size % GT_PATCH == 0
            and 16 <= image_size <= MAX_IMAGE_SIZE):
        bad.append(f"--image-size {image_size} (use a multiple of {GT_PATCH} from 16 to "
                   f"{MAX_IMAGE_SIZE}, e.g. 64)")
    for flag, v, least, why in (("--n-train", n_train, 1, "something to train on"),
                                ("--n-val", n_val, 0, "0 means no validation images"),
                                ("--n-test", n_test, 1, "something to test on")):
        if not (whole(v) and v >= least):
            bad.append(f"{flag} {v} (use {least} or more images per class: {why})")
    if not (whole(workers) and workers >= 1):
        bad.append(f"workers={workers} (use 1 or more)")
    names = list(dict.fromkeys(datasets or ()))
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        bad.append(f"--datasets {' '.join(map(str, unknown))} (unknown; the ToyWorld datasets "
                   f"are {', '.join(DATASETS)})")
    if bad:
        raise PromptvizError("invalid ToyWorld build setting(s): " + "; ".join(bad))
    return names or list(DATASETS)


def build_suite(out: str | Path, seed: int = 0, image_size: int = 64, n_train: int = 24,
                n_val: int = 8, n_test: int = 30, datasets: list[str] | None = None,
                workers: int = 4) -> list[Path]:
    """Write the ToyWorld downstream datasets under ``out``; return their folders.

    ``n_train``/``n_val``/``n_test`` are images per class (the 16-shot protocol
    needs ``n_train >= 16``; the defaults give 24); ``n_train`` and ``n_test``
    must be 1 or more, ``n_val`` 0 or more, ``image_size`` a multiple of 8 from
    16 to 512. ``datasets`` picks folders from :data:`DATASETS` (default: all).
    Every argument and ``out`` (a folder that can be written to) are checked
    before anything is rendered. Datasets already built with the same settings
    are skipped, so calling this again is cheap.
    """
    names = _check_build_args(image_size, n_train, n_val, n_test, datasets, workers)
    image_size, seed = int(image_size), int(seed)
    root = Path(out).expanduser()
    make_folder(root)
    counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
    # Render on one core and leave the others to the PNG-writing threads:
    # oversubscribed intra-op threads made rendering ~5x slower in our measurements.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folders = []
        for name in names:
            try:
                folders.append(_build_one(DATASETS[name], root, seed, image_size, counts,
                                          int(workers)))
            except OSError as e:  # disk full, folder made read-only meanwhile...
                raise PromptvizError(
                    f"writing ToyWorld dataset {name} under {root} failed "
                    f"({(e.strerror or str(e)).lower()}: {e.filename or root}); its partial "
                    f"folder was removed: free some space or pick another --out, then re-run."
                ) from None
        return folders
    finally:
        torch.set_num_threads(threads)


# --- reading ground truth -------------------------------------------------------------

@dataclass
class GroundTruth:
    """What every pixel of one suite image means.

    ``instance`` is the ``[H, W]`` uint8 instance map (0 = background, k =
    ``objects[k - 1]``); ``patch_labels`` the ``[H/8, W/8]`` per-patch object
    id; ``boxes[k - 1]`` object k's visible box ``(x0, y0, x1, y1)`` or None.
    """

    scene: Scene
    instance: np.ndarray
    patch_labels: np.ndarray
    patch_size: int
    boxes: list[tuple[int, int, int, int] | None]
    classname: str

    @property
    def objects(self) -> list[Obj]:
        return self.scene.objects

    @property
    def target(self) -> int:
        """Index of the class-defining object in ``objects``; its instance id is ``target + 1``."""
        return self.scene.target

    @property
    def style(self) -> str:
        return self.scene.style

    @property
    def background(self) -> str:
        return self.scene.background

    @property
    def target_mask(self) -> np.ndarray:
        return self.instance == self.target + 1


def load_ground_truth(impath: str | Path) -> GroundTruth:
    """Read the sidecars of a suite image, given the image's path (``.../images/star/0003.png``)."""
    path = Path(impath)
    stem = path.name.removesuffix(".png")
    gt_file, mask_file = path.with_name(stem + ".gt.json"), path.with_name(stem + ".mask.png")
    missing = [str(p) for p in (gt_file, mask_file) if not p.is_file()]
    if missing:
        raise PromptvizError(f"no ToyWorld ground truth for {path}: missing {missing}. Only images "
                             "written by promptviz.data.toyworld.suite.build_suite have sidecars.")
    d = json.loads(gt_file.read_text())
    with Image.open(mask_file) as im:
        instance = np.array(im, dtype=np.uint8)
    return GroundTruth(scene=Scene.from_dict(d), instance=instance,
                       patch_labels=np.array(d["patch_labels"], dtype=np.uint8),
                       patch_size=d["patch_size"],
                       boxes=[tuple(o["bbox"]) if o["bbox"] else None for o in d["objects"]],
                       classname=d["classname"])
