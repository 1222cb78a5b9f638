"""What a certificate names, without holding it: file hashes of both models and the tokenizer,
salted hashes of the forget items, and plain hashes of the reference set.

The forget items are personal data about people who asked to be erased, so the certificate keeps
only ``sha256(salt + NUL + item)`` of each (a random salt, stored beside them): whoever holds an
item can show that it was covered; nobody can read the items back. The reference set is not
private (never-seen people or texts), so it is named by one unsalted hash of its records.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loka.base.errors import UsageError
from loka.base.files import file_sha256, salted_sha256
from loka.data.knowledge import KnowledgeSet
from loka.models import TOKENIZER_PATTERNS

__all__ = ["file_sha256", "directory_hashes", "salted_hashes", "knowledge_sha256", "new_salt"]


def _is_tokenizer(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in TOKENIZER_PATTERNS)


def directory_hashes(directory: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``{"model": {file: sha256}, "tokenizer": {file: sha256}}`` for every regular file of a
    model directory (relative paths, sorted; hidden files skipped)."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"model directory {str(root)!r} does not exist")
    out: dict[str, dict[str, str]] = {"model": {}, "tokenizer": {}}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        out["tokenizer" if _is_tokenizer(path.name) else "model"][relative] = file_sha256(path)
    return out


def new_salt() -> str:
    """A fresh random salt (32 hex digits)."""
    return secrets.token_hex(16)


def _record(fact: Any) -> str:
    return json.dumps(fact.to_record(), sort_keys=True, ensure_ascii=False)


def salted_hashes(knowledge: KnowledgeSet, salt: str) -> dict[str, Sequence[str]]:
    """Salted SHA-256 (``sha256(salt + NUL + item)``, hex) of every fact's record and of every
    person, each list sorted (so the order of the file is not kept either)."""
    if not isinstance(salt, str) or not salt:
        raise UsageError(f"salt must be a non-empty string, got {salt!r}")

    return {
        "facts": sorted(salted_sha256(salt, _record(f)) for f in knowledge),
        "people": sorted(salted_sha256(salt, p) for p in knowledge.subjects),
    }


def knowledge_sha256(knowledge: KnowledgeSet) -> str:
    """One SHA-256 of a set: its records' canonical JSON, one per line, in order."""
    return hashlib.sha256("\n".join(_record(f) for f in knowledge).encode()).hexdigest()
