"""Training: the loop (:mod:`.loop`), what it reads (:mod:`.inputs`: pixels or the frozen
tower's cached features, :mod:`.featcache`: that cache on disk), evaluation
(:mod:`.evaluate`) and toyclip's own pretraining (:mod:`.pretrain`).

Nothing is imported here: import the module you need (``promptviz.train.loop``).
"""
