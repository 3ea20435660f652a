"""The shipped studies (notebooks/studies/*/table.json) are what their commands make: each
folder's command is in notebooks/studies/README.md, and one run of each study, rerun
here, scores exactly what its row says."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from promptviz.cli import build_parser
from promptviz.data.toyworld.suite import build_suite
from promptviz.tools.compare import CompareConfig, compare, load_study, study_command

STUDIES = Path(__file__).resolve().parents[1] / "notebooks" / "studies"
FOLDERS = sorted(p.parent.name for p in STUDIES.glob("*/table.json"))
# the run each study reruns: (method, dataset folder, its name in the table)
RERUN = {"b2n_paints_shapes": ("sep", "toy_paints", "ToyPaints"),
         "b2n_paints_50ep": ("coop", "toy_paints", "ToyPaints"),
         "sep_ablation_paints": ("sep[layers=1]", "toy_paints", "ToyPaints"),
         "textrefiner_read": ("textrefiner[read_temperature=0.01]", "toy_weaves", "ToyWeaves"),
         "b2n_family": ("ivlp", "toy_paints", "ToyPaints")}


def _commands() -> dict[str, list[str]]:
    """``{folder: argv}`` for every ``promptviz compare`` line of the README."""
    out = {}
    for line in (STUDIES / "README.md").read_text().splitlines():
        if line.strip().startswith("promptviz compare "):
            argv = shlex.split(line.strip())
            out[Path(argv[argv.index("--out") + 1]).name] = argv
    return out


def test_there_are_studies_and_each_has_a_rerun():
    assert FOLDERS and set(FOLDERS) == set(RERUN)


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_readme_command_makes_the_study(folder):
    config = load_study(STUDIES / folder)["config"]
    argv = _commands()[folder]
    assert argv == shlex.split(study_command(config))
    a = build_parser().parse_args(argv[1:])
    for key in ("methods", "datasets", "seeds", "protocol", "shots", "backbone", "epochs",
                "batch_size", "source"):
        assert getattr(a, key) == config[key], key
    assert Path(a.out) == Path("notebooks/studies") / folder
    assert {k: v for k, v in (s.split("=", 1) for s in a.set)} == {
        f"{m}.{k}": str(v) for m, opts in config["options"].items() for k, v in opts.items()}


@pytest.mark.parametrize("folder", FOLDERS)
def test_one_run_reproduces_its_row(folder, tmp_path):
    shipped = json.loads((STUDIES / folder / "table.json").read_text())
    method, dataset, name = RERUN[folder]
    row = next(r for r in shipped["table"] if r["method"] == method and r["dataset"] == name)
    seed = row["by_seed"][0]
    build_suite(tmp_path / "data", datasets=[dataset])    # the suite's defaults, as the study
    cfg = {**shipped["config"], "methods": [method], "datasets": [dataset],
           "seeds": [seed["seed"]], "data_root": str(tmp_path / "data"),
           "out": str(tmp_path / "study"), "cache_dir": str(tmp_path / "cache"),
           "progress": False}
    (again,) = compare(CompareConfig(**cfg))
    assert again["by_seed"] == [seed]
