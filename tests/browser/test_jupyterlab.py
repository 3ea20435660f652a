"""The explorers as a person sees them: JupyterLab in Chromium runs a notebook.

``explorers.ipynb`` (next to this file) builds both ipywidgets explorers from toyclip
and six ToyWorld images. JupyterLab runs it through its own menu (Run → Run All
Cells); then every explorer must have drawn its plotly figures inside its widget
outputs (the failure this guards against is a blank widget area), a dropdown and a
slider must change what is drawn, and no cell may show an error. The browser may
talk to the JupyterLab server only: every other request is blocked and recorded.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from browserkit import REPO, Lab, Offline, assert_painted

NOTEBOOK = "explorers.ipynb"
EXPLORERS = {"textrefiner": 4, "sep": 4}           # explorer -> number of figures, in order
# generous (a loaded 2-core machine is slow); $PROMPTVIZ_BROWSER_RUN_TIMEOUT in seconds
RUN_TIMEOUT_MS = 1000 * int(os.environ.get("PROMPTVIZ_BROWSER_RUN_TIMEOUT", "480"))
#: Course notebooks to run the same way (opt-in: each takes minutes; raise the timeout), e.g.
#: PROMPTVIZ_BROWSER_NOTEBOOKS="notebooks/03_textrefiner.ipynb notebooks/04_sep.ipynb"
#: PROMPTVIZ_BROWSER_RUN_TIMEOUT=1500
COURSE = os.environ.get("PROMPTVIZ_BROWSER_NOTEBOOKS", "").split()

PROMPTS_DONE_JS = """() => {
  const p = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
    .map(e => e.textContent.trim());
  return p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t));
}"""


def run_all_cells(browser, lab: Lab, notebook: str, shot: Path):
    """Open ``notebook`` in JupyterLab, Run → Run All Cells, wait until every code cell has
    run and the kernel is idle; returns ``(context, page, offline recorder)``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    # tall enough for a whole explorer: element screenshots of taller boxes come out garbled
    context = browser.new_context(viewport={"width": 1400, "height": 2200})
    offline = Offline(allowed=(lab.url, f"ws://127.0.0.1:{lab.port}"))
    offline.attach(context)
    page = context.new_page()
    offline.watch(page)
    page.set_default_timeout(60_000)
    page.goto(f"{lab.url}/lab/tree/{notebook}")
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for()
    # the kernel is started and connected ("Python 3 (ipykernel) | Idle" in the status bar)
    page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for(
        timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    try:
        page.wait_for_function(PROMPTS_DONE_JS, timeout=RUN_TIMEOUT_MS, polling=500)
    except PlaywrightTimeout:
        failed = shot.with_name(f"{shot.stem}-timeout.png")
        page.screenshot(path=str(failed))
        prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
        context.close()
        pytest.fail(f"Run All Cells did not finish in {RUN_TIMEOUT_MS / 1000:.0f} s; prompts "
                    f"{prompts}; screenshot {failed}; server log:\n"
                    f"{lab.log.read_text()[-2000:]}", pytrace=False)
    page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"\| Idle")).first.wait_for()
    page.screenshot(path=str(shot))
    return context, page, offline


def assert_no_errors(page, offline: Offline) -> None:
    """No cell shows a traceback or an error, no widget failed, nothing went to the network."""
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts), prompts
    stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    errors = [t for t in stderr.all_inner_texts() if "Traceback" in t or "Error" in t]
    assert not errors, "a cell shows an error:\n" + "\n---\n".join(errors)
    text = page.locator(".jp-Notebook").inner_text()
    for bad in ("Error displaying widget", "No renderer could be found", "Model not found"):
        assert bad not in text, bad
    widget_errors = [e for e in offline.console_errors if "widget" in e.lower()
                     or "plotly" in e.lower() or "page error" in e]
    assert not widget_errors, widget_errors
    assert not offline.blocked, f"JupyterLab's page asked the network for {offline.blocked}"


