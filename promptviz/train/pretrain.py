"""Contrastive pretraining of toyclip on the ToyWorld stream (CLIP's recipe, small).

Every step draws a fresh batch of scenes from the generator, renders and
captions them, and minimises CLIP's symmetric InfoNCE loss

    L = ½ [CE(s · f @ tᵀ, I) + CE(s · t @ fᵀ, I)],   s = exp(logit_scale) (learned, ≤ 100)

with AdamW, linear warm-up and cosine decay. The run is resumable: ``state.pt``
in the output folder holds the model, optimiser, step and the stream's
generator state, so an interrupted run continues exactly where it stopped. It is
saved every ``save_every`` steps, when a warm start ends and on Ctrl-C (after the step
under way; a warm start under way keeps its own ``warm_state.pt``). The
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
import logging
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from promptviz.backbone import check_device, image_stats, register_configs, save_clip
from promptviz.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    check_folder,
    load_state,
    make_folder,
)
from promptviz.config import PretrainConfig, flag_of
from promptviz.data.toyworld import patch_labels, render_scenes, sample_batch, sample_scene
from promptviz.data.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
    STYLES,
)
from promptviz.data.transforms import normalise
from promptviz.errors import PromptvizError
from promptviz.progress import progress_bar

STATE = "state.pt"                     # the contrastive run's resumable state
WARM_STATE = "warm_state.pt"           # the warm start's, while it is under way
_STATE_KEYS = frozenset({"model", "optimizer", "generator", "step", "log", "config"})
_WARM_KEYS = frozenset({"visual", "heads", "dense", "optimizer", "generator", "step", "log",
                        "config"})


def _flag(name: str) -> str:
    """How a user sets config field ``name``: its flag (:func:`promptviz.config.flag_of`)."""
    return flag_of(PretrainConfig, name)


def _reason(e: BaseException | None) -> str:
    """A short, one-line cause for an error message."""
    if e is None:
        return "unknown cause"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e)
    for line in text.splitlines():
        if "unsupported GLOBAL" in line or "Unsupported global" in line:
            return ("it holds pickled objects, not just tensors, and those are never loaded: "
                    + line.strip()[:200])
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return first.split(". ")[0][:200]


def _read_state(path: Path, keys: frozenset) -> dict[str, Any]:
    """A pretrain state file, loaded without running pickled code, with the ``keys`` it
    must hold; anything else is one :class:`PromptvizError` naming the file."""
    try:
        saved = load_state(path)
    except PromptvizError as e:        # load_state hides its cause: it is the context
        raise _unreadable(path, e.__context__) from None
    if not isinstance(saved, dict) or not keys <= saved.keys():
        missing = sorted(keys - saved.keys()) if isinstance(saved, dict) else ["everything"]
        raise _unreadable(path, ValueError(f"missing {', '.join(missing)}"))
    if not isinstance(saved["config"], dict) or isinstance(saved["step"], bool) \
            or not isinstance(saved["step"], int) or saved["step"] < 0 \
            or not isinstance(saved["log"], list):
        raise _unreadable(path, ValueError("bad step, log or config"))
    return saved


def _unreadable(path: Path, cause: BaseException | None) -> PromptvizError:
    return PromptvizError(f"{path} is not a readable pretrain state ({_reason(cause)}); "
                          "delete it to start over")


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (full disk, lost permission) into one clear error.
    The writers are atomic, so the failed file is left whole or absent."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as e:
        raise PromptvizError(f"could not write {path} ({_reason(e)}); free some disk space "
                             "or give another --out, then re-run the same command to resume"
                             ) from None


def _save_state(obj: dict[str, Any], path: Path) -> None:
    with _writing(path):
        atomic_torch_save(obj, path)


class _StopRequest:
    """Ctrl-C while training: finish the step under way, save the state, then stop with
    ``KeyboardInterrupt`` (a second Ctrl-C stops at once). Only the main thread can take
    signals, so elsewhere (and where SIGINT is not Python's default) nothing changes."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ninterrupted: saving the state after this step (Ctrl-C again to quit at once, "
              "losing the steps since the last save)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def stop(self, path: Path, done: int, phase: str) -> None:
        print(f"{phase} stopped after step {done}; the state is saved in {path}",
              file=sys.stderr, flush=True)
        raise KeyboardInterrupt


def step_lr(step: int, cfg: PretrainConfig) -> float:
    """The learning rate of optimiser step ``step``: a linear warm-up to ``lr`` over
    ``warmup`` steps, then a cosine decay to ``min_lr`` (per step; fine-tuning's
    :func:`promptviz.train.loop.lr_at` is Dassl's per-epoch schedule)."""
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


class _Prefetch:
    """Render the next batch in a background thread while the current one trains.

    Whatever the thread raises is handed over and re-raised by :meth:`next` in the
    training thread; a thread that ended without a word is an error too, never a wait."""

    def __init__(self, cfg: PretrainConfig, generator: torch.Generator, step: int) -> None:
        self.cfg, self.gen, self.step = cfg, generator, step
        self.queue: Queue = Queue(maxsize=2)
        self.state = generator.get_state()       # generator state after the last batch taken
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True, name="pretrain-render")
        self.thread.start()

    def _work(self) -> None:
        cfg = self.cfg
        try:
            while not self._stop.is_set():
                one_colour = float(torch.rand(1, generator=self.gen)) < cfg.same_colour_share
                pick = int(torch.randint(len(COLOURS), (1,), generator=self.gen))
                colour = list(COLOURS)[pick] if one_colour else None
                batch = sample_batch(cfg.batch_size, self.gen, cfg.image_size, colour=colour,
                                     clean=clean_share(self.step, cfg),
                                     caption_noise=cfg.caption_noise,
                                     paint_names=cfg.paint_names)
                self.step += 1
                self._put((batch, self.gen.get_state()))
        except BaseException as e:   # noqa: BLE001 - handed to the training thread
            self._put(e)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except Full:
                continue

    def next(self):
        while True:
            try:
                item = self.queue.get(timeout=0.5)
                break
            except Empty:
                if self.thread.is_alive():
                    continue
                try:                 # it may have put its last word just before it ended
                    item = self.queue.get_nowait()
                    break
                except Empty:
                    raise PromptvizError("pretrain's scene-rendering thread stopped without "
                                         "a batch or an error; re-run the same command to "
                                         "resume from the last saved state") from None
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, self.state = item
        return batch

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait for it (a thread still rendering at interpreter exit
        can abort the process)."""
        self._stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout)


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
        pixels = normalise(images, *image_stats(model.visual)).to(dev)
        f = model.encode_image(pixels, normalize=True)
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


def warm_start(visual: torch.nn.Module, cfg: PretrainConfig, out: Path,
               stop: _StopRequest | None = None) -> None:
    """Supervised warm start of the image tower on ToyWorld's ground truth.

    A ViT trained from scratch contrastively learns colour at once but shape only very
    slowly; the generator knows every attribute, so the tower first learns to name them:
    one linear head per attribute of the main object on the pooled feature, plus
    per-patch heads that name the shape and colour of the object under every patch
    token (dense supervision: 64 targets per image instead of one). Batches mix clean
    scenes (``warm_clean``) with the full stream; the learning rate warms up, then
    decays on a cosine. The heads are thrown away; the stream uses its own generator
    (seed + 1). It is resumable: ``warm_state.pt`` in ``out`` is saved every
    ``save_every`` steps and when ``stop`` is requested (Ctrl-C), and picked up here.
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
    state_path = out / WARM_STATE
    start, log, t0 = 0, [], time.perf_counter()
    if state_path.is_file():
        saved = _read_state(state_path, _WARM_KEYS)
        _check_same_run(saved["config"], cfg, state_path)
        try:
            visual.load_state_dict(saved["visual"])
            heads.load_state_dict(saved["heads"])
            dense.load_state_dict(saved["dense"])
            optim.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise _unreadable(state_path, e) from None
        start, log = saved["step"], saved["log"]
        t0 -= float(saved.get("seconds", 0.0))
        print(f"resuming the warm start at step {start}")

    def save(done: int) -> None:
        _save_state({"visual": visual.state_dict(), "heads": heads.state_dict(),
                     "dense": dense.state_dict(), "optimizer": optim.state_dict(),
                     "generator": gen.get_state(), "step": done, "log": log,
                     "seconds": time.perf_counter() - t0, "config": asdict(cfg)}, state_path)

    visual.output_tokens = True
    try:
        for step in progress_bar(range(start, cfg.warm_steps), desc="warm start",
                                 enabled=cfg.progress, initial=start, total=cfg.warm_steps):
            for g in optim.param_groups:
                g["lr"] = step_lr(step, schedule)
            batch = sample_batch(cfg.batch_size, gen, cfg.image_size, clean=cfg.warm_clean)
            f, tokens = visual(normalise(batch.images, *image_stats(visual)).to(device))
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
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.warm_steps:
                entry = {"warm_step": done, "loss": round(loss.item(), 4), **accs,
                         "seconds": round(time.perf_counter() - t0, 1)}
                log.append(entry)
                print(json.dumps(entry), flush=True)
            if stop is not None and stop.requested:
                save(done)
                stop.stop(state_path, done, "the warm start")
            if done % cfg.save_every == 0 and done < cfg.warm_steps:
                save(done)
    finally:
        visual.output_tokens = False
    with _writing(out / "warm_start_log.json"):
        atomic_write_text(out / "warm_start_log.json", json.dumps(log, indent=2))


