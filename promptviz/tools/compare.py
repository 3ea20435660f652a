"""``promptviz compare``: methods × datasets × seeds under one protocol, one table.

Every run is an ordinary ``promptviz train`` run in its own folder
(``OUT/runs/<method>/<dataset>/shots<K>/seed<S>``); a run whose ``results.json``
exists is skipped, so an interrupted study resumes where it stopped, unless that result
was computed with other backbone weights or settings (its ``run_key``), which is run
again. The table
is computed in code from those files (no log scraping): per-dataset mean ± std over
seeds, and an average row per method (the mean over its datasets). One HM convention
(:data:`promptviz.metrics.HM_CONVENTION`), as the papers' tables: every row's HM is the
harmonic mean of that row's own base and novel accuracies (seed-averaged in a dataset's
row, dataset-averaged in an average row), never a mean of HMs; a dataset row's ``hm_std``
is the std of its per-seed HMs. table.json says so in its ``notes``.

Protocols: ``base2new`` and ``fewshot`` (several K) train and test on each dataset;
``crossdataset`` trains on ``source`` (all classes) and tests on every dataset;
``dg`` trains on ``source`` and tests on its domain-shifted copies (same classes). A target
equal to the source reuses the run's own test accuracy.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from promptviz.backbone import load_clip
from promptviz.checkpoint import atomic_write_text
from promptviz.config import STUDY_PROTOCOLS, CompareConfig
from promptviz.data.load import load_dataset, looks_like_path
from promptviz.errors import PromptvizError, did_you_mean
from promptviz.methods import METHODS, build_method, method_class
from promptviz.methods.base import parse_options
from promptviz.metrics import HM_CONVENTION, REFERENCE_B2N, aggregate, harmonic_mean
from promptviz.progress import progress_bar
from promptviz.train.featcache import weights_fingerprint
from promptviz.train.loop import (
    RESULTS,
    TrainConfig,
    check_device,
    finished_run,
    run,
    run_eval,
)
from promptviz.viz import Report, accuracy_bars, results_table_html

REAL_DATASETS = {"imagenet", "caltech-101", "oxford_pets", "stanford_cars", "oxford_flowers",
                 "food-101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"}


_VARIANT = re.compile(r"^([A-Za-z0-9_]+)(?:\[(.*)\])?$")


SCHEDULE_KEYS = ("epochs",)      # in name[...], training settings rather than method options


def method_variant(label: str) -> tuple[str, dict[str, str]]:
    """A study's method entry as (method, its own options): ``"sep"`` is SEP as configured
    by ``options["sep"]``; ``"sep[ensemble=false,layers=1,2]"`` is SEP with those options on
    top, so one study can compare variants of a method (an ablation). Each variant is its
    own row and run folder. ``epochs=N`` in the brackets is that entry's epoch count, not an
    option (:func:`variant_schedule`; e.g. ``clip_lora[epochs=300]``)."""
    name, opts = _variant(label)
    return name, {k: v for k, v in opts.items() if k not in SCHEDULE_KEYS}


def variant_schedule(label: str) -> dict[str, int]:
    """The training settings an entry sets for itself: ``{"epochs": N}`` or nothing."""
    out = {}
    for key, value in _variant(label)[1].items():
        if key in SCHEDULE_KEYS:
            try:
                out[key] = int(value)
            except ValueError:
                raise PromptvizError(f"method {label!r}: {key}={value!r} is not a whole "
                                     "number") from None
    return out


def _variant(label: str) -> tuple[str, dict[str, str]]:
    match = _VARIANT.match(label.strip())
    if not match:
        raise PromptvizError(f"method {label!r} is not a method name or name[key=value,...], "
                             "e.g. sep[ensemble=false]")
    name, inner = match.group(1), match.group(2)
    opts: dict[str, str] = {}
    if inner is not None:                  # split at commas that start a new key=
        for part in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", inner):
            key, eq, value = part.partition("=")
            if not eq or not key.strip() or key.strip() in opts:
                raise PromptvizError(f"method {label!r}: write its options as "
                                     "name[key=value,key=value], each key once")
            opts[key.strip()] = value.strip()
    return name, opts


def _method_slug(label: str) -> str:
    """A method entry as one folder name (``sep[layers=1]`` -> ``sep_layers=1``)."""
    return re.sub(r"[^A-Za-z0-9._=,-]+", "_", label).strip("_")


def _train_cfg(cfg: CompareConfig, label: str, dataset: str, shots: int, seed: int,
               protocol: str, out: Path) -> TrainConfig:
    method, own = method_variant(label)
    return TrainConfig(method=method, backbone=cfg.backbone, dataset=dataset,
                       data_root=cfg.data_root, protocol=protocol, shots=shots, seed=seed,
                       out=str(out), epochs=None if method == "zeroshot" else
                       variant_schedule(label).get("epochs", cfg.epochs),
                       batch_size=cfg.batch_size, device=cfg.device, progress=cfg.progress,
                       feature_cache=cfg.feature_cache, cache_dir=cfg.cache_dir,
                       options={**cfg.options.get(method, {}), **own})


def plan(cfg: CompareConfig) -> list[tuple[str, str, int, int]]:
    """Every (method, train dataset, shots, seed) the study needs."""
    if cfg.protocol not in STUDY_PROTOCOLS:
        raise PromptvizError(f"unknown protocol {cfg.protocol!r}; use one of "
                             f"{STUDY_PROTOCOLS}")
    if cfg.protocol in {"crossdataset", "dg"}:
        if not cfg.source:
            raise PromptvizError(f"--protocol {cfg.protocol} needs --source DATASET (the "
                                 "dataset to train on, e.g. toy_shapes)")
        train_sets = [cfg.source]
    else:
        train_sets = list(cfg.datasets)
    return [(m, d, k, s) for m in cfg.methods for d in train_sets for k in cfg.shots
            for s in cfg.seeds]


def _slug(dataset: str) -> str:
    """A dataset as one folder-name component. A name stays as it is; a dataset given by
    path gets its last part plus a short hash of the whole path, so that two folders with
    the same last part never share runs and runs never land inside the dataset's folder."""
    if not looks_like_path(dataset):
        return dataset
    resolved = str(Path(dataset).expanduser().resolve())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(resolved).name) or "dataset"
    return f"{name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def check_study(cfg: CompareConfig) -> None:
    """Every mistake a study could hit, found before its first run trains: unknown methods
    or datasets, ``--set`` options for a method not in the study (a typo) or unknown to it,
    repeated seeds or shots, and settings no run could train with."""
    names = [method_variant(m)[0] for m in cfg.methods]
    bad = [m for m, name in zip(cfg.methods, names) if name not in METHODS]
    if bad:
        hints = "".join(did_you_mean(method_variant(m)[0], METHODS) for m in bad)
        raise PromptvizError(f"unknown method(s) {', '.join(bad)}{hints}; choose from "
                             f"{', '.join(sorted(METHODS))}")
    for method, opts in cfg.options.items():
        if method not in names:
            raise PromptvizError(f"--set {method}.…: {method!r} is not a method of this study "
                                 f"({', '.join(cfg.methods)}); check the spelling")
        try:
            parse_options(method_class(method).Options, opts)
        except PromptvizError as e:
            raise PromptvizError(f"--set {method}.…: {e}") from None
    for label, name in zip(cfg.methods, names):
        own = method_variant(label)[1]
        if own:
            try:
                parse_options(method_class(name).Options, {**cfg.options.get(name, {}), **own})
            except PromptvizError as e:
                raise PromptvizError(f"method {label!r}: {e}") from None
    slugs = [_method_slug(m) for m in cfg.methods]
    if len(set(slugs)) != len(slugs):
        raise PromptvizError(f"--methods {' '.join(cfg.methods)} name the same run folder "
                             "twice; give each variant different options")
    seen: dict[tuple[str, str], str] = {}
    for label, name in zip(cfg.methods, names):
        opts = parse_options(method_class(name).Options,
                             {**cfg.options.get(name, {}), **method_variant(label)[1]})
        key = (name, repr(opts), repr(variant_schedule(label)))
        if key in seen:
            raise PromptvizError(f"methods {seen[key]!r} and {label!r} train the same thing "
                                 "(the same options); keep one of them")
        seen[key] = label
    for flag, values in (("--methods", cfg.methods), ("--datasets", cfg.datasets),
                         ("--seeds", cfg.seeds), ("--shots", cfg.shots)):
        if not values:
            raise PromptvizError(f"{flag} is empty; give at least one")
        if len(set(values)) != len(values):
            raise PromptvizError(f"{flag} repeats a value ({' '.join(map(str, values))}); a "
                                 "repeated run would count twice in the means")
    for flag, value, least in (("--retries", cfg.retries, 0), ("--ray-cpus", cfg.ray_cpus, 1)):
        if value < least:
            raise PromptvizError(f"{flag} {value}: give {least} or more")
    train_protocol = "base2new" if cfg.protocol == "base2new" else "fewshot"
    for method, dataset, shots, seed in plan(cfg):
        _train_cfg(cfg, method, dataset, shots, seed, train_protocol, Path(cfg.out)
                   ).resolved().validate()
    if cfg.ray is None:                  # on Ray the device is the workers' (checked there)
        check_device(cfg.device)
    for dataset in dict.fromkeys([*cfg.datasets, *([cfg.source] if cfg.source else [])]):
        load_dataset(dataset, cfg.data_root)
    optioned = [(label, name) for label, name in zip(cfg.methods, names)
                if method_variant(label)[1] or cfg.options.get(name)]
    if optioned:                         # options that only the backbone can refuse
        backbone = load_clip(cfg.backbone, _driver_device(cfg))  # (SEP's layers, ...)
        for label, name in optioned:
            opts = {**cfg.options.get(name, {}), **method_variant(label)[1]}
            try:
                build_method(name, backbone, ["a", "b"], "a photo of a {}.", opts)
            except PromptvizError as e:
                raise PromptvizError(f"method {label!r} on {cfg.backbone}: {e}") from None


