"""ToyWorld's vocabulary and scene sampling.

A *scene* is a short list of objects on a background, drawn in one rendering
style. Every object is a handful of named attributes (shape, colour, pattern,
size, position) plus the continuous numbers that realise them (centre, radius,
rotation, pattern period...). Scenes are plain dataclasses: sampling them is
cheap Python, drawing them is :mod:`promptviz.data.toyworld.render`'s job, and
describing them in words is :mod:`promptviz.data.toyworld.captions`'s.

Coordinates are fractions of the image side, ``x`` to the right and ``y`` down,
so one scene renders at any resolution. Randomness always comes from the caller's
``numpy.random.Generator`` (or a ``random.Random`` instance) -- never the global
RNG -- so a seed fixes everything.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from promptviz.errors import PromptvizError

VERSION = 1  # bump when sampling or rendering changes what a seed produces

# --- vocabulary --------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "heart",
          "cross", "diamond", "hexagon", "ring", "crescent")

COLOURS = {  # name -> RGB in [0, 1]; saturated so they stand out on grey tones
    "red": (0.86, 0.10, 0.12),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.96, 0.86, 0.12),
    "green": (0.15, 0.70, 0.22),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.12, 0.28, 0.90),
    "purple": (0.56, 0.20, 0.76),
    "pink": (1.00, 0.45, 0.75),
    "brown": (0.55, 0.33, 0.14),
}

PATTERNS = ("solid", "striped", "dotted", "checkered", "wavy", "gradient")

SIZES = {  # name -> range of the object's radius, as a fraction of the image side
    "small": (0.08, 0.11),
    "medium": (0.14, 0.18),
    "large": (0.21, 0.26),
}
_COLOUR_NAMES, _SIZE_NAMES = tuple(COLOURS), tuple(SIZES)

POSITIONS = ("top left", "top", "top right",  # the 3x3 grid, row-major
             "left", "center", "right",
             "bottom left", "bottom", "bottom right")

BACKGROUNDS = ("light", "dark", "gradient", "noise", "grid")

STYLES = ("filled", "sketch", "noisy", "shifted", "blurred")

# The pretraining stream is mostly clean; a minority of each shifted domain
# keeps toyclip from being helpless on them (as web-scale CLIP has seen sketches).
STREAM_STYLES = {"filled": 0.70, "blurred": 0.08, "noisy": 0.08, "sketch": 0.07, "shifted": 0.07}
STREAM_BACKGROUNDS = {"light": 0.30, "dark": 0.20, "gradient": 0.20, "noise": 0.15, "grid": 0.15}
N_OBJECTS = {1: 0.45, 2: 0.33, 3: 0.22}
STYLE_PARAMS = {  # range of each style's strength (see Scene.style_param)
    "filled": (0.0, 0.0), "sketch": (0.0, 0.0), "noisy": (0.08, 0.2),
    "shifted": (0.6 * math.pi, 1.4 * math.pi), "blurred": (0.9, 1.6)}


@dataclass
class Obj:
    """One object: named attributes plus the numbers that draw them.

    ``rgb`` is the colour actually painted (the named colour, slightly
    jittered); ``period``, ``pattern_angle`` and ``phase`` parametrise the
    pattern (period in pixels at 64 px, scaled with the image).
    """

    shape: str
    colour: str
    pattern: str
    size: str
    x: float
    y: float
    radius: float
    angle: float = 0.0
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)
    period: float = 6.0
    pattern_angle: float = 0.0
    phase: float = 0.0

    @property
    def position(self) -> str:
        """Name of the 3x3 grid cell holding the object's centre."""
        return position_name(self.x, self.y)


@dataclass
class Scene:
    """Objects (drawn in list order: later ones occlude earlier ones) on a background.

    ``target`` indexes the main object: the largest one, the one a dataset's
    class is about. ``bg_rgb``/``bg_rgb2`` are the background's tones,
    ``bg_param`` its angle (gradient) or period (grid), and ``style_param`` the
    style's strength: noise sigma, hue rotation in radians, or blur sigma in
    pixels at 64 px.
    """

    objects: list[Obj]
    background: str = "light"
    bg_rgb: tuple[float, float, float] = (0.9, 0.9, 0.9)
    bg_rgb2: tuple[float, float, float] = (0.7, 0.7, 0.7)
    bg_param: float = 0.0
    style: str = "filled"
    style_param: float = 0.0
    target: int = 0

    def to_dict(self) -> dict:
        """Plain JSON-able dict (objects also carry their position name)."""
        d = dict(vars(self))
        d["objects"] = [{**vars(o), "position": o.position} for o in self.objects]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        keys = Obj.__dataclass_fields__
        objs = [Obj(**{k: v for k, v in od.items() if k in keys}) for od in d["objects"]]
        rest = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "objects"}
        for k in ("bg_rgb", "bg_rgb2"):
            if k in rest:
                rest[k] = tuple(rest[k])
        for o in objs:
            o.rgb = tuple(o.rgb)
        return cls(objects=objs, **rest)


