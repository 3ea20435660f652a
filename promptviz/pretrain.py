"""Contrastive pretraining of toyclip on the ToyWorld stream (CLIP's recipe, small).

Every step draws a fresh batch of scenes from the generator, renders and
captions them, and minimises CLIP's symmetric InfoNCE loss

    L = ½ [CE(s · f @ tᵀ, I) + CE(s · t @ fᵀ, I)],   s = exp(logit_scale) (learned, ≤ 100)

with AdamW, linear warm-up and cosine decay. The run is resumable: ``state.pt``
in the output folder holds the model, optimiser, step and the stream's
generator state, so an interrupted run continues exactly where it stopped. The
final weights are exported as fp16 safetensors with the open_clip config in
their metadata (``toyclip.safetensors``), loadable by ``load_clip(path)``.
A small zero-shot probe on held-out scenes (shape and colour of a single
object) is logged as training goes, so you can see *what* has been learned.
Two experiment knobs, off in the shipped recipe: ``caption_noise`` makes a share of the
captions careless like web alt text, and ``aux_weight`` adds attribute heads on the image
embedding to the contrastive loss (the warm start's lesson, kept).
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from queue import Queue

import open_clip
import torch
import torch.nn.functional as F

from promptviz.backbone import _register_configs, save_clip
from promptviz.checkpoint import atomic_torch_save, atomic_write_text, load_state
from promptviz.errors import PromptvizError
from promptviz.progress import progress_bar
from promptviz.toyworld import patch_labels, render_scenes, sample_batch, sample_scene
from promptviz.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
)


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    model: str = "toyclip"             # an open_clip config name (promptviz/configs)
    steps: int = 2500
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    image_size: int = 64
    device: str = "cpu"
    threads: int = 0                   # torch CPU threads (0 = torch's default)
    # Curriculum. A small ViT learns colour first (it sorts most captions of a batch) and
    # then stalls on shape, which needs the silhouette across patches. So a share of the
    # scenes is *clean* (one object, filled, plain background), falling linearly from
    # clean_start to clean_end over the run, and a share of the batches paints every
    # object one colour, so that colour cannot tell those captions apart.
    clean_start: float = 0.7
    clean_end: float = 0.2
    same_colour_share: float = 0.5
    # Warm start (LiT-style): before the contrastive run, the image tower learns the main
    # object's shape, colour, pattern, size and position from ToyWorld's ground truth for
    # ``warm_steps`` steps; the contrastive run then trains it at ``image_lr_scale`` × lr.
    warm_steps: int = 1500
    # Or take the image tower from an earlier run's export (e.g. one made with ``steps=0``,
    # a warm start only) instead of warming up here; its warm-start log is copied along.
    warm_from: str = ""
    # Or start the whole CLIP (both towers) from an earlier run's export and go on training
    # it, e.g. with the image tower locked (image_lr_scale=0) and a new caption vocabulary.
    init_from: str = ""
    warm_clean: float = 0.7            # share of clean scenes in the warm start's batches
    warm_dense: float = 1.0            # weight of the per-patch shape / colour losses
    image_lr_scale: float = 0.1
    logit_scale: float = 0.0           # > 0: start the temperature at this scale
    learn_scale: bool = True            # False: keep the starting scale fixed
    same_caption: bool = False          # identical captions are positives of each other
    # Web-like captions: the share of captions that leave the main object's shape vague or
    # describe only the other objects (see toyworld.captions.caption).
    caption_noise: float = 0.0
    # The chance that a named colour is its specialist name ("vermilion", "ultramarine":
    # toyworld.captions.PAINT_WORDS), rare words that ToyPaints' class names use.
    paint_names: float = 0.0
    # Keep the warm start's lesson during the contrastive run: linear heads on the image
    # embedding name the main object's attributes, the style and the background from
    # ground truth, added to the contrastive loss with this weight (0 = off).
    aux_weight: float = 0.0
    log_every: int = 50
    save_every: int = 200
    probe_every: int = 250
    progress: bool = True


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def clean_share(step: int, cfg: PretrainConfig) -> float:
    """Share of clean scenes at ``step``: linear from ``clean_start`` to ``clean_end``."""
    t = min(step / max(1, cfg.steps - 1), 1.0)
    return cfg.clean_start + (cfg.clean_end - cfg.clean_start) * t


def clip_loss(model: torch.nn.Module, images: torch.Tensor, ids: torch.Tensor,
              same_caption: bool = False, image_features: torch.Tensor | None = None
              ) -> torch.Tensor:
    """CLIP's symmetric contrastive loss over a batch of (image, caption) pairs.

    With ``same_caption``, pairs whose captions are token-for-token identical count as
    positives of each other (soft targets) instead of as negatives. ``image_features``
    (unnormalised ``encode_image`` output) saves encoding the images a second time.
    """
    f = model.encode_image(images) if image_features is None else image_features
    f = F.normalize(f, dim=-1)
    t = model.encode_text(ids, normalize=True)
    logits = model.logit_scale.exp().clamp(max=100) * f @ t.t()
    if same_caption:
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
        y = same / same.sum(-1, keepdim=True)
    else:
        y = torch.arange(len(f), device=f.device)
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits.t(), y))


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


class _Prefetch:
    """Render the next batch in a background thread while the current one trains."""

    def __init__(self, cfg: PretrainConfig, generator: torch.Generator, step: int) -> None:
        self.cfg, self.gen, self.step = cfg, generator, step
        self.queue: Queue = Queue(maxsize=2)
        self.state = generator.get_state()       # generator state after the last batch taken
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.stop = False
        self.thread.start()

    def _work(self) -> None:
        cfg = self.cfg
        while not self.stop:
            one_colour = float(torch.rand(1, generator=self.gen)) < cfg.same_colour_share
            pick = int(torch.randint(len(COLOURS), (1,), generator=self.gen))
            colour = list(COLOURS)[pick] if one_colour else None
            batch = sample_batch(cfg.batch_size, self.gen, cfg.image_size, colour=colour,
                                 clean=clean_share(self.step, cfg),
                                 caption_noise=cfg.caption_noise,
                                 paint_names=cfg.paint_names)
            self.step += 1
            self.queue.put((batch, self.gen.get_state()))

    def next(self):
        batch, self.state = self.queue.get()
        return batch


@torch.no_grad()
def probe(model: torch.nn.Module, tokenizer, image_size: int = 64, n: int = 200,
          seed: int = 12345) -> dict[str, float]:
    """Zero-shot accuracy (%) on held-out single-object scenes: shape and colour."""
    model.eval()
    rng = random.Random(seed)
    out = {}
    for attr, names, template in (("shape", SHAPES, "a photo of a {}."),
                                  ("colour", tuple(COLOURS), "a photo of a {} object.")):
        scenes, labels = [], []
        for i in range(n):
            k = i % len(names)
            scenes.append(sample_scene(rng, n_objects=1, style="filled", main={attr: names[k]}))
            labels.append(k)
        images, _ = render_scenes(scenes, image_size, torch.Generator().manual_seed(seed))
        dev = next(model.parameters()).device
        f = model.encode_image(normalise(images).to(dev), normalize=True)
        t = model.encode_text(tokenizer([template.format(c) for c in names]).to(dev),
                              normalize=True)
        pred = (f @ t.t()).argmax(-1).cpu()
        out[attr] = 100.0 * float((pred == torch.tensor(labels)).float().mean())
    model.train()
    return out


ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS,
              "size": tuple(SIZES), "position": POSITIONS}
SCENE_ATTRIBUTES = {"style": STYLES, "background": BACKGROUNDS}


def attribute_targets(scenes: list, attr: str, device: torch.device | str = "cpu"
                      ) -> torch.Tensor:
    """Class index ``[B]`` of ``attr``: the main object's (``ATTRIBUTES``) or the scene's
    (``SCENE_ATTRIBUTES``)."""
    if attr in SCENE_ATTRIBUTES:
        y = [SCENE_ATTRIBUTES[attr].index(getattr(s, attr)) for s in scenes]
    else:
        y = [ATTRIBUTES[attr].index(getattr(s.objects[s.target], attr)) for s in scenes]
    return torch.tensor(y, device=device)


def attribute_loss(heads: torch.nn.ModuleDict, f: torch.Tensor, scenes: list) -> torch.Tensor:
    """Sum of the cross-entropies of linear heads naming the main object's attributes
    (``ATTRIBUTES``) and the scene's style and background from image features ``f``."""
    return sum((F.cross_entropy(head(f), attribute_targets(scenes, attr, f.device))
                for attr, head in heads.items()), f.new_zeros(()))


