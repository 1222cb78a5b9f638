"""A LOKA location control after its LOKA run reads the located ranking instead of attributing again.

    python bench/control_reuse.py [--size default|tiny] [--world 0] [--seed 0] [--location random]

Runs ``unlearn(method="loka")``, then the same call with ``location=...`` (the control reuses the
ranking, :func:`loka.methods.localized.localization._score`), then the control again with the
memo cleared (from scratch), and prints the seconds of each, the ratio reused / from scratch, and
whether the two controls' weights are bit-identical (they must be: attribution is seeded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.methods import unlearn  # noqa: E402
from loka.methods.localized import localization  # noqa: E402
from loka.protocol import Protocol  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=("tiny", "default"))
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--location", default="random", choices=("random", "least", "complement", "layers"))
    args = parser.parse_args()
    testbed = loka.testbed.load(args.size, args.world, progress=False)
    model = loka.load_model(testbed.model_dir)
    protocol = Protocol.from_testbed(testbed)
    options = dict(validation=protocol.retain_validation, reference=protocol.reference, augment=protocol.augment,
                   seed=args.seed, progress=False)  # fmt: skip
    control = dict(location=args.location, location_seed=args.seed)

    def timed(**extra: object) -> tuple[float, object]:
        start = time.perf_counter()
        result = unlearn(model, protocol.forget, protocol.retain_train, method="loka", **options, **extra)
        return time.perf_counter() - start, result

    located_s, _ = timed()
    reused_s, reused = timed(**control)
    localization._SCORED.clear()
    scratch_s, scratch = timed(**control)
    same = all(
        torch.equal(a, b)
        for a, b in zip(reused.model.state_dict().values(), scratch.model.state_dict().values(), strict=True)
    )
    print(f"{args.size} testbed, world {args.world}, seed {args.seed}: loka {located_s:.1f} s; @{args.location} "
          f"after it {reused_s:.1f} s (ranking reused); from scratch {scratch_s:.1f} s; "
          f"reused / scratch = {reused_s / scratch_s:.2f}; same weights: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
