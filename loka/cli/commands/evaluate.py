"""``loka evaluate``."""

from __future__ import annotations

import argparse
import json

from loka.base.files import check_output as new_output
from loka.cli.common import read_knowledge, read_model
from loka.cli.launcher import is_main_process

__all__ = ["evaluate_command"]


def evaluate_command(args: argparse.Namespace) -> int:
    from loka.evaluation.pipeline import evaluate

    out = new_output(args.json, overwrite=args.overwrite, is_dir=False) if args.json else None
    sets = {name: read_knowledge(getattr(args, name)) for name in ("forget", "retain", "holdout", "passages")}
    model = read_model(args.model, args)
    evaluation = evaluate(
        model, **sets, oracle=args.oracle, probe=not args.no_probe, relearn=not args.no_relearn, seed=args.seed
    )
    print(evaluation.table())
    print(evaluation.verdict())
    if out is not None and is_main_process():  # under torchrun, rank 0 writes
        out.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        print(f"written to {out}")
    return 0
