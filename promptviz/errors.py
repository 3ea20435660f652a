"""User-facing errors.

Every mistake a user can make (bad path, unknown name, broken dataset, wrong
checkpoint, NaN loss) raises :class:`PromptvizError` with one message that names
the problem and the fix. The CLI prints that message and exits non-zero, without
a traceback; library callers can catch it like any exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PromptvizError(Exception):
    """A user error: the message says what is wrong and how to fix it."""

    exit_code: int = 2


class Diverged(PromptvizError):
    """Training produced NaN or infinite losses, weights or scores. A run cannot go on from
    there, so ``train.run`` removes its ``resume.pt`` (and the ``--out`` it created)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'coop'?)`` when ``name`` looks like a misspelt choice, else ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
