"""The toyclip model card (``promptviz toyworld card``, ``assets/toyclip/MODEL_CARD.md``):
zero-shot and CoOp numbers on the ToyWorld suite, how the shipped weights were made, and
a fixed batch whose logits pin those weights down.

The modules: :mod:`.measure` (the measurements on the held-out test splits, ``card.json``,
and the quality bars of the ToyWorld issue), :mod:`.provenance` (how the weights were made,
read from a pretraining run's logs), :mod:`.reference` (the reference logits) and
:mod:`.render` (the Markdown: the tables and the whole ``MODEL_CARD.md``, written beside
the two JSON files it is rendered from). Nothing is imported here: import the module you
need (``promptviz.tools.modelcard.measure``).
"""
