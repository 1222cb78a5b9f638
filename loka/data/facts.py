"""A fact (prompt, target, subject, relation, paraphrases, id) and how one is read from a JSON record."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loka.base.errors import UsageError

__all__ = ["Fact", "content_id", "fact_from_record"]

_FIELDS = ("id", "prompt", "target", "subject", "relation", "paraphrases")


@dataclass(frozen=True)
class Fact:
    """One piece of knowledge: ``prompt`` followed by ``target`` is what the model knows."""

    id: str
    prompt: str
    target: str
    subject: str | None = None
    relation: str | None = None
    paraphrases: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict; optional fields are written only when set."""
        record: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "target": self.target}
        if self.subject is not None:
            record["subject"] = self.subject
        if self.relation is not None:
            record["relation"] = self.relation
        if self.paraphrases:
            record["paraphrases"] = list(self.paraphrases)
        return record

    @property
    def text(self) -> str:
        """The prompt and target joined the way the model reads them."""
        return self.prompt + _joined_target(self.prompt, self.target)


def content_id(prompt: str, target: str) -> str:
    """``fact-`` + 12 hex digits of SHA-256 over prompt and target: the id of a record that has none.
    The same question-answer pair gets the same id in every file; different pairs never collide
    (in practice), unlike a per-file counter."""
    return "fact-" + hashlib.sha256(f"{prompt}\x00{target}".encode()).hexdigest()[:12]


def _joined_target(prompt: str, target: str) -> str:
    if not prompt or prompt[-1].isspace() or target[:1].isspace():
        return target
    return " " + target


def fact_from_record(record: Any, where: str) -> Fact:
    if not isinstance(record, Mapping):
        raise UsageError(f"{where}: a fact must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}; allowed keys are {list(_FIELDS)}")
    for key in ("prompt", "target"):
        if key not in record:
            raise UsageError(f"{where}: missing required key {key!r}")
        if not isinstance(record[key], str):
            raise UsageError(f"{where}: {key!r} must be a string, got {type(record[key]).__name__}")
    if not record["prompt"].strip():
        raise UsageError(f"{where}: empty prompt")
    if not record["target"].strip():
        raise UsageError(f"{where}: empty target")
    for key in ("id", "subject", "relation"):
        value = record.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise UsageError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    paraphrases = record.get("paraphrases") or []
    if not isinstance(paraphrases, list | tuple) or not all(isinstance(p, str) and p.strip() for p in paraphrases):
        raise UsageError(f"{where}: 'paraphrases' must be a list of non-empty strings")
    subject = record.get("subject")
    return Fact(
        id=record.get("id") or "",
        prompt=record["prompt"],
        target=record["target"],
        subject=subject,
        relation=record.get("relation"),
        paraphrases=tuple(paraphrases),
    )
