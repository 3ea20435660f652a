"""Explorers without a kernel, in Chromium with the network cut off.

Three places hold them: the *committed* notebooks 03 and 04 (the explorer cells' saved
``text/html`` output, opened as it is stored, never executed here), the demo's report
(``runs/demo/report.html``: the TextRefiner, SEP and "why" explorers) and
:meth:`Explorer.save_html`.
For each explorer the test waits for every view to draw, then moves each control — a
dropdown to another option, the slider to its end — and checks that the views reading
that control show a different figure while the others stay as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browserkit import REPO, OfflinePage, assert_painted

# notebook → the controls of each explorer it carries, in order
NOTEBOOKS = {"03_textrefiner": [3, 2], "04_sep": [2]}

# what each view of an explorer shows now: the figure drawn into it (its data, shapes,
# title and images), as a string to compare before and after a control moves
FINGERPRINTS_JS = r"""root => Object.fromEntries(
  Array.from(root.querySelectorAll('[data-view]')).map(d => [d.getAttribute('data-view'),
    JSON.stringify([d.data || null, d.layout ? [d.layout.shapes, d.layout.title,
                    (d.layout.images || []).map(i => i.source)] : null])]))"""


def saved_explorers_html(name: str) -> list[str]:
    """The kernel-free explorers the committed notebook ``name`` carries in its outputs."""
    nb = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
    found = ["".join(o["data"]["text/html"]) for c in nb["cells"] if c["cell_type"] == "code"
             for o in c.get("outputs", []) if "pv-explorer" in "".join(
                 o.get("data", {}).get("text/html", ""))]
    assert len(found) == len(NOTEBOOKS[name]), (
        f"{name}.ipynb should carry {len(NOTEBOOKS[name])} saved kernel-free explorers, "
        f"found {len(found)}: re-execute it (make notebooks)")
    return found


def exercise(page, root, shot: Path, controls: int) -> None:
    """Every view of the explorer ``root`` draws; every control changes what reads it."""
    spec = root.evaluate("r => JSON.parse(r.querySelector('script.pv-explorer-data')"
                         ".textContent).views")
    root.scroll_into_view_if_needed()
    page.wait_for_function("r => Array.from(r.querySelectorAll('[data-view]'))"
                           ".every(d => d.querySelector('svg.main-svg'))",
                           arg=root.element_handle(), timeout=60_000)
    for i, name in enumerate(spec):
        assert_painted(root.locator(f'[data-view="{name}"]'),
                       shot.with_name(f"{shot.name}-{i}-{name}.png"))
    assert root.locator(".pv-noscript").count() == 0, "the script did not run"
    inputs = root.locator("[data-control]")
    assert inputs.count() == controls
    for i in range(controls):
        control = inputs.nth(i)
        name = control.get_attribute("data-control")
        before = root.evaluate(FINGERPRINTS_JS)
        if control.get_attribute("type") == "range":
            control.fill(control.get_attribute("max"))       # the slider dragged to its end
        else:
            control.select_option(index=control.locator("option").count() - 1)
        readers = [v for v, s in spec.items() if name in s["deps"]]
        page.wait_for_function(
            "([r, fp, names]) => { const now = (" + FINGERPRINTS_JS + ")(r);"
            " return names.some(n => now[n] !== fp[n]); }",
            arg=[root.element_handle(), before, readers], timeout=30_000)
        after = root.evaluate(FINGERPRINTS_JS)
        changed = {v for v in spec if after[v] != before[v]}
        assert changed, f"moving {name!r} changed no view"
        assert changed <= set(readers), \
            f"moving {name!r} changed {sorted(changed - set(readers))}, which do not read it"
        root.screenshot(path=str(shot.with_name(f"{shot.name}-after-{name}.png")))


def open_offline(browser, path: Path) -> tuple[OfflinePage, object]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = OfflinePage(context, path)
    page.loaded()
    return page, context


def check_offline(page: OfflinePage) -> None:
    assert page.page.evaluate("() => typeof window.Plotly") == "object", "no plotly.js"
    assert not page.offline.blocked, f"the page asked the network for {page.offline.blocked}"
    assert not page.offline.console_errors, page.offline.console_errors


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_notebook_explorers_work_without_kernel(browser, shots_dir, tmp_path, name):
    """Each saved explorer alone on a page: each must carry its own plotly.js (a viewer
    such as Colab shows every output in its own frame)."""
    for k, html in enumerate(saved_explorers_html(name)):
        path = tmp_path / f"{name}-explorer-{k}.html"
        path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>"
                        f"{html}</body></html>")
        page, context = open_offline(browser, path)
        roots = page.page.locator(".pv-explorer")
        assert roots.count() == 1
        exercise(page.page, roots.first, shots_dir / f"static-{name}-{k}", NOTEBOOKS[name][k])
        check_offline(page)
        context.close()


def test_demo_report_explorers_work_offline(browser, shots_dir, demo_report_file):
    page, context = open_offline(browser, demo_report_file)
    roots = page.page.locator(".pv-explorer")
    assert roots.count() == 3, ("the report should embed the TextRefiner, SEP and "
                                "'why this prediction?' explorers")
    for i in range(3):
        exercise(page.page, roots.nth(i), shots_dir / f"static-report-{i}",
                 roots.nth(i).locator("[data-control]").count())
    check_offline(page)
    context.close()
