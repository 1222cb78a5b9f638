"""Where the seconds go, as ratios measured in one run (so that the next person sees a regression).

    python bench/speed.py [--size default|tiny] [--world 0] [--seed 0] [--repeat 1]

On one testbed (loaded from the cache; its recorded build time is printed beside the goal of
120 s), in this one process, each timed the same way (``time.perf_counter`` around the call):

* one evaluation of the original (:func:`loka.evaluate` with the protocol, no oracle), the same
  evaluation read back from an evaluation cache (:mod:`loka.evaluation.cache`: a comparison on
  the testbed reads its original's and oracle's this way), and each of its parts alone:
  scoring, membership, the relearning grid, benign relearning, LoRA relearning, the probe,
  quantization, the logit lens (their shares of the whole);
* ``unlearn`` with LOKA's defaults, NPO and gradient ascent at the same budget and seed:
  seconds and the ratios LOKA / NPO and NPO / gradient ascent (issue goal: LOKA <= NPO);
* a LOKA location control after its LOKA run (ranking reused) against from scratch;
* a training step (the relearning attack's batch, AdamW) with GPT-2's activation fused
  (:mod:`loka.models.activations`, what loka runs) against ``transformers``' seven-kernel module.

``--repeat N`` times each N times and keeps the fastest (a busy machine inflates single runs).
Run it on a quiet machine with ``OMP_NUM_THREADS=1``; compare ratios, not seconds, across machines.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import AutoModelForCausalLM  # noqa: E402

import loka  # noqa: E402
from loka.data.encoding import encode_facts  # noqa: E402
from loka.evaluation.attacks.logit_lens import logit_lens  # noqa: E402
from loka.evaluation.attacks.probe import fit_probe  # noqa: E402
from loka.evaluation.attacks.quantization import quantization_attack  # noqa: E402
from loka.evaluation.attacks.relearning import (  # noqa: E402
    LORA_LRS,
    LORA_RANK,
    LORA_SPLIT_SEEDS,
    benign_relearn,
    relearn,
)
from loka.evaluation.cache import cached_evaluate  # noqa: E402
from loka.methods import unlearn  # noqa: E402
from loka.methods.localized import localization  # noqa: E402
from loka.models.activations import fuse_activations  # noqa: E402
from loka.protocol import Protocol  # noqa: E402
from loka.scoring.metrics import (  # noqa: E402
    lm_loss,
    score_facts,
    text_token_log_probs,
)


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """The fastest of ``repeat`` runs of ``call`` (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=("tiny", "default"))
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    testbed = loka.testbed.load(args.size, args.world, progress=False)
    info = json.loads((testbed.root / "testbed.json").read_text())
    print(f"{args.size} testbed, world {args.world}: built in {info['build_seconds']:.0f} s (goal 120 s on 2 cores)")
    model = loka.load_model(testbed.model_dir)
    tokenizer = model.tokenizer
    protocol = Protocol.from_testbed(testbed)
    forget, retain = protocol.forget, protocol.retain_eval
    attack_retain, nonmembers = protocol.retain_train, protocol.nonmembers
    r = args.repeat

    whole, _ = timed(lambda: loka.evaluate(model, protocol=protocol), r)
    parts = {
        "scoring": lambda: [score_facts(model, ks, tokenizer=tokenizer) for ks in (forget, retain)],
        "membership": lambda: [text_token_log_probs(model, ks, tokenizer=tokenizer) for ks in (forget, nonmembers)],
        "relearning": lambda: relearn(model, tokenizer, forget, attack_retain),
        "benign relearning": lambda: benign_relearn(model, tokenizer, forget, attack_retain),
        "LoRA relearning": lambda: relearn(
            model, tokenizer, forget, attack_retain, lrs=LORA_LRS, split_seeds=LORA_SPLIT_SEEDS, lora_rank=LORA_RANK
        ),  # fmt: skip
        "probe": lambda: fit_probe(model, tokenizer, forget, attack_retain, seed=0),
        "quantization": lambda: quantization_attack(model, tokenizer, forget, retain),
        "logit lens": lambda: logit_lens(model, tokenizer, forget),
    }
    with tempfile.TemporaryDirectory() as kept:  # the testbed keeps its original's and oracle's evaluations
        cached_evaluate(model, Path(kept), protocol=protocol, label="original")
        read_back, _ = timed(lambda: cached_evaluate(model, Path(kept), protocol=protocol, label="original"), r)
    print(f"\nevaluation of one model: {whole:.1f} s (goal 5 s); read back from the evaluation cache "
          f"{read_back:.2f} s (read back / evaluated = {read_back / whole:.3f}); its parts alone:")  # fmt: skip
    for name, call in parts.items():
        seconds, _ = timed(call, r)
        print(f"  {name:<18} {seconds:6.1f} s  {seconds / whole:5.0%}")

    options = dict(validation=protocol.retain_validation, reference=protocol.reference, augment=protocol.augment,
                   seed=args.seed, progress=False)  # fmt: skip
    runs = {}
    for method in ("loka", "npo", "gradient_ascent"):
        localization._SCORED.clear()
        runs[method], _ = timed(lambda m=method: unlearn(model, forget, protocol.retain_train, method=m, **options), r)
    print("\nunlearn, default budget, seed", args.seed, ": " + ", ".join(f"{k} {v:.1f} s" for k, v in runs.items()))
    print(f"  loka / npo = {runs['loka'] / runs['npo']:.2f} (goal <= 1); "
          f"npo / gradient_ascent = {runs['npo'] / runs['gradient_ascent']:.2f}")  # fmt: skip

    control = dict(location="random", location_seed=args.seed)
    localization._SCORED.clear()
    unlearn(model, forget, protocol.retain_train, method="loka", **options)
    reused, _ = timed(lambda: unlearn(model, forget, protocol.retain_train, method="loka", **options, **control), 1)
    localization._SCORED.clear()
    scratch, _ = timed(lambda: unlearn(model, forget, protocol.retain_train, method="loka", **options, **control), 1)
    print(
        f"\nloka @random after its loka run {reused:.1f} s, from scratch {scratch:.1f} s: "
        f"reused / scratch = {reused / scratch:.2f}"
    )

    batch = encode_facts(forget.facts + protocol.retain_train.facts[: 4 * len(forget)], tokenizer)

    def steps(fused: bool) -> Callable[[], None]:
        plain = AutoModelForCausalLM.from_pretrained(testbed.model_dir, attn_implementation="eager")
        if fused:
            fuse_activations(plain)
        optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-5)

        def run() -> None:
            for _ in range(5):
                loss = lm_loss(plain, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        return run

    fused, _ = timed(steps(True), max(r, 3))
    separate, _ = timed(steps(False), max(r, 3))
    print(f"\n5 training steps on {len(batch)} facts: activation fused {fused:.2f} s, as transformers runs it "
          f"{separate:.2f} s: fused / separate = {fused / separate:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
