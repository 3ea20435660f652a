"""User-facing errors.

Every mistake a user can make (bad path, unknown name, broken dataset, wrong
checkpoint, NaN loss) raises :class:`PromptvizError` with one message that names
the problem and the fix. The CLI prints that message and exits non-zero, without
a traceback; library callers can catch it like any exception.
"""

from __future__ import annotations


class PromptvizError(Exception):
    """A user error: the message says what is wrong and how to fix it."""

    exit_code: int = 2


class Diverged(PromptvizError):
    """Training produced NaN or infinite losses, weights or scores. A run cannot go on from
    there, so ``train.run`` removes its ``resume.pt`` (and the ``--out`` it created)."""
