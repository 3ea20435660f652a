"""Configs stated once: each command's flags (``train``, ``pretrain``, ``toyworld card``,
``compare``, ``demo``, ``bench``) are generated from its config dataclass's fields in
promptviz/config.py (type, default, choices and help), so every setting a run records can be
set from the command line and is documented where it is defined."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import typing

import pytest

from promptviz.cli import build_parser, config_from, main
from promptviz.config import (
    BenchConfig,
    CardConfig,
    CompareConfig,
    DemoConfig,
    PretrainConfig,
    TrainConfig,
    flag_of,
)
from promptviz.methods import METHODS

SET_ELSEWHERE = {"progress": "--quiet", "options": "--set / --base-method"}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _train_parser() -> argparse.ArgumentParser:
    return _subparser(build_parser(), "train")


def _command_parser(command: str) -> argparse.ArgumentParser:
    """``promptviz COMMAND``'s parser (``command`` may be two words: ``toyworld card``)."""
    parser = build_parser()
    for word in command.split():
        parser = _subparser(parser, word)
    return parser


SAMPLES = {int: [7, 8, 9], float: [0.125, 0.25, 0.5], str: ["somewhere", "else", "there"]}


def _other_value(f: dataclasses.Field, kind: type) -> tuple[list[str], object]:
    """Flags that set field ``f`` to a value other than its default, and that value."""
    flag = "--" + f.name.replace("_", "-")
    choices = f.metadata.get("choices")
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return ([f"--no-{flag[2:]}"], False) if f.default else ([flag], True)
    if choices:
        value = next(c for c in choices if c != f.default)
        return [flag, value], value
    if origin is list or (origin is tuple and args[1:] == (Ellipsis,)):
        values = SAMPLES[args[0]][:2]                           # one or more: give two
        return [flag, *map(str, values)], origin(values)
    if origin is tuple:                                         # a fixed number
        values = SAMPLES[args[0]][:len(args)]
        return [flag, *map(str, values)], tuple(values)
    if origin is dict:                                          # KEY=VALUE pairs
        pairs = dict(zip(SAMPLES[args[0]][:2], SAMPLES[args[1]][:2]))
        return [flag, *(f"{k}={v}" for k, v in pairs.items())], pairs
    value = SAMPLES[kind][0]
    return [flag, str(value)], value


def _plain(kind: object) -> object:
    """``X`` for ``X | None``."""
    return next((a for a in typing.get_args(kind) if a is not type(None)), kind) \
        if type(None) in typing.get_args(kind) else kind


