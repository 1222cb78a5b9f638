"""Why ``attribute``'s defaults differ by kind: first-order estimate vs exact patching, every component.

    python bench/defaults.py [--size default|tiny] [--world 0] [--facts 100] [--kinds heads neurons]

For each kind and each setting (the recommended one of :data:`attribution.api.RECOMMENDED`, and
the alternatives), scores every component of that kind on the first ``--facts`` forget facts of the
testbed with ``method="grad_x_act"`` and with ``method="activation_patching"`` in the same settings,
and prints the Spearman rank correlation over all components and the overlap of the two top-10%
sets. A default whose estimate disagrees with exact patching ranks components by the tangent's
error, not by what patching them does. (Exact patching of every neuron of the default testbed
takes minutes; heads take seconds.)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from attribution import attribute  # noqa: E402
from attribution.api import RECOMMENDED  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.testbed import load  # noqa: E402

SETTINGS = {
    "zero, log_odds": {"baseline": "zero", "metric": "log_odds"},
    "zero, log_prob": {"baseline": "zero", "metric": "log_prob"},
    "corrupt (noise), denoise, log_odds": {"baseline": "corrupt", "metric": "log_odds"},
    "corrupt (noise), denoise, log_prob": {"baseline": "corrupt", "metric": "log_prob"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=("tiny", "default"))
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--facts", type=int, default=100)
    parser.add_argument("--kinds", nargs="+", default=["heads"], choices=("heads", "neurons"))
    args = parser.parse_args()
    testbed = load(args.size, seed=args.world, progress=False)
    model = loka.load_model(testbed.model_dir)
    facts = KnowledgeSet(testbed.forget.facts[: args.facts], name="forget")
    print(f"testbed {args.size!r}, world {args.world}, {len(facts)} forget facts: grad_x_act vs exact, every component")
    for kind in args.kinds:
        recommended = RECOMMENDED["neuron" if kind == "neurons" else "head"]
        for name, options in SETTINGS.items():
            start = time.perf_counter()
            estimate = attribute(model, facts, components=kind, progress=False, **options).importance(kind).flatten()
            exact = attribute(
                model, facts, method="activation_patching", components=kind, progress=False, **options
            ).importance(kind)
            exact = exact.flatten()
            rho = float(spearmanr(estimate.numpy(), exact.numpy()).statistic)
            k = max(1, len(estimate) // 10)
            overlap = len(set(estimate.topk(k).indices.tolist()) & set(exact.topk(k).indices.tolist())) / k
            mark = " (recommended)" if all(options.get(key, value) == value for key, value in recommended.items()
                                           if key != "direction") else ""  # fmt: skip
            print(
                f"{kind:<8} {name:<36} Spearman {rho:+.3f}  top-10% overlap {overlap:.2f}"
                f"  ({time.perf_counter() - start:.0f} s){mark}"
            )


if __name__ == "__main__":
    main()