def _finished(path: Path, again: str | None) -> dict[str, Any] | None:
    """A finished result file, or ``None`` when there is none or it cannot be read (then the
    work is done again, and a note says so: ``again``; ``None``: no note)."""
    if not path.is_file():
        return None
    try:
        res = json.loads(path.read_text())
        if isinstance(res, dict):
            return res
    except (OSError, ValueError):
        pass
    if again is not None:
        print(f"note: {path} is unreadable; {again}", file=sys.stderr)
    return None


Task = tuple[str, str, int, int]   # (method entry, train dataset, shots, seed): one run


def _folder(cfg: CompareConfig, task: Task) -> Path:
    method, dataset, shots, seed = task
    return (Path(cfg.out) / "runs" / _method_slug(method) / _slug(dataset) / f"shots{shots}"
            / f"seed{seed}")


def _train_protocol(cfg: CompareConfig) -> str:
    return "base2new" if cfg.protocol == "base2new" else "fewshot"


def _rows(cfg: CompareConfig, task: Task, res: dict[str, Any], evaluate: bool
          ) -> list[dict[str, Any]] | None:
    """A finished run's table rows: itself, or (transfer protocols) one per target. A target
    not evaluated yet is evaluated when ``evaluate``, else the answer is ``None``."""
    method, dataset, shots, seed = task
    folder = _folder(cfg, task)
    res = {**res, "method": method}  # the study's entry: a variant is its own row
    if cfg.protocol in {"base2new", "fewshot"}:
        return [res]
    rows = []
    for target in cfg.datasets:          # transfer: evaluate the source checkpoint elsewhere
        if target == dataset:            # the source's own test split: the run measured it
            rows.append({**{k: res[k] for k in ("method", "backbone", "dataset", "protocol",
                                                "shots", "seed", "acc") if k in res},
                         "source": dataset})
            continue
        path = folder / f"transfer_{_slug(target)}.json"
        done = _finished(path, "evaluating again" if evaluate else None)
        if done is not None:
            rows.append({**done, "method": method})
            continue
        if not evaluate:
            return None
        t = run_eval(folder, target, cfg.data_root, "fewshot", cfg.device,
                     progress=cfg.progress)
        t.update(method=method, source=dataset, shots=shots, seed=seed)
        atomic_write_text(path, json.dumps(t, indent=2))
        rows.append(t)
    return rows


