"""Loading a frozen CLIP: :func:`load_clip` turns a spec into a :class:`Backbone` (the
built-in models, open_clip names, OpenAI / open_clip / safetensors weight files), and
:func:`save_clip` writes one as safetensors with its config.

Backbone specs understood by :func:`load_clip`:

==================================  ==========================================================
``toyclip``                         the project's own small CLIP, shipped in assets/
``pv-tiny``                         a tiny random-weight config for tests
``ViT-B-16:openai``                 any open_clip name with a pretrained tag (downloads)
``ViT-B-16-quickgelu:/path/w.bin``  an open_clip name with a local weight file
``ViT-B-16``                        an open_clip name with random weights (benchmarks)
``/path/ViT-B-16.pt``               an OpenAI-format checkpoint (JIT archive or state dict)
``/path/model.safetensors``         a safetensors file that carries its config
==================================  ==========================================================

The activation (GELU or OpenAI's QuickGELU) is never guessed from a file name. It is
the model config's (``ViT-B-16`` is GELU) unless the name ends in ``-quickgelu`` or the
file itself shows it is OpenAI's: a TorchScript archive (its code names the activation;
OpenAI's CLIP uses QuickGELU), or a state dict with the entries only OpenAI's archives
hold. A plain state dict does not record its activation, so OpenAI's weights saved as
an open_clip state dict (the hub's ``open_clip_pytorch_model.bin``) must be named
``ViT-B-16-quickgelu:/path``. A bare path is read as OpenAI's CLIP (QuickGELU).
:attr:`Backbone.activation` says which one the towers use, and :func:`load_clip` prints
it, with the reason, when it loads weights from a file or a pretrained tag.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch
from torch import Tensor, nn

from promptviz.backbone.model import Backbone
from promptviz.checkpoint import atomic_write
from promptviz.errors import PromptvizError

CONFIG_DIR = Path(__file__).parent.parent / "configs"
ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
TOYCLIP_WEIGHTS = ASSETS_DIR / "toyclip" / "toyclip.safetensors"
# Built-in names: a config in promptviz/configs and, optionally, shipped weights.
BUILTIN = {"toyclip": TOYCLIP_WEIGHTS, "pv-tiny": None}

WEIGHT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors"}
QUICK = "-quickgelu"     # an open_clip name with this suffix asks for QuickGELU
# Entries of OpenAI's TorchScript archives that no open_clip state dict holds.
OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")
_configs_registered = False


def register_configs() -> None:
    """Make the configs in promptviz/configs (toyclip, pv-tiny) known to open_clip, once."""
    global _configs_registered
    if not _configs_registered:
        open_clip.add_model_config(CONFIG_DIR)
        _configs_registered = True


def load_clip(spec: str, device: str | torch.device = "cpu", seed: int = 0,
              random_weights: bool = False) -> Backbone:
    """Load a frozen CLIP backbone from a spec string (see module docstring).

    An open_clip model name without a tag (``ViT-B-16``) names an architecture, not
    weights: it is an error unless ``random_weights`` (benchmarks and shape checks, where
    random weights cost the same), so a forgotten ``:openai`` never trains on noise.

    When the weights come from a file or a pretrained tag, one line on stderr says which
    activation the towers use and why (also kept in ``Backbone.activation`` and
    ``Backbone.activation_source``)."""
    register_configs()
    spec = str(spec).strip()
    if not spec:
        raise PromptvizError("empty --backbone; use e.g. toyclip or ViT-B-16:openai")
    name, _, tag = spec.partition(":")
    resolved = _resolve_name(name)
    if spec in BUILTIN:
        model, why = _load_builtin(spec, seed), f"the {spec} config's activation"
    elif resolved is not None:
        if not tag and not random_weights:
            tags = open_clip.list_pretrained_tags_by_model(resolved[0])
            example = f"{name}:{tags[0]}" if tags else f"{name}:/path/to/weights"
            raise PromptvizError(
                f"--backbone {spec} names an architecture without weights (random weights "
                f"would classify at chance); add a pretrained tag, e.g. {example} (known: "
                f"{', '.join(tags) or 'none'}), or a weight file as {name}:/path/to/weights")
        model, why = _load_open_clip(name, *resolved, tag or None, seed)
    elif os.path.sep in spec or Path(spec).suffix in WEIGHT_SUFFIXES:
        model, why = _load_file(Path(spec).expanduser())
    else:
        raise PromptvizError(
            f"unknown backbone {spec!r}; use toyclip, an open_clip model name with a tag "
            "(e.g. ViT-B-16:openai; see open_clip.list_models()), or a weight file path")
    tokenizer = open_clip.get_tokenizer("ViT-B-16", context_length=model.context_length)
    bb = Backbone(model, spec, tokenizer, activation_source=why).to(device)
    if spec not in BUILTIN and not (resolved is not None and not tag):   # weights from outside
        print(f"backbone {spec}: {bb.activation} ({why})", file=sys.stderr, flush=True)
    return bb


def _resolve_name(name: str) -> tuple[str, bool] | None:
    """``(open_clip config name, force QuickGELU)`` for a model name, or ``None``.

    ``NAME-quickgelu`` works for every config: open_clip's own ``-quickgelu`` config
    where it has one, else ``NAME``'s config with QuickGELU."""
    name = name.replace("/", "-")
    if open_clip.get_model_config(name) is not None:
        return name, False
    base = name[:-len(QUICK)]
    if name.endswith(QUICK) and open_clip.get_model_config(base) is not None:
        return base, True
    return None