def patch_targets(batch, attr: str, names: tuple, patch_size: int) -> torch.Tensor:
    """Per-patch class ``[B, N]``: 0 for background, 1 + index of the covering object's ``attr``."""
    labels = patch_labels(batch.instance, patch_size, min_coverage=0.25).long().flatten(1)
    table = torch.zeros(len(batch), 1 + max(len(s.objects) for s in batch.scenes),
                        dtype=torch.long)
    for i, scene in enumerate(batch.scenes):
        for k, obj in enumerate(scene.objects):
            table[i, k + 1] = names.index(getattr(obj, attr)) + 1
    return table.gather(1, labels)


def warm_start(visual: torch.nn.Module, cfg: PretrainConfig, out: Path) -> None:
    """Supervised warm start of the image tower on ToyWorld's ground truth.

    A ViT trained from scratch contrastively learns colour at once but shape only very
    slowly; the generator knows every attribute, so the tower first learns to name them:
    one linear head per attribute of the main object on the pooled feature, plus
    per-patch heads that name the shape and colour of the object under every patch
    token (dense supervision: 64 targets per image instead of one). Batches mix clean
    scenes (``warm_clean``) with the full stream; the learning rate warms up, then
    decays on a cosine. The heads are thrown away; the stream uses its own generator
    (seed + 1).
    """
    device = next(visual.parameters()).device
    width = visual.transformer.width
    patch = visual.patch_size[0] if isinstance(visual.patch_size, tuple) else visual.patch_size
    heads = torch.nn.ModuleDict({a: torch.nn.Linear(visual.output_dim, len(v))
                                 for a, v in ATTRIBUTES.items()}).to(device)
    dense = torch.nn.ModuleDict({a: torch.nn.Linear(width, 1 + len(ATTRIBUTES[a]))
                                 for a in ("shape", "colour")}).to(device)
    params = list(visual.parameters()) + list(heads.parameters()) + list(dense.parameters())
    optim = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = PretrainConfig(lr=cfg.lr, min_lr=cfg.min_lr, warmup=cfg.warmup,
                              steps=cfg.warm_steps)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    log, t0 = [], time.perf_counter()
    visual.output_tokens = True
    try:
        for step in progress_bar(range(cfg.warm_steps), desc="warm start", enabled=cfg.progress):
            for g in optim.param_groups:
                g["lr"] = lr_at(step, schedule)
            batch = sample_batch(cfg.batch_size, gen, cfg.image_size, clean=cfg.warm_clean)
            f, tokens = visual(normalise(batch.images).to(device))
            loss, accs = 0.0, {}
            for attr in ATTRIBUTES:
                y = attribute_targets(batch.scenes, attr, device)
                logits = heads[attr](f)
                loss = loss + F.cross_entropy(logits, y)
                accs[attr] = round(100.0 * (logits.argmax(-1) == y).float().mean().item(), 1)
            if cfg.warm_dense:
                for attr, head in dense.items():
                    y = patch_targets(batch, attr, ATTRIBUTES[attr], patch).to(device)
                    loss = loss + cfg.warm_dense * F.cross_entropy(head(tokens).flatten(0, 1),
                                                                   y.flatten())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.warm_steps:
                entry = {"warm_step": step + 1, "loss": round(loss.item(), 4), **accs,
                         "seconds": round(time.perf_counter() - t0, 1)}
                log.append(entry)
                print(json.dumps(entry), flush=True)
    finally:
        visual.output_tokens = False
    atomic_write_text(out / "warm_start_log.json", json.dumps(log, indent=2))


