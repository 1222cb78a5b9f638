"""Every unlearning method on the testbed, judged by the shared evaluation against the oracle.

    python bench/compare_methods.py [--size default|tiny] [--cache-dir DIR]

Prints, per method: forget / retain / paraphrase-forget accuracy (retain measured on all retain
people; the methods hold a fifth of them out for validation), LOSS-attack MIA AUC, relearning
(held-out forget half after 20 fine-tuning steps on the other half), probe accuracy on forget, and
the method's wall seconds. The oracle row is the exact retrain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.evaluation import evaluate  # noqa: E402
from loka.methods import unlearn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=("default", "tiny"))
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    tb = loka.testbed.load(args.size, cache_dir=args.cache_dir, progress=False)
    model = loka.load_model(tb.model_dir)
    sets = dict(forget=tb.forget, retain=tb.retain, holdout=tb.holdout)
    oracle = evaluate(tb.oracle_dir, **sets, label="oracle")
    print(f"testbed {args.size}: oracle training took {tb.info['training']['oracle']['seconds']:.0f} s")
    header = (
        f"{'method':<16}{'forget':>8}{'retain':>8}{'para':>8}{'MIA':>8}{'relearn':>9}{'probe':>8}{'sec':>8}  quality"
    )
    print(header + "\n" + "-" * len(header))

    def row(name: str, ev, seconds: float | None) -> None:
        sec = f"{seconds:>8.1f}" if seconds is not None else f"{'-':>8}"
        print(
            f"{name:<16}{ev.forget_accuracy:>8.3f}{ev.retain_accuracy:>8.3f}{ev.paraphrase_forget_accuracy:>8.3f}"
            f"{ev.membership_inference_auc:>8.3f}{ev.relearning.after:>9.3f}{ev.probe.forget_accuracy:>8.3f}{sec}"
            f"  {ev.forget_quality}",
            flush=True,
        )

    row("original", evaluate(model, **sets, oracle=oracle), None)
    row("oracle", oracle, tb.info["training"]["oracle"]["seconds"])
    for method, options in (
        ("loka", {"reference": tb.holdout}),
        ("gradient_ascent", {}),
        ("task_vector", {}),
    ):
        start = time.perf_counter()
        result = unlearn(model, tb.forget, tb.retain, method=method, progress=False, **options)
        row(method, evaluate(result.model, **sets, oracle=oracle), time.perf_counter() - start)


if __name__ == "__main__":
    main()