def _create(name: str, seed: int, **kwargs) -> nn.Module:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)        # open_clip logs a warning for random weights
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return open_clip.create_model(name, **kwargs)
    finally:
        root.setLevel(level)


def _load_builtin(name: str, seed: int) -> nn.Module:
    weights = BUILTIN[name]
    if weights is None:                      # test configs: random but deterministic
        return _create(name, seed)
    if not weights.is_file():
        raise PromptvizError(
            f"the {name} weights are missing at {weights}; they ship with the repository "
            "(git checkout / git lfs pull), or run `promptviz pretrain` to make them.")
    model = _create(name, seed)
    _fit(model, _read_state(weights), weights)
    return model


def _load_open_clip(name: str, cfg_name: str, force_quick: bool, tag: str | None,
                    seed: int) -> tuple[nn.Module, str]:
    by_name = name.replace("/", "-").endswith(QUICK)
    quick = force_quick or bool(open_clip.get_model_config(cfg_name).get("quick_gelu"))
    if by_name:
        why = "asked for by the -quickgelu name"
    else:
        why = f"the {cfg_name} config's activation"
    if tag is None:                           # random weights: benchmarks, shape checks
        return _create(cfg_name, seed, quick_gelu=quick), why
    if os.path.isfile(tag):
        return _load_named_file(name, cfg_name, quick, by_name, why, Path(tag), seed)
    cfg = open_clip.get_pretrained_cfg(cfg_name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(cfg_name)
        raise PromptvizError(f"{name} has no pretrained tag {tag!r}; known tags: {tags}, "
                             "or give a local file as NAME:/path/to/weights")
    if not by_name:
        quick = bool(cfg.get("quick_gelu"))
        why = f"the {tag} weights of {cfg_name} were trained with it"
    try:
        return _create(cfg_name, seed, pretrained=tag, force_quick_gelu=quick), why
    except Exception as e:  # download failures surface as many exception types
        raise PromptvizError(
            f"could not load {name}:{tag} ({_first_line(e)}). Without internet, download the "
            f"weights elsewhere and pass {name}:/path/to/file, or use --backbone toyclip."
        ) from None


def _load_named_file(name: str, cfg_name: str, quick: bool, by_name: bool, why: str,
                     path: Path, seed: int) -> tuple[nn.Module, str]:
    """``NAME:/path``: the name gives the architecture; the activation is the name's
    unless the file's content shows OpenAI's format."""
    content = _openai_content(path)
    if content is not None:
        activation, evidence = content
        if by_name and activation != "QuickGELU":
            raise PromptvizError(f"{name} asks for QuickGELU but {path} {evidence}; pass "
                                 f"{cfg_name}:{path}")
        model = _create(cfg_name, seed, quick_gelu=activation == "QuickGELU")
        _fit(model, _openai_state(path), path, name)
        return model, f"{path.name} {evidence}"
    if not quick:
        why += (" (a state dict does not record its activation: for OpenAI's weights pass "
                f"{cfg_name}{QUICK}:{path})")
    state = _read_state(path)             # refuses pickled code and unreadable files first
    try:
        return _create(cfg_name, seed, pretrained=str(path), quick_gelu=quick), why
    except Exception as e:                # open_clip's loader also resizes position tables
        _fit(_create(cfg_name, seed, quick_gelu=quick), state, path, name)   # says what misfits
        raise PromptvizError(f"the weights in {path} do not fit {name}: {_first_line(e)}; "
                             "check that the model name matches the file") from None


def _openai_content(path: Path) -> tuple[str, str] | None:
    """What a weight file's content says about OpenAI's format: ``(activation, evidence)``,
    or ``None`` for a plain state dict (which does not record its activation)."""
    code = _torchscript_code(path)
    if code is not None:
        if "QuickGELU" in code:
            return "QuickGELU", "is a TorchScript archive whose code uses QuickGELU"
        if "torch.gelu(" in code:
            return "GELU", "is a TorchScript archive whose code uses GELU"
        return "QuickGELU", ("is a TorchScript archive, OpenAI's format (OpenAI's CLIP uses "
                             "QuickGELU)")
    keys = _state_keys(path)
    if keys & set(OPENAI_EXTRAS):
        return "QuickGELU", (f"holds {', '.join(OPENAI_EXTRAS)}, as OpenAI's archives do "
                             "(OpenAI's CLIP uses QuickGELU)")
    return None


def _torchscript_code(path: Path) -> str | None:
    """The Python source inside a TorchScript archive, or ``None`` for any other file."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            code = [n for n in z.namelist() if "/code/__torch__/" in n and n.endswith(".py")]
            return "\n".join(z.read(n).decode("utf-8", "replace") for n in code) if code \
                else None
    except (OSError, zipfile.BadZipFile):
        return None


def _state_keys(path: Path) -> set[str]:
    """The entry names of a saved state dict, read without loading its tensors where the
    format allows (memory-mapped); an empty set for a file torch cannot read."""
    if path.suffix == ".safetensors":
        try:
            return set(_safetensors_header(path)[0])
        except PromptvizError:
            return set()          # the loader reports what is wrong with the file
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an older format, or no state dict: the loader reports what it can
        return set()
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k.removeprefix("module.") for k in state} if isinstance(state, dict) else set()


def _openai_state(path: Path) -> dict[str, Tensor]:
    """The weights of an OpenAI-format file (TorchScript archive or state dict), without
    the entries that are not weights of open_clip's CLIP."""
    if _torchscript_code(path) is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # recent torch deprecates torch.jit
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = _read_state(path)
    return {k: v for k, v in state.items() if k not in (*OPENAI_EXTRAS, "attn_mask")}


def _load_file(path: Path) -> tuple[nn.Module, str]:
    if not path.is_file():
        raise PromptvizError(f"backbone file {path} does not exist; check the path, or use "
                             "--backbone toyclip / NAME:TAG")
    if path.suffix == ".safetensors":
        meta = _safetensors_header(path)[1]
        if "open_clip_config" not in meta:
            raise PromptvizError(
                f"{path} carries no model config; pass it as NAME:{path} (e.g. ViT-B-16:{path})")
        try:
            model = open_clip.CLIP(**_cfg_kwargs(json.loads(meta["open_clip_config"])))
        except Exception as e:   # bad JSON, missing keys, values open_clip cannot build
            raise PromptvizError(
                f"the model config stored in {path} is not a valid open_clip config "
                f"({type(e).__name__}: {_first_line(e)}); re-export the file, or pass it as "
                f"NAME:{path} with the open_clip model name") from None
        _fit(model, _read_state(path), path)
        return model, f"the config stored in {path.name}"
    # A bare path is OpenAI's CLIP (JIT archive or its state dict): QuickGELU, unless the
    # archive's own code says otherwise.
    content = _openai_content(path)
    activation, why = content if content is not None else (
        "QuickGELU", "a bare path is read as OpenAI's CLIP, which uses QuickGELU; for an "
        f"open_clip state dict trained with GELU pass NAME:{path}")
    if content is not None:
        why = f"{path.name} {why}"
    try:
        model = open_clip.model.build_model_from_openai_state_dict(
            _openai_state(path), quick_gelu=activation == "QuickGELU", cast_dtype=None)
    except Exception as e:
        raise PromptvizError(
            f"{path} is not an OpenAI-format CLIP checkpoint ({_first_line(e)}); for other "
            f"state dicts pass NAME:{path} with the open_clip model name") from None
    model.float()       # OpenAI's weights are fp16; the towers run in fp32 (or autocast)
    model.visual.image_mean, model.visual.image_std = (open_clip.OPENAI_DATASET_MEAN,
                                                       open_clip.OPENAI_DATASET_STD)
    return model, why


def _cfg_kwargs(cfg: dict) -> dict:
    return {"embed_dim": cfg["embed_dim"], "vision_cfg": cfg["vision_cfg"],
            "text_cfg": cfg["text_cfg"], "quick_gelu": cfg.get("quick_gelu", False)}


def _safetensors_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """The tensor names and the metadata of a safetensors file, read from its header."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as e:       # truncated, corrupt, or not safetensors at all
        raise PromptvizError(f"{path} is not a readable safetensors file ({_first_line(e)}); "
                             "it may be truncated: copy or export it again") from None


def _read_state(path: Path) -> dict[str, Tensor]:
    """A state dict from a weight file; pickled code is never run (``weights_only``)."""
    try:
        state = open_clip.factory.load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise PromptvizError(
            f"{path} is not a readable weight file ({type(e).__name__}: {_first_line(e)}); "
            "give a state dict or safetensors file (objects that need code to unpickle are "
            "refused)") from None
    if not isinstance(state, dict) or not state:
        raise PromptvizError(f"{path} holds no state dict of tensors; give the weights file")
    other = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if other:
        nested = [k for k in other if isinstance(state[k], dict)]
        hint = (f"; the weights may be under {nested[0]!r}: save that entry alone"
                if nested else "")
        raise PromptvizError(f"{path} holds entries that are not tensors ({', '.join(other[:3])}"
                             f"){hint}; give a file with the model's state dict only")
    return state


def _fit(model: nn.Module, state: dict[str, Tensor], path: Path, name: str = "this model"
         ) -> None:
    """Load ``state`` strictly; when it does not fit, say what is missing, what is extra and
    what has another shape, with a few names of each."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape]
    if missing or extra or shapes:
        parts = [f"{len(x)} {what} (e.g. {', '.join(x[:3])})" for x, what in
                 ((missing, "missing"), (extra, "unexpected"), (shapes, "of another shape"))
                 if x]
        raise PromptvizError(f"the weights in {path} do not fit {name}: {'; '.join(parts)}; "
                             "check that the model name matches the file")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PromptvizError(f"the weights in {path} do not fit {name}: "
                             f"{_first_line(e)}") from None


def save_clip(model: nn.Module, path: str | Path, config: dict, half: bool = True) -> None:
    """Save a CLIP as safetensors with its open_clip config in the metadata (write, then rename)."""
    from safetensors.torch import save_file
    dtype = torch.float16 if half else torch.float32
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(
        state, str(tmp), metadata={"open_clip_config": json.dumps(config)}))


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
