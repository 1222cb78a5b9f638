"""Evaluations kept on disk: the same model under the same protocol, options and code is read back
instead of evaluated again (the testbed keeps its original's and oracle's: they depend on nothing
a comparison changes)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import transformers

from loka.base.files import json_default
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.pipeline import evaluate
from loka.evaluation.result import UnlearningEvaluation
from loka.models import fingerprint
from loka.protocol import Protocol

__all__ = ["cached_evaluate", "evaluation_key"]

_CODE = ("evaluation", "scoring", "data", "models", "base", "protocol.py")
"""What an evaluation's numbers depend on in loka's own source (hashed into the key)."""


def evaluation_key(model: Any, protocol: Protocol, options: dict[str, Any]) -> str:
    """sha256 of what determines ``evaluate(model, protocol=protocol, **options)``: the model's
    weights, every fact of every set of the protocol, the options, the source of the packages the
    evaluation runs (:data:`_CODE`), and the torch and transformers versions."""
    sets = {
        f.name: repr(value.facts) if isinstance(value, KnowledgeSet) else repr(value)
        for f in fields(protocol)
        for value in [getattr(protocol, f.name)]
    }
    parts = {
        "weights": fingerprint(model).weights_sha256,
        "protocol": hashlib.sha256(json.dumps(sets, sort_keys=True).encode()).hexdigest(),
        "options": json.dumps(options, sort_keys=True, default=repr),
        "code": _code_sha256(),
        "versions": [torch.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_evaluate(
    model: Any, directory: Path | None, *, protocol: Protocol, label: str, **options: Any
) -> UnlearningEvaluation:
    """``evaluate(model, protocol=protocol, label=label, **options)``, read from ``directory``
    when an evaluation with the same :func:`evaluation_key` is there (else computed and written
    there; ``directory=None`` computes). A file that does not read back is computed again."""
    if directory is None:
        return evaluate(model, protocol=protocol, label=label, **options)
    path = Path(directory) / f"{label}-{evaluation_key(model, protocol, options)[:24]}.json"
    if path.exists():
        try:
            return UnlearningEvaluation.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass
    result = evaluate(model, protocol=protocol, label=label, **options)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(result.to_dict(), default=json_default) + "\n")
        os.replace(partial, path)  # whole or absent, whoever writes it at the same time
    except OSError:  # a read-only cache: the evaluation is still right, only not kept
        partial.unlink(missing_ok=True)
    return result


@functools.cache
def _code_sha256() -> str:
    root, digest = Path(__file__).resolve().parents[1], hashlib.sha256()
    for name in _CODE:
        for path in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()
