"""Ground-truth scores for the visual tools: numbers, each next to its chance baseline.

A picture can suggest that a method found "the object"; these functions check it
against ToyWorld's ground truth, patch by patch:

* :func:`slot_purity` — does each TextRefiner cache slot collect patches of one
  kind (one shape, one colour…)? Compared with :func:`random_purity`, the purity of
  a random assignment with the same slot sizes.
* :func:`slot_on_object` — which slots hold object patches and which only background?
* :func:`patch_class_agreement` — do patch tokens point at their image's class text?
* :func:`on_object_share` — how many of the patches SEP selects lie on an object?
  Compared with :func:`object_area_share`, what random patches would score;
  :func:`on_object_by_layer` gives it for every rebuilt layer of selection records.

Helpers turn ToyWorld ground truth into per-patch labels:
:func:`patch_object_mask`, :func:`object_patches_of` and :func:`patch_attribute_labels`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from promptviz.arrays import as_numpy
from promptviz.data.toyworld.render import patch_attributes
from promptviz.data.toyworld.suite import load_ground_truth
from promptviz.data.toyworld.world import COLOURS, PATTERNS, POSITIONS, SHAPES, SIZES

VOCABULARIES = {"shape": tuple(SHAPES), "colour": tuple(COLOURS), "pattern": tuple(PATTERNS),
                "size": tuple(SIZES), "position": tuple(POSITIONS)}


# --- cache-slot purity ---------------------------------------------------------------

def _purity(slots: np.ndarray, labels: np.ndarray, n_slots: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slot: purity (NaN if empty), size, majority label (-1 if empty); labels are 0..L-1."""
    n_labels = int(labels.max()) + 1 if labels.size else 1
    table = np.zeros((n_slots, n_labels), np.int64)
    np.add.at(table, (slots, labels), 1)
    sizes = table.sum(axis=1)
    top = table.max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        purity = np.where(sizes > 0, top / np.maximum(sizes, 1), np.nan)
    majority = np.where(sizes > 0, table.argmax(axis=1), -1)
    return purity, sizes, majority


def random_purity(labels: object, slot_sizes: Sequence[int], seed: int = 0,
                  n_perm: int = 5) -> float:
    """Chance level of :func:`slot_purity`: the token-weighted mean purity when the same
    labels are dealt at random into slots of the same sizes (mean over ``n_perm`` deals)."""
    _, lab = np.unique(as_numpy(labels).ravel(), return_inverse=True)
    sizes = np.asarray(slot_sizes, np.int64)
    if sizes.sum() != lab.size:
        raise ValueError(f"slot sizes add up to {sizes.sum()}, but there are {lab.size} labels")
    if lab.size == 0:
        return float("nan")
    slots = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_perm):
        purity, size, _ = _purity(slots, rng.permutation(lab), len(sizes))
        means.append(float(np.nansum(purity * size) / size.sum()))
    return float(np.mean(means))


def slot_purity(slots: object, labels: object, n_slots: int, baseline: bool = True,
                seed: int = 0) -> dict:
    """How pure each slot is: the share of its tokens carrying its most common label.

    ``slots`` ``[T]`` is each token's slot, ``labels`` ``[T]`` its ground-truth label
    (e.g. from :func:`patch_attribute_labels`, flattened). Returns ``purity``
    ``[n_slots]`` (NaN for an empty slot), ``sizes``, ``majority`` (the most common
    label per slot, None if empty), ``mean`` (token-weighted mean purity) and, with
    ``baseline``, ``random`` (:func:`random_purity` with the same slot sizes).
    """
    s = as_numpy(slots, np.int64).ravel()
    raw = as_numpy(labels).ravel()
    if s.shape != raw.shape:
        raise ValueError(f"{s.size} slots for {raw.size} labels")
    if s.size and (s.min() < 0 or s.max() >= n_slots):
        raise ValueError(f"slot ids must lie in 0..{n_slots - 1}")
    values, lab = np.unique(raw, return_inverse=True)
    purity, sizes, majority = _purity(s, lab.reshape(-1), n_slots)
    out = {"purity": purity, "sizes": sizes,
           "majority": [values[m].item() if m >= 0 else None for m in majority],
           "mean": float(np.nansum(purity * sizes) / sizes.sum()) if s.size else float("nan")}
    if baseline:
        out["random"] = random_purity(raw, sizes, seed)
    return out