def run_one(cfg: CompareConfig, task: Task, res: dict[str, Any] | None
            ) -> list[dict[str, Any]]:
    """One run of the study, here or on a Ray worker (the same function): train it unless
    ``res`` holds its finished results, evaluate its transfer targets, and return its rows.
    Everything it writes lands in its own folder under ``cfg.out``."""
    method, dataset, shots, seed = task
    folder = _folder(cfg, task)
    if res is None:                      # none, or other weights or settings: (re)run it
        for stale in folder.glob("transfer_*.json"):
            stale.unlink()
        res = run(_train_cfg(cfg, method, dataset, shots, seed, _train_protocol(cfg), folder),
                  overwrite=True)       # the study's own folder
    return _rows(cfg, task, res, evaluate=True)


def run_label(task: Task) -> str:
    """A run as the messages and the table's failed rows name it."""
    method, dataset, shots, seed = task
    return f"{method}/{dataset}/shots{shots}/seed{seed}"


def _failed_row(cfg: CompareConfig, task: Task, error: str) -> dict[str, Any]:
    method, dataset, shots, seed = task
    return {"method": method, "dataset": dataset, "shots": shots, "seed": seed,
            "protocol": cfg.protocol, "status": "failed", "error": error,
            "run": str(_folder(cfg, task))}