@pytest.fixture(scope="module")
def notebook(browser, lab, shots_dir):
    """The test notebook open in JupyterLab after Run → Run All Cells has finished."""
    context, page, offline = run_all_cells(browser, lab, NOTEBOOK,
                                           shots_dir / "lab-00-after-run-all.png")
    yield page, offline
    context.close()


def explorer(page, name: str):
    """The explorer's widget box: the ``VBox`` an explorer cell displays, by order."""
    boxes = page.locator(".jp-OutputArea-output > .widget-vbox")
    assert boxes.count() == len(EXPLORERS), "expected one widget box per explorer cell"
    return boxes.nth(list(EXPLORERS).index(name))


def plots(box):
    """The plotly figures inside an explorer's ``Output`` widgets."""
    return box.locator(".widget-output .js-plotly-plot")


#: What a figure shows, as plotly.js holds it: title, traces' data, shapes and annotations.
SIGNATURE_JS = """el => (el.querySelector('.gtitle') || {}).textContent + '|' + JSON.stringify([
  (el.data || []).map(t => [t.x, t.y, t.z, t.source]),
  ((el.layout || {}).shapes || []).map(s => [s.x0, s.x1, s.y0, s.y1]),
  ((el.layout || {}).annotations || []).map(a => a.text)])"""


def signature(plot) -> str:
    return plot.evaluate(SIGNATURE_JS)


def wait_changed(box, index: int, before: str, timeout: float = 60_000) -> None:
    """Wait until the ``index``-th figure of ``box`` has been redrawn with other content."""
    box.page.wait_for_function(
        f"""([box, i, before]) => {{
             const el = box.querySelectorAll('.widget-output .js-plotly-plot')[i];
             if (!el || !el.querySelector('svg.main-svg')) return false;
             return ({SIGNATURE_JS})(el) !== before;
           }}""", arg=[box.element_handle(), index, before], timeout=timeout, polling=200)


def test_no_cell_shows_an_error(notebook):
    assert_no_errors(*notebook)


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_explorer_renders(notebook, shots_dir, name):
    page, _ = notebook
    box = explorer(page, name)
    box.scroll_into_view_if_needed()
    assert box.locator(".widget-dropdown select, .widget-slider").count() >= 2, "no controls"
    figs = plots(box)
    figs.first.wait_for()
    assert figs.count() == EXPLORERS[name], f"{name}: {figs.count()} figures drawn"
    for i in range(figs.count()):
        figs.nth(i).scroll_into_view_if_needed()
        assert_painted(figs.nth(i), shots_dir / f"lab-{name}-figure{i}.png")
    box.screenshot(path=str(shots_dir / f"lab-{name}-explorer.png"))


def test_textrefiner_dropdowns_change_the_view(notebook, shots_dir):
    page, _ = notebook
    box = explorer(page, "textrefiner")
    box.scroll_into_view_if_needed()
    figs = plots(box)
    image, slot = (box.locator(".widget-dropdown select").nth(i) for i in (0, 1))
    before = [signature(figs.nth(i)) for i in range(figs.count())]
    image.select_option(index=2)
    wait_changed(box, 0, before[0])                    # CLS attention of the new image
    assert signature(figs.nth(3)) == before[3]         # the gallery does not read the image
    last = image.page.evaluate("s => s.options.length - 1", slot.element_handle())
    slot.select_option(index=last)
    wait_changed(box, 3, before[3])                    # the gallery of the chosen slot
    title = figs.nth(3).locator(".gtitle").text_content()
    chosen = slot.evaluate("s => s.value")
    assert title.startswith("slot ") and chosen.startswith(title.split(":")[0]), title
    if "(0 tokens)" in chosen:                         # an empty slot says so, drawn blank
        assert "is empty" in figs.nth(3).text_content()
        figs.nth(3).screenshot(path=str(shots_dir / "lab-textrefiner-after-slot-choice.png"))
    else:
        assert_painted(figs.nth(3), shots_dir / "lab-textrefiner-after-slot-choice.png")
    box.screenshot(path=str(shots_dir / "lab-textrefiner-explorer-after.png"))


