"""Captions for ToyWorld scenes: the "alt text" toyclip is pretrained on.

Web captions are noisy and partial: they name the object, often its colour,
sometimes its texture or where it is, and use many words for one thing. These
captions imitate that -- random subsets of attributes, synonyms, varied
templates -- so a hand-crafted prompt such as "a photo of a red star." is
*good but not optimal* for toyclip, just as "a photo of a {}." is for CLIP, and
prompt tuning has room to find a better context.

Rules of thumb: the shape is almost always named (sometimes as "shape" or
"object"); the colour often, but never for colour-shifted images (their pixels
no longer show it); pattern, size and position sometimes; the style in about
half of the non-photo images ("a sketch of ...").
"""

from __future__ import annotations

import random

import numpy as np

from promptviz.data.toyworld.world import Obj, Scene, as_random

SHAPE_WORDS = {
    "circle": ("circle", "round disc", "disc", "round shape"),
    "square": ("square", "box", "square block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
    "heart": ("heart", "heart shape", "love heart"),
    "cross": ("cross", "plus sign"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "hexagon": ("hexagon", "six-sided shape"),
    "ring": ("ring", "donut", "hoop"),
    "crescent": ("crescent", "crescent moon", "moon"),
}
GENERIC_NOUNS = ("shape", "object", "thing")
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "golden"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "cobalt", "azure"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "rose"),
    "brown": ("brown", "chocolate"),
}
PATTERN_ADJECTIVES = {
    "solid": ("plain", "solid", "uniformly coloured"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "polka-dot", "spotted"),
    "checkered": ("checkered", "chequered", "checkerboard"),
    "wavy": ("wavy", "zigzag"),
    "gradient": ("gradient", "shaded"),
}
PATTERN_PHRASES = {  # "a red star with stripes"
    "solid": ("with no pattern",),
    "striped": ("with stripes", "with a striped pattern", "with a striped texture"),
    "dotted": ("with dots", "with polka dots", "with a dotted texture"),
    "checkered": ("with a checker pattern", "with checks", "with a checkered texture"),
    "wavy": ("with wavy lines", "with waves", "with a zigzag texture"),
    "gradient": ("with a gradient", "with a colour gradient", "with smooth shading"),
}
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
POSITION_WORDS = {
    "top left": ("in the top left", "in the upper left corner", "at the top left"),
    "top": ("at the top", "in the top middle", "near the top"),
    "top right": ("in the top right", "in the upper right corner", "at the top right"),
    "left": ("on the left", "at the left side", "in the middle left"),
    "center": ("in the center", "in the middle", "at the centre"),
    "right": ("on the right", "at the right side", "in the middle right"),
    "bottom left": ("in the bottom left", "in the lower left corner", "at the bottom left"),
    "bottom": ("at the bottom", "in the bottom middle", "near the bottom"),
    "bottom right": ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
STYLE_TEMPLATES = {
    "filled": ("a photo of {}", "a picture of {}", "an image of {}", "{}", "a rendering of {}",
               "a close-up photo of {}", "a toy picture of {}", "this is {}", "a photo showing {}"),
    "sketch": ("a sketch of {}", "a drawing of {}", "an outline drawing of {}",
               "a line drawing of {}", "a pencil sketch of {}"),
    "noisy": ("a noisy photo of {}", "a grainy picture of {}", "a noisy image of {}"),
    "shifted": ("a photo of {} in strange colours", "a colour-shifted picture of {}",
                "a false-colour image of {}"),
    "blurred": ("a blurry photo of {}", "a blurred picture of {}", "an out-of-focus photo of {}"),
}
# Specialist colour names, as a paint catalogue or a florist would write them. Web alt
# text seldom uses such words, so a pretraining run sees them only when asked to
# (``paint`` below): toyclip's version of the flower, aircraft and land-use names on
# which real CLIP's zero-shot is weak and prompt tuning gains most (ToyPaints).
PAINT_WORDS = {
    "red": "vermilion", "orange": "apricot", "yellow": "canary", "green": "viridian",
    "cyan": "teal", "blue": "ultramarine", "purple": "amethyst", "pink": "fuchsia",
    "brown": "umber",
}
# Textile names for four patterns, never used by the captions (toyclip's pretraining never
# sees them, unlike PAINT_WORDS): ToyWeaves' classes name their pattern with these, so
# what tells two of its classes apart is a local texture behind a word toyclip cannot read.
WEAVE_WORDS = {"striped": "pinstripe", "dotted": "dappled", "checkered": "gingham",
               "wavy": "chevron"}
BACKGROUND_WORDS = {
    "light": ("on a white background", "on a light background"),
    "dark": ("on a dark background", "on a black background"),
    "gradient": ("on a gradient background", "on a shaded background"),
    "noise": ("on a noisy background", "on a colourful blotchy background"),
    "grid": ("on a grid", "on graph paper", "on a grid background"),
}
NUMBERS = ("one", "two", "three")


def with_article(phrase: str) -> str:
    """'a red star', 'an orange ring'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def describe(obj: Obj, rng: np.random.Generator | random.Random, *, colour: bool = True,
             position: float = 0.0, vague: float = 0.0, paint: float = 0.0) -> str:
    """A noun phrase for one object, e.g. 'a small crimson striped star in the top left'.

    Mentions the shape almost always, the colour often (if ``colour``), the
    pattern and size sometimes, the position with probability ``position``.
    With probability ``vague`` (web noise) the shape is only "shape"/"object"/"thing";
    with probability ``paint`` a named colour is its specialist name (:data:`PAINT_WORDS`).
    """
    r = as_random(rng)
    say_colour = colour and r.random() < 0.75
    say_pattern = r.random() < (0.15 if obj.pattern == "solid" else 0.45)
    named = r.random() < 0.92 and not (vague and r.random() < vague)
    if named or not (say_colour or say_pattern):
        noun = r.choice(SHAPE_WORDS[obj.shape])
    else:
        noun = r.choice(GENERIC_NOUNS)
    words = [r.choice(SIZE_WORDS[obj.size])] if r.random() < 0.3 else []
    adjectives = [r.choice(COLOUR_WORDS[obj.colour])] if say_colour else []
    if say_colour and paint and r.random() < paint:
        adjectives = [PAINT_WORDS[obj.colour]]
    tail = []
    if say_pattern:
        if r.random() < 0.6:
            adjectives.insert(int(r.random() < 0.3) * len(adjectives),
                              r.choice(PATTERN_ADJECTIVES[obj.pattern]))
        else:
            tail.append(r.choice(PATTERN_PHRASES[obj.pattern]))
    if r.random() < position:
        tail.append(r.choice(POSITION_WORDS[obj.position]))
    return with_article(" ".join(words + adjectives + [noun] + tail))


def caption(scene: Scene, rng: np.random.Generator | random.Random, noise: float = 0.0,
            paint: float = 0.0) -> str:
    """One random caption for ``scene``; call again for another.

    ``noise`` (0-1) makes the captions as careless as web alt text: with that
    probability the main object's shape is left vague ("a red object"), and, in a scene
    of several objects, the caption describes only the others. ``noise=0`` (the default)
    draws exactly the same captions as before the knob existed. ``paint`` is the chance
    that a named colour is given its specialist name (:data:`PAINT_WORDS`); ``paint=0``
    (the default) draws no extra random numbers either.

    >>> caption(scene, np.random.default_rng(0))   # doctest: +SKIP
    'a sketch of a striped star and a small blue disc'
    """
    r = as_random(rng)
    colour = scene.style != "shifted"
    objs, main = scene.objects, scene.objects[scene.target]
    n = len(objs)
    if noise and n > 1 and r.random() < noise:  # the caption misses the main object
        objs = [o for o in objs if o is not main]
        body = _join([describe(o, r, colour=colour, position=0.12, paint=paint) for o in objs])
    elif n == 1 or r.random() < 0.2:  # the main object alone
        if r.random() < 0.25:  # "there is a red star in the top left"
            body = describe(main, r, colour=colour, vague=noise, paint=paint)
            body = f"there is {body} {r.choice(POSITION_WORDS[main.position])}"
            if n > 1:
                body += f" and {NUMBERS[n - 2]} other shape{'s' * (n > 2)}"
            return body + "." * (r.random() < 0.5)
        body = describe(main, r, colour=colour, position=0.25, vague=noise,
                        paint=paint)
        if n > 1:
            body += r.choice((" among other shapes", f" and {NUMBERS[n - 2]} smaller shape"
                              + "s" * (n > 2), " with something else"))
    else:
        order = list(objs)
        r.shuffle(order)
        if r.random() < 0.5:  # the main object first, like a photographer's caption
            order.remove(main)
            order.insert(0, main)
        phrases = [describe(o, r, colour=colour, position=0.12, vague=noise * (o is main),
                            paint=paint)
                   for o in order]
        u = r.random()
        if u < 0.35:
            body = f"{r.choice(NUMBERS[n - 1:n] + (str(n),))} " \
                   f"{r.choice(('objects', 'shapes', 'things'))}: {_join(phrases)}"
        elif u < 0.55 and n == 2:
            body = f"{phrases[0]} {r.choice(('next to', 'with', 'beside', 'and'))} {phrases[1]}"
        else:
            body = _join(phrases)
    if r.random() < 0.12:
        body += " " + r.choice(BACKGROUND_WORDS[scene.background])
    style = scene.style if scene.style != "filled" and r.random() < 0.55 else "filled"
    return r.choice(STYLE_TEMPLATES[style]).format(body) + "." * (r.random() < 0.5)
