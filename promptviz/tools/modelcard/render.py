"""The model card in Markdown, from numbers only: the tables and quality bars of a card
(:func:`markdown`, from ``card.json``), and the whole ``MODEL_CARD.md``
(:func:`model_card`, from ``card.json`` and the pretraining story ``provenance.json``,
whose prose reads every number it quotes from them too), which :func:`write_card` writes
beside the two files it is rendered from, so that it can be rendered again (and a test
checks that it is) without measuring anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from promptviz.checkpoint import atomic_write_text
from promptviz.errors import PromptvizError
from promptviz.metrics import HM_CONVENTION, REFERENCE_B2N


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _pm(r: dict, k: str) -> str:
    return f"{r[k]:.1f} ± {r[f'{k}_std']:.1f}" if r.get("n", 1) > 1 else f"{r[k]:.1f}"


def markdown(card: dict) -> str:
    zs = md_table(["dataset", "classes", "template", "zero-shot acc", "chance"],
                  [[r["dataset"], str(r["classes"]), f"`{r['template']}`", f"{r['acc']:.1f}",
                    f"{r['chance']:.1f}"] for r in card["zero_shot"]])
    heads = card.get("headroom") or [{}] * len(card["coop_b2n"])
    head_cols = ["linear head base", "ceiling"] if card.get("headroom") else []
    b2n = md_table(
        ["dataset", "zero-shot base", "novel", "HM", "CoOp base", "novel", "HM", *head_cols],
        [[z["dataset"], _pm(z, "base_acc"), _pm(z, "new_acc"), _pm(z, "hm"),
          _pm(c, "base_acc"), _pm(c, "new_acc"), _pm(c, "hm")]
         + ([_pm(h, "linear_head"), _pm(h, "best_test")] if head_cols else [])
         for z, c, h in zip(card["zeroshot_b2n"], card["coop_b2n"], heads)])
    bars = card["bars"]
    epochs = f", {card['epochs']} epochs" if "epochs" in card else ""
    head_note = "" if not head_cols else (
        "\n\n*Linear head*: a linear classifier on the frozen image features, started "
        "from the zero-shot classifier and trained on the same 16 shots per base class, "
        "stopped at the step that scores best on the validation shots "
        "(`promptviz.analysis.probe.linear_head`). Any learned prompt also ends in a linear "
        "classifier over these features, so this is roughly what the shots can teach "
        "one. *Ceiling*: the same head stopped at the step that scores best on the test "
        "split itself, an optimistic figure since it peeks at the test labels. Mean "
        "gain over zero-shot on base classes: linear "
        f"head **{bars['linear_head_gain_mean']:+.1f}**, ceiling "
        f"**{bars['best_test_gain_mean']:+.1f}** points.")
    return (f"### Zero-shot, all classes (test split)\n\n{zs}\n\n"
            f"### Base-to-novel, 16 shots (CoOp{epochs}: mean ± std over seeds "
            f"{', '.join(map(str, card['seeds']))})\n\n{b2n}\n\n{HM_CONVENTION}.{head_note}\n\n"
            f"Quality bars: zero-shot ≥ 3× chance on every dataset: "
            f"**{bars['all_three_x_chance']}**; CoOp's mean gain on base classes: "
            f"**{bars['coop_base_gain_mean']:+.1f}** points (bar: +5); zero-shot drop from "
            f"ToyShapes to its shifted copies: "
            + ", ".join(f"{k} {v:+.1f}" for k, v in bars["shift_drop"].items()) + " points.\n")


def _gain_sentence(card: dict) -> str:
    """CoOp's gain on base classes, ToyPaints against the other training sets, from the card."""
    gains = {z["dataset"]: c["base_acc"] - z["base_acc"]
             for z, c in zip(card["zeroshot_b2n"], card["coop_b2n"])}
    paints = gains.pop("toy_paints", None)
    if paints is None or not gains:
        return ""
    others = sum(gains.values()) / len(gains)
    return (f"CoOp's mean gain on base classes comes mostly from ToyPaints ({paints:+.1f} "
            f"points); the other {len(gains)} training sets gain {others:+.1f} on average "
            f"({', '.join(f'{k} {v:+.1f}' for k, v in gains.items())}).")


def _flag(commands: str, flag: str) -> str | None:
    """The value the last of the recorded ``commands`` gave ``flag``, if any gave one."""
    values = re.findall(rf"{flag} (\S+)", commands)
    return values[-1] if values else None