def test_every_setting_is_a_flag_that_reaches_the_config():
    hints = typing.get_type_hints(TrainConfig)
    argv, want = ["--method", "sep", "--dataset", "dtd", "--out", "o"], {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in SET_ELSEWHERE or f.name in ("method", "dataset", "out"):
            continue
        kind = hints[f.name]
        kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        flags, value = _other_value(f, kind)
        argv += flags
        want[f.name] = value
    a = _train_parser().parse_args(argv)
    cfg = config_from(a, TrainConfig, progress=False)
    got = {k: getattr(cfg, k) for k in want}
    assert got == want
    assert (cfg.method, cfg.dataset, cfg.out) == ("sep", "dtd", "o")
    # the settings the old hand-written parser could not reach
    assert {"weight_decay", "momentum", "warmup_epochs", "warmup_lr"} <= set(want)


def test_flag_help_and_defaults_come_from_the_fields():
    actions = {a.dest: a for a in _train_parser()._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name in SET_ELSEWHERE:
            continue
        a = actions[f.name]
        assert a.help == f.metadata["help"], f.name
        assert a.required or a.default == f.default, f.name
    assert all(name in actions["method"].help for name in METHODS)   # lists every method


def test_required_flags_are_said(capsys):
    with pytest.raises(SystemExit):
        _train_parser().parse_args(["--method", "coop"])
    assert "--dataset" in capsys.readouterr().err


# ------------------------------------------------------------------ every command
# command -> (its config, the module and the function the command hands the config to)
COMMANDS = {
    "train": (TrainConfig, "promptviz.train.loop", "run"),
    "pretrain": (PretrainConfig, "promptviz.train.pretrain", "pretrain"),
    "toyworld card": (CardConfig, "promptviz.tools.modelcard.measure", "make_card"),
    "compare": (CompareConfig, "promptviz.tools.compare", "compare"),
    "demo": (DemoConfig, "promptviz.tools.demo", "run_demo"),
    "bench": (BenchConfig, "promptviz.tools.bench.run", "bench"),
}
# the fields a command sets through another flag than their own: that flag, the words that
# set it to a value other than the field's default, and that value
QUIET = ("--quiet", ["--quiet"], False)
LOUD = ("--quiet", [], True)       # library default False; the command line's: progress shown
ELSEWHERE = {
    "train": {"progress": QUIET,
              "options": ("--set", ["--base-method", "kgcoop", "--set", "n_ctx=8"],
                          {"base_method": "kgcoop", "n_ctx": "8"})},
    "pretrain": {"progress": QUIET},
    "toyworld card": {"progress": LOUD},
    "compare": {"progress": LOUD,
                "options": ("--set", ["--set", "coop.n_ctx=8", "--set", "sep.k=2"],
                            {"coop": {"n_ctx": "8"}, "sep": {"k": "2"}})},
    "demo": {"progress": QUIET},
    "bench": {"progress": QUIET},
}


class _Handed(Exception):
    """Raised by the stand-in for a command's work: carries the config it was handed."""

    def __init__(self, cfg: object) -> None:
        super().__init__("handed")
        self.cfg = cfg


def _default(f: dataclasses.Field) -> object:
    return f.default if f.default_factory is dataclasses.MISSING else f.default_factory()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_of_every_command_round_trips_through_its_flags(command, monkeypatch):
    """``promptviz COMMAND`` with every field set to a value other than its default hands
    the command's work exactly those values, each of the field's own type (a list stays a
    list, a tuple field gets a tuple)."""
    cls, module, work = COMMANDS[command]

    def handed(cfg, *args, **kw):
        raise _Handed(cfg)

    monkeypatch.setattr(importlib.import_module(module), work, handed)
    hints = typing.get_type_hints(cls)
    argv, want = command.split(), {}
    for f in dataclasses.fields(cls):
        words, value = ELSEWHERE[command][f.name][1:] if f.name in ELSEWHERE[command] \
            else _other_value(f, _plain(hints[f.name]))
        assert value != _default(f), f.name          # so the flag is seen to reach it
        argv += words
        want[f.name] = value
    with pytest.raises(_Handed) as caught:
        main(argv)
    cfg = caught.value.cfg
    assert type(cfg) is cls
    got = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}
    assert got == want
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_commands_help_lists_every_field(command, capsys):
    cls = COMMANDS[command][0]
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    words = text.split()
    for f in dataclasses.fields(cls):
        flag = ELSEWHERE[command][f.name][0] if f.name in ELSEWHERE[command] \
            else flag_of(cls, f.name)
        assert flag in words or f"{flag}," in words, f"{command} --help: no {flag}"
        if f.name not in ELSEWHERE[command]:                   # with the field's own help
            assert " ".join(f.metadata["help"].split()[:3]) in " ".join(words), f.name


@pytest.mark.parametrize("command", COMMANDS)
def test_each_flags_help_default_and_choices_come_from_its_field(command):
    cls = COMMANDS[command][0]
    actions = {a.dest: a for a in _command_parser(command)._actions}
    for f in dataclasses.fields(cls):
        if f.name in ELSEWHERE[command]:
            assert f.name not in actions, f"{command}: {f.name} has a flag of its own too"
            continue
        a = actions[f.name]
        assert a.option_strings[0] == flag_of(cls, f.name)
        assert a.help == f.metadata["help"], f.name
        assert a.required or a.default == _default(f), f.name
        assert tuple(a.choices or ()) == tuple(f.metadata["choices"] or ()), f.name
        assert f.metadata["metavar"] is None or a.metavar == f.metadata["metavar"], f.name


def test_the_flags_commands_had_before_are_kept():
    """The hand-written parsers' flags (README, notebooks and benchmarks use them) are
    still there, spelled as before, with the same defaults."""
    kept = {
        "pretrain": {"--out": "runs/pretrain", "--model": "toyclip", "--steps": 2500,
                     "--warm-steps": 1500, "--warm-from": "", "--init-from": "",
                     "--image-lr-scale": 0.1, "--paint-names": 0.0, "--caption-noise": 0.0,
                     "--aux-weight": 0.0, "--batch-size": 128, "--lr": 1e-3, "--warmup": 100,
                     "--seed": 0, "--device": "cpu", "--threads": 0, "--quiet": False},
        "toyworld card": {"--backbone": "toyclip", "--data-root": "data/toyworld",
                          "--out": "runs/card", "--seeds": (1, 2, 3), "--epochs": 50,
                          "--device": "cpu", "--quiet": False, "--pretrain-run": None,
                          "--update-card": False, "--pretrain-seconds": None,
                          "--hardware": ""},
        "compare": {"--methods": ["zeroshot", "coop"], "--datasets": ["toy_fine"],
                    "--seeds": [1, 2, 3], "--protocol": "base2new", "--shots": [16],
                    "--source": None, "--backbone": "toyclip", "--data-root": "data/toyworld",
                    "--out": "runs/compare", "--epochs": None, "--batch-size": None,
                    "--device": "cpu", "--set": [], "--quiet": False,
                    "--no-feature-cache": True, "--cache-dir": None},
        "demo": {"--out": "runs/demo", "--data-root": "data/toyworld", "--backbone": "toyclip",
                 "--datasets": ["toy_paints", "toy_fine"], "--device": "cpu", "--quiet": False},
        "bench": {"--backbone": "toyclip", "--device": "cpu",
                  # + the deep-prompt family (#22): a deliberate change of the default
                  "--methods": ("zeroshot", "coop", "kgcoop", "cocoop", "textrefiner", "sep",
                                "ivlp", "vpt", "maple", "promptsrc", "clip_lora",
                                "promptkd"),
                  "--batch-size": None, "--eval-batch-size": None, "--steps": None,
                  "--warmup": None, "--classes": 100, "--epochs": None, "--cache-views": 10,
                  "--threads": 0, "--peak-tflops": None, "--seed": 0,
                  "--out": "runs/bench/bench.json", "--quiet": False},
    }
    for command, flags in kept.items():
        actions = {s: a for a in _command_parser(command)._actions for s in a.option_strings}
        for flag, default in flags.items():
            assert flag in actions, f"{command} {flag}"
            assert actions[flag].default == default, f"{command} {flag}"
    assert _command_parser("compare").parse_args(["--protocol", "dg"]).protocol == "dg"
    with pytest.raises(SystemExit):
        _command_parser("compare").parse_args(["--protocol", "nope"])


def test_a_library_only_field_is_named_by_its_dataclass():
    assert flag_of(PretrainConfig, "save_every") == "--save-every"
    assert flag_of(CompareConfig, "options") == "CompareConfig.options"   # --set, per method


def test_a_dict_flag_takes_key_value_pairs(capsys):
    parser = _command_parser("demo")
    assert parser.parse_args([]).epochs_by_dataset == {"toy_paints": 50}
    assert parser.parse_args(["--epochs-by-dataset"]).epochs_by_dataset == {}
    a = parser.parse_args(["--epochs-by-dataset", "toy_fine=5", "toy_paints = 7"])
    assert a.epochs_by_dataset == {"toy_fine": 5, "toy_paints": 7}
    for bad in ("toy_fine", "toy_fine=many", "=5"):
        with pytest.raises(SystemExit) as done:
            parser.parse_args(["--epochs-by-dataset", bad])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --epochs-by-dataset: {bad!r} is not DATASET=EPOCHS (a whole number" \
            in err


def test_the_demo_checks_its_per_dataset_epochs_before_anything(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--data-root", str(tmp_path / "toy"),
                 "--epochs-by-dataset", "toy_fine=-2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: --epochs-by-dataset toy_fine=-2: use 0 or more epochs" in err
    assert not out.exists() and not (tmp_path / "toy").exists()


def test_list_defaults_are_fresh_for_every_config():
    one, two = DemoConfig(), DemoConfig()
    one.datasets.append("toy_shapes")
    one.epochs_by_dataset["toy_fine"] = 1
    assert two.datasets == ["toy_paints", "toy_fine"]
    assert two.epochs_by_dataset == {"toy_paints": 50}
    a = _command_parser("compare").parse_args([])
    config_from(a, CompareConfig).methods.append("sep")
    assert config_from(a, CompareConfig).methods == ["zeroshot", "coop"]
