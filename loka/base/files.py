"""Files loka writes: the one guard on an output path, and the one JSON fallback.

:func:`check_output` is asked before any work is done, by the CLI, ``Comparison.save``, the TOFU
benchmark and ``ablation.export_checkpoint``: an output that does not exist (or is an empty
directory) is new; one that exists is replaced only with ``overwrite``, and then, where a
``marker`` file names what loka writes there, only if the marker is present, so that loka never
replaces what it did not write. :func:`json_default` is the ``default=`` of every ``json.dumps``
whose data may hold paths, tuples, tensors or knowledge sets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["check_output", "file_sha256", "json_default", "salted_sha256"]


def check_output(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    is_dir: bool = True,
    marker: str | None = None,
    what: str = "output",
    how_to_overwrite: str = "pass --overwrite to replace it, or choose another path",
) -> Path:
    """``path`` (expanded) if loka may write it, else a ``FileExistsError`` that says why.

    ``is_dir``: the output is a directory (else a file). ``marker``: a file loka writes into that
    directory, without which an existing non-empty directory is never replaced (``what`` names
    it in the message, e.g. ``"export"``). ``how_to_overwrite`` completes "... already exists; ".
    """
    out = Path(path).expanduser()
    kind = "directory" if is_dir else "file"
    if out.parent.exists() and not out.parent.is_dir():
        raise FileExistsError(f"cannot write {str(out)!r}: {str(out.parent)!r} is a file, not a directory")
    if not out.exists() and not out.is_symlink():
        return out
    if out.is_symlink() or out.is_dir() != is_dir:
        raise FileExistsError(f"{what} {str(out)!r} exists and is not a {kind}; refusing to replace it")
    if is_dir and not any(out.iterdir()):
        return out
    if not overwrite:
        raise FileExistsError(f"{what} {str(out)!r} already exists; {how_to_overwrite}")
    if marker is not None and not (out / marker).is_file():
        raise FileExistsError(
            f"refusing to overwrite {str(out)!r}: it is not a loka {what} (no {marker}), so loka did not write it"
        )
    return out


def json_default(value: Any) -> Any:
    """JSON for what ``json.dumps`` cannot write itself: paths as strings, tuples and sets as
    lists, tensors and arrays as (nested) lists, an object with a
    ``json_summary()`` (a KnowledgeSet: its name and size) as that; else ``repr``."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    summary = getattr(value, "json_summary", None)
    if callable(summary):
        return summary()
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as hex (streamed: exported weights, saved values, certified models)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def salted_sha256(salt: str, text: str) -> str:
    """The salted SHA-256 of one item (hex): ``sha256(salt + NUL + text)`` (what the leak guard and
    a certificate record instead of the item)."""
    return hashlib.sha256(f"{salt}\0{text}".encode()).hexdigest()
