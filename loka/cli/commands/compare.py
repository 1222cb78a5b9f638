"""``loka compare`` and ``loka demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

from loka.base.errors import UsageError
from loka.cli.common import DEMO_METHODS, WORKERS, budget_from, method_options, progress_on, read_knowledge, read_model

__all__ = ["compare_command", "demo_command"]


def compare_command(args: argparse.Namespace) -> int:
    from loka.base.files import check_output as check_output_dir
    from loka.comparison.outcomes import HTML_FILE
    from loka.comparison.running import compare, compare_testbed

    out = Path(args.out).expanduser()
    check_output_dir(out, overwrite=args.overwrite, marker="comparison.json")
    methods = args.methods
    options = method_options(args.option, methods)
    common = dict(methods=methods, options=options, control=not args.no_control, seed=args.seed)
    common.update(
        progress=progress_on(args), seeds=args.seeds, control_seeds=args.control_seeds, budget=budget_from(args)
    )
    common["locations"] = args.locations if "loka" in methods else ()
    common["location_seeds"] = None if args.control_seeds is None else max(1, args.control_seeds)
    if args.model is not None and (args.workers or 1) > 1:
        raise UsageError("--workers > 1 runs on the testbed; with --model, leave it out")
    common["workers"] = args.workers if args.workers is not None else (WORKERS if args.model is None else 1)
    if args.model is not None:
        missing = [f"--{n}" for n in ("forget", "retain", "holdout") if getattr(args, n) is None]
        if missing:
            raise UsageError(f"with --model, also give {' '.join(missing)}")
        sets = {name: read_knowledge(getattr(args, name)) for name in ("forget", "retain", "holdout", "passages")}
        comparison = compare(read_model(args.model, args), **sets, oracle=args.oracle, **common)
    else:
        given = [f"--{n}" for n in ("forget", "retain", "holdout", "oracle", "passages") if getattr(args, n)]
        if given:
            raise UsageError(f"{' '.join(given)} need --model; without it compare runs on the testbed")
        from loka import testbed

        tb = testbed.load(args.size, seed=args.seed, cache_dir=args.cache_dir, progress=progress_on(args))
        comparison = compare_testbed(tb, **common)
    comparison.save(out, overwrite=args.overwrite)
    print(comparison.table())
    print()
    for name, verdict in comparison.verdicts().items():
        print(f"{name}: {verdict}")
    for name, verdict in comparison.localization().items():
        print(f"localization, {name}: {verdict}")
    print(f"\nreport: {out / HTML_FILE}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    for name in ("model", "forget", "retain", "holdout", "oracle", "passages", "option"):
        setattr(args, name, None)
    args.methods, args.no_control = list(DEMO_METHODS), False
    return compare_command(args)