def _quoted(card: dict, p: dict[str, str]) -> dict[str, str]:
    """The numbers the card's prose quotes besides the tables, each read from where it is
    recorded: ``card`` (``card.json``), the pretraining story ``p`` (``provenance.json``: the
    last stage's ``--paint-names``) and the papers' table
    (:data:`promptviz.metrics.REFERENCE_B2N`); ``?`` where missing."""
    zero_shot = {r["dataset"]: r for r in card["zero_shot"]}
    coop = {r["dataset"]: r for r in card["coop_b2n"]}
    paint = _flag(p.get("command", ""), "--paint-names")
    return {
        "paint_names": f"{float(paint) * 100:g} %" if paint else "? %",
        "paints_3x_chance": (f"{3 * zero_shot['toy_paints']['chance']:.1f}"
                             if "toy_paints" in zero_shot else "?"),
        "fine_coop_base": (f"{coop['toy_fine']['base_acc']:.1f}"
                           if "toy_fine" in coop else "?"),
        "clip_base": f"{REFERENCE_B2N['CLIP'][0]:.1f}",
        "coop_base": f"{REFERENCE_B2N['CoOp'][0]:.1f}",
    }


PROVENANCE = "provenance.json"
CARD_JSON = "card.json"


def write_card(card: dict, prov: dict[str, str], folder: Path) -> list[Path]:
    """``MODEL_CARD.md`` from ``card`` and the pretraining story ``prov``, with both inputs
    beside it (``card.json``, ``provenance.json``): a test re-renders the card from them, and
    a later card (new training defaults, a new suite) is re-measured without the
    pretraining run's folder."""
    folder = Path(folder)
    atomic_write_text(folder / PROVENANCE, json.dumps(prov, indent=1) + "\n")
    atomic_write_text(folder / CARD_JSON, json.dumps(card, indent=1) + "\n")
    atomic_write_text(folder / "MODEL_CARD.md", model_card(card, prov))
    return [folder / "MODEL_CARD.md", folder / CARD_JSON, folder / PROVENANCE]


def load_provenance(folder: Path) -> dict[str, str]:
    """The pretraining story that :func:`write_card` kept beside the weights."""
    path = Path(folder) / PROVENANCE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise PromptvizError(f"{path} is missing or unreadable; pass --pretrain-run RUN (the "
                             "pretraining's --out folder) to describe how the weights were "
                             "made") from None


