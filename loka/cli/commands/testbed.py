"""``loka testbed``."""

from __future__ import annotations

import argparse
import time

from loka.cli.common import progress_on

__all__ = ["testbed_command"]


# --- commands ----------------------------------------------------------------------------------
def testbed_command(args: argparse.Namespace) -> int:
    from loka import testbed

    start = time.perf_counter()
    tb = testbed.load(args.size, seed=args.seed, cache_dir=args.cache_dir, progress=progress_on(args))
    print(f"testbed {args.size} (seed {args.seed}): {tb.root}")
    print(
        f"  {len(tb.world.people)} people x {len(tb.world.relations)} relations; "
        f"forget {len(tb.forget)} / retain {len(tb.retain)} / holdout {len(tb.holdout)} facts; "
        f"{len(tb.passages)} passages"
    )
    print(f"  original: {tb.model_dir}\n  oracle:   {tb.oracle_dir}")
    training = tb.info["training"]
    print(
        f"  built in {tb.build_seconds:.1f} s (original {training['original']['seconds']:.1f} s, "
        f"oracle {training['oracle']['seconds']:.1f} s of training); loaded in {time.perf_counter() - start:.1f} s\n"
    )
    print(tb.accuracy_table().format())
    return 0
