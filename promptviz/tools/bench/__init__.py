"""``promptviz bench``: the optimised path against the straightforward one, in one run.

For every method the same work is timed twice on synthetic inputs of the backbone's
image size (random pixels, random labels; no dataset is needed):

* **optimised** — what ``promptviz train`` does: training steps read a feature cache
  where the image tower is frozen (``method.image_input.frozen``: every method but SEP), kept in
  host memory and moved to the device one batch at a time (``featcache.batches``), class
  text features are computed once per evaluation, and on CUDA everything runs under
  bf16 autocast, where open_clip's ``nn.MultiheadAttention`` (called with
  ``need_weights=False``) dispatches to PyTorch's fused scaled-dot-product attention;
* **straightforward** — what the original code bases do: every training image goes
  through the frozen image tower at every step, the class text features are recomputed
  for every test batch, everything in fp32.

Each measurement runs ``warmup`` untimed steps, then ``steps`` timed ones; CUDA is
synchronised around the timers only, never inside a step. Images and labels stay on the
device for both paths, so input loading (JPEG decoding, augmentation, the images' copy to
the device), which the cache also removes from a real run, is *not* counted: the ratios
understate what a real run gains. The headline is the ratio optimised / straightforward.

Building the cache is timed on its own (``cache_images_per_s``, the copies to host memory
included): it costs one frozen image pass per image and view. ``feature_cache_estimate``
gives the host memory the store would take for ImageNet's base classes at 16 shots.
``train_amortised_images_per_s`` charges the building to training for a schedule of
``epochs`` epochs over ``min(cache_views, epochs)`` views. The optimised steps include
gathering each batch in host memory and copying it to the device, as training does.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (weights included). On a
Linux CPU it is the growth of the process's peak resident set over the phase (the peak is
reset through ``/proc/self/clear_refs``); elsewhere it is ``null``.

The modules: :mod:`.measure` (the instruments: peak memory, attention and
synchronisation counts, the machine and its peak), :mod:`.phases` (what is timed: building
the cache, a path's training steps, its evaluation), :mod:`.run` (``BenchConfig`` and
:func:`~promptviz.tools.bench.run.bench`: both paths of every method, the JSON) and
:mod:`.report` (the table, the feature-cache estimate, the JSON's rounding). Nothing is
imported here: import the module you need (``promptviz.tools.bench.run``).
"""
