"""``loka mask``."""

from __future__ import annotations

import argparse

from loka.base.errors import UsageError
from loka.base.files import check_output as new_output

__all__ = ["mask_command"]


def mask_command(args: argparse.Namespace) -> int:
    from ablation import AblationMask

    if args.show is not None:
        if args.scores is not None or args.out is not None:
            raise UsageError("--show takes only the mask file; do not give SCORES_DIR or --out with it")
        summary = AblationMask.load(args.show).summary()
        print(f"mask {args.show}: {summary['total']} components, mode {summary['mode']}")
        for kind in ("neurons", "heads"):
            if summary.get(kind):
                per_layer = "  ".join(f"L{i}:{n}" for i, n in enumerate(summary[kind]["per_layer"]))
                print(f"  {kind:<8} {summary[kind]['total']:>6}   {per_layer}")
        if "model" in summary:
            print(f"  for {summary['model']['architecture']} weights {summary['model']['weights_sha256'][:16]}")
        return 0
    import attribution

    if args.scores is None or args.out is None:
        raise UsageError("give SCORES_DIR and --out mask.json (or --show mask.json)")
    if (args.k is None) == (args.fraction is None):
        raise UsageError("give exactly one of --k N or --fraction F")
    out = new_output(args.out, overwrite=args.overwrite, is_dir=False)
    scores = attribution.AttributionScores.load(args.scores)
    mask = AblationMask.from_scores(
        scores, k=args.k, fraction=args.fraction, per_layer_max=args.per_layer_max, kind=args.kind,
        mode=args.mode, scale=args.scale,
    )  # fmt: skip
    mask.save(out)
    print(f"mask of {len(mask)} components ({mask.mode}) written to {out}")
    return 0
