"""Erased or suppressed? Every method x every attack on the testbed, beside the oracle.

    python bench/erasure.py [--size default] [--world 0] [--seeds 3]
                            [--methods loka,gradient_ascent,npo,rmu,task_vector]
                            [--variant "NAME:KEY=VALUE,KEY=VALUE" ...] [--locations random]
                            [--max-steps 500] [--threads 1] [--out DIR]

:func:`loka.comparison.compare_testbed` with the methods, LOKA's erasure variants as extra rows
(``--variant "loka subject:erase=subject"``; the default variants are LOKA's erasure options one
at a time) and LOKA's random-location control, under one budget, 3 method seeds, full evaluation:
forget / retain / paraphrase accuracy, whole-text and answer-only membership inference, the
relearning attack (worst case), the quantization attack (8 and 4 bits), the logit lens and the
probe, each with its 95% interval and the oracle's row beside. Prints the table, the verdicts, the
localization verdicts and each row's gap to the oracle on the issue's goals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.comparison import compare_testbed  # noqa: E402
from loka.methods import Budget  # noqa: E402

DEFAULT_VARIANTS = (
    "loka subject:erase=subject",
    "loka reinit:reinit=1.0",
    "loka adversary:adversary_weight=1.0",
)


def _variant(text: str) -> tuple[str, dict[str, object]]:
    name, _, pairs = text.partition(":")
    options: dict[str, object] = {}
    for pair in filter(None, pairs.split(",")):
        key, _, value = pair.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return name, options


def _goals(comparison: loka.Comparison) -> list[str]:
    """Each row against the issue's goals: relearn <= oracle + 0.10, forget <= oracle + 0.05,
    retain >= 0.95 x original, |MIA - oracle| <= 0.05 (whole text and answers), quant4 and lens
    <= oracle + 0.10."""
    oracle, original = comparison["oracle"], comparison["original"]

    def mean(outcome: object, column: str) -> float | None:
        interval = outcome.interval(column)  # type: ignore[attr-defined]
        return None if interval is None else interval.mean

    lines = []
    for outcome in comparison.outcomes:
        if outcome.name in ("original", "oracle"):
            continue
        checks = []
        for column, kind, bound in (
            ("forget", "above", 0.05), ("relearn", "above", 0.10), ("quant4", "above", 0.10),
            ("lens", "above", 0.10), ("MIA", "abs", 0.05), ("MIA ans", "abs", 0.05),
        ):  # fmt: skip
            mine, theirs = mean(outcome, column), mean(oracle, column)
            if mine is None or theirs is None:
                continue
            gap = mine - theirs if kind == "above" else abs(mine - theirs)
            checks.append(f"{column} {gap:+.2f}{'' if gap <= bound else ' (miss)'}")
        retain, retain0 = mean(outcome, "retain"), mean(original, "retain")
        if retain is not None and retain0:
            ratio = retain / retain0
            checks.append(f"retain x{ratio:.2f}{'' if ratio >= 0.95 else ' (miss)'}")
        lines.append(f"{outcome.name:<20} vs oracle: " + ", ".join(checks))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=("default", "tiny"))
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="loka,gradient_ascent,npo,rmu,task_vector")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME:KEY=VALUE,...")
    parser.add_argument("--locations", default="random", help="LOKA's location controls ('' for none)")
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write comparison.json + report.html here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = dict(_variant(v) for v in (args.variant if args.variant is not None else DEFAULT_VARIANTS))
    variants = {k: v for k, v in variants.items() if k}
    start = time.perf_counter()
    tb = loka.testbed.load(args.size, seed=args.world, progress=False)
    comparison = compare_testbed(
        tb, methods=[m for m in args.methods.split(",") if m], variants=variants,
        locations=[x for x in args.locations.split(",") if x], location_seeds=args.seeds, seeds=args.seeds,
        control=False, budget=Budget(max_steps=args.max_steps), progress=False,
    )  # fmt: skip
    print(comparison.table())
    print()
    for line in _goals(comparison):
        print(line)
    print()
    for name, verdict in comparison.localization().items():
        print(f"localization, {name}: {verdict}")
    print(f"\n{time.perf_counter() - start:.0f} s in all")
    if args.out is not None:
        comparison.save(args.out, overwrite=True)


if __name__ == "__main__":
    main()
