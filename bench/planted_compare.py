"""LOKA's deletion on the planted testbed, every column, against the exact oracle and random deletion.

    python bench/planted_compare.py [--size default] [--ratio 0.02] [--plant-seed 0] [--world 0]
                                    [--share 1.4] [--seeds 3] [--mode zero] [--workers 1] [--out DIR]

The planted model (:func:`loka.testbed.planted.load_planted`) knows 4 new people whose facts were
trained into known neurons; the model before planting never saw them, so it is the exact oracle.
:func:`loka.compare` with:

- forget: those people's facts (their other wordings become the paraphrase set);
- retain: the testbed's retain people that planting never used;
- holdout: the testbed's holdout people.

It runs LOKA with ``edit="ablate"`` (``--mode``, baked, nothing trained) on ``--share`` x the
answer key's size (the issue's goal allows 2x), and its ``random`` location control (the same
per-layer counts). Every column is printed, ``benign`` (a fine-tune on retain facts alone)
included, with intervals over people and ``--seeds`` seeds (the attribution's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.comparison import compare  # noqa: E402
from loka.protocol import Protocol  # noqa: E402
from loka.testbed.planted import load_planted  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default")
    parser.add_argument("--ratio", type=float, default=0.02)
    parser.add_argument("--plant-seed", type=int, default=0)
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--share", type=float, default=1.4, help="the deleted count, in answer-key sizes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mode", default="zero", choices=("zero", "mean"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    planted = load_planted(args.size, ratio=args.ratio, world_seed=args.world, seed=args.plant_seed)
    count = round(args.share * int(planted.mask.sum()))
    protocol = Protocol.from_sets(forget=planted.forget, retain=planted.retain, holdout=planted.testbed.holdout)
    print(f"planted {args.size} ratio {args.ratio:g} seed {args.plant_seed}: key {int(planted.mask.sum())} neurons; "
          f"deleting {count} ({args.mode}); {protocol.describe()}")  # fmt: skip
    model = planted.model_dir if args.workers > 1 else loka.load_model(planted.model_dir)
    result = compare(
        model, protocol=protocol, oracle=planted.oracle_dir, methods=("loka",), seeds=args.seeds,
        options={"loka": {"edit": "ablate", "ablate_mode": args.mode, "size": count}}, locations=("random",),
        control=False, workers=args.workers, progress=False, title="LOKA deletion on the planted testbed",
    )  # fmt: skip
    print(result.table())
    for name, verdict in result.localization().items():
        print(f"{name}: {verdict}")
    if args.out:
        print(f"wrote {result.save(args.out)}")


if __name__ == "__main__":
    main()
