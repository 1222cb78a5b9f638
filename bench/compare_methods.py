"""Every unlearning method on the testbed, judged by the shared evaluation against the oracle.

    python bench/compare_methods.py [--size default|tiny] [--cache-dir DIR]

Prints, per method: forget / retain / paraphrase-forget accuracy (retain measured on all retain
people; the methods hold a fifth of them out for validation), LOSS-attack MIA AUC, relearning
(held-out forget half after 20 fine-tuning steps on the other half), probe accuracy on forget, and
the method's wall seconds. The oracle row is the exact retrain.

MIA is the shared evaluation's LOSS attack over the whole text (BOS + prompt + target, the subject's
name included); "MIA-ans" is the same attack scored on the answer tokens only (mean target
log-prob), which shows whether a method made the *facts* look unseen even where the *names* are
still memorised.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

import loka  # noqa: E402
from loka.evaluation import evaluate  # noqa: E402
from loka.methods import unlearn  # noqa: E402
from loka.metrics import score_facts  # noqa: E402


def answer_mia(model, forget, holdout) -> float:
    """ROC AUC of the LOSS attack on the answer tokens only (members: forget; non-members: holdout)."""
    scores = [score_facts(model, ks) for ks in (forget, holdout)]
    values = torch.cat([s.log_prob / s.n_target_tokens for s in scores]).numpy()
    return float(roc_auc_score(np.r_[np.ones(len(forget)), np.zeros(len(holdout))], values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=("default", "tiny"))
    parser.add_argument("--seed", type=int, default=0, help="the testbed world's seed")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--methods", default="loka,gradient_ascent,task_vector")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and leaves the other cores alone
    tb = loka.testbed.load(args.size, seed=args.seed, cache_dir=args.cache_dir, progress=False)
    model = loka.load_model(tb.model_dir)
    sets = dict(forget=tb.forget, retain=tb.retain, holdout=tb.holdout)
    oracle = evaluate(tb.oracle_dir, **sets, label="oracle")
    print(
        f"testbed {args.size} seed {args.seed}: oracle training took {tb.info['training']['oracle']['seconds']:.0f} s"
    )
    header = (
        f"{'method':<16}{'forget':>8}{'retain':>8}{'para':>8}{'MIA':>8}{'MIA-ans':>8}{'relearn':>9}{'probe':>8}{'sec':>8}"
        "  quality"
    )
    print(header + "\n" + "-" * len(header))

    def row(name: str, model, ev, seconds: float | None) -> None:
        ans = answer_mia(loka.load_model(model) if isinstance(model, str | Path) else model, tb.forget, tb.holdout)
        sec = f"{seconds:>8.1f}" if seconds is not None else f"{'-':>8}"
        print(
            f"{name:<16}{ev.forget_accuracy:>8.3f}{ev.retain_accuracy:>8.3f}{ev.paraphrase_forget_accuracy:>8.3f}"
            f"{ev.membership_inference_auc:>8.3f}{ans:>8.3f}{ev.relearning.after:>9.3f}{ev.probe.forget_accuracy:>8.3f}{sec}"
            f"  {ev.forget_quality}",
            flush=True,
        )

    row("original", model, evaluate(model, **sets, oracle=oracle), None)
    row("oracle", tb.oracle_dir, oracle, tb.info["training"]["oracle"]["seconds"])
    options = {"loka": {"reference": tb.holdout}, "loka-rewrite": {"reference": tb.holdout, "edit": "rewrite"}}
    for name in args.methods.split(","):
        start = time.perf_counter()
        method = "loka" if name.startswith("loka") else name
        result = unlearn(model, tb.forget, tb.retain, method=method, progress=False, **options.get(name, {}))
        seconds = time.perf_counter() - start
        row(name, result.model, evaluate(result.model, **sets, oracle=oracle), seconds)
        if method == "loka":
            print(f"{'':16}chosen: {result.config['chosen']}", flush=True)


if __name__ == "__main__":
    main()
