"""The one exception type for a user's mistake.

Every check of what a caller passes (an argument out of range, an unknown option, a file that is
not a mask, a model of the wrong kind) raises :class:`UsageError`, in every package (attribution,
ablation, loka), with a message that names what was given and what is allowed. It subclasses
``ValueError``, so ``except ValueError`` keeps catching it. The command line prints a
``UsageError`` as one line (``error: ...``, exit status 2) and shows a traceback for anything
else: any other exception is a bug or an environment problem, not a mistake the user can fix by
changing the command.
"""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A mistake in what the caller asked for: a bad argument, option, file or model."""
