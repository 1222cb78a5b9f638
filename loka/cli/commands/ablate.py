"""``loka ablate``."""

from __future__ import annotations

import argparse

from loka.base.files import check_output as new_output
from loka.cli.common import read_model

__all__ = ["ablate_command"]


def ablate_command(args: argparse.Namespace) -> int:
    from ablation import AblationMask, bake, export_checkpoint

    out = new_output(args.out, overwrite=args.overwrite)
    mask = AblationMask.load(args.mask)
    model = read_model(args.model, args)
    mask.validate(model)
    edited = bake(model, mask)
    export_checkpoint(edited, out, mask=mask, source=model, method="bake", overwrite=args.overwrite)
    print(f"baked {len(mask)} components ({mask.mode}) into {out}")
    return 0