def _weights_file(source: Path, flag: str) -> Path:
    weights = source / "toyclip.safetensors" if source.is_dir() else source
    if not weights.is_file():
        raise PromptvizError(f"{flag} {source}: no weights there; give a "
                             "toyclip.safetensors file or the --out folder of a pretrain run")
    return weights


def load_weights(module: torch.nn.Module, source: Path, prefix: str = "visual.",
                 flag: str = "--warm-from") -> Path:
    """Load an earlier run's export (a file, or the run's ``--out`` folder) into ``module``:
    the tensors whose names start with ``prefix`` (``"visual."``: the image tower; ``""``:
    the whole CLIP). Returns the weight file read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = _weights_file(source, flag)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise PromptvizError(f"{flag} {weights} is not a readable safetensors file "
                             f"({e}); point it at a pretrain run's toyclip.safetensors") from None
    part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    ref = module.state_dict()
    if part.keys() != ref.keys() or any(part[k].shape != ref[k].shape for k in ref):
        what = "image tower" if prefix == "visual." else "CLIP"
        raise PromptvizError(f"{flag} {weights} holds no {what} of this --model's "
                             "shape; start from a run made with the same --model config")
    module.load_state_dict({k: v.to(ref[k].dtype) for k, v in part.items()})
    return weights


def load_warm_start(visual: torch.nn.Module, source: Path) -> Path:
    """Load the image tower of an earlier run's export into ``visual`` (``--warm-from``)."""
    return load_weights(visual, source)


