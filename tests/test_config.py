"""Configs stated once: ``promptviz train``'s flags are generated from ``TrainConfig``'s fields
(type, default, choices and help), so every setting a run records can be set from the
command line and is documented where it is defined."""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from promptviz.cli import build_parser, config_from
from promptviz.config import TrainConfig
from promptviz.methods import METHODS

SET_ELSEWHERE = {"progress": "--quiet", "options": "--set / --base-method"}


def _train_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def _other_value(f: dataclasses.Field, kind: type) -> tuple[list[str], object]:
    """Flags that set field ``f`` to a value other than its default, and that value."""
    flag = "--" + f.name.replace("_", "-")
    choices = f.metadata.get("choices")
    if kind is bool:
        return ([f"--no-{flag[2:]}"], False) if f.default else ([flag], True)
    if choices:
        value = next(c for c in choices if c != f.default)
        return [flag, value], value
    value = {int: 7, float: 0.125, str: "somewhere"}[kind]
    return [flag, str(value)], value


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