def _check_same_run(before: dict[str, Any], cfg: PretrainConfig, path: Path) -> None:
    """A saved state resumes only the run that wrote it: same model and seed."""
    if before.get("model") != cfg.model or before.get("seed") != cfg.seed:
        raise PromptvizError(f"{path} belongs to another run (--model {before.get('model')!r}, "
                             f"--seed {before.get('seed')!r}); resume with those, or use "
                             "another --out")


def _model_image_size(model_cfg: dict[str, Any], cfg: PretrainConfig) -> int:
    """The scene size the model takes: its config's ``vision_cfg.image_size``."""
    size = model_cfg.get("vision_cfg", {}).get("image_size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise PromptvizError(f"--model {cfg.model} takes {size[0]}x{size[1]} images; "
                                 "ToyWorld renders square scenes, so pick a model with a "
                                 "square vision_cfg.image_size")
        size = size[0]
    if not isinstance(size, int) or size < 16:
        raise PromptvizError(f"--model {cfg.model} takes {size!r} px images; ToyWorld renders "
                             "at least 16 px, so pick a model whose vision_cfg.image_size is "
                             ">= 16")
    if cfg.image_size is not None and cfg.image_size != size:
        raise PromptvizError(f"--image-size / PretrainConfig.image_size {cfg.image_size} does "
                             f"not match --model {cfg.model}, which takes {size} px images "
                             "(vision_cfg.image_size); leave it unset (None)")
    return size


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
    """Run (or resume) pretraining; returns the path of the exported safetensors file.

    Every setting is checked first (:meth:`PretrainConfig.validate`), and ``--out`` and
    any state to resume before anything is written. Ctrl-C saves the state after the
    step under way (the warm start's too), so re-running the same call resumes there.
    """
    cfg.validate()
    register_configs()
    model_cfg = open_clip.get_model_config(cfg.model)
    if model_cfg is None:
        raise PromptvizError(f"unknown --model config {cfg.model!r}; give toyclip, pv-tiny "
                             "or any open_clip.list_models() name")
    cfg = replace(cfg, image_size=_model_image_size(model_cfg, cfg))
    device = check_device(cfg.device)
    out = Path(cfg.out)
    check_folder(out)
    state_path = out / STATE
    resuming = state_path.is_file()
    saved = None
    if resuming:                         # a bad state file stops the run before any work
        saved = _read_state(state_path, _STATE_KEYS)
        _check_same_run(saved["config"], cfg, state_path)
        for key in ("aux_weight", "paint_names", "init_from", "image_lr_scale"):
            before = saved["config"].get(key, PretrainConfig.__dataclass_fields__[key].default)
            if before != getattr(cfg, key):
                raise PromptvizError(f"{state_path} was trained with {_flag(key)} {before!r}, "
                                     f"not {getattr(cfg, key)!r}; resume with the same value "
                                     "or use another --out")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    root = logging.getLogger()
    level, _ = root.level, root.setLevel(logging.ERROR)   # "no pretrained weights": as meant
    try:
        model = open_clip.create_model(cfg.model).to(device).train()
    finally:
        root.setLevel(level)
    warming = bool(cfg.warm_steps) and not cfg.warm_from and not resuming
    if warming and not hasattr(model.visual, "transformer"):
        raise PromptvizError(f"--warm-steps needs a ViT image tower and --model {cfg.model} "
                             "has none; pass --warm-steps 0")
    warm_weights = None
    if cfg.warm_from and not resuming:   # before any write: a bad source leaves nothing
        warm_weights = load_warm_start(model.visual, Path(cfg.warm_from).expanduser())
    if cfg.init_from and not resuming:
        load_weights(model, Path(cfg.init_from).expanduser(), prefix="", flag="--init-from")
    make_folder(out)
    if cfg.logit_scale > 0:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(cfg.logit_scale))
    model.logit_scale.requires_grad_(cfg.learn_scale)
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=model.context_length)
    with _StopRequest() as stop:
        if warm_weights is not None:         # the warm start's log travels with its tower
            log_file = warm_weights.parent / "warm_start_log.json"
            if log_file.is_file() and log_file.resolve() != (out / log_file.name).resolve():
                try:
                    text = log_file.read_text()
                except (OSError, UnicodeDecodeError) as e:
                    raise PromptvizError(f"--warm-from {log_file} is unreadable ({_reason(e)})"
                                         "; fix or delete it") from None
                with _writing(out / log_file.name):
                    atomic_write_text(out / log_file.name, text)
        elif warming:
            warm_start(model.visual, cfg, out, stop)
        weights = _contrastive(model, model_cfg, cfg, out, tokenizer, saved,
                               save_first=warming, stop=stop)
    return weights


