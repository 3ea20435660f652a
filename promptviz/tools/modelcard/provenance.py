"""How the shipped weights were made, read from the pretraining run's folder
(``pretrain_log.json``, ``warm_start_log.json``): the towers' shapes from the open_clip
config, the commands that reproduce the run (a ``--warm-from`` start and an ``--init-from``
continuation followed back to their source runs), its settings, samples, hardware, wall
time and file size, the last zero-shot probe, and the training logs as Markdown tables.
:func:`provenance` returns them as the strings ``provenance.json`` keeps.
"""

from __future__ import annotations

import json
from pathlib import Path

from promptviz.errors import PromptvizError
from promptviz.tools.modelcard.render import md_table


def provenance(run_dir: str | Path, weights: str | Path, seconds: float | None = None,
               hardware: str = "") -> dict[str, str]:
    """How the weights in ``weights`` were made, read from the pretraining run ``run_dir``.

    ``run_dir`` is a ``promptviz pretrain --out`` folder (``pretrain_log.json``,
    ``warm_start_log.json``); ``seconds`` is the whole run's wall time if known.
    """
    import open_clip

    from promptviz.backbone import register_configs

    register_configs()                   # toyclip's config lives in promptviz/configs
    run_dir = Path(run_dir)
    log = json.loads((run_dir / "pretrain_log.json").read_text())
    warm_path = run_dir / "warm_start_log.json"
    warm = json.loads(warm_path.read_text()) if warm_path.is_file() else []
    cfg = log["config"]
    if cfg.get("init_from"):             # a continuation: the source run's story, then this
        return _continued(run_dir, log, weights, seconds, hardware)
    # a run started --warm-from an earlier warm start carries that run's log
    warm_steps = warm[-1]["warm_step"] if cfg.get("warm_from") and warm else cfg["warm_steps"]
    mc = open_clip.get_model_config(cfg["model"]) or {}
    v, t = mc.get("vision_cfg", {}), mc.get("text_cfg", {})
    warm_s = warm[-1].get("seconds", 0.0) if warm else 0.0
    contrastive_s = log["log"][-1]["seconds"] if log["log"] else 0.0
    total = seconds if seconds is not None else warm_s + contrastive_s
    return {
        "vision": f"width {v.get('width')}, {v.get('layers')} layers, "
                  f"{v.get('width', 64) // v.get('head_width', 64)} heads",
        "text": f"width {t.get('width')}, {t.get('layers')} layers, {t.get('heads')} heads, "
                f"{t.get('context_length')} tokens",
        "embed_dim": str(mc.get("embed_dim")),
        "command": _commands(run_dir.name, cfg, warm_steps),
        "seed": str(cfg["seed"]), "steps": str(cfg["steps"]), "batch": str(cfg["batch_size"]),
        "samples": f"{cfg['steps'] * cfg['batch_size']:,} contrastive + "
                   f"{warm_steps * cfg['batch_size']:,} warm-start",
        "lr": str(cfg["lr"]), "warmup": str(cfg["warmup"]), "warm": str(warm_steps),
        "hardware": hardware or f"{cfg['device']}, {cfg['threads'] or 'default'} torch threads",
        "time": f"{total / 60:.0f} minutes ({warm_s / 60:.0f} warm start + "
                f"{contrastive_s / 60:.0f} contrastive)",
        "size": f"{Path(weights).stat().st_size / 2**20:.1f} MB",
        "log": _training_log(log["log"], warm),
        **_last_probe(log["log"]),
    }


def _last_probe(log: list[dict]) -> dict[str, str]:
    """The zero-shot shape and colour probe of a run's last logged step that has one."""
    probes = [e for e in log if "shape" in e]
    return {k: f"{probes[-1][k]:.0f}" for k in ("shape", "colour")} if probes else {}


def _source(path: str) -> Path:
    """The run folder of a ``--warm-from`` / ``--init-from`` value (a folder or its export)."""
    source = Path(path)
    return source.parent if source.suffix == ".safetensors" else source


