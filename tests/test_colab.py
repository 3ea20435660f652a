"""The notebooks on a hosted GPU (issue #24): every notebook has the "Open in Colab" badge
and the install cell that notebooks/colab.py writes from the one repository address in
pyproject.toml, and the install cell's commands work in a fresh virtual environment that,
like Colab, already has torch (Colab itself cannot be reached from the tests)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _colab():
    spec = importlib.util.spec_from_file_location("colab", REPO / "notebooks" / "colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_opens_in_colab_from_the_one_repository_address(path):
    colab = _colab()
    repo = colab.repository()
    assert repo.startswith("https://github.com/")
    cells = json.loads(path.read_text())["cells"]
    assert cells[1:3] == colab.cells(repo, path), "run: python notebooks/colab.py"
    assert f"/blob/main/notebooks/{path.name})" in "".join(cells[1]["source"])
    # the address is in those two cells only: one place to change it (pyproject.toml)
    assert not [i for i, c in enumerate(cells) if i not in (1, 2) and
                "github.com/REPLACE-WITH-OWNER" in "".join(c["source"])]
    assert cells[2]["outputs"] == [] and cells[2]["execution_count"] is None


def test_the_script_changes_nothing_twice(tmp_path):
    colab = _colab()
    copy = tmp_path / NOTEBOOKS[0].name
    shutil.copy(NOTEBOOKS[0], copy)
    assert not colab.update(copy, colab.repository())           # already as written
    cells = json.loads(copy.read_text())["cells"]
    del cells[1:3]                                                # a notebook without them
    copy.write_text(json.dumps({**json.loads(copy.read_text()), "cells": cells}))
    assert colab.update(copy, colab.repository())
    assert json.loads(copy.read_text())["cells"][1]["id"] == "colab-badge"
    assert not colab.update(copy, colab.repository())


def test_the_install_cell_installs_promptviz_in_a_fresh_environment(tmp_path):
    """The cell's own code, run as on Colab (``google.colab`` imported, torch already there:
    a fresh venv that sees this environment's packages, but not promptviz), with the
    repository's address swapped for this checkout and pip kept offline."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of the repository")
    colab = _colab()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    # Colab's preinstalled packages: this environment's, seen through a .pth (its .pth files,
    # among them an editable promptviz, are not run: promptviz is not importable there)
    Path(purelib, "preinstalled.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", PIP_NO_INDEX="1",
               PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    check = [str(python), "-c", "import promptviz"]
    assert subprocess.run(check, env=env, cwd=tmp_path, capture_output=True).returncode != 0
    cell = colab.install_source(colab.repository(), "00_quickstart")
    checkout = tmp_path / "content" / "promptviz"
    cell = cell.replace(f'"{colab.repository()}"', repr(REPO.as_uri())) \
               .replace(f'"{colab.CHECKOUT}"', repr(str(checkout)))
    code = ("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
            + cell + "\nimport os, promptviz\nprint('cwd', os.getcwd())\n"
            "print('promptviz', promptviz.__file__)\n")
    done = subprocess.run([str(python), "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert ("no GPU" in out or "GPU: " in out) and "this notebook uses toyclip" in out
    assert f"cwd {checkout / 'notebooks'}" in out
    assert f"promptviz {purelib}" in out                 # the installed copy, not this one
    assert subprocess.run([str(venv / "bin" / "promptviz"), "--help"], env=env, cwd=tmp_path,
                          capture_output=True).returncode == 0
