"""TOFU on a CPU: train (or load from the cache) the original and the retain model, run each
unlearning method under one budget at each seed, print TOFU's table (with each method's compute
and, over seeds, its mean [min, max]) and the wall times, and save tofu.json + tofu.html.

    python bench/tofu.py [--split forget01|forget05|forget10] [--size default|tiny]
                         [--n-retain-authors N] [--data-dir DIR] [--cache-dir DIR] [--out DIR]
                         [--methods loka,gradient_ascent,task_vector] [--seed 0] [--seeds 3]
                         [--max-steps 500] [--check-every 25] [--target-forget-accuracy 0.1]
                         [--relative-target R] [--threads 1]

The data directory defaults to $LOKA_TOFU_DIR, else ``shared/data/tofu`` beside or inside the
repository. ``--cache-dir`` defaults to $LOKA_CACHE_DIR/tofu (else ~/.cache/loka/tofu); point it
at an empty directory to time the training too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from loka.benchmarks import tofu  # noqa: E402
from loka.methods import Budget  # noqa: E402


def _default_data_dir() -> str | None:
    if os.environ.get("LOKA_TOFU_DIR"):
        return os.environ["LOKA_TOFU_DIR"]
    for candidate in (ROOT / "shared/data/tofu", ROOT.parent / "shared/data/tofu"):
        if (candidate / "full.jsonl").is_file():
            return str(candidate)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="forget01", choices=tofu.SPLITS)
    parser.add_argument("--size", default="default", choices=tofu.SIZES)
    parser.add_argument("--n-retain-authors", type=int, default=None)
    parser.add_argument("--data-dir", default=_default_data_dir())
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None, help="directory for tofu.json and tofu.html")
    parser.add_argument("--methods", default=",".join(tofu.METHODS))
    parser.add_argument("--seed", type=int, default=0, help="training seed, author split, first method seed")
    parser.add_argument("--seeds", type=int, default=3, help="method seeds per method (seed, seed + 1, ...)")
    defaults = Budget()
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps, help="budget: most optimizer steps")
    parser.add_argument("--check-every", type=int, default=defaults.check_every, help="budget: steps between checks")
    parser.add_argument(
        "--target-forget-accuracy", type=float, default=defaults.target_forget_accuracy,
        help="budget: stop at the first check with forget accuracy at most this",
    )  # fmt: skip
    parser.add_argument(
        "--relative-target", type=float, default=None,
        help="stop at this share of the original's forget accuracy instead (0 < R <= 1; replaces the fixed target)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads for unlearning and evaluation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    report = tofu.run(
        args.split,
        n_retain_authors=args.n_retain_authors,
        size=args.size,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        methods=tuple(m for m in args.methods.split(",") if m),
        progress=not args.quiet,
        seed=args.seed,
        seeds=args.seeds,
        budget=Budget(args.target_forget_accuracy, args.check_every, args.max_steps),
        relative_target=args.relative_target,
    )
    print(report.table())
    print("\nwall seconds:", json.dumps(report.info["seconds"]))
    print("training seconds:", json.dumps({k: v["seconds"] for k, v in report.info["training"].items()}))
    print(f"models trained in this run: {report.info['built_now']}; cache: {report.info['cache_dir']}")
    print(f"total wall time: {time.perf_counter() - start:.1f} s")
    if args.out:
        print(f"saved {report.save(args.out)}")


if __name__ == "__main__":
    main()
