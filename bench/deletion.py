"""Delete, don't retrain: is switching off the located components selective, and more than random?

    python bench/deletion.py [--size default] [--world 0] [--seeds 0] [--components neurons]
                             [--mask-retain-weights 1,3,10] [--percents 0.5,1,2,5,10,20]
                             [--modes zero,mean] [--draws 3] [--out DIR]

On the testbed's protocol (:meth:`loka.protocol.Protocol.from_testbed`): the forget facts in the
one wording methods get, retain scored on ``retain_validation`` (people no locator read). Locators,
each scoring every component (``--components``) from the forget facts and ``retain_train``:

* ``contrast``: LOKA's default ranking (gradient x activation at every token, forget minus retain,
  :func:`loka.methods.localized.localization.locate` with ``localize="all"``);
* ``mask rw=W``: LOKA's ``localize="mask"`` (a Hard Concrete "remove" mask, weights frozen, retain
  term of weight W on :data:`~loka.methods.localized.localization.MASK_RETAIN` sampled retain facts).

Then :func:`loka.evaluation.ablation_profile.ablation_profile`: each locator's top k% of every layer
ablated (zero and mean over retain), and the same per-layer count at random (``--draws``), no
training. Printed: the profile, and the comparison **at matched retain**
(:meth:`~loka.evaluation.ablation_profile.AblationProfile.forget_at_retain`): forget accuracy where
validation retain has fallen to 0.99 / 0.95 / 0.90 x the model's, for each locator and for random
("never" = its curve does not fall that far on the grid: it never pays that much retain).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.evaluation.ablation_profile import ablation_profile  # noqa: E402
from loka.methods.localized.localization import MASK_DEFAULTS, locate  # noqa: E402
from loka.protocol import Protocol  # noqa: E402

MATCHED = (0.99, 0.95, 0.90)


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    tb = loka.testbed.load(args.size, args.world)
    model = loka.load_model(tb.model_dir)
    protocol = Protocol.from_testbed(tb)
    forget, retain, validation = protocol.forget, protocol.retain_train, protocol.retain_validation
    print(f"testbed {args.size} w{args.world}: {len(forget)} forget facts, {len(retain)} retain_train, "
          f"{len(validation)} retain_validation; components {args.components}")  # fmt: skip
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
        results.append({"seed": seed, "seconds": seconds, "matched_shares": MATCHED, "matched": matched,
                        "profile": profile.to_dict()})  # fmt: skip
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            profile.plot(title=f"deletion, seed {seed}").write_html(args.out / f"ablation_profile_seed{seed}.html")
    if args.out:
        (args.out / "deletion.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                            "results": results}, indent=1))  # fmt: skip
        print(f"\nwrote {args.out / 'deletion.json'}")


if __name__ == "__main__":
    main()
