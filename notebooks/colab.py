"""Adds (or refreshes) the "Open in Colab" badge and the install cell of every notebook.

    python notebooks/colab.py

Both are new cells right after a notebook's title, with ids of their own (``colab-badge``,
``colab-install``): no other cell is touched, so no re-execution is needed and a merge with
edits elsewhere in a notebook stays easy. The install cell does nothing off Colab (no
output, so nbval passes it as it is); on Colab it clones the repository, pip-installs it
over Colab's own torch, moves into notebooks/ (the notebooks' ``../data`` and ``../runs``
paths) and says whether there is a GPU and which backbone the notebook uses.

The repository's address is stated once, in pyproject.toml's ``[project.urls]``;
tests/test_colab.py checks that every notebook's cells are the ones this script writes
from it, and runs the install cell's commands in a fresh virtual environment.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
CHECKOUT = "/content/promptviz"          # where Colab keeps the clone
BRANCH = "main"                          # the badge opens the notebook as on this branch

# what each notebook runs on, said by its install cell after the GPU check
TOY = "toyclip (the project's small CLIP) on ToyWorld: a CPU is enough, no GPU needed"
BACKBONES = {"06_real_clip_gpu": "ViT-B-16:openai on the GPU (the weights download from "
                                 "open_clip's hub; the datasets must be under "
                                 "$PROMPTVIZ_DATA, see below)"}


def repository() -> str:
    """The repository's address: pyproject.toml's ``[project.urls] Repository``."""
    text = (REPO / "pyproject.toml").read_text()
    found = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', text,
                      re.MULTILINE | re.DOTALL)
    if not found:
        sys.exit("pyproject.toml has no [project.urls] Repository = \"...\"")
    return found.group(1)


def badge_url(repo: str, name: str) -> str:
    path = re.sub(r"^https://github\.com/", "", repo).removesuffix(".git")
    return f"https://colab.research.google.com/github/{path}/blob/{BRANCH}/notebooks/{name}"


def install_source(repo: str, stem: str) -> str:
    backbone = BACKBONES.get(stem, TOY)
    return f'''# On Google Colab (Runtime > Run all): install promptviz from its repository
# and check the GPU. Anywhere else this cell does nothing (`make install` installed it).
import sys

REPOSITORY = "{repo}"
CHECKOUT = "{CHECKOUT}"
if "google.colab" in sys.modules:
    import importlib
    import os
    import subprocess

    if not os.path.isdir(CHECKOUT):
        subprocess.run(["git", "clone", "--depth", "1", REPOSITORY, CHECKOUT], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", CHECKOUT], check=True)
    importlib.invalidate_caches()                   # promptviz importable right away
    os.chdir(os.path.join(CHECKOUT, "notebooks"))   # the notebooks' ../data and ../runs
    import torch

    if torch.cuda.is_available():
        print(f"GPU: {{torch.cuda.get_device_name(0)}}")
    else:
        print("no GPU: Runtime > Change runtime type > a GPU")
    print("this notebook uses {backbone}")'''


def cells(repo: str, path: Path) -> list[dict]:
    """The badge cell and the install cell of the notebook at ``path``."""
    badge = (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"({badge_url(repo, path.name)}) — on Colab, run the next cell first: it "
             "installs promptviz; elsewhere it does nothing.")
    return [{"cell_type": "markdown", "id": "colab-badge", "metadata": {},
             "source": badge.splitlines(keepends=True)},
            {"cell_type": "code", "execution_count": None, "id": "colab-install",
             "metadata": {}, "outputs": [],
             "source": install_source(repo, path.stem).splitlines(keepends=True)}]


def update(path: Path, repo: str) -> bool:
    """Put the two cells after the notebook's title (replacing older ones); ``True`` when
    the file changed."""
    text = path.read_text()
    nb = json.loads(text)
    rest = [c for c in nb["cells"] if c.get("id") not in ("colab-badge", "colab-install")]
    nb["cells"] = rest[:1] + cells(repo, path) + rest[1:]
    new = json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"   # as nbformat
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    repo = repository()
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        print(("updated " if update(nb, repo) else "unchanged ") + str(nb.relative_to(REPO)))
