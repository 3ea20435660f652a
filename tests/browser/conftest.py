"""Browser fixtures: Debian's Chromium driven by Playwright, and a throw-away JupyterLab.

The set-up installs what is missing: Playwright for Python with pip (it is in the
``test`` extra, so ``make test`` has it already) and Chromium with apt-get when we
are root (CI). Playwright's own browser download is never used: the tests drive
``/usr/bin/chromium``. Without root and without Chromium the tests fail and say
what to install; they never skip silently. Every test here carries the ``browser``
marker (``pytest -m "not browser"`` leaves them out).

Screenshots go to ``runs/browser/`` (or ``$PROMPTVIZ_BROWSER_OUT``); the path is
printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from browserkit import REPO, Lab, ensure_chromium, ensure_playwright

HERE = Path(__file__).parent
collect_ignore_glob = ["*.ipynb"]      # explorers.ipynb is run by JupyterLab here, not by nbval
OUT = Path(os.environ.get("PROMPTVIZ_BROWSER_OUT", REPO / "runs" / "browser"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if OUT.is_dir() and any(OUT.glob("*.png")):
        terminalreporter.write_line(f"browser screenshots: {OUT}")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's, never Playwright's download) for one test module.

    Module scope on purpose: Playwright's sync API keeps an asyncio loop that must be gone
    before nbval (later in ``make test``) drives its kernels."""
    chromium = ensure_chromium()
    ensure_playwright()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots_dir() -> Path:
    """Where the screenshots go (old ones removed at the start of the session)."""
    if OUT.is_dir():
        for old in OUT.glob("*.png"):
            old.unlink()
    OUT.mkdir(parents=True, exist_ok=True)
    return OUT


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab serving a temporary copy of ``tests/browser/*.ipynb``."""
    root = tmp_path_factory.mktemp("lab-root")
    for nb in HERE.glob("*.ipynb"):
        shutil.copy(nb, root / nb.name)
    server = Lab(root, tmp_path_factory.mktemp("lab-home"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_report_file(tmp_path_factory) -> Path:
    """``runs/demo/report.html`` as ``make demo`` writes it: the same ``run_demo``, on a
    small ToyWorld suite with the random pv-tiny backbone and one epoch (seconds, not the
    demo's minutes; the report's structure does not depend on the numbers)."""
    from promptviz.data.toyworld.suite import build_suite
    from promptviz.tools.demo import DemoConfig, run_demo
    root = tmp_path_factory.mktemp("demo")
    build_suite(root / "toy", n_train=4, n_val=1, n_test=2, datasets=["toy_fine"])
    return run_demo(DemoConfig(out=str(root / "demo"), data_root=str(root / "toy"),
                               datasets=["toy_fine"], backbone="pv-tiny", shots=2, epochs=1,
                               progress=False))
