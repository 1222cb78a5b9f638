"""Every unlearning method on several testbed worlds, under the protocol, against each world's oracle.

    python bench/compare_methods.py [--size default|tiny] [--worlds 0,1,2] [--seeds 3] [--out DIR]

The same configuration as ``loka demo`` (``loka.comparison.compare_testbed`` with its defaults:
the testbed protocol, one budget for every method, method seeds, a random control per method),
run on each world seed (each world has its own original model and its own oracle). Prints each
world's table (mean [95% interval] over people and method seeds) and then, per method and column,
the mean over worlds with the lowest and highest world mean: a number that holds on one world
only shows up as a wide spread. ``--out DIR`` also saves each world's comparison (JSON + report).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import loka  # noqa: E402
from loka.comparison import COLUMNS, compare_testbed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=("default", "tiny"))
    parser.add_argument("--worlds", default="0,1,2", help="testbed world seeds, comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="method seeds per method and world")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--methods", default="loka,gradient_ascent,task_vector")
    parser.add_argument("--out", default=None, help="save each world's comparison under DIR/world-N")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and leaves the other core alone
    worlds = [int(w) for w in args.worlds.split(",") if w.strip()]
    per_world = {}
    for world in worlds:
        start = time.perf_counter()
        tb = loka.testbed.load(args.size, seed=world, cache_dir=args.cache_dir, progress=False)
        comparison = compare_testbed(tb, methods=args.methods.split(","), seeds=args.seeds, progress=False)
        print(comparison.table())
        print(f"(world {world}: {time.perf_counter() - start:.0f} s including the testbed build if any)\n", flush=True)
        if args.out:
            comparison.save(Path(args.out) / f"world-{world}", overwrite=True)
        per_world[world] = comparison
    names = list(next(iter(per_world.values())).names)
    columns = [c for c in COLUMNS if c != "extract"]
    print(f"over {len(worlds)} worlds: mean of the world means [lowest, highest world mean]")
    print(f"{'method':<12}" + "".join(f"{c:>19}" for c in columns))
    for name in names:
        cells = ""
        for column in columns:
            means = [
                i.mean
                for c in per_world.values()
                if (i := c[name].interval(column)) is not None and c.informative().get(column, True) is not False
            ]
            cells += (
                f"{np.mean(means):>7.3f} [{min(means):.2f},{max(means):.2f}]" if means else f"{'uninformative':>19}"
            )
        print(f"{name:<12}{cells}")


if __name__ == "__main__":
    main()
