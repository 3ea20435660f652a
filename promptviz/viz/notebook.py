"""One call at the top of every notebook: offline figures and reproducible numbers.

    from promptviz.viz.notebook import setup
    setup(seed=0)

- plotly figures are shown through plotly's JSON mimetype, which JupyterLab,
  Notebook 7 and VS Code render with the plotly.js they ship: nothing is fetched
  from a CDN, and a committed notebook stays small (no copy of plotly.js per file);
- torch, Python and numpy are seeded and torch uses a fixed number of CPU threads,
  so the accuracies a notebook prints are the same on every run of the same machine
  (a different thread count may change float rounding, hence the last digit);
- progress bars are switched off (their timings would differ run to run).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch


def setup(seed: int = 0, threads: int = 2, renderer: str = "plotly_mimetype") -> None:
    """Seed everything, fix torch's CPU threads and show plotly figures offline."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    os.environ["PROMPTVIZ_PROGRESS"] = "0"
    pio.renderers.default = renderer


class LiveCurves:
    """Learning curves redrawn in the cell's output after every epoch while runs train::

        curves = LiveCurves()                  # shows an empty figure
        run(cfg_coop, on_epoch=curves("CoOp"))
        run(cfg_tr, on_epoch=curves("CoOp+TextRefiner"))

    The figure is :func:`promptviz.viz.results.learning_curves` of the histories so far,
    updated in place through a display handle, so an executed notebook keeps the last one.
    """

    def __init__(self, metrics: tuple[str, ...] = ("loss", "train_acc"),
                 title: str = "learning curves (updated after every epoch)") -> None:
        from IPython.display import display
        self.metrics, self.title = metrics, title
        self.histories: dict[str, list[dict[str, float]]] = {}
        self.handle = display(self.bundle(), raw=True, display_id=True)

    def figure(self) -> go.Figure:
        from promptviz.viz.results import learning_curves
        if not any(self.histories.values()):
            fig = go.Figure()
            fig.add_annotation(text="no epoch finished yet", showarrow=False, x=0.5, y=0.5,
                               xref="paper", yref="paper")
            return fig.update_layout(title=self.title, height=200, template="plotly_white",
                                     xaxis=dict(visible=False), yaxis=dict(visible=False))
        return learning_curves(self.histories, metrics=self.metrics, title=self.title)

    def bundle(self) -> dict:
        """:meth:`figure` as a raw mime bundle: a figure displayed as itself goes through
        plotly's own display hook, which drops the display id, so every update would
        append a new figure instead of replacing this one."""
        return {"application/vnd.plotly.v1+json": json.loads(self.figure().to_json()),
                "text/plain": f"<learning curves of {', '.join(self.histories) or 'no run'}>"}

    def __call__(self, label: str) -> Callable[[list[dict[str, float]]], None]:
        """The ``on_epoch`` callback of the run called ``label``."""
        def update(history: list[dict[str, float]]) -> None:
            self.histories[label] = list(history)
            if self.handle is not None:
                self.handle.update(self.bundle(), raw=True)
        return update
