"""``loka update``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from loka.base.errors import UsageError
from loka.base.files import check_output as new_output
from loka.cli.common import accuracy_text, read_knowledge, read_model

__all__ = ["read_updates", "update_command"]


def read_updates(path: str) -> tuple[Any, dict[str, str]]:
    from loka.data.knowledge import KnowledgeSet

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"updates file {path!r} does not exist (expected a .jsonl file)")
    records, targets = [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("new_target"), str) or not record["new_target"]:
            raise UsageError(f"{path}:{number}: each line needs prompt, target (the old answer) and new_target")
        targets.append(record.pop("new_target"))
        records.append(record)
    if not records:
        raise UsageError(f"updates file {path!r} has no updates")
    facts = KnowledgeSet.from_records(records, name=file.stem)
    same = [f.id for f, new in zip(facts, targets, strict=True) if new.strip() == f.target.strip()]
    if same:
        raise UsageError(f"fact {same[0]!r}: new_target equals the old target; nothing to update")
    return facts, {f.id: new for f, new in zip(facts, targets, strict=True)}


def update_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ablation import export_checkpoint, rewrite
    from loka.data.knowledge import KnowledgeSet

    out = new_output(args.out, overwrite=args.overwrite)
    facts, new_targets = read_updates(args.updates)
    retain = read_knowledge(args.retain)
    model = read_model(args.model, args)
    options = {} if args.lam is None else {"lam": args.lam}
    result = rewrite(
        model, facts, retain=retain, layers=args.layers, positions=args.positions, target=new_targets, **options
    )
    updated = KnowledgeSet(tuple(replace(f, target=new_targets[f.id]) for f in facts), name="updated")
    export_checkpoint(
        result.model, out, source=model, method="rewrite", settings=result.settings(), overwrite=args.overwrite
    )
    print(f"updated {len(facts)} facts in layers {list(result.layers)}; written to {out}")
    print(f"  new-target accuracy {accuracy_text(model, updated)} -> {accuracy_text(result.model, updated)}")
    print(f"  old-target accuracy {accuracy_text(model, facts)} -> {accuracy_text(result.model, facts)}")
    print(f"  retain accuracy     {accuracy_text(model, retain)} -> {accuracy_text(result.model, retain)}")
    return 0
