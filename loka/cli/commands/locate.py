"""``loka locate``: score every neuron and head for the forget facts, and (with ``--retain``) the
ablation profile: do the located components carry the facts, compared with random ones?

The profile (:func:`loka.evaluation.ablation_profile.ablation_profile`) zeroes or mean-ablates the
top k% of every layer by the located scores, and random components of the same per-layer count,
and prints the forget and retain accuracy drops with intervals; ``plots.html`` draws it. A forget
drop far above random's at a small retain drop says the knowledge is concentrated enough for a
localized edit; a tie says it is not (or the locator missed it)."""

from __future__ import annotations

import argparse

from loka.base.files import check_output as new_output
from loka.cli.common import progress_on, read_knowledge, read_model
from loka.cli.launcher import is_main_process

__all__ = ["locate_command"]


def locate_command(args: argparse.Namespace) -> int:
    import attribution
    from loka.comparison.report import figures_html

    out = new_output(args.out, overwrite=args.overwrite)
    forget = read_knowledge(args.forget)
    retain = read_knowledge(args.retain)
    model = read_model(args.model, args)
    from loka.evaluation.ablation_profile import ablation_profile

    options: dict = dict(
        method=args.method, components=tuple(args.components), baseline=args.baseline, direction=args.direction,
        positions=args.positions, metric=args.metric, seed=args.seed, progress=progress_on(args),
    )  # fmt: skip
    if args.method in ("integrated_gradients",):
        options["steps"] = args.steps
    scores = attribution.attribute(model, forget, **options)
    figures = {f"forget: {name}": fig for name, fig in scores.plot().items()}
    chosen = scores
    if retain is not None:
        retain_scores = attribution.attribute(model, retain, **options)
        chosen = scores.contrast(retain_scores, kind=args.contrast)
        figures.update({f"contrast: {name}": fig for name, fig in chosen.plot().items()})
    profile = None
    if retain is not None and args.profile:
        kinds = "all" if len(args.components) == 2 else args.components[0]
        profile = ablation_profile(
            model, forget, retain, {"located": chosen}, percents=args.profile_percents, modes=args.profile_modes,
            components=kinds, n_random=args.profile_random, seed=args.seed, progress=progress_on(args),
        )  # fmt: skip
        figures["ablation profile"] = profile.plot(title=f"ablation profile: {args.model}")
    if is_main_process():  # under torchrun, rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        scores.save(out / "forget")
        if retain is not None:
            retain_scores.save(out / "retain")
        chosen.save(out)
        if profile is not None:
            profile.save(out)
        (out / "plots.html").write_text(figures_html(f"loka locate: {args.model}", figures), encoding="utf-8")
    what = "forget-vs-retain contrast" if retain is not None else "forget"
    settings = "; ".join(
        f"{kind}s: {m.method}, {m.baseline}, {m.direction}, {m.metric}"
        for kind, m in ((kind, scores.metadata.of_kind(kind)) for kind in scores.kinds)
    )
    print(f"{what} scores ({settings}) written to {out}")
    print("top components: " + ", ".join(c.label for c in chosen.top(10)))
    if profile is not None:
        print(profile.format())
    return 0
