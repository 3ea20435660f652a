"""The commands built on the library: the study runner (:mod:`.compare`), the benchmark
(:mod:`.bench`), toyclip's model card (:mod:`.modelcard`), the offline demo
(:mod:`.demo`) and the real-CLIP readiness check (:mod:`.readiness`).
"""
