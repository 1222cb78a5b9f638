"""TOFU's JSONL files (../shared/data/tofu) as knowledge sets: ``load_tofu(directory, split)``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet

__all__ = ["TOFU_SPLITS", "load_tofu"]

# TOFU ---------------------------------------------------------------------------------------
# Offsets of each split inside `full` (TOFU's layout: forget splits are the last authors).
_TOFU_OFFSETS = {
    "full": 0,
    "retain90": 0,
    "retain95": 0,
    "retain99": 0,
    "forget01": 3960,
    "forget05": 3800,
    "forget10": 3600,
    "retain_perturbed": 0,
    "forget01_perturbed": 3960,
    "forget05_perturbed": 3800,
    "forget10_perturbed": 3600,
}
TOFU_SPLITS = tuple(_TOFU_OFFSETS) + ("holdout01", "holdout05", "holdout10", "real_authors", "world_facts")
_TOFU_QUESTIONS_PER_AUTHOR = 20


def load_tofu(
    directory: str | os.PathLike[str],
    split: str,
    *,
    template: str = "Question: {question}\nAnswer:",
) -> KnowledgeSet:
    """Read one TOFU split (Maini et al. 2024) from a directory of its JSONL files.

    ``question`` becomes the prompt through ``template``, ``answer`` the target. Facts get ids
    ``tofu/a{author}/q{k}`` that are the same in every split drawn from ``full`` (so a forget
    fact has the same id in ``forget01`` and ``full``); holdout and utility sets get their own.
    Paraphrased questions found in any ``*_perturbed.jsonl`` file of the directory become the
    facts' paraphrases.
    """
    if split not in TOFU_SPLITS:
        raise UsageError(f"unknown TOFU split {split!r}; choose one of {', '.join(TOFU_SPLITS)}")
    if "{question}" not in template:
        raise UsageError(f"template {template!r} must contain '{{question}}'")
    directory = Path(directory)
    path = directory / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"TOFU split {split!r} not found: {str(path)!r} does not exist")

    def read(p: Path) -> list[dict[str, Any]]:
        with p.open(encoding="utf-8") as lines:
            return [json.loads(line) for line in lines if line.strip()]

    paraphrased: dict[str, str] = {}
    for extra in sorted(directory.glob("*_perturbed.jsonl")):
        for row in read(extra):
            if row.get("paraphrased_question"):
                paraphrased.setdefault(row["question"], row["paraphrased_question"])
    records = []
    for i, row in enumerate(read(path)):
        missing = {"question", "answer"} - set(row)
        if missing:
            raise UsageError(f"{path}:{i + 1}: missing key(s) {sorted(missing)}")
        if split in _TOFU_OFFSETS:
            author, k = divmod(_TOFU_OFFSETS[split] + i, _TOFU_QUESTIONS_PER_AUTHOR)
            fact_id = f"tofu/a{author:03d}/q{k:02d}"
        elif split.startswith("holdout"):
            author, k = divmod(i, _TOFU_QUESTIONS_PER_AUTHOR)
            fact_id = f"tofu/holdout/a{author:03d}/q{k:02d}"
        else:
            fact_id = f"tofu/{split}/{i:03d}"
        para = paraphrased.get(row["question"])
        records.append(
            {
                "id": fact_id,
                "prompt": template.format(question=row["question"]),
                "target": row["answer"],
                **({"paraphrases": [template.format(question=para)]} if para else {}),
            }
        )
    return KnowledgeSet.from_records(records, name=f"tofu-{split}")
