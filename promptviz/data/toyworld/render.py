"""Vectorised ToyWorld renderer and per-pixel / per-patch ground truth.

Every shape is an *implicit function*: a boolean test ``inside(u, v)`` on the
object's local coordinates (centre at 0, radius 1, ``v`` pointing down). Every
pattern is a function of coordinates too (stripes are ``frac(a / period) <
0.5``...). So drawing a batch is tensor arithmetic on coordinate grids -- no
per-pixel Python loops:

1. paint all backgrounds at once;
2. test every object's shape in a small window around it (objects grouped by
   shape, so each test is one tensor expression over many windows), keep the
   list of object pixels, and colour them by their pattern;
3. paste the pixels depth level by depth level (the k-th object of every scene
   at once): later objects occlude earlier ones, and the same paste writes
   ``k + 1`` into the instance map;
4. apply each image's style (noise, colour shift, blur) to its whole canvas.

The instance map is the ground truth: 0 is background, k is the k-th object of
the scene (``scene.objects[k - 1]``). In the sketch style an object's pixels
are its outline and its paper-coloured interior: the map still covers the whole
region the object occupies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby

import numpy as np
import torch
import torch.nn.functional as F

from promptviz.data.toyworld.world import PATTERNS, SHAPES, Obj, Scene
from promptviz.errors import PromptvizError

SQRT3 = math.sqrt(3.0)
STAR_INNER = 0.45  # inner/outer radius of the five-pointed star
_STAR_I = (STAR_INNER * math.cos(math.pi / 5), STAR_INNER * math.sin(math.pi / 5))


# --- shapes: (u, v) -> inside? (unit radius, v down) -------------------------

def _star(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # Fold the plane into one half-spike: angle measured from "up", modulo 72 deg.
    sector = 2 * math.pi / 5
    theta = torch.atan2(u, -v)
    phi = (theta - sector * torch.round(theta / sector)).abs()
    rho = torch.sqrt(u * u + v * v)
    px, py = rho * torch.cos(phi), rho * torch.sin(phi)
    # inside iff on the origin's side of the edge from the tip (1, 0) to the inner vertex
    ix, iy = _STAR_I
    return (ix - 1) * py - iy * (px - 1) >= 0


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    x, y = 1.2 * u, 0.115 - 1.2 * v  # the classic heart curve, y up
    q = x * x + y * y - 1
    return q * q * q - x * x * y * y * y <= 0


SHAPE_FNS = {
    "circle": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.78,
    "triangle": lambda u, v: (v <= 0.5) & (SQRT3 * u.abs() - v <= 1),
    "star": _star,
    "heart": _heart,
    "cross": lambda u, v: ((u.abs() <= 0.33) & (v.abs() <= 0.95))
    | ((v.abs() <= 0.33) & (u.abs() <= 0.95)),
    "diamond": lambda u, v: u.abs() / 0.72 + v.abs() <= 1,
    "hexagon": lambda u, v: (v.abs() <= SQRT3 / 2) & (SQRT3 * u.abs() + v.abs() <= SQRT3),
    "ring": lambda u, v: ((u * u + v * v) <= 1) & ((u * u + v * v) >= 0.25),
    "crescent": lambda u, v: ((u * u + v * v) <= 1)
    & ((u - 0.4) ** 2 + (v + 0.15) ** 2 > 0.64),
}
assert tuple(SHAPE_FNS) == SHAPES


# --- patterns: amount of the second colour, in [0, 1] ------------------------
# a, b: pixel offsets from the object's centre, rotated by the pattern angle and
# divided by the period; u, v: the object's local coordinates.

def _frac(x: torch.Tensor) -> torch.Tensor:
    return x - torch.floor(x)


PATTERN_FNS = {
    "solid": lambda a, b, u, v, ph: torch.zeros_like(a),
    "striped": lambda a, b, u, v, ph: (_frac(a + ph) < 0.5).float(),
    "dotted": lambda a, b, u, v, ph: (
        (_frac(a + ph) - 0.5) ** 2 + (_frac(b + ph) - 0.5) ** 2 < 0.09).float(),
    "checkered": lambda a, b, u, v, ph: torch.remainder(
        torch.floor(a + ph) + torch.floor(b + ph), 2),
    "wavy": lambda a, b, u, v, ph: (
        _frac(b + 0.3 * torch.sin(2 * math.pi * 0.6 * a) + ph) < 0.5).float(),
    "gradient": lambda a, b, u, v, ph: (0.5 + 0.5 * (0.8 * u + 0.6 * v)).clamp(0, 1),
}
assert tuple(PATTERN_FNS) == PATTERNS


def _floats(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def second_colour(rgb: torch.Tensor) -> torch.Tensor:
    """A pattern's second colour: a dark shade of light colours, a pale tint of dark ones."""
    lum = rgb @ torch.tensor([0.2126, 0.7152, 0.0722])
    return torch.where((lum > 0.45)[..., None], 0.35 * rgb, 0.35 * rgb + 0.65)


