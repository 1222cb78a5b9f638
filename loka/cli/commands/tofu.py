"""``loka tofu``."""

from __future__ import annotations

import argparse
from pathlib import Path

from loka.cli.common import budget_from, method_options, progress_on

__all__ = ["tofu_command"]


def tofu_command(args: argparse.Namespace) -> int:
    from loka.base.files import check_output as check_output_dir
    from loka.benchmarks import tofu

    out = Path(args.out).expanduser()
    check_output_dir(out, overwrite=args.overwrite, marker="tofu.json")
    options = method_options(args.option, args.methods)
    report = tofu.run(
        args.split, n_retain_authors=args.retain_authors, size=args.size, data_dir=args.data_dir,
        cache_dir=args.cache_dir, methods=args.methods, method_options=options, progress=progress_on(args),
        seed=args.seed, seeds=args.seeds, budget=budget_from(args),
    )  # fmt: skip
    report.save(out)
    print(report.table())
    print(f"\nreport: {out / 'tofu.html'} (numbers in {out / 'tofu.json'})")
    return 0