def _continued(run_dir: Path, log: dict, weights: str | Path, seconds: float | None,
               hardware: str) -> dict[str, str]:
    """Provenance of a run started ``--init-from`` an earlier run, which must still be there."""
    cfg = log["config"]
    source = _source(cfg["init_from"])
    if not (source / "pretrain_log.json").is_file():
        raise PromptvizError(f"{run_dir} went on from {source}, whose pretrain_log.json is "
                             "gone; the model card needs that run's folder too")
    p = provenance(source, weights, None, hardware)
    s = log["log"][-1]["seconds"] if log["log"] else 0.0
    locked = "locked" if cfg["image_lr_scale"] == 0 else f"at {cfg['image_lr_scale']} × lr"
    paint = (f", with {cfg['paint_names'] * 100:g} % of the named colours given their "
             "specialist names (`--paint-names`), so that ToyPaints' class names are words "
             "its text tower has seen rarely (see Known limits)" if cfg.get("paint_names") else "")
    p["command"] += "\n" + _commands(run_dir.name, cfg, 0)
    p["continued"] = (f"\nThen {cfg['steps']} more contrastive steps of {cfg['batch_size']} "
                      f"pairs (lr {cfg['lr']}, warm-up {cfg['warmup']} steps, cosine decay) "
                      f"with the image tower {locked}{paint}: {s / 60:.0f} minutes.\n")
    p["samples"] += f" + {cfg['steps'] * cfg['batch_size']:,} continued"
    rows = [[str(e["step"]), f"{e['loss']:.3f}", f"{e['shape']:.0f}", f"{e['colour']:.0f}"]
            for e in log["log"] if "shape" in e]
    p.update(_last_probe(log["log"]))
    p["log"] += ("\n\nContinued run (image tower locked), the same probe (%):\n\n"
                 + md_table(["step", "loss", "shape", "colour"], rows))
    if seconds is not None:
        p["time"] = f"{seconds / 60:.0f} minutes in all"
    else:
        p["time"] += f" + {s / 60:.0f} continued"
    return p


def _commands(name: str, cfg: dict, warm_steps: int) -> str:
    common = f"--batch-size {cfg['batch_size']} --lr {cfg['lr']} --threads {cfg['threads']}"
    extra = "".join(f" --{flag} {cfg[key]}" for key, flag in
                    (("caption_noise", "caption-noise"), ("aux_weight", "aux-weight"),
                     ("paint_names", "paint-names"))
                    if cfg.get(key))     # contrastive-run flags, written when used
    if cfg.get("init_from"):
        return (f"promptviz pretrain --out {name} --seed {cfg['seed']} --init-from "
                f"{_source(cfg['init_from']).name} --warm-steps 0 --steps {cfg['steps']} "
                f"{common} --image-lr-scale {cfg['image_lr_scale']}{extra}")
    if not cfg.get("warm_from"):
        return (f"promptviz pretrain --out {name} --seed {cfg['seed']} --warm-steps "
                f"{cfg['warm_steps']} --steps {cfg['steps']} {common}{extra}")
    source = _source(cfg["warm_from"])
    return (f"promptviz pretrain --out {source.name} --seed {cfg['seed']} --warm-steps "
            f"{warm_steps} --steps 0 {common}\n"
            f"promptviz pretrain --out {name} --seed {cfg['seed']} --warm-from {source.name} "
            f"--warm-steps 0 --steps {cfg['steps']} {common}{extra}")


def _training_log(log: list[dict], warm: list[dict]) -> str:
    rows = [[str(e["warm_step"]), *(f"{e[a]:.0f}" for a in ("shape", "colour", "pattern",
                                                             "size", "position"))]
            for e in warm[4::5]]
    text = ("Warm start, accuracy (%) of the attribute heads on each fresh training batch:\n\n"
            + md_table(["step", "shape", "colour", "pattern", "size", "position"], rows))
    rows = [[str(e["step"]), f"{e['loss']:.3f}", f"{e['shape']:.0f}", f"{e['colour']:.0f}"]
            for e in log if "shape" in e]
    return text + ("\n\nContrastive run, zero-shot probe on held-out single-object scenes "
                   "(%):\n\n" + md_table(["step", "loss", "shape", "colour"], rows))