def model_card(card: dict, provenance: dict[str, str]) -> str:
    """The full ``MODEL_CARD.md``: what toyclip is, how it was made, what it can do."""
    p = provenance
    q = _quoted(card, p)
    return f"""# toyclip — model card

toyclip is promptviz's own small CLIP, so that every notebook, test and demo runs
offline on a laptop CPU. It is an open_clip `CLIP` (config
`promptviz/configs/toyclip.json`): a ViT image tower ({p['vision']}) on 64-px images
with 8-px patches (8×8 = 64 patches + CLS), a causal text transformer ({p['text']}),
OpenAI's BPE tokenizer and a {p['embed_dim']}-d joint space. It loads through the same
`load_clip` path as any open_clip model: `load_clip("toyclip")`.

## How the shipped weights were made

```
{p['command']}
```

seed {p['seed']}, {p['steps']} steps of {p['batch']} fresh ToyWorld image–caption pairs
({p['samples']} pairs in all), AdamW (lr {p['lr']}, warm-up {p['warmup']} steps, cosine
decay, weight decay 0.1, betas 0.9/0.98), CLIP's symmetric InfoNCE loss with a learned
temperature (capped at 100).{p.get('continued', ' ')}Hardware: {p['hardware']};
wall time {p['time']}.
The run is resumable (`state.pt` in the output folder); the export is fp16 safetensors
({p['size']}) with the open_clip config in its metadata.

**Why a warm start.** Trained contrastively from scratch on this CPU, toyclip
learned colour within 100 steps but stayed near chance on shape: a zero-shot probe
over 10 shapes scored 14–18 % after 700–1,250 steps, with or without a curriculum of
clean scenes and one-colour batches. So the shipped recipe is LiT-like: first
{p['warm']} supervised steps in which the image tower learns, from ToyWorld's ground
truth, the main object's shape, colour, pattern, size and position (linear heads on
the pooled feature) and the shape and colour of the object under every patch token
(linear heads on the tokens: 64 targets per image), on a mix of clean scenes (70 %)
and the full stream; the heads are thrown away. The contrastive run above then trains
the image tower at a tenth of the learning rate, and the text tower (and the
projections) at the full rate, to describe those features. Clean scenes
(70 % → 20 %) and one-colour batches (half of them) stay in the contrastive stream.
The per-patch supervision is there so that toyclip's patch tokens carry the attributes
of the object under them, which TextRefiner's cache and SEP's token selection build on.
The earlier weights had a 1000-step warm start; tripling it doubled what a 16-shot linear
probe reads from the image features (ToyShapes 29.3 % → 57.0 %, ToyFine 26.9 % → 56.6 %;
the old tower after its contrastive run, the new one before it).

## What it can do (held-out test splits of the ToyWorld suite, seed 0)

Measured with `promptviz toyworld build --out data/toyworld` and then
`promptviz toyworld card --data-root data/toyworld --update-card` (which writes this file
with the pretraining story kept in `provenance.json`; `--pretrain-run RUN` writes both
from a new pretraining run's `--out` folder).

{markdown(card)}
## Known limits

- It has seen only ToyWorld: 10 shapes, 9 colours, 6 patterns, 3 sizes, 9 positions,
  5 backgrounds, 5 styles, captions from a fixed grammar. Words outside that world
  have untrained embeddings.
- Its image tower is tiny and saw {p['samples']} pairs; numbers here say what prompt
  tuning does *relative to* its zero-shot baseline, not what real CLIP would score.
- Shape is still its weaker attribute ({p.get('shape', '?')} % zero-shot over 10 shapes on
  held-out single objects at the end of pretraining, against {p.get('colour', '?')} % for
  colour), and a prompt cannot fix image features.
- Prompt tuning has something to teach it where the class *names* are the gap, and little
  where they are not; the table above measures both. {_gain_sentence(card)} On the four
  sets whose class names are everyday caption words, a linear head on the frozen image
  features, trained on the same 16 shots per base class, gains about as little over
  zero-shot as CoOp does, and only a little more when its stopping step is picked on the
  test split. toyclip's captions name the same shapes, colours and patterns as those class
  names, so a class's text embedding converges to about the mean image embedding of the
  class, which is already close to the best linear readout that 16 shots give. More shots
  do not change this: on a suite built with `--n-train 200`, the same head trained on all
  200 images per class (all classes, 1,000 steps) gains +3.0 points on ToyShapes (69.7 →
  72.7 %), +0.4 on ToyFine and +1.2 on ToyTextures (earlier weights, before the last
  stage). Nor do noisier captions: a contrastive run from the same warm start in which
  30 % of the captions leave the main object's shape vague or skip it (`--caption-noise
  0.3`), with attribute heads on the image embedding (`--aux-weight 0.5`), ended with
  zero-shot again level with the head.
  ToyPaints is the other case, built in on purpose by the last pretraining stage: its
  classes are colours, which the image tower tells apart almost perfectly, named with a
  paint catalogue's words ("vermilion", "viridian", "ultramarine") that the captions used
  for only {q['paint_names']} of the colours they named. The text tower knows those names
  vaguely, so the template classifier is poor and 16 shots teach the prompt (and the head)
  a lot. That is real CLIP's position on flower species, aircraft models and land-use
  classes: CoOp lifts ViT-B/16's base-class accuracy from {q['clip_base']} % to
  {q['coop_base']} % on average over the 11 datasets of the base-to-novel benchmark (16
  shots, as reported by the CoCoOp authors), and most on such sets (EuroSAT 56.5 → 92.2 %,
  Flowers102 72.1 → 97.6 %). With the specialist names in 0.4 % of the named colours
  instead of {q['paint_names']}, ToyPaints' zero-shot accuracy fell to 21.9 %, under 3×
  chance ({q['paints_3x_chance']} %).
- CoOp's training augmentation (random resized crop, scale 0.08–1, and horizontal flip)
  changes what ToyWorld's labels are about: position, size and orientation. Measured on
  the earlier weights (before the last stage), with the card's CoOp of then (10 epochs):
  ToyShapes' zero-shot accuracy on its own training images fell from 70.8 % to 29.6 %
  under it, and CoOp trained with it on ToyFine scored 48.2 % on base classes, against
  71.0 % without it (on these weights, without it: {q['fine_coop_base']} %, table above).
  So the ToyWorld dataset cards say `"augment": false`, and training follows them
  (`promptviz train --augment` turns it back on).
- The domain-shifted copies of ToyShapes (sketch, noisy, colour-shifted) were
  rare in pretraining (7–8 % of scenes each), as sketches are for web-scale CLIP.

## Training log

{p.get('log', '')}
"""
