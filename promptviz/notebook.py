"""One call at the top of every notebook: offline figures and reproducible numbers.

    from promptviz.notebook import setup
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

import os
import random

import numpy as np
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
