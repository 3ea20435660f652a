"""Progress bars that work in a terminal and in a notebook (tqdm.auto)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(it: Iterable | None, desc: str = "", enabled: bool = True, **kwargs: Any
                 ) -> Any:
    """``tqdm`` over ``it`` (``None``: a bar moved by ``update``) unless disabled (or
    ``PROMPTVIZ_PROGRESS=0`` for quiet runs). Bars vanish when done unless ``leave=True``."""
    if os.environ.get("PROMPTVIZ_PROGRESS", "1") == "0":
        enabled = False
    kwargs.setdefault("leave", False)
    return tqdm(it, desc=desc, disable=not enabled, dynamic_ncols=True, **kwargs)