# --- selected patches on objects ---------------------------------------------------

def slot_on_object(slots: object, object_patches: object, n_slots: int) -> np.ndarray:
    """Share of each slot's patches that lie on an object, ``[n_slots]`` (NaN for a slot
    with no patches). ``slots`` ``[B, g²]`` is each patch's slot (CLS left out),
    ``object_patches`` the same shape, True on an object. Chance is the object area
    (:func:`object_area_share`)."""
    s = as_numpy(slots, np.int64).ravel()
    obj = as_numpy(object_patches, bool).ravel()
    if s.shape != obj.shape:
        raise ValueError(f"slots has {s.size} patches, object_patches {obj.size}")
    count = np.bincount(s, minlength=n_slots)[:n_slots].astype(np.float64)
    on = np.bincount(s, weights=obj.astype(np.float64), minlength=n_slots)[:n_slots]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, on / count, np.nan)


def patch_class_agreement(tokens: object, text: object, labels: object, mask: object
                          ) -> dict[str, float]:
    """How well patch tokens ``[B, P, d]`` match their image's class text feature, over the
    patches where ``mask`` ``[B, P]`` is True: ``cos``, the mean cosine with ``t_y``
    (``text`` ``[C, d]``, ``labels`` ``[B]``), and ``correct``, the share of those patches
    whose most similar class is ``y`` (each patch read as a tiny image)."""
    x = as_numpy(tokens, np.float64)
    t = as_numpy(text, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    y, keep = as_numpy(labels, np.int64), as_numpy(mask, bool)
    sims = x @ t.T                                            # [B, P, C]
    own = np.take_along_axis(sims, y[:, None, None].repeat(sims.shape[1], 1), -1)[..., 0]
    right = sims.argmax(-1) == y[:, None]
    return {"cos": float(own[keep].mean()), "correct": float(right[keep].mean())}


def tokens_to_patches(selected: object) -> np.ndarray:
    """Token indices (0 = CLS, as in ``selection_record``) to patch indices; CLS becomes -1
    (ignored by :func:`on_object_share`)."""
    return as_numpy(selected, np.int64) - 1


def on_object_share(selected: object, object_patches: object) -> float:
    """Share of the selected patches that lie on an object.

    ``selected`` holds patch indices (0 = first patch; negatives are skipped):
    ``[K]`` (one selection shared by the batch, SEP's faithful mode) or ``[B, K]``.
    ``object_patches`` ``[B, g²]`` is True where a patch is on an object.
    """
    obj = as_numpy(object_patches, bool)
    obj = obj.reshape(obj.shape[0], -1) if obj.ndim > 1 else obj[None]
    sel = as_numpy(selected, np.int64)
    sel = np.broadcast_to(sel, (obj.shape[0], sel.shape[-1])) if sel.ndim == 1 else sel
    if sel.shape[0] != obj.shape[0]:
        raise ValueError(f"selected covers {sel.shape[0]} images, object_patches {obj.shape[0]}")
    keep = sel >= 0
    if not keep.any():
        return float("nan")
    rows = np.broadcast_to(np.arange(obj.shape[0])[:, None], sel.shape)
    return float(obj[rows[keep], sel[keep]].mean())


def object_area_share(object_patches: object) -> float:
    """Chance level of :func:`on_object_share`: the mean share of object patches per image."""
    obj = as_numpy(object_patches, bool)
    obj = obj.reshape(obj.shape[0], -1) if obj.ndim > 1 else obj[None]
    return float(obj.mean(axis=1).mean())


def on_object_by_layer(records: Mapping | Sequence[Mapping], object_patches: object
                       ) -> dict[int, float]:
    """:func:`on_object_share` of SEP's visual selection at every rebuilt layer.

    ``records`` is one ``SEP.selection_record(images)`` or a list of them for
    consecutive batches; ``object_patches`` ``[N, g²]`` (see :func:`patch_object_mask`)
    covers all their images in the same order. Every selected patch of every image
    counts once (a faithful-mode batch selection counts for each image of the batch);
    selected CLS tokens are skipped. Returns ``{layer: share}``.
    """
    recs = [records] if isinstance(records, Mapping) else list(records)
    obj = as_numpy(object_patches, bool)
    obj = obj.reshape(obj.shape[0], -1)
    hits: dict[int, int] = {}
    counts: dict[int, int] = {}
    start = 0
    for rec in recs:
        layers = rec["vision"]
        if not layers:
            continue
        first = next(iter(layers.values()))
        n = as_numpy(first["scores"]).shape[0]          # images in this batch
        if start + n > obj.shape[0]:
            raise ValueError(f"the records cover more than the {obj.shape[0]} images of "
                             "object_patches")
        block = obj[start:start + n]
        for layer, r in layers.items():
            sel = tokens_to_patches(r["selected"])
            sel = np.broadcast_to(sel, (n, sel.shape[-1])) if sel.ndim == 1 else sel
            keep = sel >= 0
            rows = np.broadcast_to(np.arange(n)[:, None], sel.shape)
            hits[int(layer)] = hits.get(int(layer), 0) + int(block[rows[keep], sel[keep]].sum())
            counts[int(layer)] = counts.get(int(layer), 0) + int(keep.sum())
        start += n
    if start != obj.shape[0]:
        raise ValueError(f"the records cover {start} images, object_patches {obj.shape[0]}")
    return {k: hits[k] / counts[k] if counts[k] else float("nan") for k in sorted(counts)}


# --- ToyWorld ground truth as per-patch labels ---------------------------------------

def patch_object_mask(gt_patch_labels: object, targets: Sequence[int] | None = None
                      ) -> np.ndarray:
    """``[B, g²]`` bool: True where a patch is on an object (label > 0).

    ``gt_patch_labels`` is ``[B, g, g]`` (or one ``[g, g]``) object ids, e.g.
    ``np.stack([gt.patch_labels for gt in gts])``. With ``targets`` (``gt.target`` per
    image) only the class-defining object counts.
    """
    lab = as_numpy(gt_patch_labels, np.int64)
    lab = lab[None] if lab.ndim == 2 else lab
    lab = lab.reshape(lab.shape[0], -1)
    if targets is None:
        return lab > 0
    return lab == (np.asarray(targets, np.int64)[:, None] + 1)


def object_patches_of(impaths: Sequence[str], target_only: bool = False) -> np.ndarray:
    """:func:`patch_object_mask` of ToyWorld suite images given their paths (e.g.
    ``[s.impath for s in ds.test]``), read from the ground-truth sidecars; ``[N, g²]``.
    ``target_only`` keeps only the class-defining object of each image."""
    gts = [load_ground_truth(p) for p in impaths]
    if not gts:
        return np.zeros((0, 0), bool)
    labels = np.stack([gt.patch_labels for gt in gts])
    return patch_object_mask(labels, [gt.target for gt in gts] if target_only else None)


def attribute_vocabulary(attr: str) -> list[str]:
    """The values an attribute can take, in ToyWorld's order; index ``len(...)`` = background."""
    if attr not in VOCABULARIES:
        raise ValueError(f"attr={attr!r}; choose one of {sorted(VOCABULARIES)}")
    return list(VOCABULARIES[attr])


def patch_attribute_labels(gts: Sequence[object], attr: str,
                           values: Sequence[str] | None = None) -> np.ndarray:
    """``[B, g²]`` ints: the index (in ``values``, default :func:`attribute_vocabulary`) of
    the ``attr`` of the object under each patch; background patches get ``len(values)``.

    ``gts`` are ToyWorld ``GroundTruth`` records (anything with ``patch_labels`` and
    ``objects``).
    """
    vocab = list(values) if values is not None else attribute_vocabulary(attr)
    index = {v: i for i, v in enumerate(vocab)}
    background = len(vocab)
    out = []
    for gt in gts:
        names = patch_attributes(gt.patch_labels, gt.objects, attr, background="\0background")
        flat = names.reshape(-1)
        missing = sorted({n for n in flat if n != "\0background" and n not in index})
        if missing:
            raise ValueError(f"{attr} values {missing} are not in the vocabulary {vocab}")
        out.append([background if n == "\0background" else index[n] for n in flat])
    return np.asarray(out, np.int64)
