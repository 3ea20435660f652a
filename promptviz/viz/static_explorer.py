"""Explorers without a kernel: every state precomputed, a few lines of script to switch.

A live explorer (:mod:`promptviz.viz.widgets`) re-renders a figure in Python when a control
moves. Here every figure a view can show is rendered up front — one per combination of
the controls *that view reads* — and written into one HTML fragment with the controls as
plain ``<select>`` / ``<input type="range">`` elements and a short script that swaps the
figures with ``Plotly.react``. The result opens from ``file://``, in a statically rendered
notebook, on a page with no Python behind it, and with the network off (plotly.js is
embedded, never fetched).

Size is kept down by storing every large piece once: a figure is a tree of references
into a table of parts, so plotly's template, an embedded test image or a heatmap that
recur in many states are written once, and identical figures cost nothing. Ids are derived from the
content, so the same explorer gives byte-identical HTML (a committed notebook's output
does not change on re-execution).
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

Render = Callable[[dict], go.Figure]


@dataclass
class Control:
    """One control: a dropdown of ``(label, value)`` options or an integer slider."""

    name: str
    kind: str                              # "dropdown" | "slider"
    options: list[tuple[str, object]]      # every value it can take, with its label
    value: object                          # the value shown first


class TooManyStates(ValueError):
    """A view reads controls whose combinations are too many to precompute."""


def _key(values: Sequence[object]) -> str:
    # the script builds the same string from the controls' JSON-encoded values
    return ",".join(json.dumps(v) for v in values)


def _share(node: object, table: dict[str, int], parts: list, top: bool = False) -> object:
    """``node`` with every large subtree (over 256 characters of JSON) moved to ``parts``
    once and replaced by ``{"pv-ref": i}``; bottom-up, so parts share their own parts.
    ``top``: ``node`` itself becomes a reference whatever its size (a figure's id)."""
    if isinstance(node, dict):
        node = {k: _share(v, table, parts) for k, v in node.items()}
    elif isinstance(node, list):
        node = [_share(v, table, parts) for v in node]
    elif not (isinstance(node, str) and len(node) > _SHARED) and not top:
        return node
    text = json.dumps(node, sort_keys=True, separators=(",", ":"))
    if len(text) <= _SHARED and not top:
        return node
    if text not in table:
        table[text] = len(parts)
        parts.append(node)
    return {"pv-ref": table[text]}


_SHARED = 256


def precompute(controls: Sequence[Control], views: Mapping[str, tuple[Sequence[str], Render]],
               max_states: int = 600) -> dict:
    """Every figure of every view, keyed by the values of the controls it reads.

    Returns ``{"views": {name: {"deps": [...], "figures": {key: ref}}}, "parts": [...]}``
    (plain JSON): each figure is a ``{"pv-ref": i}`` into ``parts``, where every large
    subtree (plotly's template, an embedded image, a heatmap's values) is stored once
    however many figures use it. ``max_states`` bounds the figures one view may need;
    beyond it a :class:`TooManyStates` names the view and the controls."""
    by_name = {c.name: c for c in controls}
    current = {c.name: c.value for c in controls}
    table: dict[str, int] = {}
    parts: list = []
    out_views: dict[str, dict] = {}
    for name, (deps, render) in views.items():
        unknown = [d for d in deps if d not in by_name]
        if unknown:
            raise ValueError(f"view {name!r} reads unknown controls {unknown}; "
                             f"the controls are {sorted(by_name)}")
        choices = [[v for _, v in by_name[d].options] for d in deps]
        n = 1
        for c in choices:
            n *= len(c)
        if n > max_states:
            raise TooManyStates(
                f"view {name!r} reads {list(deps)}, whose {n} combinations exceed "
                f"max_states={max_states}: pass fewer options (fewer images, slots or "
                f"classes) or a larger max_states")
        keyed: dict[str, object] = {}
        for combo in itertools.product(*choices):
            fig = render({**current, **dict(zip(deps, combo))})
            keyed[_key(combo)] = _share(json.loads(fig.to_json()), table, parts, top=True)
        out_views[name] = {"deps": list(deps), "figures": keyed}
    return {"views": out_views, "parts": parts}


# The whole client: read the controls, pick each view's precomputed figure, draw it.
# Slider drags are coalesced to one redraw per animation frame.
_SCRIPT = r"""
(function () {
  var root = document.getElementById("%(id)s");
  var spec = JSON.parse(root.querySelector("script.pv-explorer-data").textContent);
  var hint = root.querySelector(".pv-noscript");
  if (hint) hint.parentNode.removeChild(hint);
  function fill(o) {
    if (Array.isArray(o)) return o.map(fill);
    if (o && typeof o === "object") {
      if ("pv-ref" in o) return fill(spec.parts[o["pv-ref"]]);
      var r = {};
      for (var k in o) r[k] = fill(o[k]);
      return r;
    }
    return o;
  }
  var state = {}, shown = {}, pending = {};
  var inputs = root.querySelectorAll("[data-control]");
  inputs.forEach(function (el) { state[el.getAttribute("data-control")] = el.value; });
  function draw(changed) {
    Object.keys(spec.views).forEach(function (name) {
      var view = spec.views[name];
      if (changed && view.deps.indexOf(changed) < 0) return;
      var key = view.deps.map(function (d) { return state[d]; }).join(",");
      var div = root.querySelector('[data-view="' + name + '"]');
      var ref = view.figures[key];
      if (ref === undefined) { div.textContent = "no figure stored for " + key; return; }
      var i = ref["pv-ref"];
      if (shown[name] === i) return;
      shown[name] = i;
      var fig = fill(ref);
      Plotly.react(div, fig.data, fig.layout, {displaylogo: false, responsive: true});
      div.setAttribute("data-figure", i);
    });
  }
  inputs.forEach(function (el) {
    var name = el.getAttribute("data-control");
    el.addEventListener(el.type === "range" ? "input" : "change", function () {
      state[name] = el.value;
      var out = root.querySelector('output[data-for="' + name + '"]');
      if (out) out.textContent = el.value;
      if (pending[name]) return;
      pending[name] = true;
      window.requestAnimationFrame(function () { pending[name] = false; draw(name); });
    });
  });
  draw(null);
})();
"""

_STYLE = """
.pv-explorer { font-family: system-ui, sans-serif; font-size: 13px; color: #222; }
.pv-explorer .pv-controls { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 4px 0 8px; }
.pv-explorer label { display: inline-flex; align-items: center; gap: 6px; }
.pv-explorer select { max-width: 100%; font-size: 13px; }
.pv-explorer .pv-views { display: flex; flex-wrap: wrap; gap: 8px; }
.pv-explorer .pv-view { max-width: 100%; }
.pv-explorer .pv-note { color: #555; font-size: 12px; margin: 2px 0 6px; }
"""


def _control_html(c: Control) -> str:
    label = html.escape(c.name)
    if c.kind == "slider":
        values = [int(v) for _, v in c.options]
        steps = {b - a for a, b in zip(values, values[1:])} or {1}
        if len(steps) != 1:
            raise ValueError(f"slider {c.name!r} needs evenly spaced values, got {values}")
        return (f'<label>{label} <input type="range" data-control="{label}" '
                f'min="{values[0]}" max="{values[-1]}" step="{steps.pop()}" '
                f'value="{int(c.value)}"><output data-for="{label}">{int(c.value)}</output>'
                f"</label>")
    if c.kind != "dropdown":
        raise ValueError(f"control {c.name!r}: kind must be 'dropdown' or 'slider', "
                         f"got {c.kind!r}")
    opts = "".join(
        f'<option value="{html.escape(json.dumps(v))}"'
        f'{" selected" if v == c.value else ""}>{html.escape(str(text))}</option>'
        for text, v in c.options)
    return f'<label>{label} <select data-control="{label}">{opts}</select></label>'


def explorer_html(controls: Sequence[Control],
                  views: Mapping[str, tuple[Sequence[str], Render]],
                  note: str = "", include_plotlyjs: bool = True, max_states: int = 600) -> str:
    """One HTML fragment: the controls, a slot per view, the precomputed figures, the script.

    ``include_plotlyjs=False`` when the page already carries plotly.js (a
    :class:`~promptviz.viz.report.Report` embeds it with its first figure)."""
    data = precompute(controls, views, max_states)
    payload = json.dumps(data, sort_keys=True, separators=(",", ":"))
    root = "pv-explorer-" + hashlib.sha1(payload.encode()).hexdigest()[:12]
    plotly_js = (f'<script type="text/javascript">{get_plotlyjs()}</script>'
                 if include_plotlyjs else "")
    note_html = f'<div class="pv-note">{html.escape(note)}</div>' if note else ""
    # shown only where the script did not run (e.g. JupyterLab's view of an untrusted notebook)
    note_html += ('<div class="pv-note pv-noscript">This viewer did not run the explorer\'s '
                  "script, so its controls do nothing here: run the notebook for the live "
                  "explorer, or open the notebook's HTML export (jupyter nbconvert --to html)."
                  "</div>")
    return (f'<div class="pv-explorer" id="{root}"><style>{_STYLE}</style>{plotly_js}'
            f'<div class="pv-controls">{"".join(_control_html(c) for c in controls)}</div>'
            f"{note_html}"
            f'<div class="pv-views">'
            + "".join(f'<div class="pv-view" data-view="{html.escape(name)}"></div>'
                      for name in views)
            + "</div>"
            f'<script type="application/json" class="pv-explorer-data">'
            f'{payload.replace("</", "<" + chr(92) + "/")}</script>'
            f'<script type="text/javascript">{_SCRIPT % {"id": root}}</script></div>')
