"""Locators against a known answer: the planted testbed, Recall@r, and ablation of the truth.

    python bench/planted_localization.py [--size tiny|default] [--ratio 0.02] [--people 4]
                                         [--seeds 0 1 2] [--draws 5] [--patching]
                                         [--methods grad_x_act,...] [--no-profile] [--out DIR]

Builds (or loads) :func:`loka.testbed.planted.load_planted` and prints:

* planting: steps, seconds, the planted people's accuracy in the original (the exact oracle) and
  the planted model, retain (testbed people planting never used) before and after;
* per person, ablating the planted neurons themselves (the truth; zero and mean over retain) and
  the same per-layer count of random neurons (``--draws`` seeds): that person's accuracy;
* per person and locator, ablating the *recovered* set (the top |answer key| neurons of all
  layers by the locator's importance; zero and mean): that person's accuracy and retain, beside
  the original's accuracy on the person (the oracle), and the mean [95% interval] over people;
* Recall@r per person: the share of the answer key among the top |answer key| neurons of all
  layers by each locator's importance, for the default ``attribute()`` (grad x act; for
  neurons zero ablation in log-odds), ``method="activation_patching"`` (with ``--patching``), any other
  ``attribute`` methods in ``--methods`` (their defaults), and random scores (expected recall: r).
  Attribution reads the person's trained wordings (every trained template);
* the ablation profile (:func:`loka.evaluation.ablation_profile.ablation_profile`) of the whole forget set
  for those locators (and the truth), on the default k grid.

``--out DIR`` writes ``planted_localization.json`` and the profile (``ablation_profile.json``,
``ablation_profile.html``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from ablation import AblationMask, ablate, mean_activations  # noqa: E402
from attribution import attribute  # noqa: E402
from attribution.recall import recall_at_k  # noqa: E402
from loka.base.components import from_masks  # noqa: E402
from loka.evaluation.ablation_profile import ablation_profile  # noqa: E402
from loka.evaluation.intervals import mean_interval  # noqa: E402
from loka.scoring.metrics import score_facts  # noqa: E402
from loka.testbed.planted import load_planted  # noqa: E402


def recall_at_planted(importance: torch.Tensor, planted: torch.Tensor) -> float:
    """Share of ``planted`` among the top-``planted.sum()`` of all neurons by ``importance`` (global Recall@r)."""
    return recall_at_k(importance, planted, int(planted.sum()), per_layer=False).recall


def located(importance: torch.Tensor, count: int, model: object) -> AblationMask:
    """A zero-ablation mask of the top ``count`` neurons of all layers by ``importance`` (the recovered set)."""
    chosen = torch.zeros(importance.shape, dtype=torch.bool)
    chosen.view(-1)[torch.sort(importance.flatten().double(), descending=True, stable=True).indices[:count]] = True
    return AblationMask.from_components(from_masks(chosen, None), model=model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=("tiny", "default"))
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--ratio", type=float, default=0.02)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="planting seeds (the profile reads the last)")
    parser.add_argument("--people", type=int, default=4)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--patching", action="store_true", help="also activation_patching (slow on default)")
    parser.add_argument("--methods", default="grad_x_act", help="attribute() methods, comma-separated")
    parser.add_argument("--no-profile", action="store_true", help="skip the ablation profile")
    parser.add_argument("--cache", default=None, help="testbed cache directory (default: loka's)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    ablations: dict[str, dict] = {}
    methods = list(dict.fromkeys(args.methods.split(",") + (["activation_patching"] if args.patching else [])))
    locators: dict[str, dict[str, float]] = {name: {} for name in [*methods, "random"]}
    result: dict = {"size": args.size, "ratio": args.ratio, "seeds": args.seeds, "planting": {}, "accuracy": {}}
    acc = lambda m, k: score_facts(m, k).answer_accuracy  # noqa: E731
    for seed in args.seeds:
        start = time.perf_counter()
        planted = load_planted(
            args.size, ratio=args.ratio, n_people=args.people, world_seed=args.world, seed=seed, cache_dir=args.cache
        )
        print(f"load_planted: {time.perf_counter() - start:.1f} s (build_seconds recorded: {planted.build_seconds})")
        log = planted.planting
        print(
            f"planting: {args.size} testbed, {len(planted.people)} people x {planted.config.neurons_per_person} "
            f"neurons (ratio {args.ratio:g}), {log['steps']} steps, {log['seconds']:.1f} s"
        )
        model = loka.load_model(planted.model_dir)
        oracle = loka.load_model(planted.oracle_dir)
        forget, retain = planted.forget, planted.retain
        result["planting"][seed] = log
        summary = {
            "forget (first template)": (acc(oracle, forget), acc(model, forget)),
            "forget (trained wordings)": (
                acc(oracle, planted.trained_wordings()),
                acc(model, planted.trained_wordings()),
            ),
            "forget (held-out template)": (acc(oracle, forget.paraphrased()), acc(model, forget.paraphrased())),
            "retain (untouched people)": (acc(oracle, retain), acc(model, retain)),
            "retain (mixed people)": (acc(oracle, planted.mixed), acc(model, planted.mixed)),
        }
        print(f"{'':<28}{'original':>10}{'planted':>10}")
        for name, (before, after) in summary.items():
            print(f"{name:<28}{before:>10.3f}{after:>10.3f}")
        result["accuracy"][seed] = summary

        means = mean_activations(model, retain.encode(model))
        print("\nper person: forget accuracy with the planted neurons ablated, and Recall@r")
        for person in planted.people:
            truth = planted.planted[person.name].mask
            facts = planted.forget_of(person.name)
            wordings = planted.trained_wordings(person.name)
            zero = AblationMask.from_components(planted.planted[person.name].components, model=model)
            rows = {"oracle": acc(oracle, facts), "none": acc(model, facts), "none: retain": acc(model, retain)}
            for mode in ("zero", "mean"):
                mask = zero if mode == "zero" else zero.with_mode("mean", means=means)
                with ablate(model, mask):
                    rows[f"truth {mode}"] = acc(model, facts)
                    rows[f"truth {mode}: retain"] = acc(model, retain)
                random_values, random_retain = [], []
                for draw in range(args.draws):
                    control = AblationMask.random_like(mask, seed=draw)
                    with ablate(model, control):
                        random_values.append(acc(model, facts))
                        random_retain.append(acc(model, retain))
                rows[f"random {mode}"] = sum(random_values) / len(random_values)
                rows[f"random {mode}: retain"] = sum(random_retain) / len(random_retain)
            ablations[f"{seed}/{person.name}"] = rows
            scores, timing = {}, {}
            for method in methods:
                t0 = time.perf_counter()
                scores[method] = attribute(model, wordings, method=method, components="neurons", progress=False)
                timing[method] = time.perf_counter() - t0
            for name, s in scores.items():
                locators[name][f"{seed}/{person.name}"] = recall_at_planted(s.importance("neurons"), truth)
                recovered = located(s.importance("neurons"), len(truth.nonzero()), model)
                for mode in ("zero", "mean"):
                    mask = recovered if mode == "zero" else recovered.with_mode("mean", means=means)
                    with ablate(model, mask):
                        rows[f"{name} {mode}"] = acc(model, facts)
                        rows[f"{name} {mode}: retain"] = acc(model, retain)
            noise = torch.rand(truth.shape, generator=torch.Generator().manual_seed(len(locators["random"])))
            locators["random"][f"{seed}/{person.name}"] = recall_at_planted(noise, truth)
            recall = ", ".join(f"{name} {values[f'{seed}/{person.name}']:.2f}" for name, values in locators.items())
            cells = ", ".join(f"{k} {v:.2f}" for k, v in rows.items())
            print(f"  {person.name} ({len(truth.nonzero())} neurons {planted.planted[person.name].per_layer}): {cells}")
            print(f"      Recall@r: {recall}  (attribution s: {', '.join(f'{k} {v:.1f}' for k, v in timing.items())})")
    result["ablation"] = ablations
    result["recall"] = locators
    print("\nablation over people (mean [95% interval]): the person's forget accuracy, and retain")
    for key in next(iter(ablations.values())):
        by_seed = [[row[key] for name, row in ablations.items() if name.startswith(f"{seed}/")] for seed in args.seeds]
        interval = mean_interval(by_seed)
        print(f"  {key:<36}{interval.mean:>7.3f} [{interval.low:.3f}, {interval.high:.3f}]")
    for name, values in locators.items():
        mean = sum(values.values()) / len(values)
        each = ", ".join(f"{v:.2f}" for v in values.values())
        print(f"Recall@r {name}: mean {mean:.3f} over {len(values)} people ({each})")

    if args.no_profile:
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "planted_localization.json").write_text(json.dumps(result, indent=1, default=str))
        return
    print("\nablation profile of the whole forget set")
    t0 = time.perf_counter()
    profile_locators = {
        method: attribute(model, planted.trained_wordings(), method=method, components="neurons", progress=False)
        for method in methods
    }
    profile_locators["noise"] = SimpleNamespace(
        neurons=torch.rand(planted.mask.shape, generator=torch.Generator().manual_seed(0))
    )
    profile_locators["truth"] = SimpleNamespace(neurons=planted.mask.float())
    profile = ablation_profile(model, forget, retain, profile_locators, n_random=args.draws)
    print(profile.format())
    print(f"(profile {time.perf_counter() - t0:.1f} s)")
    if args.out:
        out = Path(args.out)
        profile.save(out)
        profile.plot().write_html(out / "ablation_profile.html")
        (out / "planted_localization.json").write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
