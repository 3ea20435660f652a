"""Self-contained HTML: one file that opens offline, plotly.js embedded once."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go

from promptviz.checkpoint import atomic_write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { caption-side: bottom; font-size: 0.85em; color: #555; padding-top: 4px; }
.note { color: #555; font-size: 0.9em; }
"""


def _figure_div(fig: go.Figure, div_id: str, include_js: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=include_js, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


class Report:
    """Collects headings, paragraphs, tables and figures; writes one offline HTML file."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self._figures = 0
        self._plotly_js = False          # whether plotly.js is on the page yet

    def heading(self, text: str, level: int = 2) -> Report:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")
        return self

    def paragraph(self, text: str, cls: str = "") -> Report:
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{attr}>{html.escape(text)}</p>")
        return self

    def raw(self, fragment: str) -> Report:
        self.parts.append(fragment)
        return self

    def figure(self, fig: go.Figure, div_id: str | None = None) -> Report:
        self._figures += 1
        div_id = div_id or f"pv-figure-{self._figures}"
        # plotly.js goes inline with the first figure only: offline and no duplicates
        self.parts.append(_figure_div(fig, div_id, include_js=not self._plotly_js))
        self._plotly_js = True
        return self

    def explorer(self, explorer: object) -> Report:
        """An explorer that works without a kernel
        (:meth:`promptviz.viz.widgets.Explorer.to_html`)."""
        self.parts.append(explorer.to_html(include_plotlyjs=not self._plotly_js))
        self._plotly_js = True
        return self

    def html(self) -> str:
        body = "\n".join(self.parts)
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
                f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.html())
        return path


def standalone_html(fig: go.Figure, path: str | Path, title: str = "promptviz",
                    div_id: str = "pv-figure") -> Path:
    """Export one figure as a standalone HTML file that opens offline."""
    return Report(title).figure(fig, div_id).write(path)
