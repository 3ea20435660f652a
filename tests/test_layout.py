"""The package layout is the architecture: imports point one way (README, "The library").

plumbing (errors, config, arrays, metrics, checkpoint, precision, progress)
  <- data, backbone <- methods <- train <- analysis <- tools, cli
and the views (viz) read plain arrays: they import only plumbing and other views.
Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are skipped.
"""

from __future__ import annotations

import ast
from pathlib import Path

import promptviz

ROOT = Path(promptviz.__file__).parent
PLUMBING = {"errors", "config", "arrays", "metrics", "checkpoint", "precision", "progress"}
# what each layer may import besides itself and the plumbing
ALLOWED = {
    "plumbing": set(),
    "data": set(),
    "backbone": set(),
    "methods": {"backbone"},
    "train": {"backbone", "data", "methods", "promptviz"},
    "analysis": {"backbone", "data", "methods", "train", "promptviz"},
    "viz": set(),
    "tools": {"backbone", "data", "methods", "train", "analysis", "viz", "promptviz"},
    "cli": {"backbone", "data", "methods", "train", "analysis", "viz", "tools", "promptviz"},
    "promptviz": {"backbone", "data", "methods"},      # the lazy top-level names
}
# Named exceptions, each with its reason.
EXCEPTIONS = {
    # TrainConfig.validate checks a method name against the registry, importing it only
    # when a run starts (promptviz/config.py stays free of torch for `--help`).
    ("promptviz.config", "methods"),
}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "promptviz"
    name = parts[1]
    if name in PLUMBING:
        return "plumbing"
    if name == "__main__":
        return "cli"
    return name


def _imports(tree: ast.AST) -> list[str]:
    """promptviz modules imported anywhere in ``tree`` except under ``if TYPE_CHECKING:``."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "promptviz":
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.split(".")[0] == "promptviz")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def edges() -> list[tuple[str, str]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for target in _imports(ast.parse(path.read_text())):
            out.append((module, target))
    return out


def test_imports_point_one_way():
    wrong = []
    for module, target in edges():
        a, b = layer(module), layer(target)
        if a == b or b == "plumbing" or b in ALLOWED[a] or (module, b) in EXCEPTIONS:
            continue
        wrong.append(f"{module} imports {target} ({a} -> {b})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)
    assert modules <= PLUMBING | {"backbone", "cli", "__main__"}, \
        modules - PLUMBING - {"backbone", "cli", "__main__"}


def test_the_check_sees_a_wrong_import(tmp_path):
    """A view that imported the study runner would be caught (the check can fail)."""
    tree = ast.parse("from promptviz.tools.compare import compare\n"
                     "if TYPE_CHECKING:\n    from promptviz.train.loop import TrainConfig\n")
    found = _imports(tree)
    assert found == ["promptviz.tools.compare"]
    assert layer(found[0]) not in ALLOWED["viz"]