# --- backgrounds and styles ----------------------------------------------------

def _backgrounds(scenes: Sequence[Scene], H: int, gen: torch.Generator) -> torch.Tensor:
    c1 = _floats([s.bg_rgb for s in scenes])[:, :, None, None]
    c2 = _floats([s.bg_rgb2 for s in scenes])[:, :, None, None]
    p = _floats([s.bg_param for s in scenes])[:, None, None, None]
    img = c1.expand(-1, 3, H, H).clone()
    xs = ((torch.arange(H) + 0.5) / H).view(1, 1, 1, H)
    ys = xs.view(1, 1, H, 1)
    kind = [s.background for s in scenes]

    def where(name: str) -> torch.Tensor:
        return torch.tensor([k == name for k in kind]).nonzero().squeeze(1)

    if len(g := where("gradient")):
        t = (0.5 + (xs - 0.5) * torch.cos(p[g]) + (ys - 0.5) * torch.sin(p[g])).clamp(0, 1)
        img[g] = torch.lerp(c1[g], c2[g], t)
    if len(g := where("noise")):  # smooth blobs of light and colour, plus a little grain
        low = torch.rand(len(g), 4, 5, 5, generator=gen) - 0.5
        blobs = F.interpolate(low, size=(H, H), mode="bilinear", align_corners=False)
        grain = torch.randn(len(g), 1, H, H, generator=gen)
        img[g] = c1[g] + 0.4 * blobs[:, :1] + 0.25 * blobs[:, 1:] + 0.04 * grain
    if len(g := where("grid")):  # one-pixel lines every `bg_param` pixels (at 64 px)
        period = p[g] * H / 64
        ix = torch.arange(H).float()
        on_x = _frac(ix.view(1, 1, 1, H) / period) < 1 / period
        on_y = _frac(ix.view(1, 1, H, 1) / period) < 1 / period
        img[g] = torch.where(on_x | on_y, c2[g], c1[g])
    return img


def _rotate_hue(theta: torch.Tensor) -> torch.Tensor:
    """Rodrigues rotation matrices about the grey axis: hue turns, greys stay grey."""
    k = torch.full((3,), 1 / SQRT3)
    K = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    return c * torch.eye(3) + s * K + (1 - c) * torch.outer(k, k)