def test_sep_slider_changes_the_view(notebook, shots_dir):
    page, _ = notebook
    box = explorer(page, "sep")
    box.scroll_into_view_if_needed()
    figs = plots(box)
    before = [signature(figs.nth(i)) for i in range(figs.count())]
    handle = box.locator(".widget-slider .noUi-handle")
    start = handle.get_attribute("aria-valuenow")
    handle.focus()
    handle.press("ArrowRight")                          # one layer up, as a person would
    box.page.wait_for_function("([h, v]) => h.getAttribute('aria-valuenow') !== v",
                               arg=[handle.element_handle(), start])
    wait_changed(box, 0, before[0])                     # tokens selected before that layer
    assert "block 2" in figs.nth(0).locator(".gtitle").text_content()
    for i in (1, 2):                                    # TFM attention and gates follow it
        wait_changed(box, i, before[i])
    at_layer = signature(figs.nth(0))
    box.locator(".widget-dropdown select").first.select_option(index=1)
    wait_changed(box, 0, at_layer)
    assert "image 1" in figs.nth(0).locator(".gtitle").text_content()
    assert_painted(figs.nth(0), shots_dir / "lab-sep-after-slider.png")
    box.screenshot(path=str(shots_dir / "lab-sep-explorer-after.png"))


@pytest.mark.parametrize("path", COURSE or [pytest.param("", marks=pytest.mark.skip(
    reason="opt-in: PROMPTVIZ_BROWSER_NOTEBOOKS='notebooks/03_textrefiner.ipynb ...'"))])
def test_course_notebook_in_jupyterlab(browser, shots_dir, tmp_path, path):
    """A course notebook, run in JupyterLab from a copy (its ``../data`` is the repository's,
    its ``../runs`` a temporary folder): no errors, every explorer draws and reacts."""
    name = Path(path).stem
    root = tmp_path / "root"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / path, root / "notebooks")
    if (REPO / "data").is_dir():
        (root / "data").symlink_to(REPO / "data")
    server = Lab(root, tmp_path / "home")
    try:
        context, page, offline = run_all_cells(browser, server, f"notebooks/{Path(path).name}",
                                               shots_dir / f"course-{name}.png")
        assert_no_errors(page, offline)
        boxes = page.locator(".jp-OutputArea-output > .widget-vbox")
        assert boxes.count() >= 1, f"{path} displays no explorer"
        for k in range(boxes.count()):
            box = boxes.nth(k)
            box.scroll_into_view_if_needed()
            figs = plots(box)
            assert figs.count() >= 1, f"explorer {k} of {path} drew no figure"
            for i in range(figs.count()):
                figs.nth(i).scroll_into_view_if_needed()
                assert_painted(figs.nth(i), shots_dir / f"course-{name}-explorer{k}-fig{i}.png")
            before = [signature(figs.nth(i)) for i in range(figs.count())]
            select = box.locator(".widget-dropdown select")
            if select.count():                           # another choice in the first dropdown
                select.first.select_option(index=1 if select.first.evaluate(
                    "s => s.selectedIndex") == 0 else 0)
            else:                                         # or one step of the first slider
                handle = box.locator(".widget-slider .noUi-handle").first
                handle.focus()
                handle.press("ArrowRight")
            page.wait_for_function(
                f"""([box, before]) => Array.from(
                      box.querySelectorAll('.widget-output .js-plotly-plot')).some(
                      (el, i) => el.querySelector('svg.main-svg') &&
                                 ({SIGNATURE_JS})(el) !== before[i])""",
                arg=[box.element_handle(), before], timeout=60_000, polling=200)
            box.screenshot(path=str(shots_dir / f"course-{name}-explorer{k}-after.png"))
        context.close()
    finally:
        server.stop()