def _contrastive(model: torch.nn.Module, model_cfg: dict[str, Any], cfg: PretrainConfig,
                 out: Path, tokenizer, saved: dict[str, Any] | None, save_first: bool,
                 stop: _StopRequest) -> Path:
    """The contrastive run (from ``saved``, a loaded ``state.pt``, if any) and the export.
    ``save_first``: save the state before step 1 (a warm start just ended here), so that
    a resumed run does not warm up again."""
    device = next(model.parameters()).device
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
    state_path = out / STATE
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            heads.load_state_dict(saved.get("heads", {}))
            optim.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise _unreadable(state_path, e) from None
        step, log = saved["step"], saved["log"]
        print(f"resuming pretraining at step {step}")

    def save(done: int, generator_state: torch.Tensor) -> None:
        # the stream state saved is the one right after the last batch trained on
        _save_state({"model": model.state_dict(), "heads": heads.state_dict(),
                     "optimizer": optim.state_dict(), "generator": generator_state,
                     "step": done, "log": log, "config": asdict(cfg)}, state_path)

    if save_first and saved is None:
        save(step, gen.get_state())
        (out / WARM_STATE).unlink(missing_ok=True)
    elif saved is not None:
        (out / WARM_STATE).unlink(missing_ok=True)      # a leftover of a finished warm start
    if stop.requested:                   # Ctrl-C during the warm start's last step
        stop.stop(state_path, step, "pretraining")
    stream = _Prefetch(cfg, gen, step) if step < cfg.steps else None
    bar = progress_bar(range(step, cfg.steps), desc="pretrain", enabled=cfg.progress,
                       initial=step, total=cfg.steps)
    # a resumed run's clock goes on from its last log entry, so "seconds" is the run's total
    t0, running = time.perf_counter() - (log[-1]["seconds"] if log else 0.0), None
    try:
        for step in bar:
            batch = stream.next()
            for g in optim.param_groups:
                g["lr"] = step_lr(step, cfg) * g["scale"]
            ids = tokenizer(batch.captions).to(device)
            images = normalise(batch.images, *image_stats(model.visual)).to(device)
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
                raise PromptvizError(f"pretraining loss became {value} at step {step}; lower "
                                     f"--lr (now {cfg.lr}) and resume from the last saved state")
            running = value if running is None else 0.95 * running + 0.05 * value
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                entry = {"step": done, "loss": round(running, 4), "lr": step_lr(step, cfg),
                         "scale": round(model.logit_scale.detach().exp().item(), 2),
                         "seconds": round(time.perf_counter() - t0, 1)}
                if done % cfg.probe_every == 0 or done == cfg.steps:
                    entry.update(probe(model, tokenizer, cfg.image_size))
                log.append(entry)
                print(json.dumps(entry), flush=True)
            if done % cfg.save_every == 0 or done == cfg.steps or stop.requested:
                save(done, stream.state)
            if stop.requested:
                stop.stop(state_path, done, "pretraining")
    finally:
        if stream is not None:
            stream.close()
    weights = out / "toyclip.safetensors"
    with _writing(weights):
        save_clip(model, weights, model_cfg, half=True)
    with _writing(out / "pretrain_log.json"):
        atomic_write_text(out / "pretrain_log.json", json.dumps({"config": asdict(cfg),
                                                                 "log": log}, indent=2))
    return weights