def _blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma (in pixels) per image: a grouped conv."""
    n, C, H, W = img.shape
    r = max(1, math.ceil(3 * float(sigma.max())))
    x = torch.arange(-r, r + 1).float()
    k = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # [n*C, 2r+1]
    out = F.pad(img.reshape(1, n * C, H, W), (r, r, r, r), mode="replicate")
    out = F.conv2d(out, k[:, None, None, :], groups=n * C)
    out = F.conv2d(out, k[:, None, :, None], groups=n * C)
    return out.view(n, C, H, W)


def _apply_styles(img: torch.Tensor, scenes: Sequence[Scene], gen: torch.Generator) -> None:
    H = img.shape[-1]
    for style in ("noisy", "shifted", "blurred"):
        g = torch.tensor([s.style == style for s in scenes]).nonzero().squeeze(1)
        if not len(g):
            continue
        p = _floats([scenes[i].style_param for i in g.tolist()])
        if style == "noisy":
            img[g] += p[:, None, None, None] * torch.randn(len(g), 3, H, H, generator=gen)
        elif style == "shifted":
            img[g] = torch.einsum("nij,njhw->nihw", _rotate_hue(p), img[g])
        else:
            img[g] = _blur(img[g], p * H / 64)


# --- objects --------------------------------------------------------------------

def _object_pixels(scenes: Sequence[Scene], H: int) -> tuple[torch.Tensor, ...]:
    """Every pixel of every object: (batch index, pixel index ``row * W + col``, depth, RGB).

    Shapes are tested in a small square window around each object. Objects are
    sorted by window side, then by shape, so each shape test runs once on a
    contiguous block of windows. Patterns and colours are then computed on the
    flat list of object pixels only, from a per-object table gathered per pixel.
    """
    rows = [(b, k, o) for b, s in enumerate(scenes) for k, o in enumerate(s.objects)]
    if not rows:
        none = torch.zeros(0, dtype=torch.long)
        return none, none, none, torch.zeros(0, 3)
    # window side: the object's diameter plus a margin, rounded up to a multiple of 4
    side = [min(H, 4 * math.ceil((2 * o.radius * H + 4) / 4)) for _, _, o in rows]
    order = sorted(range(len(rows)), key=lambda i: (side[i], SHAPES.index(rows[i][2].shape)))
    rows, side = [rows[i] for i in order], [side[i] for i in order]
    objs = [o for _, _, o in rows]
    sketch = [scenes[b].style == "sketch" for b, _, _ in rows]
    # per-object numbers in pixel units: centre, rotation / radius, pattern rotation / period
    tab = _floats([[o.x * H, o.y * H, o.radius * H, o.angle,
                    o.pattern_angle, o.period * H / 64, o.phase] for o in objs])
    cx, cy, rad, ang, pang, per, phase = tab.T
    thick = max(1, round(H / 40))  # sketch line width in pixels

    pix: dict[str, list[torch.Tensor]] = {k: [] for k in ("obj", "row", "col", "edge")}
    for S, block in groupby(range(len(rows)), key=side.__getitem__):  # equal window side S
        block = list(block)
        blk = slice(block[0], block[-1] + 1)
        x0 = (cx[blk] - S / 2).round().clamp(0, H - S)
        y0 = (cy[blk] - S / 2).round().clamp(0, H - S)
        ar = torch.arange(S) + 0.5
        dx = (x0[:, None] + ar - cx[blk, None])[:, None, :]  # offsets from the centre
        dy = (y0[:, None] + ar - cy[blk, None])[:, :, None]
        c = (torch.cos(ang[blk]) / rad[blk])[:, None, None]
        s = (torch.sin(ang[blk]) / rad[blk])[:, None, None]
        u, v = dx * c + dy * s, dy * c - dx * s  # the object's local coordinates, [n, S, S]
        mask = torch.empty(len(block), S, S, dtype=torch.bool)
        for shape, run in groupby(range(len(block)), key=lambda i: objs[blk.start + i].shape):
            run = list(run)
            i, j = run[0], run[-1] + 1
            mask[i:j] = SHAPE_FNS[shape](u[i:j], v[i:j])
        o, r, q = mask.nonzero(as_tuple=True)
        pix["obj"].append(o + blk.start)
        pix["row"].append(y0.long().index_select(0, o) + r)
        pix["col"].append(x0.long().index_select(0, o) + q)
        sk = torch.tensor(sketch[blk]).nonzero().squeeze(1)
        edge = torch.zeros_like(mask)
        if len(sk):  # a sketch's outline: the mask minus its erosion
            m = mask[sk].float()[:, None]
            edge[sk] = (m + F.max_pool2d(-m, 2 * thick + 1, stride=1, padding=thick))[:, 0] > 0
        pix["edge"].append(edge.masked_select(mask))
    o, row, col, edge = (torch.cat(pix[k]) for k in pix)

    # per pixel: local coordinates again (for the gradient) and pattern coordinates
    dx = col + 0.5 - cx.index_select(0, o)
    dy = row + 0.5 - cy.index_select(0, o)
    c, s = (torch.cos(ang) / rad).index_select(0, o), (torch.sin(ang) / rad).index_select(0, o)
    pc, ps = (torch.cos(pang) / per).index_select(0, o), (torch.sin(pang) / per).index_select(0, o)
    args = (dx * pc + dy * ps, dy * pc - dx * ps, dx * c + dy * s, dy * c - dx * s,
            phase.index_select(0, o))
    pid = torch.tensor([PATTERNS.index(x.pattern) for x in objs]).index_select(0, o)
    t = torch.zeros(len(o))
    for k, fn in enumerate(PATTERN_FNS.values()):
        sel = (pid == k).nonzero().squeeze(1)
        if k and len(sel):  # k = 0 is solid: t stays 0
            t.index_copy_(0, sel, fn(*(x.index_select(0, sel) for x in args)).float())
    rgb = _floats([x.rgb for x in objs])
    colour = torch.lerp(rgb.index_select(0, o), second_colour(rgb).index_select(0, o), t[:, None])
    if any(sketch):  # outline in the object's colour, paper with a faint pattern inside
        paper = _floats([scenes[b].bg_rgb for b, _, _ in rows]).index_select(0, o)
        inside = torch.tensor(sketch).index_select(0, o) & ~edge
        colour = torch.where(edge[:, None], 0.85 * colour, colour)
        colour = torch.where(inside[:, None], 0.75 * paper + 0.25 * colour, colour)
    b = torch.tensor([r[0] for r in rows]).index_select(0, o)
    level = torch.tensor([r[1] for r in rows]).index_select(0, o)
    return b, row * H + col, level, colour


# --- the renderer -------------------------------------------------------------

def render_scenes(scenes: Sequence[Scene], image_size: int = 64,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw scenes: images ``[B, 3, H, W]`` float in [0, 1] and instance maps ``[B, H, W]`` uint8.

    ``generator`` drives the noise textures (noise backgrounds, the noisy
    style); everything else is fixed by the scenes. Without one a fixed seed
    is used, so rendering is always reproducible.
    """
    if not scenes:
        raise PromptvizError("render_scenes() needs at least one scene")
    if image_size < 16:
        raise PromptvizError(f"ToyWorld images must be at least 16 px, got {image_size}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    B, H = len(scenes), image_size
    images = _backgrounds(scenes, H, gen)
    instance = torch.zeros(B, H, H, dtype=torch.uint8)
    b, pixel, level, colour = _object_pixels(scenes, H)
    # flat indices of each object pixel's R, G, B values in images.view(-1): [M, 3]
    channel = (b[:, None] * 3 + torch.arange(3)) * (H * H) + pixel[:, None]
    for k in range(int(level.max()) + 1 if len(level) else 0):
        on = level == k  # paint depth levels in order: later objects occlude earlier ones
        images.view(-1)[channel[on]] = colour[on]
        instance.view(-1)[b[on] * (H * H) + pixel[on]] = k + 1
    _apply_styles(images, scenes, gen)
    return images.clamp_(0, 1), instance


# --- ground truth helpers -------------------------------------------------------

def _as_long(instance) -> tuple[torch.Tensor, bool]:
    is_np = isinstance(instance, np.ndarray)
    return (torch.from_numpy(np.asarray(instance)) if is_np else instance).long(), is_np


def object_masks(instance, num_objects: int | None = None):
    """Boolean masks ``[..., K, H, W]`` of objects 1..K from an instance map ``[..., H, W]``."""
    inst, is_np = _as_long(instance)
    K = int(inst.max()) if num_objects is None else num_objects
    masks = inst[..., None, :, :] == torch.arange(1, K + 1).view(K, 1, 1)
    return masks.numpy() if is_np else masks


def patch_coverage(instance, patch_size: int = 8, num_objects: int | None = None):
    """Fraction of each patch covered by each id: ``[..., K + 1, H/p, W/p]`` (id 0 = background).

    Works on numpy arrays or tensors, one map ``[H, W]`` or a batch ``[B, H, W]``.
    """
    inst, is_np = _as_long(instance)
    H, W = inst.shape[-2:]
    p = patch_size
    if H % p or W % p:
        raise PromptvizError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    K1 = (int(inst.max()) if num_objects is None else num_objects) + 1
    h, w = H // p, W // p
    # count pixels per (map, patch, id) with one bincount over a combined key
    cell = (torch.arange(H) // p)[:, None] * w + (torch.arange(W) // p)[None, :]
    lead = inst.shape[:-2]
    n = inst[..., 0, 0].numel()
    key = (torch.arange(n).view(n, 1, 1) * (h * w) + cell) * K1 + inst.reshape(n, H, W)
    counts = torch.bincount(key.flatten(), minlength=n * h * w * K1)
    cov = (counts.view(*lead, h, w, K1).float() / (p * p)).movedim(-1, -3)
    return cov.numpy() if is_np else cov


def patch_labels(instance, patch_size: int = 8, min_coverage: float | None = None):
    """Object id of every patch: ``[..., H/p, W/p]`` uint8, from an instance map ``[..., H, W]``.

    By default each patch takes the id covering most of its pixels, background
    included (a plurality vote; ties go to the lower id). With ``min_coverage``
    a patch takes the object covering most of it if that object covers at least
    this fraction, else 0 -- e.g. ``min_coverage=0.25`` also labels patches on
    an object's rim. The ViT's patch grid is this grid when ``patch_size``
    matches, so the labels score attention maps patch by patch.
    """
    cov, is_np = patch_coverage(instance, patch_size), isinstance(instance, np.ndarray)
    cov = torch.from_numpy(cov) if is_np else cov
    if min_coverage is None:
        labels = cov.argmax(-3)
    else:
        best, arg = cov[..., 1:, :, :].max(-3)
        labels = torch.where(best >= min_coverage, arg + 1, 0) if cov.shape[-3] > 1 \
            else torch.zeros_like(cov[..., 0, :, :], dtype=torch.long)
    labels = labels.to(torch.uint8)
    return labels.numpy() if is_np else labels


def patch_attributes(labels, objects: Sequence[Obj], attr: str,
                     background: str = "background") -> np.ndarray:
    """Look an attribute up for every patch: ``patch_attributes(lab, scene.objects, "shape")``.

    Returns a numpy array of strings shaped like ``labels``; patches of id 0 get
    ``background``.
    """
    table = np.array([background] + [str(getattr(o, attr)) for o in objects], dtype=object)
    lab = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return table[lab.astype(np.int64)]
