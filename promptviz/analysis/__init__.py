"""Tools that *test* what a method does, returning plain numbers and arrays: interventions
(:mod:`.interventions`: replace a part, measure the change), ground-truth scores on
ToyWorld (:mod:`.scores`), attention and confusion probes (:mod:`.probe`) and why a
prediction was made (:mod:`.why`). The views of :mod:`promptviz.viz` draw what these return.
"""