def pretrain(cfg: PretrainConfig) -> Path:
    """Run (or resume) pretraining; returns the path of the exported safetensors file."""
    _register_configs()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise PromptvizError(f"unknown model config {cfg.model!r}; known: toyclip, pv-tiny "
                             "or any open_clip.list_models() name")
    if not 0.0 <= cfg.caption_noise <= 1.0:
        raise PromptvizError(f"--caption-noise {cfg.caption_noise} is not a share; give a "
                             "number from 0 (clean captions) to 1")
    if not 0.0 <= cfg.paint_names <= 1.0:
        raise PromptvizError(f"--paint-names {cfg.paint_names} is not a share; give a "
                             "number from 0 (no specialist colour names) to 1")
    if not cfg.image_lr_scale >= 0.0:
        raise PromptvizError(f"--image-lr-scale {cfg.image_lr_scale} must be >= 0 "
                             "(0 locks the image tower)")
    if cfg.init_from and (cfg.warm_from or cfg.warm_steps):
        raise PromptvizError("--init-from starts from a whole trained CLIP, so there is "
                             "nothing to warm up: drop --warm-from and pass --warm-steps 0")
    if not cfg.aux_weight >= 0.0:
        raise PromptvizError(f"--aux-weight {cfg.aux_weight} must be >= 0 (0 turns the "
                             "attribute heads off)")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise PromptvizError("--device cuda was asked for but no CUDA GPU is visible")
    device = torch.device(cfg.device)
    out = Path(cfg.out)
    resuming = (out / "state.pt").is_file()
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(cfg.model).to(device).train()
    warm_weights = None
    if cfg.warm_from and not resuming:   # before any write: a bad source leaves nothing
        warm_weights = load_warm_start(model.visual, Path(cfg.warm_from).expanduser())
    if cfg.init_from and not resuming:
        load_weights(model, Path(cfg.init_from).expanduser(), prefix="", flag="--init-from")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.logit_scale > 0:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.logit_scale))
    model.logit_scale.requires_grad_(cfg.learn_scale)
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=model.context_length)
    if warm_weights is not None:         # the warm start's log travels with its tower
        log = warm_weights.parent / "warm_start_log.json"
        if log.is_file() and log.resolve() != (out / log.name).resolve():
            atomic_write_text(out / log.name, log.read_text())
    elif cfg.warm_steps and not resuming:
        warm_start(model.visual, cfg, out)
    warmed = bool(cfg.warm_steps or cfg.warm_from or cfg.init_from)
    groups = []
    if warmed and cfg.image_lr_scale == 0:   # a locked image tower (LiT): no gradients at all
        model.visual.requires_grad_(False)
    for image in (True, False):          # image tower at image_lr_scale × lr (after a warm start)
        named = [(n, p) for n, p in model.named_parameters()
                 if n.startswith("visual.") == image and p.requires_grad]
        scale = cfg.image_lr_scale if image and warmed else 1.0
        groups += [{"params": [p for n, p in named if p.ndim >= 2 and "embedding" not in n],
                    "weight_decay": cfg.weight_decay, "scale": scale},
                   {"params": [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)],
                    "weight_decay": 0.0, "scale": scale}]
    heads = torch.nn.ModuleDict({a: torch.nn.Linear(model.visual.output_dim, len(v))
                                 for a, v in {**ATTRIBUTES, **SCENE_ATTRIBUTES}.items()}
                                ).to(device) if cfg.aux_weight else torch.nn.ModuleDict()
    if cfg.aux_weight:   # the heads learn at the full rate; they are not exported
        groups.append({"params": list(heads.parameters()), "weight_decay": 0.0, "scale": 1.0})
    groups = [g for g in groups if g["params"]]
    optim = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, log = 0, []
    state_path = out / "state.pt"
    if state_path.is_file():
        saved = load_state(state_path)     # on the CPU: RNG states must stay there
        if saved["config"]["model"] != cfg.model or saved["config"]["seed"] != cfg.seed:
            raise PromptvizError(f"{state_path} belongs to another run (model/seed differ); "
                                 "use another --out")
        for key in ("aux_weight", "paint_names", "init_from", "image_lr_scale"):
            before = saved["config"].get(key, PretrainConfig.__dataclass_fields__[key].default)
            if before != getattr(cfg, key):
                flag = "--" + key.replace("_", "-")
                raise PromptvizError(f"{state_path} was trained with {flag} {before!r}, not "
                                     f"{getattr(cfg, key)!r}; resume with the same value or "
                                     "use another --out")
        model.load_state_dict(saved["model"])
        heads.load_state_dict(saved.get("heads", {}))
        optim.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        step, log = saved["step"], saved["log"]
        print(f"resuming pretraining at step {step}")
    stream = _Prefetch(cfg, gen, step)
    bar = progress_bar(range(step, cfg.steps), desc="pretrain", enabled=cfg.progress,
                       initial=step, total=cfg.steps)
    # a resumed run's clock goes on from its last log entry, so "seconds" is the run's total
    t0, running = time.perf_counter() - (log[-1]["seconds"] if log else 0.0), None
    for step in bar:
        batch = stream.next()
        for g in optim.param_groups:
            g["lr"] = lr_at(step, cfg) * g["scale"]
        ids = tokenizer(batch.captions).to(device)
        images = normalise(batch.images).to(device)
        f = model.encode_image(images)
        loss = clip_loss(model, images, ids, cfg.same_caption, image_features=f)
        contrastive = loss.item()
        if cfg.aux_weight:
            loss = loss + cfg.aux_weight * attribute_loss(heads, f, batch.scenes)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        value = contrastive
        if not math.isfinite(loss.item()):
            raise PromptvizError(f"pretraining loss became {value} at step {step}; lower --lr "
                                 f"(now {cfg.lr}) and resume from the last saved state")
        running = value if running is None else 0.95 * running + 0.05 * value
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            entry = {"step": done, "loss": round(running, 4), "lr": lr_at(step, cfg),
                     "scale": round(model.logit_scale.detach().exp().item(), 2),
                     "seconds": round(time.perf_counter() - t0, 1)}
            if done % cfg.probe_every == 0 or done == cfg.steps:
                entry.update(probe(model, tokenizer, cfg.image_size))
            log.append(entry)
            print(json.dumps(entry), flush=True)
        if done % cfg.save_every == 0 or done == cfg.steps:
            # the stream state saved is the one right after the last batch trained on
            atomic_torch_save({"model": model.state_dict(), "heads": heads.state_dict(),
                               "optimizer": optim.state_dict(),
                               "generator": stream.state, "step": done, "log": log,
                               "config": asdict(cfg)}, state_path)
    stream.stop = True
    weights = out / "toyclip.safetensors"
    save_clip(model, weights, model_cfg, half=True)
    atomic_write_text(out / "pretrain_log.json", json.dumps({"config": asdict(cfg),
                                                             "log": log}, indent=2))
    return weights
