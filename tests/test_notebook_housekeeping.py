"""The notebooks as students meet them: no test markers in the code they read, and a way
to run them without touching the tracked copies (``make student``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_cell_tags_not_code(path):
    """nbval reads ``nbval-check-output`` from the cell's tags, so the code a student reads
    carries no ``# NBVAL_…`` lines; every tagged cell has saved output to compare against."""
    cells = json.loads(path.read_text())["cells"]
    marked = [i for i, c in enumerate(cells) if "NBVAL_" in "".join(c["source"])]
    assert not marked, f"cells {marked} carry an NBVAL comment: use the cell tag instead"
    tagged = [c for c in cells if "nbval-check-output" in c.get("metadata", {}).get("tags", [])]
    assert all(c["cell_type"] == "code" and c.get("outputs") for c in tagged)
    if path.stem not in ("06_real_clip_gpu",):        # every CPU notebook checks numbers
        assert tagged, f"{path.name} checks no output"


def test_make_student_copies_once_and_keeps_paths(tmp_path):
    (tmp_path / "notebooks" / "studies" / "s").mkdir(parents=True)
    (tmp_path / "notebooks" / "a.ipynb").write_text("tracked")
    (tmp_path / "notebooks" / "studies" / "s" / "table.json").write_text("{}")
    run = ["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "student"]
    subprocess.run(run, cwd=tmp_path, check=True, capture_output=True)
    copy = tmp_path / "student" / "a.ipynb"
    assert copy.read_text() == "tracked"
    assert (tmp_path / "student" / "studies" / "s" / "table.json").is_file()  # same paths
    copy.write_text("my work")
    subprocess.run(run, cwd=tmp_path, check=True, capture_output=True)
    assert copy.read_text() == "my work"                 # never replaced
    assert (tmp_path / "notebooks" / "a.ipynb").read_text() == "tracked"
    assert "/student/" in (REPO / ".gitignore").read_text().splitlines()


def _code_cell(cells: list[dict], text: str) -> dict:
    return next(c for c in cells if c["cell_type"] == "code" and text in "".join(c["source"]))


def test_live_curves_are_one_figure_redrawn_in_place():
    """Notebook 03 trains under ``LiveCurves``: every epoch replaces the one figure shown
    above the training cell (a display id update), so the executed notebook keeps the final
    curves there and the training cell shows its table, not a figure per epoch."""
    cells = json.loads((REPO / "notebooks" / "03_textrefiner.ipynb").read_text())["cells"]
    train = _code_cell(cells, "on_epoch=curves(")
    assert [o["output_type"] for o in train["outputs"]] == ["stream"]
    [shown] = _code_cell(cells, "LiveCurves(")["outputs"]
    fig = shown["data"]["application/vnd.plotly.v1+json"]
    assert {t["name"] for t in fig["data"]} == {"CoOp", "CoOp+TextRefiner"}
    assert all(list(t["x"]) == list(range(1, 11)) for t in fig["data"])    # all 10 epochs
