"""``loka locate``."""

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
    direction = args.direction or ("denoise" if args.baseline == "corrupt" else "ablate")
    options = dict(
        method=args.method, components=tuple(args.components), baseline=args.baseline, direction=direction,
        positions=args.positions, seed=args.seed, progress=progress_on(args),
    )  # fmt: skip
    scores = attribution.attribute(model, forget, **options)
    figures = {f"forget: {name}": fig for name, fig in scores.plot().items()}
    chosen = scores
    if retain is not None:
        retain_scores = attribution.attribute(model, retain, **options)
        chosen = scores.contrast(retain_scores, kind=args.contrast)
        figures.update({f"contrast: {name}": fig for name, fig in chosen.plot().items()})
    if is_main_process():  # under torchrun, rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        scores.save(out / "forget")
        if retain is not None:
            retain_scores.save(out / "retain")
        chosen.save(out)
        (out / "plots.html").write_text(figures_html(f"loka locate: {args.model}", figures), encoding="utf-8")
    what = "forget-vs-retain contrast" if retain is not None else "forget"
    print(f"{what} scores ({args.method}, {args.baseline}, {direction}) written to {out}")
    print("top components: " + ", ".join(c.label for c in chosen.top(10)))
    return 0
