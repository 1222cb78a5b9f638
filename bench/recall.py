"""Recall of every locator against a known answer (the planted testbed), over people and seeds.

    python bench/recall.py [--size default|tiny] [--ratios 0.02 0.005] [--seeds 0 1 2] [--people 4]
                           [--locators NAME ...] [--patching] [--retain-facts 60] [--out DIR]

For each planting ratio and planting seed, :func:`loka.testbed.planted.load_planted` trains the
facts of ``--people`` new people into that share of the MLP neurons each, then puts back the
trained neurons a person's facts do not need (the pruning step); what remains is the answer key,
and r is its share of all neurons (per person). Every locator scores the neurons on one person's
trained wordings, and :func:`attribution.recall.recall_at_k` reads the share of that person's
answer key among the top k of each layer (``per layer``, Chang et al.'s Recall@k%) and among the
top k of all neurons (``global``), for k = r, 2r and 5r (k as a fraction of each layer's
neurons, or of all neurons, rounded half up). Pruning leaves the key uneven over the layers, so
per-layer recall at k = r cannot reach 1 where a layer holds more than its share: ``global`` is
the measure to read.
Printed: mean and 95% interval over people and seeds (:func:`loka.evaluation.intervals.mean_interval`)
and each locator's seconds per person. Random scores recall k by construction.

Locators (``--locators``, default all but exact patching; ``--patching`` adds the exact ones):

- ``grad_x_act``: the default of ``attribute`` (for neurons, zero ablation read in log-odds,
  which do not saturate on facts the model is sure of: :mod:`attribution.metric`);
  ``grad_x_act corrupt`` the former default (noise-corrupt, denoise, log-probability),
  ``grad_x_act corrupt log_odds`` the same in log-odds; ``grad_x_act zero`` / ``mean`` (ablate,
  log-probability); ``grad_x_act unseen`` (the former default's denoising, with the subject replaced
  by one of 300 people the world generator makes up and nobody trained on, 8 per fact, in place
  of noise); ``grad_x_act contrast`` (forget minus ``--retain-facts`` retain facts, standardised,
  both corrupt/denoise: what LOKA locates with);
- variants of the default: ``grad_x_act last`` (the last prompt token only), ``grad_x_act minus
  retain`` / ``ratio retain`` (contrasted with the retain facts), ``grad_x_act minus unseen``
  (minus the importance on facts about the testbed's holdout people, whom no model trained on);
- peeling (:func:`attribution.peeling.peel`: 10 rounds, each zero-ablating the top 0.2% of neurons
  and attributing again): ``peel grad_x_act`` (default settings), ``peel1 grad_x_act`` (30 rounds
  of one neuron), ``peel grad_x_act corrupt`` / ``zero``;
- ``integrated_gradients`` (20 steps, zero baseline; ``integrated_gradients log_odds``),
  ``activation_magnitude`` (mean |a| x ||W_out row||);
- learned masks, "remove" (the facts' likelihood down under an L0 / L1 sparsity, weights frozen):
  ``mask hard_concrete`` / ``mask slimming`` (``mask slimming log_odds`` with the log-odds metric),
  ``mask hard_concrete retain`` and ``mask slimming retain`` (with a retain term on
  ``--retain-facts`` retain facts; the latter with notebook 04's settings, 100 steps);
- exact activation patching: ``patching`` (the default settings), ``patching zero`` / ``mean`` /
  ``corrupt``, ``patching minus unseen``, ``peel patching`` (5 peeling rounds of exact patching);
- ``random``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from attribution import attribute  # noqa: E402
from attribution.corruption import Corruption  # noqa: E402
from attribution.learned_mask import LearnedMaskConfig  # noqa: E402
from attribution.peeling import peel  # noqa: E402
from attribution.recall import recall_at_k  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.evaluation.intervals import mean_interval  # noqa: E402
from loka.testbed.planted import load_planted, new_people  # noqa: E402

Locator = Callable[[Any, KnowledgeSet, KnowledgeSet, int], torch.Tensor]


def _importance(scores: Any) -> torch.Tensor:
    return scores.importance("neurons")


def _attr(**options: Any) -> Locator:
    return lambda model, facts, retain, seed: _importance(
        attribute(model, facts, components="neurons", progress=False, seed=seed, **options)
    )


_PER_MODEL: dict[Any, Any] = {}
"""What a planted model needs once (cleared when the next one loads): ``"unseen names"`` (people
the world generator makes up and nobody trained on), ``"holdout"`` (facts about the testbed's
holdout people) and the scores of whole sets (:func:`_once`)."""


def _once(model: Any, facts: KnowledgeSet, **options: Any) -> Any:
    """``attribute`` on a whole set (retain, holdout), computed once per planted model and options."""
    key = (facts.name, tuple(sorted(options.items())))
    if key not in _PER_MODEL:
        _PER_MODEL[key] = attribute(model, facts, components="neurons", progress=False, seed=0, **options)
    return _PER_MODEL[key]


def _contrast_with(kind: str, **options: Any) -> Locator:
    """Forget minus retain (``kind``: "difference" or "ratio"), both scored with ``options``."""

    def run(model: Any, facts: KnowledgeSet, retain: KnowledgeSet, seed: int) -> torch.Tensor:
        forget = attribute(model, facts, components="neurons", progress=False, seed=seed, **options)
        return _importance(forget.contrast(_once(model, retain, **options), kind=kind))

    return run


def _minus_unseen(**options: Any) -> Locator:
    """The person's importance minus the same importance on facts about people nobody trained
    on (the testbed's holdout people): what ablating a neuron does to answers the model never
    learned is not this person's knowledge (generic machinery, the answers' prior)."""

    def run(model: Any, facts: KnowledgeSet, retain: KnowledgeSet, seed: int) -> torch.Tensor:
        forget = attribute(model, facts, components="neurons", progress=False, seed=seed, **options)
        return _importance(forget) - _importance(_once(model, _PER_MODEL["holdout"], **options))

    return run


def _mask(kind: str, retain_weight: float = 0.0, steps: int = 200, **options: Any) -> Locator:
    def run(model: Any, facts: KnowledgeSet, retain: KnowledgeSet, seed: int) -> torch.Tensor:
        config = LearnedMaskConfig(kind=kind, objective="remove", retain_weight=retain_weight, steps=steps, seed=seed)
        given = retain if retain_weight > 0 else None
        scores = attribute(model, facts, method="learned_mask", components="neurons", mask_config=config,
                           retain=given, progress=False, **options)  # fmt: skip
        return _importance(scores)

    return run


def _peel(**options: Any) -> Locator:
    return lambda model, facts, retain, seed: peel(
        model, facts, components="neurons", progress=False, seed=seed, **options
    ).importance("neurons")


def _unseen(model: Any, facts: KnowledgeSet, retain: KnowledgeSet, seed: int) -> torch.Tensor:
    names = _PER_MODEL["unseen names"]
    corruption = Corruption(kind="subject", subjects=names, samples=8)
    return _importance(attribute(model, facts, components="neurons", progress=False, seed=seed, corruption=corruption))


def _random(model: Any, facts: KnowledgeSet, retain: KnowledgeSet, seed: int) -> torch.Tensor:
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    return torch.rand(n_layers, d_mlp, generator=torch.Generator().manual_seed(seed))


LOCATORS: dict[str, Locator] = {
    "grad_x_act": _attr(),
    "grad_x_act corrupt": _attr(baseline="corrupt"),
    "grad_x_act corrupt log_odds": _attr(baseline="corrupt", metric="log_odds"),
    "grad_x_act contrast": _contrast_with("difference", baseline="corrupt"),
    "grad_x_act zero": _attr(baseline="zero"),
    "grad_x_act mean": _attr(baseline="mean"),
    "grad_x_act unseen": _unseen,
    "grad_x_act last": _attr(positions="last"),
    "grad_x_act minus retain": _contrast_with("difference"),
    "grad_x_act ratio retain": _contrast_with("ratio"),
    "grad_x_act minus unseen": _minus_unseen(),
    "peel grad_x_act": _peel(),
    "peel1 grad_x_act": _peel(rounds=30, per_round=1),
    "peel grad_x_act corrupt": _peel(baseline="corrupt"),
    "peel grad_x_act zero": _peel(baseline="zero"),
    "integrated_gradients log_odds": _attr(method="integrated_gradients", metric="log_odds"),
    "integrated_gradients": _attr(method="integrated_gradients"),
    "activation_magnitude": _attr(method="activation_magnitude"),
    "mask hard_concrete": _mask("hard_concrete"),
    "mask slimming": _mask("slimming"),
    "mask slimming log_odds": _mask("slimming", metric="log_odds"),
    "mask hard_concrete retain": _mask("hard_concrete", retain_weight=1.0),
    "mask slimming retain": _mask("slimming", retain_weight=1.0, steps=100),
    "random": _random,
}
PATCHING: dict[str, Locator] = {
    "patching": _attr(method="activation_patching"),
    "patching zero": _attr(method="activation_patching", baseline="zero"),
    "patching mean": _attr(method="activation_patching", baseline="mean"),
    "patching corrupt": _attr(method="activation_patching", baseline="corrupt"),
    "patching minus unseen": _minus_unseen(method="activation_patching"),
    "peel patching": _peel(method="activation_patching", rounds=5),
}
MULTIPLES = (1, 2, 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default", choices=("tiny", "default"))
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.02, 0.005])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--people", type=int, default=4)
    parser.add_argument("--locators", nargs="+", default=None, help=f"from: {', '.join(LOCATORS)}, patching *")
    parser.add_argument("--patching", action="store_true", help="add exact activation patching (zero, mean, corrupt)")
    parser.add_argument("--retain-facts", type=int, default=60, help="retain facts the contrast and masks read")
    parser.add_argument("--out", default=None, help="write recall.json here")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    table = {**LOCATORS, **PATCHING}
    names = args.locators or [*LOCATORS, *(PATCHING if args.patching else {})]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown locator(s) {unknown}; choose from {list(table)}")

    # values[ratio][name][(multiple, scope)] = [seed][person] recall; seconds[ratio][name] = per person
    values: dict[float, dict[str, dict[str, list[list[float]]]]] = {}
    seconds: dict[float, dict[str, list[float]]] = {}
    builds: list[dict[str, Any]] = []
    faint: dict[float, list[float]] = {}
    for ratio in args.ratios:
        values[ratio] = {n: {} for n in names}
        seconds[ratio] = {n: [] for n in names}
        for seed in args.seeds:
            start = time.perf_counter()
            planted = load_planted(args.size, ratio=ratio, n_people=args.people, world_seed=args.world, seed=seed,
                                   progress=False)  # fmt: skip
            key_sizes = [len(planted.planted[p.name]) for p in planted.people]
            # each key neuron's effect when it alone is put back to the original (planted.json)
            effects = [p["pruning"]["effects"][n] for p in planted.info["people"] for n in p["neurons"]]
            faint[ratio] = faint.get(ratio, []) + effects
            builds.append({"ratio": ratio, "seed": seed, "load_s": round(time.perf_counter() - start, 1),
                           "build_s": planted.build_seconds, "steps": planted.planting["steps"],
                           "answer_key": key_sizes,
                           "key_share": float(np.mean(key_sizes)) / planted.mask.numel()})  # fmt: skip
            model = loka.load_model(planted.model_dir)
            taken = {p.name for p in planted.people}
            _PER_MODEL.clear()
            _PER_MODEL["unseen names"] = tuple(
                p.name for p in new_people(planted.testbed.world, 300, seed=10_000 + seed) if p.name not in taken
            )
            _PER_MODEL["holdout"] = KnowledgeSet(planted.testbed.holdout.facts[: args.retain_facts], name="holdout")
            retain = KnowledgeSet(planted.retain.facts[: args.retain_facts], name="retain")
            rows: dict[str, dict[str, list[float]]] = {n: {} for n in names}
            for p, person in enumerate(planted.people):
                truth = planted.planted[person.name].mask
                share = int(truth.sum()) / truth.numel()  # k = r: the answer key's share of all neurons
                facts = planted.trained_wordings(person.name)
                for name in names:
                    t0 = time.perf_counter()
                    importance = table[name](model, facts, retain, 1000 * seed + p)
                    seconds[ratio][name].append(time.perf_counter() - t0)
                    for m in MULTIPLES:
                        for scope in ("layer", "global"):
                            r = recall_at_k(importance, truth, min(1.0, share * m), per_layer=scope == "layer")
                            rows[name].setdefault(f"{m}r {scope}", []).append(r.recall)
            for name in names:
                for key, per_person in rows[name].items():
                    values[ratio][name].setdefault(key, []).append(per_person)
            print(f"ratio {ratio:g} seed {seed}: planted in {planted.build_seconds:.0f} s, answer keys {key_sizes} "
                  f"(of {planted.config.neurons_per_person} trained); "
                  + ", ".join(f"{n} {np.mean(rows[n]['1r layer']):.2f}" for n in names), flush=True)  # fmt: skip

    keys = [f"{m}r {scope}" for scope in ("layer", "global") for m in MULTIPLES]
    result: dict[str, Any] = {"size": args.size, "world": args.world, "seeds": args.seeds, "people": args.people,
                              "builds": builds, "recall": {}}  # fmt: skip
    for ratio in args.ratios:
        effects = np.array(faint[ratio])
        result.setdefault("answer_key_effects", {})[str(ratio)] = {
            "n": len(effects), "median_nats": float(np.median(effects)), "under_0.01": float(np.mean(effects < 0.01))
        }  # fmt: skip
        print(f"\nRatio {ratio:g}: {len(effects)} answer-key neurons; put back alone, each costs its person a median "
              f"{np.median(effects):.3f} nats, and {np.mean(effects < 0.01):.0%} cost under 0.01 nats")  # fmt: skip
        print(f"Recall@k, planting ratio {ratio:g} ({args.size} testbed, world {args.world}, seeds "
              f"{args.seeds}, {args.people} people each): mean [95% interval] over people and seeds")  # fmt: skip
        head = f"{'locator':<26}" + "".join(f"{k:>20}" for k in keys) + f"{'s/person':>10}"
        print(head)
        print("-" * len(head))
        result["recall"][str(ratio)] = {}
        for name in names:
            cells, record = [], {}
            for key in keys:
                interval = mean_interval(values[ratio][name][key])
                cells.append(f"{interval.mean:.2f} [{interval.low:.2f},{interval.high:.2f}]")
                record[key] = {"mean": interval.mean, "low": interval.low, "high": interval.high}
            record["seconds_per_person"] = float(np.mean(seconds[ratio][name]))
            result["recall"][str(ratio)][name] = record
            print(f"{name:<26}" + "".join(f"{c:>20}" for c in cells) + f"{record['seconds_per_person']:>10.1f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "recall.json").write_text(json.dumps(result, indent=2))
        print(f"\nwrote {out / 'recall.json'}")


if __name__ == "__main__":
    main()
