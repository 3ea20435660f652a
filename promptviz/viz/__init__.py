"""Views: pure functions from plain arrays / dicts to plotly figures or HTML.

Every figure renders offline: :func:`~promptviz.viz.report.standalone_html`
embeds plotly.js in the file (no CDN), and element ids are passed in, so the
same inputs give byte-identical output.
"""

from __future__ import annotations

from promptviz.viz.embeddings import embedding_shift, project_2d
from promptviz.viz.report import Report, standalone_html
from promptviz.viz.results import (
    accuracy_bars,
    intervention_bars,
    learning_curves,
    results_table_html,
)
from promptviz.viz.sep import (
    fusion_scalars,
    selection_frequency,
    selection_map,
    text_selection,
    tfm_attention,
)
from promptviz.viz.textrefiner import (
    cache_gallery,
    read_weights_heatmap,
    slot_words,
    topk_patches_figure,
)

__all__ = ["Report", "accuracy_bars", "cache_gallery", "embedding_shift", "fusion_scalars",
           "intervention_bars", "learning_curves", "project_2d", "read_weights_heatmap",
           "results_table_html", "selection_frequency", "selection_map", "slot_words",
           "standalone_html", "text_selection", "tfm_attention", "topk_patches_figure"]