def as_random(rng: np.random.Generator | random.Random) -> random.Random:
    """A private ``random.Random`` seeded from ``rng`` (one draw from it).

    Scene and caption sampling make many scalar draws; Python's Mersenne
    Twister is ~5x faster per draw than numpy's scalar calls, and seeding a
    *local* instance from the caller's Generator keeps everything reproducible
    without touching global RNG state.
    """
    if isinstance(rng, random.Random):
        return rng
    return random.Random(int(rng.integers(1 << 62)))


def position_name(x: float, y: float) -> str:
    """The 3x3 grid cell ("top left" ... "bottom right") containing point (x, y)."""
    col, row = min(max(int(x * 3), 0), 2), min(max(int(y * 3), 0), 2)
    return POSITIONS[3 * row + col]


def _check(name: str, value, allowed) -> None:
    if value is not None and value not in allowed:
        raise PromptvizError(f"unknown ToyWorld {name} {value!r}; choose one of {list(allowed)}")


def sample_object(rng: np.random.Generator | random.Random, *, shape: str | None = None,
                  colour: str | None = None, pattern: str | None = None,
                  size: str | None = None, position: str | None = None) -> Obj:
    """Sample one object; any attribute given is fixed, the rest are random.

    The centre is drawn near the middle of a grid cell and pulled inside the
    image so the whole object is visible; the named position is recomputed
    from the final centre, so it is always true.
    """
    if shape or colour or pattern or size or position:
        for name, value, allowed in (("shape", shape, SHAPES), ("colour", colour, COLOURS),
                                     ("pattern", pattern, PATTERNS), ("size", size, SIZES),
                                     ("position", position, POSITIONS)):
            _check(name, value, allowed)
    r = as_random(rng)
    shape = shape or r.choice(SHAPES)
    colour = colour or r.choice(_COLOUR_NAMES)
    pattern = pattern or r.choice(PATTERNS)
    size = size or r.choice(_SIZE_NAMES)
    radius = r.uniform(*SIZES[size])
    cell = POSITIONS.index(position) if position else r.randrange(9)
    lo, hi = radius + 0.01, 1 - radius - 0.01
    x = min(max((cell % 3 + 0.5 + r.uniform(-0.3, 0.3)) / 3, lo), hi)
    y = min(max((cell // 3 + 0.5 + r.uniform(-0.3, 0.3)) / 3, lo), hi)
    if position and position_name(x, y) != position:  # a big object cannot reach a corner
        x = min(max(x, (cell % 3) / 3 + 0.02), (cell % 3 + 1) / 3 - 0.02)
        y = min(max(y, (cell // 3) / 3 + 0.02), (cell // 3 + 1) / 3 - 0.02)
    base = COLOURS[colour]
    rgb = _clip([c + 0.08 * r.random() - 0.04 for c in base])
    return Obj(shape=shape, colour=colour, pattern=pattern, size=size, x=x, y=y,
               radius=radius, angle=r.uniform(-0.26, 0.26), rgb=rgb, period=r.uniform(5.0, 8.0),
               pattern_angle=r.uniform(0, math.pi), phase=r.random())


def _weighted(r: random.Random, probs: dict):
    x = r.random() * sum(probs.values())
    for key, p in probs.items():
        x -= p
        if x < 0:
            return key
    return key


def _clip(rgb: list[float]) -> tuple[float, float, float]:
    return tuple([0.0 if c < 0.0 else 1.0 if c > 1.0 else c for c in rgb])


def _tone(r: random.Random, dark: bool) -> tuple[float, float, float]:
    """A random dark or light grey with a slight tint."""
    level = r.uniform(0.04, 0.28) if dark else r.uniform(0.72, 0.97)
    return _clip([level + 0.1 * r.random() - 0.05 for _ in range(3)])


def _place(r: random.Random, obj: Obj, others: list[Obj], tries: int = 20) -> None:
    """Move ``obj`` until it overlaps the others at most a little (rejection sampling)."""
    for _ in range(tries):
        if all(math.hypot(obj.x - o.x, obj.y - o.y) > 0.8 * (obj.radius + o.radius)
               for o in others):
            return
        obj.x = r.uniform(obj.radius + 0.01, 1 - obj.radius - 0.01)
        obj.y = r.uniform(obj.radius + 0.01, 1 - obj.radius - 0.01)


def sample_scene(rng: np.random.Generator | random.Random, *, n_objects: int | None = None,
                 style: str | None = None, background: str | None = None,
                 main: dict | None = None) -> Scene:
    """Sample a scene of 1-3 objects.

    Without ``main`` every object is random and drawn in random order; the
    target is the largest. With ``main`` (fixed attributes of the main object,
    e.g. ``{"shape": "star"}``) the scene is a classification example: the main
    object is medium or large (unless its size is given), every distractor is
    strictly smaller, and the main object is drawn last so nothing hides it.
    """
    _check("style", style, STYLES)
    _check("background", background, BACKGROUNDS)
    r = as_random(rng)
    n = n_objects or _weighted(r, N_OBJECTS)
    if not 1 <= n <= 3:
        raise PromptvizError(f"ToyWorld scenes hold 1 to 3 objects, got n_objects={n}")
    objects: list[Obj] = []
    if main is None:
        for _ in range(n):
            obj = sample_object(r)
            _place(r, obj, objects)
            objects.append(obj)
        target = max(range(n), key=lambda i: (objects[i].radius, i))
    else:
        main = dict(main)
        main.setdefault("size", r.choice(("medium", "large")))
        head = sample_object(r, **main)
        smaller = _SIZE_NAMES[: _SIZE_NAMES.index(head.size)] or ("small",)
        for _ in range(n - 1):
            obj = sample_object(r, size=r.choice(smaller))
            obj.radius = min(obj.radius, 0.9 * head.radius)  # strictly smaller
            _place(r, obj, objects + [head])
            objects.append(obj)
        objects.append(head)
        target = n - 1
    return _dress(r, Scene(objects=objects, target=target), style, background)


def _dress(r: random.Random, scene: Scene, style: str | None, background: str | None) -> Scene:
    """Fill in a scene's style and background (random where not given), in place."""
    scene.style = style or _weighted(r, STREAM_STYLES)
    scene.style_param = r.uniform(*STYLE_PARAMS[scene.style])
    _paint_background(r, scene, background or _weighted(r, STREAM_BACKGROUNDS))
    return scene


def _paint_background(r: random.Random, scene: Scene, background: str) -> None:
    """Choose tones and geometry for a background of kind ``background``, in place."""
    sketch = scene.style == "sketch"
    if sketch and background != "grid":  # sketches are drawn on (graph) paper
        background = "light"
    dark = background == "dark" or (background != "light" and not sketch and r.random() < 0.4)
    bg_rgb = _tone(r, dark)
    if sketch:
        bg_rgb = _clip([c + 0.08 for c in bg_rgb])
    if background == "gradient" and r.random() < 0.3:
        bg_rgb2 = _tone(r, not dark)  # a strong light-to-dark gradient
    else:
        bg_rgb2 = _clip([c + (0.18 if dark else -0.18) for c in bg_rgb])
    scene.background, scene.bg_rgb, scene.bg_rgb2 = background, bg_rgb, bg_rgb2
    scene.bg_param = r.uniform(7.0, 12.0) if background == "grid" else r.uniform(0, 2 * math.pi)


def restyle(scene: Scene, style: str, rng: np.random.Generator | random.Random) -> Scene:
    """The same objects drawn in another style: a domain-shifted twin of ``scene``.

    The background keeps its kind and tones, except that a sketch gets fresh
    light paper (plain, or graph paper if the original was a grid).
    """
    _check("style", style, STYLES)
    r = as_random(rng)
    twin = Scene.from_dict(scene.to_dict())
    twin.style, twin.style_param = style, r.uniform(*STYLE_PARAMS[style])
    if style == "sketch":
        _paint_background(r, twin, twin.background)
    return twin
