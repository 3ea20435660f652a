"""``promptviz`` command line: train, eval, datasets, toyworld, pretrain, demo, bench.

User errors print one line (``error: …`` naming the problem and the fix) and exit
with status 2; no traceback. Set ``PROMPTVIZ_DEBUG=1`` to see tracebacks anyway.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
import types
import typing
import warnings
from collections.abc import Sequence

from promptviz.config import (
    DEVICE_HELP,
    BenchConfig,
    CardConfig,
    CompareConfig,
    DemoConfig,
    PretrainConfig,
    TrainConfig,
    flag_of,
)
from promptviz.errors import PromptvizError


def _parse_sets(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PromptvizError(f"--set {pair!r} is not key=value (e.g. --set n_ctx=16)")
        out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------ flags from a config dataclass
def _plain(kind: object) -> object:
    """``X`` for an optional ``X | None``, else ``kind``."""
    if typing.get_origin(kind) in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


class _PairsAction(argparse.Action):
    """``--flag KEY=VALUE ...``: a dict field's flag, keys and values typed as the field's
    ``dict[K, V]`` says (a bad pair is argparse's one-line usage error)."""

    def __init__(self, *args: object, pair_types: tuple[type, type] = (str, str),
                 **kw: object) -> None:
        super().__init__(*args, **kw)
        self.pair_types = pair_types

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        key_type, value_type = self.pair_types
        out = {}
        for pair in values:
            key, sep, value = pair.partition("=")
            try:
                if not sep or not key.strip():
                    raise ValueError
                out[key_type(key.strip())] = value_type(value.strip())
            except ValueError:
                what = {int: "a whole number", float: "a number"}.get(value_type, "a value")
                raise argparse.ArgumentError(
                    self, f"{pair!r} is not {self.metavar or 'KEY=VALUE'} ({what} after "
                          "the =)") from None
        setattr(namespace, self.dest, out)


def add_fields(p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One flag per field of the config dataclass ``cls`` (:mod:`promptviz.config`):
    :func:`~promptviz.config.flag_of` (``--field-name``), its type read from the annotation
    (``X | None``: an optional X; a bool: ``--x`` / ``--no-x``; ``list[X]`` and
    ``tuple[X, ...]``: one or more X; ``dict[K, V]``: ``KEY=VALUE`` pairs, none or more), its
    default, choices, metavar and help from :func:`~promptviz.config.setting`. A field
    without help (a dict such as ``options``) or in ``skip`` gets no flag."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in skip or "help" not in meta:
            continue
        kind = _plain(hints[f.name])
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        kw: dict = {"dest": f.name, "help": meta["help"], "default": default}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is list or (origin is tuple and args[1:] == (Ellipsis,)):
            kw.update(type=args[0], nargs="+")
        elif origin is tuple and len(set(args)) == 1:
            kw.update(type=args[0], nargs=len(args))
        elif origin is dict:
            kw.update(action=_PairsAction, pair_types=args, nargs="*", metavar="KEY=VALUE")
        elif isinstance(kind, type) and origin is None:
            kw["type"] = kind
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for a {kind}")
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if meta.get("const") is not None:          # the value may be left out: --flag
            kw.update(nargs="?", const=meta["const"])
        if meta.get("required"):
            kw["required"] = True
            del kw["default"]
        p.add_argument(flag_of(cls, f.name), **kw)


def config_from(a: argparse.Namespace, cls: type, **given: object) -> object:
    """The config dataclass ``cls`` from parsed flags (:func:`add_fields`), plus ``given``
    for the fields a command sets itself. A list, tuple or dict is copied into the
    annotation's own kind (a flag's ``nargs`` gives a list, a tuple field gets a tuple)."""
    hints = typing.get_type_hints(cls)
    found = {}
    for f in dataclasses.fields(cls):
        if f.name in given or not hasattr(a, f.name):
            continue
        value = getattr(a, f.name)
        origin = typing.get_origin(_plain(hints[f.name]))
        if value is not None and origin in (list, tuple, dict):
            value = origin(value)
        found[f.name] = value
    return cls(**found, **given)


def cmd_train(a: argparse.Namespace) -> int:
    from promptviz.train.loop import run
    cfg = config_from(a, TrainConfig, progress=not a.quiet,
                      options={**({"base_method": a.base_method} if a.base_method else {}),
                               **_parse_sets(a.set)})
    res = run(cfg, overwrite=a.overwrite)
    print(_summary(res))
    print(f"wrote {os.path.join(a.out, 'results.json')}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from promptviz.train.loop import run_eval
    res = run_eval(a.checkpoint, a.dataset, a.data_root, a.protocol, a.device, a.backbone,
                   progress=not a.quiet)
    print(_summary(res))
    if a.json:
        print(json.dumps(res, indent=2))
    return 0


def _summary(res: dict) -> str:
    head = f"{res['method']} on {res['dataset']} ({res['protocol']}, seed {res['seed']}): "
    if "hm" in res:
        line = head + f"base {res['base_acc']:.2f}  novel {res['new_acc']:.2f}  HM {res['hm']:.2f}"
    else:
        line = head + f"acc {res['acc']:.2f}"
    if res.get("epochs"):       # a trained run: which epoch's model, and the test batch
        line += (f"\n  model of epoch {res['selected_epoch']}/{res['epochs']} ({res['select']}); "
                 f"test batch {res['eval_batch_size']}")
    return line


def cmd_datasets(a: argparse.Namespace) -> int:
    from promptviz.data import format_report, scan_data_root
    reports = scan_data_root(a.data_root)
    print(format_report(reports, a.data_root))
    return 0 if all(r.ok for r in reports) else 1


def cmd_pretrain(a: argparse.Namespace) -> int:
    from promptviz.train.pretrain import pretrain
    print(f"wrote {pretrain(config_from(a, PretrainConfig, progress=not a.quiet))}")
    return 0


def cmd_toyworld_build(a: argparse.Namespace) -> int:
    from promptviz.data.toyworld.suite import build_suite
    t0 = time.perf_counter()
    folders = build_suite(a.out, seed=a.seed, image_size=a.image_size, n_train=a.n_train,
                          n_val=a.n_val, n_test=a.n_test, datasets=a.datasets or None)
    for f in folders:
        print(f)
    print(f"ToyWorld suite ready under {a.out} ({time.perf_counter() - t0:.1f} s); "
          f"list it with: promptviz datasets --data-root {a.out}")
    return 0


def cmd_toyworld_card(a: argparse.Namespace) -> int:
    from promptviz.tools.modelcard.measure import make_card
    from promptviz.tools.modelcard.render import markdown
    card = make_card(config_from(a, CardConfig, progress=not a.quiet))
    print(markdown(card))
    print(f"wrote {a.out}/card.json and {a.out}/card.md")
    if a.pretrain_run or a.update_card:
        from promptviz.backbone import TOYCLIP_WEIGHTS
        from promptviz.tools.modelcard.provenance import provenance
        from promptviz.tools.modelcard.render import load_provenance, write_card
        prov = provenance(a.pretrain_run, TOYCLIP_WEIGHTS, a.pretrain_seconds, a.hardware) \
            if a.pretrain_run else load_provenance(TOYCLIP_WEIGHTS.parent)
        for path in write_card(card, prov, TOYCLIP_WEIGHTS.parent):
            print(f"wrote {path}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from promptviz.tools.compare import StudyFailed, compare
    options: dict[str, dict[str, str]] = {}
    for key, value in _parse_sets(a.set).items():
        method, dot, name = key.partition(".")
        if not dot:
            raise PromptvizError(f"--set {key}={value}: name the method, e.g. --set coop.n_ctx=16")
        options.setdefault(method, {})[name] = value
    try:
        table = compare(config_from(a, CompareConfig, options=options, progress=not a.quiet))
    except StudyFailed as failed:          # the finished runs' table, then the error
        _print_study([r for r in failed.table if r.get("status") != "failed"], a)
        raise
    _print_study(table, a)
    print(f"wrote {a.out}/table.csv, table.json and report.html")
    return 0


def _print_study(table: list[dict], a: argparse.Namespace) -> None:
    from promptviz.tools.demo import format_table
    if not table:
        return
    if a.protocol == "base2new":
        print(format_table([{**r, "label": f"{r['method']}/{r['dataset']}"} for r in table]))
    else:
        for r in table:
            print(f"{r['method']:<12} {r['dataset']:<22} {r['shots']:>3} shots  "
                  f"acc {r['acc']:6.2f}" + (f" ± {r['acc_std']:.2f}" if "acc_std" in r else ""))


def cmd_demo(a: argparse.Namespace) -> int:
    from promptviz.tools.demo import run_demo
    run_demo(config_from(a, DemoConfig, progress=not a.quiet))
    return 0


def cmd_cache(a: argparse.Namespace) -> int:
    from promptviz.train import featcache
    root = featcache.cache_root(a.cache_dir)
    if a.action == "clear":
        n, size = featcache.clear(root)
        print(f"removed {n} files ({size / 2**20:.1f} MiB) from {root}")
        return 0
    rows = featcache.entries(root) if root.is_dir() else []
    print(f"{root}: {len(rows)} entries, "
          f"{sum(r.get('bytes', 0) for r in rows) / 2**20:.1f} MiB")
    for r in rows:
        print(f"  {r['key']}  {r.get('bytes', 0) / 2**20:8.1f} MiB  {r.get('backbone', '?')}  "
              f"{r.get('dataset', '?')}  {r.get('shots', '?')} shots  seed {r.get('seed', '?')}"
              f"  {r.get('views', '?')} views  {r.get('features', '?')}  {r.get('created', '')}")
    return 0


def add_device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)


def add_quiet_flag(p: argparse.ArgumentParser, what: str = "progress bars") -> None:
    p.add_argument("--quiet", action="store_true", help=f"no {what}")


def cmd_bench(a: argparse.Namespace) -> int:
    from promptviz.tools.bench.report import format_bench
    from promptviz.tools.bench.run import bench
    print(format_bench(bench(config_from(a, BenchConfig, progress=not a.quiet))))
    print(f"wrote {a.out}")
    return 0


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help, except where X says nothing (None, False, an
    empty value) or the help text already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        d, text = action.default, action.help or ""
        if d is None or d is False or d in ("", [], (), {}) or "default" in text:
            return text
        if isinstance(d, (list, tuple, dict)):    # as it is typed: a b c, or KEY=VALUE pairs
            shown = " ".join(f"{k}={v}" for k, v in d.items()) if isinstance(d, dict) \
                else " ".join(map(str, d))
            return f"{text} (default: {shown.replace('%', '%%')})"
        return super()._get_help_string(action)


EXAMPLES = """examples (offline, on a CPU, with the project's own toyclip):
  promptviz toyworld build --out data/toyworld     # the ToyWorld datasets
  promptviz datasets --data-root data/toyworld     # what is there, and whether it is complete
  promptviz train --method coop --dataset toy_paints --data-root data/toyworld --out runs/coop
  promptviz eval --checkpoint runs/coop            # re-evaluate a finished run
  promptviz compare --methods zeroshot coop sep --datasets toy_paints --seeds 1 2 3 \\
      --data-root data/toyworld --out runs/study
  promptviz demo                                   # the whole tour, one HTML report

`promptviz COMMAND --help` lists a command's flags; PROMPTVIZ_DEBUG=1 shows tracebacks."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="promptviz", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=EXAMPLES)
    sub = p.add_subparsers(dest="command", required=True)
    # every command's --help shows each flag's default next to its help text
    sub.add_parser = functools.partial(sub.add_parser, formatter_class=_HelpWithDefaults)

    t = sub.add_parser("train", help="train and evaluate one method on one dataset")
    add_fields(t, TrainConfig, skip=("progress",))     # every setting, from the dataclass
    t.add_argument("--base-method", help="the method TextRefiner wraps: coop (default) | "
                   "kgcoop | maple | promptkd")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, e.g. --set n_ctx=16 --set ctx_init=")
    t.add_argument("--overwrite", action="store_true",
                   help="replace another run (other settings) found in --out; without it "
                        "that is an error and nothing is touched")
    add_quiet_flag(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a checkpoint folder")
    e.add_argument("--checkpoint", required=True,
                   help="a `promptviz train --out` folder")
    e.add_argument("--dataset", help="default: the checkpoint's own dataset, as given to train")
    e.add_argument("--data-root", help="default: the data root the checkpoint was trained from "
                   "(with --dataset: data)")
    e.add_argument("--protocol", choices=["base2new", "fewshot"],
                   help="default: the checkpoint's")
    e.add_argument("--backbone", help="must match the checkpoint's backbone")
    add_device_flag(e)
    e.add_argument("--json", action="store_true",
                   help="also print the full results as JSON")
    add_quiet_flag(e)
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("datasets", help="list the datasets found under a data root")
    d.add_argument("--data-root", default="data",
                   help="folder to scan")
    d.set_defaults(func=cmd_datasets)

    pt = sub.add_parser("pretrain", help="pretrain toyclip contrastively on the ToyWorld stream")
    add_fields(pt, PretrainConfig, skip=("progress",))
    add_quiet_flag(pt, "progress bar")
    pt.set_defaults(func=cmd_pretrain)

    tw = sub.add_parser("toyworld", help="the generated ToyWorld datasets")
    tw_sub = tw.add_subparsers(dest="toyworld_command", required=True)
    tw_sub.add_parser = functools.partial(tw_sub.add_parser, formatter_class=_HelpWithDefaults)
    b = tw_sub.add_parser("build", help="write the ToyWorld suite in CoOp's layout")
    b.add_argument("--out", default="data/toyworld",
                   help="folder to write the datasets into")
    b.add_argument("--seed", type=int, default=0,
                   help="the suite's seed: the same seed draws the same images")
    b.add_argument("--image-size", type=int, default=64,
                   help="pixels per side (a multiple of 8, 16 to 512)")
    b.add_argument("--n-train", type=int, default=24, help="training images per class")
    b.add_argument("--n-val", type=int, default=8,
                   help="validation images per class")
    b.add_argument("--n-test", type=int, default=30,
                   help="test images per class")
    b.add_argument("--datasets", nargs="*", help="subset of dataset folders (default: all)")
    b.set_defaults(func=cmd_toyworld_build)
    c = tw_sub.add_parser("card", help="measure a backbone's zero-shot and CoOp tables")
    add_fields(c, CardConfig, skip=("progress",))
    add_quiet_flag(c)
    c.add_argument("--pretrain-run", help="the `promptviz pretrain --out` folder of the shipped "
                   "weights: also write assets/toyclip/MODEL_CARD.md with its provenance")
    c.add_argument("--update-card", action="store_true",
                   help="rewrite assets/toyclip/MODEL_CARD.md with these measurements and the "
                        "pretraining story kept in assets/toyclip/provenance.json")
    c.add_argument("--pretrain-seconds", type=float, help="the pretraining's wall time")
    c.add_argument("--hardware", default="", help="where it was pretrained, for the card")
    c.set_defaults(func=cmd_toyworld_card)

    cp = sub.add_parser("compare", help="methods x datasets x seeds under one protocol")
    add_fields(cp, CompareConfig, skip=("progress",))
    cp.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                    help="a method's option, e.g. --set coop.n_ctx=8 (repeatable)")
    add_quiet_flag(cp)
    cp.set_defaults(func=cmd_compare)

    dm = sub.add_parser("demo", help="zero-shot vs CoOp, TextRefiner and SEP on ToyWorld, "
                        "with an HTML report")
    add_fields(dm, DemoConfig, skip=("progress",))
    add_quiet_flag(dm)
    dm.set_defaults(func=cmd_demo)

    ca = sub.add_parser("cache", help="list or clear the on-disk cache of image features")
    ca.add_argument("action", nargs="?", default="list", choices=["list", "clear"])
    ca.add_argument("--cache-dir", help="default: $PROMPTVIZ_CACHE_DIR or "
                    "~/.cache/promptviz/features")
    ca.set_defaults(func=cmd_cache)

    bn = sub.add_parser("bench", help="optimised vs straightforward throughput and memory, "
                        "per method, on synthetic inputs")
    add_fields(bn, BenchConfig, skip=("progress",))
    add_quiet_flag(bn, "progress output")
    bn.set_defaults(func=cmd_bench)
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def os_error_message(e: OSError) -> str:
    """One line for an I/O fault: what failed, on which path, and what to check."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f)
    cause = e.strerror or str(e) or type(e).__name__
    hint = {28: "free some disk space (or write elsewhere with --out) and re-run",
            13: "check the permissions of that path, or use another folder",
            30: "the file system is read-only; write elsewhere",
            2: "check the path"}.get(e.errno or 0, "check the path, its permissions and the "
                                                   "free disk space")
    return f"{cause}: {where}; {hint}" if where else f"{cause}; {hint}"


def main(argv: Sequence[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PromptvizError as e:
        if os.environ.get("PROMPTVIZ_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:       # a full disk, a read-only folder, a file that cannot be read
        if os.environ.get("PROMPTVIZ_DEBUG"):
            raise
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
