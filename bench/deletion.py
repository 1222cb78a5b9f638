"""Delete, don't retrain: is switching off the located components selective, and more than random?

    python bench/deletion.py [--size default|larger] [--world 0] [--seeds 0] [--components neurons]
                             [--mask-retain-weights 1,3,10] [--percents 0.5,1,2,5,10,20]
                             [--modes zero,mean] [--draws 3] [--benign 10]
                             [--planted 0.02 [--plant-seed 0]] [--out DIR]

On the testbed's protocol (:meth:`loka.protocol.Protocol.from_testbed`): the forget facts in the
one wording methods get, retain scored on ``retain_validation`` (people no locator read). Locators,
each scoring every component (``--components``) from the forget facts and ``retain_train``:

* ``contrast``: LOKA's default ranking (gradient x activation at every token, forget minus retain,
  :func:`loka.methods.localized.localization.locate` with ``localize="all"``);
* ``mask rw=W``: LOKA's ``localize="mask"`` (a Hard Concrete "remove" mask, weights frozen, retain
  term of weight W on :data:`~loka.methods.localized.localization.MASK_RETAIN` sampled retain facts);
* ``answer key`` (``--planted RATIO``): on :func:`loka.testbed.planted.load_planted`'s model, the
  neurons the planted people's facts were trained into (forget: those people; retain: testbed
  people planting never used, halved into train and validation; the oracle: the model before planting).

Then :func:`loka.evaluation.ablation_profile.ablation_profile`: each locator's top k% of every layer
ablated (zero and mean over retain), and the same per-layer count at random (``--draws``), no
training. Printed: the profile, and the comparison **at matched retain**
(:meth:`~loka.evaluation.ablation_profile.AblationProfile.forget_at_retain`): forget accuracy where
validation retain has fallen to 0.99 / 0.95 / 0.90 x the model's, for each locator and for random
("never" = its curve does not fall that far on the grid: it never pays that much retain).
Then, hidden or removed? At ``--benign K`` (% per layer, zero ablation, baked) each locator's
deletion and a random one of the same per-layer counts are attacked by
:func:`loka.evaluation.attacks.relearning.benign_relearn` (a fine-tune on retain facts alone, which
cannot teach a forget answer), beside the oracle: forget accuracy before and after. On the planted
testbed (``bench/planted_localization.py``) deleting the answer key is the positive control.
``--seeds`` repeats the locators with other seeds (the mask's noise and retain sample, the
attribution's corruption) and prints each seed's table. ``--out DIR`` writes ``deletion.json`` and
``ablation_profile.html``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from larger import load_case  # noqa: E402

import loka  # noqa: E402
from ablation import AblationMask, bake  # noqa: E402
from ablation.selection import random_like_layers  # noqa: E402
from loka.evaluation.ablation_profile import ablation_profile, per_layer_count, top_per_layer  # noqa: E402
from loka.evaluation.attacks.relearning import DEFAULT_STEPS, benign_relearn  # noqa: E402
from loka.methods.localized.localization import MASK_DEFAULTS, locate  # noqa: E402
from loka.methods.training import accuracy  # noqa: E402

MATCHED = (0.99, 0.95, 0.90)


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def _importance(scores: object) -> torch.Tensor:
    method = getattr(scores, "importance", None)
    return method("neurons") if callable(method) else scores.neurons  # type: ignore[attr-defined]


def top_global(importance: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` most important neurons of all layers (ties to the lower index)."""
    chosen = torch.zeros(importance.shape, dtype=torch.bool)
    order = torch.sort(importance.flatten().double(), descending=True, stable=True).indices[:count]
    chosen.view(-1)[order] = True
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="default")
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--components", default="neurons", choices=("neurons", "heads", "all"))
    parser.add_argument("--mask-retain-weights", type=floats, default=(1.0, 3.0, 10.0))
    parser.add_argument("--mask-steps", type=int, default=MASK_DEFAULTS.steps)
    parser.add_argument("--percents", type=floats, default=(0.5, 1.0, 2.0, 5.0, 10.0, 20.0))
    parser.add_argument("--modes", default="zero,mean")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--benign", type=float, default=10.0, help="k%% per layer, benign attack (0: skip; neurons)")
    parser.add_argument("--planted", type=float, help="the planted testbed of this ratio (e.g. 0.02) instead")
    parser.add_argument("--plant-seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    case = load_case(args.size, args.world, args.planted, args.plant_seed)
    model_dir, oracle_dir, key, label = case.model_dir, case.oracle_dir, case.key, case.label
    forget, retain, validation = case.forget, case.retain, case.validation
    model = loka.load_model(model_dir)
    print(f"{label}: {len(forget)} forget facts, {len(retain)} retain_train, {len(validation)} retain_validation; "
          f"components {args.components}")  # fmt: skip
    results = []
    for seed in args.seeds:
        locators, seconds = {}, {}
        start = time.perf_counter()
        locators["contrast"] = locate(model, forget, retain, size=1, components=args.components, check=0,
                                      seed=seed).scores  # fmt: skip
        seconds["contrast"] = time.perf_counter() - start
        for weight in args.mask_retain_weights:
            name = f"mask rw={weight:g}"
            config = replace(MASK_DEFAULTS, retain_weight=weight, steps=args.mask_steps)
            start = time.perf_counter()
            located = locate(model, forget, retain, size=1, localize="mask", components=args.components,
                             seed=seed, mask=config)  # fmt: skip
            locators[name] = located.scores
            seconds[name] = time.perf_counter() - start
        if key is not None:
            locators["answer key"] = SimpleNamespace(neurons=key.float(), heads=None)
        profile = ablation_profile(
            model, forget, validation, locators, percents=args.percents, modes=tuple(args.modes.split(",")),
            components=args.components, n_random=args.draws, seed=seed,
        )  # fmt: skip
        print(f"\n=== seed {seed}; locator seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
        print(profile.format())
        base = profile.base_retain_accuracy
        matched = {}
        print(f"\nforget accuracy at matched retain (validation retain = share x {base:.3f}; before: forget "
              f"{profile.base_forget_accuracy:.3f})")  # fmt: skip
        print(f"{'mode':<5} {'locator':<14} " + " ".join(f"{share:>7.2f}x" for share in MATCHED))
        for mode in profile.modes:
            for name in (*locators, "random"):
                values = [profile.forget_at_retain(name, mode, share * base) for share in MATCHED]
                matched[f"{mode} {name}"] = values
                print(f"{mode:<5} {name:<14} " + " ".join("   never" if v is None else f"{v:8.3f}" for v in values))
        benign = {}
        if args.benign and args.components == "neurons":
            if key is None:
                count = per_layer_count(args.benign, model.cfg.d_mlp)
                where = f"{args.benign:g}% per layer ({count} neurons)"
                neurons = {name: top_per_layer(_importance(scores), count) for name, scores in locators.items()}
            else:  # the answer key's size, over all layers (the key is uneven across layers)
                where = f"the top {int(key.sum())} neurons of all layers (the answer key's size)"
                neurons = {name: top_global(_importance(scores), int(key.sum())) for name, scores in locators.items()}
            print(f"\nbenign relearning (retain facts only, {DEFAULT_STEPS} steps) after deleting {where}, zero "
                  "ablation; forget before -> after, validation retain")  # fmt: skip
            oracle = benign_relearn(loka.load_model(oracle_dir), None, forget, retain, seed=seed)
            print(f"  {'oracle':<14} {oracle.before:.3f} -> {oracle.after:.3f}")
            benign["oracle"] = [oracle.before, oracle.after]
            first = next(iter(neurons.values())) if key is None else key
            neurons["random"] = random_like_layers(first, torch.Generator().manual_seed(seed))
            for name, chosen in neurons.items():
                mask = AblationMask.from_components(AblationMask(chosen, None).components, model=model)
                edited = bake(model, mask, share=True)
                attacked = benign_relearn(edited, model.tokenizer, forget, retain, seed=seed)
                kept = accuracy(edited, validation, model.tokenizer)
                print(f"  {name:<14} {attacked.before:.3f} -> {attacked.after:.3f}   retain {kept:.3f}")
                benign[name] = [attacked.before, attacked.after, kept]
        results.append({"seed": seed, "seconds": seconds, "matched_shares": MATCHED, "matched": matched,
                        "benign": benign, "profile": profile.to_dict()})  # fmt: skip
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            profile.plot(title=f"deletion, seed {seed}").write_html(args.out / f"ablation_profile_seed{seed}.html")
    if args.out:
        (args.out / "deletion.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "results": results}, indent=1))  # fmt: skip
        print(f"\nwrote {args.out / 'deletion.json'}")


if __name__ == "__main__":
    main()