Outcome = tuple[Task, list[dict[str, Any]] | None, str | None]   # rows, or the error


def in_process(cfg: CompareConfig, work: Any, todo: list[tuple[Task, Any]]
               ) -> Iterator[Outcome]:
    """The runs one after another in this process: each tried ``1 + cfg.retries`` times,
    then given up as failed with its last error (Ctrl-C is not a failure: it stops the
    study, and the same command resumes it)."""
    for task, res in todo:
        rows, error = None, None
        for attempt in range(cfg.retries + 1):
            try:
                rows = work(cfg, task, res)
                break
            except Exception as e:         # reported in the table, never lost
                error = f"{type(e).__name__}: {e}"
                again = "trying again" if attempt < cfg.retries else "giving up"
                print(f"note: run {run_label(task)} failed ({error}); {again}", file=sys.stderr)
        yield task, rows, None if rows is not None else error


def run_study(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Run (or reuse) every run of the study; return one result dict per run and target,
    and one ``status: "failed"`` row (with its ``error``) per run that failed every try.
    The runs go one after another here, or with ``cfg.ray`` as Ray tasks
    (:mod:`promptviz.tools.distributed`); either way each is :func:`run_one`, and this
    driver decides which runs are finished (reused) and assembles the rows."""
    if cfg.ray is not None:              # before anything else: a missing extra is said first
        from promptviz.tools import distributed
        distributed.require_ray()
    check_study(cfg)
    tasks = plan(cfg)
    weights = None                       # the backbone's fingerprint, read when first needed
    done: dict[Task, list[dict[str, Any]]] = {}
    todo: list[tuple[Task, dict[str, Any] | None]] = []
    for task in tasks:
        method, dataset, shots, seed = task
        folder = _folder(cfg, task)
        res = None
        if (folder / RESULTS).is_file():
            if weights is None:
                weights = weights_fingerprint(load_clip(cfg.backbone, _driver_device(cfg)).model)
            res = finished_run(_train_cfg(cfg, method, dataset, shots, seed,
                                          _train_protocol(cfg), folder), weights)
        rows = _rows(cfg, task, res, evaluate=False) if res is not None else None
        if rows is not None:
            done[task] = rows
        else:
            todo.append((task, res))
    outcomes = distributed.on_ray(cfg, run_one, todo) if cfg.ray is not None \
        else in_process(cfg, run_one, todo)
    bar = progress_bar(None, desc="compare", enabled=cfg.progress, total=len(tasks),
                       initial=len(tasks) - len(todo))
    try:
        for task, rows, error in outcomes:
            done[task] = rows if rows is not None else [_failed_row(cfg, task, error or "")]
            bar.update(1)
    finally:
        outcomes.close()                 # an interrupted driver cancels what it started
        bar.close()
    return [row for task in tasks for row in done[task]]


def _driver_device(cfg: CompareConfig) -> str:
    """Where the driver loads a backbone (checks, the weights' fingerprint): on Ray, the
    runs' device may exist only on the workers."""
    return "cpu" if cfg.ray is not None else cfg.device


def summarise(rows: list[dict[str, Any]], protocol: str) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (method, dataset, shots), plus an average row per method.
    A dataset row keeps each seed's accuracies in ``by_seed`` (table.json only), so one
    run of a shipped study can be rerun and checked against its own numbers.

    Every row's ``hm`` is ``harmonic_mean(row["base_acc"], row["new_acc"])``: a dataset
    row's HM is the HM of its seed-averaged accuracies
    (:func:`promptviz.metrics.aggregate`, its ``hm_std`` the std of the per-seed HMs),
    an average row's the HM of its dataset-averaged accuracies
    (no std: it is a mean over datasets, not seeds).

    A run that failed (``status: "failed"``) is not in any mean: its dataset row averages
    the seeds that finished (``n`` says how many), it gives a row of its own (with its
    ``seed`` and ``error``) at the end, and its method has no average row for those shots
    (an average over fewer datasets would not compare with the others').
    """
    failed = [r for r in rows if r.get("status") == "failed"]
    rows = [r for r in rows if r.get("status") != "failed"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["dataset"], r.get("shots", 0)), []).append(r)
    table = [{"method": m, "dataset": d, "shots": k, **aggregate(rs), "by_seed": [
                  {"seed": r.get("seed"), **{key: r[key] for key in ("base_acc", "new_acc", "acc")
                                             if key in r}} for r in rs]}
             for (m, d, k), rs in sorted(groups.items())]
    for method in dict.fromkeys(r["method"] for r in table):
        for shots in dict.fromkeys(r["shots"] for r in table if r["method"] == method):
            mine = [r for r in table if r["method"] == method and r["shots"] == shots]
            if len(mine) < 2 or any(f["method"] == method and f["shots"] == shots
                                    for f in failed):
                continue
            avg: dict[str, Any] = {"method": method, "dataset": "average", "shots": shots,
                                   "n": len(mine)}
            for key in ("base_acc", "new_acc", "acc"):
                vals = [r[key] for r in mine if key in r]
                if vals:
                    avg[key] = sum(vals) / len(vals)
            if "base_acc" in avg:
                avg["hm"] = harmonic_mean(avg["base_acc"], avg["new_acc"])   # HM_CONVENTION
            table.append(avg)
    return table + [{k: r[k] for k in ("method", "dataset", "shots", "seed", "status", "error",
                                       "run")} for r in failed]


COLUMNS = ("method", "dataset", "shots", "n", "base_acc", "base_acc_std", "new_acc",
           "new_acc_std", "hm", "hm_std", "acc", "acc_std", "status", "seed", "error")
NOTES = {"std": "*_std: sample standard deviation over seeds (dataset rows only)",
         "status": "ok, or failed: a run that failed every try (its seed and error; it is in "
                   "no mean, and its method has no average row)",
         "hm": f"{HM_CONVENTION}; an average row's HM is the HM of its dataset-averaged base "
               "and novel accuracies"}


def to_csv(table: list[dict[str, Any]]) -> str:
    """The table as CSV (:data:`COLUMNS`). As everywhere, ``hm`` is the HM of the row's own
    ``base_acc`` and ``new_acc`` and ``hm_std`` the std of the per-seed HMs (see
    :data:`NOTES`, written into table.json)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow({"status": "ok", **{k: (f"{v:.2f}" if isinstance(v, float) else v)
                                            for k, v in row.items()}})
    return buf.getvalue()


def few_shot_curves(table: list[dict[str, Any]]) -> go.Figure:
    """Accuracy against shots, one line per method (dataset averages where present)."""
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in table):
        rows = [r for r in table if r["method"] == method and "acc" in r]
        avg = [r for r in rows if r["dataset"] == "average"] or rows
        avg = sorted(avg, key=lambda r: r["shots"])
        fig.add_scatter(x=[r["shots"] for r in avg], y=[r["acc"] for r in avg], name=method,
                        mode="lines+markers")
    fig.update_layout(title="Few-shot accuracy", xaxis=dict(title="shots per class",
                      type="log"), yaxis=dict(title="accuracy (%)"), template="plotly_white")
    return fig


def write_outputs(cfg: CompareConfig, table: list[dict[str, Any]]) -> Path:
    out = Path(cfg.out)
    atomic_write_text(out / "table.json", json.dumps(
        {"config": cfg.__dict__, "notes": NOTES, "table": table}, indent=2, default=str))
    atomic_write_text(out / "table.csv", to_csv(table))
    report = Report(f"promptviz compare: {cfg.protocol}")
    report.paragraph(f"Backbone {cfg.backbone}; methods {', '.join(cfg.methods)}; seeds "
                     f"{', '.join(map(str, cfg.seeds))}; data {cfg.data_root}.")
    metrics = ("base_acc", "new_acc", "hm") if cfg.protocol == "base2new" else ("acc",)
    failed = [r for r in table if r.get("status") == "failed"]
    table = [r for r in table if r.get("status") != "failed"]
    if failed:
        report.heading(f"Failed runs ({len(failed)}): in no mean above")
        report.raw("<table><tr><th>run</th><th>error</th></tr>" + "".join(
            f"<tr><td>{html.escape(run_label((r['method'], r['dataset'], r['shots'], r['seed'])))}"
            f"</td><td><pre>{html.escape(r['error'])}</pre></td></tr>" for r in failed)
            + "</table>")
    for row in table:
        row["label"] = f"{row['method']} · {row['dataset']}" + (
            f" · {row['shots']} shots" if len(cfg.shots) > 1 else "")
    report.raw(results_table_html(table, label="label", metrics=metrics,
                                  caption="mean ± std over seeds" + (
                                      "; every row's HM is the HM of that row's base and "
                                      "novel (seed- or dataset-averaged), as in the papers' "
                                      "tables; its ± is the std of the per-seed HMs"
                                      if cfg.protocol == "base2new" else "")))
    averages = [r for r in table if r["dataset"] == "average"] or table
    report.figure(accuracy_bars(averages, label="label", metrics=metrics), "pv-compare-bars")
    if cfg.protocol == "fewshot" and len(cfg.shots) > 1:
        report.figure(few_shot_curves(table), "pv-compare-fewshot")
    real = set(cfg.datasets) <= REAL_DATASETS and cfg.backbone.startswith("ViT-B-16")
    if cfg.protocol == "base2new" and real:
        report.heading("Reported in the papers (not measured here)")
        ref = [{"label": k, "base_acc": b, "new_acc": n, "hm": h}
               for k, (b, n, h) in REFERENCE_B2N.items()]
        report.raw(results_table_html(ref, label="label", caption="averages over the 11 "
                                      "datasets, ViT-B/16, 16 shots, as reported by each "
                                      "method's authors (methods.md §7)"))
    for row in table:
        row.pop("label")
    return report.write(out / "report.html")


def load_study(folder: str | Path) -> dict[str, Any]:
    """A finished study's ``table.json`` (``config``, ``notes``, ``table``), e.g. one of the
    shipped studies under ``notebooks/studies/``."""
    path = Path(folder) / "table.json"
    if not path.is_file():
        raise PromptvizError(f"{path} does not exist: make the study first with "
                             f"`promptviz compare ... --out {folder}`")
    try:
        study = json.loads(path.read_text())
        study["config"], study["table"]                              # noqa: B018
    except (ValueError, KeyError, TypeError) as error:
        raise PromptvizError(f"{path} is not a table.json written by promptviz compare "
                             f"({error}); delete it and run the study again") from None
    return study


def study_command(config: dict[str, Any]) -> str:
    """The ``promptviz compare`` command line that makes a study with this ``config`` (a
    table.json's), flags at their defaults left out, every word quoted for a shell."""
    words = ["--methods", *config["methods"], "--datasets", *config["datasets"], "--seeds",
             *map(str, config["seeds"])]
    if config["protocol"] != "base2new":
        words += ["--protocol", config["protocol"]]
    if list(config["shots"]) != [16]:
        words += ["--shots", *map(str, config["shots"])]
    for flag, key in (("--source", "source"), ("--epochs", "epochs"),
                      ("--batch-size", "batch_size")):
        if config.get(key) is not None:
            words += [flag, str(config[key])]
    if config["backbone"] != "toyclip":
        words += ["--backbone", config["backbone"]]
    if config.get("device", "cpu") != "cpu":
        words += ["--device", config["device"]]
    for method, opts in config.get("options", {}).items():
        for k, v in opts.items():
            words += ["--set", f"{method}.{k}={v}"]
    words += ["--data-root", str(config["data_root"]), "--out", str(config["out"]), "--quiet"]
    return "promptviz compare " + " ".join(shlex.quote(w) for w in words)


class StudyFailed(PromptvizError):
    """Some runs of a study failed every try; the table (written, with them as failed rows)
    is ``table``."""

    def __init__(self, message: str, table: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.table = table


def compare(cfg: CompareConfig) -> list[dict[str, Any]]:
    """Run the study, write table.json, table.csv and report.html, and return the table.
    When runs failed every try, the outputs are still written (the failed runs as rows with
    their errors) and :class:`StudyFailed` says which; the same call again reruns only them
    (finished runs are reused)."""
    table = summarise(run_study(cfg), cfg.protocol)
    write_outputs(cfg, table)
    failed = [r for r in table if r.get("status") == "failed"]
    if failed:
        tries = cfg.retries + 1
        raise StudyFailed(
            f"{len(failed)} run(s) failed {tries} time(s) each: " + "; ".join(
                f"{run_label((r['method'], r['dataset'], r['shots'], r['seed']))}: {r['error']}"
                for r in failed[:3]) + ("; …" if len(failed) > 3 else "")
            + f". {cfg.out}/table.json and report.html list them; fix the cause and run the "
            "same command again (finished runs are reused)", table)
    return table
