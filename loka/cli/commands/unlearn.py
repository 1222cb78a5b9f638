"""``loka unlearn``: one method on a model directory; writes the edited checkpoint and, beside it,
``loka_seen.json`` (what the method was given, as salted hashes: :class:`loka.protocol.Seen`), which
``loka evaluate`` reads to refuse scoring the method on any of it."""

from __future__ import annotations

import argparse

from loka.base.errors import UsageError
from loka.base.files import check_output as new_output
from loka.cli.common import accuracy_text, budget_from, config_options, progress_on, read_knowledge, read_model
from loka.cli.launcher import is_main_process

__all__ = ["unlearn_command"]


def unlearn_command(args: argparse.Namespace) -> int:
    from ablation import export_checkpoint
    from loka.methods.registry import METHODS, method_config, unlearn
    from loka.protocol import SEEN_FILE

    if args.method not in METHODS:
        raise UsageError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    out = new_output(args.out, overwrite=args.overwrite)
    forget, retain = read_knowledge(args.forget), read_knowledge(args.retain)
    extra = {name: read_knowledge(getattr(args, name)) for name in ("validation", "reference", "augment")}
    options = config_options(args.method, args.option or [])
    if args.oracle is not None:
        if args.method != "retrain":
            raise UsageError("--oracle is only for --method retrain")
        options["oracle"] = args.oracle
    method_config(args.method, **options)  # checked now, before the model is loaded
    model = read_model(args.model, args)
    result = unlearn(
        model, forget, retain, method=args.method, seed=args.seed, progress=progress_on(args), budget=budget_from(args),
        **{k: v for k, v in extra.items() if v is not None}, **options,
    )  # fmt: skip
    if is_main_process():  # under torchrun, rank 0 writes
        export_checkpoint(
            result.model, out, mask=result.mask, source=model, method=args.method, settings=result.config,
            overwrite=args.overwrite, documents={SEEN_FILE: result.seen.to_dict()},
        )  # fmt: skip
    compute = (
        f"; {result.compute.steps} steps, {result.compute.forward_tokens / 1e6:.2f}M tokens" if result.compute else ""
    )
    print(f"{args.method}: {result.seconds:.1f} s{compute}; written to {out} (what it saw: {out / SEEN_FILE})")
    print(f"  forget accuracy {accuracy_text(model, forget)} -> {accuracy_text(result.model, forget)}")
    print(f"  retain accuracy {accuracy_text(model, retain)} -> {accuracy_text(result.model, retain)}")
    return 0
