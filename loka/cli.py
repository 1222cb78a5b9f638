"""The ``loka`` command line.

Every command has ``--help`` with an example. A user error (a :class:`loka.errors.UsageError`: an
unknown method or option, a mask for another model, bad JSON in an input; or a file problem: a
missing file, an output that exists) prints one line ``error: ...`` and exits with status 2, having
written nothing; ``--debug`` shows the traceback instead. Any other exception is a bug and shows
its traceback. ``--quiet`` turns the progress bars off.

``locate``, ``unlearn`` and ``evaluate`` run data parallel under torchrun (``torchrun
--nproc_per_node N -m loka.cli unlearn ...``; :mod:`loka.distributed`): gloo on the CPU, NCCL with
one GPU per rank for ``--device cuda``; only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loka.errors import UsageError
from loka.files import check_output as _new_output

__all__ = ["main"]

DEMO_OUT = "loka-demo"
# the unlearning methods compare runs (loka.methods.METHODS without the oracle "retrain"; named here
# so that --help needs no torch import; tests/loka/test_cli.py checks that the two agree)
UNLEARNING_METHODS = ("loka", "gradient_ascent", "npo", "rmu", "task_vector")
DEFAULT_METHODS = UNLEARNING_METHODS
# the demo leaves RMU out: its layer x coefficient search runs four trainings per seed, and the demo
# keeps within 10 minutes from an empty cache on 2 cores (loka compare runs every method)
DEMO_METHODS = ("loka", "gradient_ascent", "npo", "task_vector")
WORKERS = min(2, os.cpu_count() or 1)  # compare / demo: method runs in parallel processes


# --- shared argument helpers ---------------------------------------------------------------------
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def _knowledge(path: str | None) -> Any:
    from loka.data import KnowledgeSet

    return None if path is None else KnowledgeSet.from_jsonl(path)


def _is_main() -> bool:
    """Whether this process writes files: always, except on ranks other than 0 under torchrun."""
    from loka.distributed import is_main

    return is_main()


def _run_data_parallel(args: argparse.Namespace) -> int:
    """``args.run`` under torchrun (``WORLD_SIZE`` set): every rank joins one process group (NCCL
    with one GPU per rank, ``--device cuda`` becoming ``cuda:LOCAL_RANK``; else gloo on the CPU),
    runs the command (the sharded work: :mod:`loka.distributed`), and only rank 0 writes files
    and prints; all ranks wait for its writes before they leave."""
    import torch
    import torch.distributed as dist

    if args.device_map is not None:
        raise UsageError("--device-map does not work under torchrun; give --device cuda (one GPU per rank)")
    cuda = (args.device or "cpu").startswith("cuda")
    if cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        args.device = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        quiet = io.StringIO() if dist.get_rank() != 0 else None
        with contextlib.redirect_stdout(quiet) if quiet is not None else contextlib.nullcontext():
            code = args.run(args)
        dist.barrier()  # rank 0's files are written before any rank returns
        return code
    finally:
        dist.destroy_process_group()


_DATA_PARALLEL = ("locate", "unlearn", "evaluate")  # the commands that shard their work under torchrun


def _model(name: str, args: argparse.Namespace) -> Any:
    """Load ``name`` where ``--device`` / ``--device-map`` say, in ``--dtype``."""
    from loka.models import load_model

    max_memory = dict(args.max_memory) if args.max_memory else None
    return load_model(name, device=args.device, dtype=args.dtype, device_map=args.device_map, max_memory=max_memory)


def _placement(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--device-map``: where and in what precision the model loads."""
    g = p.add_argument_group("placement (where the model runs)")
    g.add_argument("--device", help="torch device for the whole model, e.g. cuda or cuda:1 (default cpu)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weights' dtype (default float32)")
    g.add_argument(
        "--device-map", choices=("auto", "balanced", "balanced_low_0", "sequential"),
        help="spread the model's blocks over the visible GPUs with accelerate (instead of --device)",
    )  # fmt: skip
    g.add_argument(
        "--max-memory", type=_memory_cap, action="append", metavar="DEVICE=SIZE",
        help="with --device-map, cap a device (repeatable): 0=20GiB caps GPU 0, cpu=60GiB the CPU; what does "
        "not fit is offloaded (to the CPU, then to disk)",
    )  # fmt: skip


def _memory_cap(text: str) -> tuple[int | str, str]:
    """``DEVICE=SIZE`` as accelerate's ``max_memory`` entry: a GPU index or ``cpu``, and a size."""
    key, sep, size = text.partition("=")
    if not sep or not key or not size:
        raise argparse.ArgumentTypeError(f"expected DEVICE=SIZE (e.g. 0=20GiB or cpu=60GiB), got {text!r}")
    return (int(key) if key.isdigit() else key), size


def _option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(key, value text)``; the value is read by the option's type later
    (:meth:`loka.configs.MethodConfig.parse`), once the method is known."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. size=0.02), got {text!r}")
    return key, value


def _config_options(method: str, given: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``method``'s options from ``(key, text)`` pairs, each value read by the option's type; an
    unknown key is a UsageError that lists the method's options."""
    from loka.configs import CONFIGS

    cls = CONFIGS[method]
    return {key: cls.parse(key, text) for key, text in given}


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 2,3), got {text!r}") from None


def _method_options(given: list[tuple[str, str]] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--option METHOD.KEY=VALUE`` pairs as ``{method: {key: value}}``, values read by type."""
    from loka.configs import method_config

    pairs: dict[str, list[tuple[str, str]]] = {}
    for key, value in given or []:
        method, dot, name = key.partition(".")
        if not dot or method not in methods:
            raise UsageError(f"--option {key}: name it METHOD.OPTION with METHOD one of {methods}")
        pairs.setdefault(method, []).append((name, value))
    options = {method: _config_options(method, items) for method, items in pairs.items()}
    for method, values in options.items():  # checked now, before a model is loaded or trained
        method_config(method, **values)
    return options


# --- commands ----------------------------------------------------------------------------------
def _testbed(args: argparse.Namespace) -> int:
    from loka import testbed

    start = time.perf_counter()
    tb = testbed.load(args.size, seed=args.seed, cache_dir=args.cache_dir, progress=_progress(args))
    print(f"testbed {args.size} (seed {args.seed}): {tb.root}")
    print(
        f"  {len(tb.world.people)} people x {len(tb.world.relations)} relations; "
        f"forget {len(tb.forget)} / retain {len(tb.retain)} / holdout {len(tb.holdout)} facts; "
        f"{len(tb.passages)} passages"
    )
    print(f"  original: {tb.model_dir}\n  oracle:   {tb.oracle_dir}")
    training = tb.info["training"]
    print(
        f"  built in {tb.build_seconds:.1f} s (original {training['original']['seconds']:.1f} s, "
        f"oracle {training['oracle']['seconds']:.1f} s of training); loaded in {time.perf_counter() - start:.1f} s\n"
    )
    print(tb.accuracy_table().format())
    return 0


def _locate(args: argparse.Namespace) -> int:
    import attribution
    from loka.report import figures_html

    out = _new_output(args.out, overwrite=args.overwrite)
    forget = _knowledge(args.forget)
    retain = _knowledge(args.retain)
    model = _model(args.model, args)
    direction = args.direction or ("denoise" if args.baseline == "corrupt" else "ablate")
    options = dict(
        method=args.method, components=tuple(args.components), baseline=args.baseline, direction=direction,
        positions=args.positions, seed=args.seed, progress=_progress(args),
    )  # fmt: skip
    scores = attribution.attribute(model, forget, **options)
    figures = {f"forget: {name}": fig for name, fig in scores.plot().items()}
    chosen = scores
    if retain is not None:
        retain_scores = attribution.attribute(model, retain, **options)
        chosen = scores.contrast(retain_scores, kind=args.contrast)
        figures.update({f"contrast: {name}": fig for name, fig in chosen.plot().items()})
    if _is_main():  # under torchrun, rank 0 writes
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


def _mask(args: argparse.Namespace) -> int:
    from ablation import AblationMask

    if args.show is not None:
        if args.scores is not None or args.out is not None:
            raise UsageError("--show takes only the mask file; do not give SCORES_DIR or --out with it")
        summary = AblationMask.load(args.show).summary()
        print(f"mask {args.show}: {summary['total']} components, mode {summary['mode']}")
        for kind in ("neurons", "heads"):
            if summary.get(kind):
                per_layer = "  ".join(f"L{i}:{n}" for i, n in enumerate(summary[kind]["per_layer"]))
                print(f"  {kind:<8} {summary[kind]['total']:>6}   {per_layer}")
        if "model" in summary:
            print(f"  for {summary['model']['architecture']} weights {summary['model']['weights_sha256'][:16]}")
        return 0
    import attribution

    if args.scores is None or args.out is None:
        raise UsageError("give SCORES_DIR and --out mask.json (or --show mask.json)")
    if (args.k is None) == (args.fraction is None):
        raise UsageError("give exactly one of --k N or --fraction F")
    out = _new_output(args.out, overwrite=args.overwrite, is_dir=False)
    scores = attribution.AttributionScores.load(args.scores)
    mask = AblationMask.from_scores(
        scores, k=args.k, fraction=args.fraction, per_layer_max=args.per_layer_max, kind=args.kind,
        mode=args.mode, scale=args.scale,
    )  # fmt: skip
    mask.save(out)
    print(f"mask of {len(mask)} components ({mask.mode}) written to {out}")
    return 0


def _ablate(args: argparse.Namespace) -> int:
    from ablation import AblationMask, bake, export_checkpoint

    out = _new_output(args.out, overwrite=args.overwrite)
    mask = AblationMask.load(args.mask)
    model = _model(args.model, args)
    mask.validate(model)
    edited = bake(model, mask)
    export_checkpoint(edited, out, mask=mask, source=model, method="bake", overwrite=args.overwrite)
    print(f"baked {len(mask)} components ({mask.mode}) into {out}")
    return 0


def _scores(model: Any, knowledge: Any) -> str:
    from loka.metrics import score_facts

    return f"{score_facts(model, knowledge).first_token_accuracy:.3f}"


def _unlearn(args: argparse.Namespace) -> int:
    from ablation import export_checkpoint
    from loka.configs import method_config
    from loka.methods import METHODS, unlearn

    if args.method not in METHODS:
        raise UsageError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    out = _new_output(args.out, overwrite=args.overwrite)
    forget, retain = _knowledge(args.forget), _knowledge(args.retain)
    extra = {name: _knowledge(getattr(args, name)) for name in ("validation", "reference", "augment")}
    options = _config_options(args.method, args.option or [])
    if args.oracle is not None:
        if args.method != "retrain":
            raise UsageError("--oracle is only for --method retrain")
        options["oracle"] = args.oracle
    method_config(args.method, **options)  # checked now, before the model is loaded
    model = _model(args.model, args)
    result = unlearn(
        model, forget, retain, method=args.method, seed=args.seed, progress=_progress(args), budget=_budget(args),
        **{k: v for k, v in extra.items() if v is not None}, **options,
    )  # fmt: skip
    if _is_main():  # under torchrun, rank 0 writes
        export_checkpoint(
            result.model, out, mask=result.mask, source=model, method=args.method, settings=result.config,
            overwrite=args.overwrite,
        )  # fmt: skip
    compute = (
        f"; {result.compute.steps} steps, {result.compute.forward_tokens / 1e6:.2f}M tokens" if result.compute else ""
    )
    print(f"{args.method}: {result.seconds:.1f} s{compute}; written to {out}")
    print(f"  forget accuracy {_scores(model, forget)} -> {_scores(result.model, forget)}")
    print(f"  retain accuracy {_scores(model, retain)} -> {_scores(result.model, retain)}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from loka.evaluation import evaluate

    out = _new_output(args.json, overwrite=args.overwrite, is_dir=False) if args.json else None
    sets = {name: _knowledge(getattr(args, name)) for name in ("forget", "retain", "holdout", "passages")}
    model = _model(args.model, args)
    evaluation = evaluate(
        model, **sets, oracle=args.oracle, probe=not args.no_probe, relearn=not args.no_relearn, seed=args.seed
    )
    print(evaluation.table())
    print(evaluation.verdict())
    if out is not None and _is_main():  # under torchrun, rank 0 writes
        out.write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        print(f"written to {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from loka.comparison import HTML_FILE, compare, compare_testbed
    from loka.files import check_output as check_output_dir

    out = Path(args.out).expanduser()
    check_output_dir(out, overwrite=args.overwrite, marker="comparison.json")
    methods = args.methods
    options = _method_options(args.option, methods)
    common = dict(methods=methods, options=options, control=not args.no_control, seed=args.seed)
    common.update(progress=_progress(args), seeds=args.seeds, control_seeds=args.control_seeds, budget=_budget(args))
    common["locations"] = args.locations if "loka" in methods else ()
    common["location_seeds"] = max(1, args.control_seeds)
    if args.model is not None and (args.workers or 1) > 1:
        raise UsageError("--workers > 1 runs on the testbed; with --model, leave it out")
    common["workers"] = args.workers if args.workers is not None else (WORKERS if args.model is None else 1)
    if args.model is not None:
        missing = [f"--{n}" for n in ("forget", "retain", "holdout") if getattr(args, n) is None]
        if missing:
            raise UsageError(f"with --model, also give {' '.join(missing)}")
        sets = {name: _knowledge(getattr(args, name)) for name in ("forget", "retain", "holdout", "passages")}
        comparison = compare(_model(args.model, args), **sets, oracle=args.oracle, **common)
    else:
        given = [f"--{n}" for n in ("forget", "retain", "holdout", "oracle", "passages") if getattr(args, n)]
        if given:
            raise UsageError(f"{' '.join(given)} need --model; without it compare runs on the testbed")
        from loka import testbed

        tb = testbed.load(args.size, seed=args.seed, cache_dir=args.cache_dir, progress=_progress(args))
        comparison = compare_testbed(tb, **common)
    comparison.save(out, overwrite=args.overwrite)
    print(comparison.table())
    print()
    for name, verdict in comparison.verdicts().items():
        print(f"{name}: {verdict}")
    for name, verdict in comparison.localization().items():
        print(f"localization, {name}: {verdict}")
    print(f"\nreport: {out / HTML_FILE}")
    return 0


def _budget(args: argparse.Namespace) -> Any:
    from loka.methods import Budget

    return Budget(args.target_forget, args.check_every, args.max_steps)


def _demo(args: argparse.Namespace) -> int:
    for name in ("model", "forget", "retain", "holdout", "oracle", "passages", "option"):
        setattr(args, name, None)
    args.methods, args.no_control = list(DEMO_METHODS), False
    return _compare(args)


def _tofu(args: argparse.Namespace) -> int:
    from loka.benchmarks import tofu
    from loka.files import check_output as check_output_dir

    out = Path(args.out).expanduser()
    check_output_dir(out, overwrite=args.overwrite, marker="tofu.json")
    options = _method_options(args.option, args.methods)
    report = tofu.run(
        args.split, n_retain_authors=args.retain_authors, size=args.size, data_dir=args.data_dir,
        cache_dir=args.cache_dir, methods=args.methods, method_options=options, progress=_progress(args),
        seed=args.seed, seeds=args.seeds, budget=_budget(args),
    )  # fmt: skip
    report.save(out)
    print(report.table())
    print(f"\nreport: {out / 'tofu.html'} (numbers in {out / 'tofu.json'})")
    return 0


def _read_updates(path: str) -> tuple[Any, dict[str, str]]:
    from loka.data import KnowledgeSet

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"updates file {path!r} does not exist (expected a .jsonl file)")
    records, targets = [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("new_target"), str) or not record["new_target"]:
            raise UsageError(f"{path}:{number}: each line needs prompt, target (the old answer) and new_target")
        targets.append(record.pop("new_target"))
        records.append(record)
    if not records:
        raise UsageError(f"updates file {path!r} has no updates")
    facts = KnowledgeSet.from_records(records, name=file.stem)
    same = [f.id for f, new in zip(facts, targets, strict=True) if new.strip() == f.target.strip()]
    if same:
        raise UsageError(f"fact {same[0]!r}: new_target equals the old target; nothing to update")
    return facts, {f.id: new for f, new in zip(facts, targets, strict=True)}


def _update(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ablation import export_checkpoint, rewrite
    from loka.data import KnowledgeSet

    out = _new_output(args.out, overwrite=args.overwrite)
    facts, new_targets = _read_updates(args.updates)
    retain = _knowledge(args.retain)
    model = _model(args.model, args)
    options = {} if args.lam is None else {"lam": args.lam}
    result = rewrite(
        model, facts, retain=retain, layers=args.layers, positions=args.positions, target=new_targets, **options
    )
    updated = KnowledgeSet(tuple(replace(f, target=new_targets[f.id]) for f in facts), name="updated")
    export_checkpoint(
        result.model, out, source=model, method="rewrite", settings=result.settings(), overwrite=args.overwrite
    )
    print(f"updated {len(facts)} facts in layers {list(result.layers)}; written to {out}")
    print(f"  new-target accuracy {_scores(model, updated)} -> {_scores(result.model, updated)}")
    print(f"  old-target accuracy {_scores(model, facts)} -> {_scores(result.model, facts)}")
    print(f"  retain accuracy     {_scores(model, retain)} -> {_scores(result.model, retain)}")
    return 0


# --- the parser ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loka",
        description="Localized knowledge ablation: locate knowledge in a causal LM, remove it, prove it is gone.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, help: str, example: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_common(p)
        p.set_defaults(run=run)
        return p

    def testbed_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--size", choices=("default", "tiny"), default="default", help="testbed preset")
        p.add_argument("--seed", type=int, default=0, help="world, training and method seed")
        p.add_argument(
            "--cache-dir",
            default=None,
            help="where testbeds are cached (default: $LOKA_CACHE_DIR/testbed or ~/.cache/loka/testbed)",
        )

    def budget_options(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("budget (the stopping rule every method follows)")
        g.add_argument("--target-forget", type=float, default=0.1, help="stop once forget accuracy <= this (0.1)")
        g.add_argument("--check-every", type=int, default=25, help="check forget accuracy every N steps (25)")
        g.add_argument("--max-steps", type=int, default=500, help="at most N optimizer steps (500)")

    def overwrite(p: argparse.ArgumentParser) -> None:
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    tb = command(
        "testbed",
        "build (or load from the cache) the fact-world testbed and print its accuracy table",
        "loka testbed --size tiny --seed 1",
        _testbed,
    )
    testbed_options(tb)

    locate = command(
        "locate",
        "score every MLP neuron and attention head for the forget facts (and contrast with retain)",
        "loka locate ./model --forget forget.jsonl --retain retain.jsonl --out scores/",
        _locate,
    )
    locate.add_argument("model", help="a local Hugging Face model directory (or hub id)")
    locate.add_argument("--forget", required=True, help="JSONL of facts to locate")
    locate.add_argument("--retain", help="JSONL of facts to keep: the saved scores become the contrast")
    locate.add_argument("--method", choices=("grad_x_act", "activation_patching"), default="grad_x_act")
    locate.add_argument("--baseline", choices=("zero", "mean", "resample", "corrupt"), default="corrupt")
    locate.add_argument("--direction", choices=("ablate", "denoise"), help="default: denoise for corrupt")
    locate.add_argument("--positions", choices=("all", "last", "subject"), default="last")
    locate.add_argument(
        "--components", nargs="+", choices=("neurons", "heads"), default=["neurons", "heads"], metavar="KIND"
    )
    locate.add_argument("--contrast", choices=("ratio", "difference"), default="ratio")
    locate.add_argument("--seed", type=int, default=0)
    locate.add_argument("--out", required=True, help="directory for scores (safetensors + JSON) and plots.html")
    _placement(locate)
    overwrite(locate)

    mask = command(
        "mask",
        "make an ablation mask from saved scores, or --show a mask's per-layer summary",
        "loka mask scores/ --k 100 --per-layer-max 40 --out mask.json   |   loka mask --show mask.json",
        _mask,
    )
    mask.add_argument("scores", nargs="?", metavar="SCORES_DIR", help="a directory written by loka locate")
    mask.add_argument("--k", type=int, help="ablate the top K components")
    mask.add_argument("--fraction", type=float, help="ablate the top fraction F of the components")
    mask.add_argument("--per-layer-max", type=int, help="at most M components per layer and kind")
    mask.add_argument(
        "--kind", choices=("neurons", "heads", "all", "neuron", "head"), default="all",
        help="the pool to rank: neurons, heads or all (default all)",
    )  # fmt: skip
    mask.add_argument("--mode", choices=("zero", "scale"), default="zero")
    mask.add_argument("--scale", type=float, help="the factor for --mode scale")
    mask.add_argument("--out", help="the mask file to write (JSON, values beside it)")
    mask.add_argument("--show", metavar="MASK_JSON", help="print a mask's per-layer summary")
    overwrite(mask)

    ablate = command(
        "ablate",
        "bake a mask into the weights and export the edited Hugging Face checkpoint",
        "loka ablate ./model mask.json --out ./model-ablated",
        _ablate,
    )
    ablate.add_argument("model")
    ablate.add_argument("mask", metavar="MASK_JSON")
    ablate.add_argument("--out", required=True)
    _placement(ablate)
    overwrite(ablate)

    unl = command(
        "unlearn",
        "remove the forget facts with one method and export the edited checkpoint",
        "loka unlearn ./model --forget forget.jsonl --retain retain.jsonl --method loka --out ./model-unlearned",
        _unlearn,
    )
    unl.add_argument("model")
    unl.add_argument("--forget", required=True)
    unl.add_argument("--retain", required=True)
    unl.add_argument("--method", required=True, help=f"{', '.join(UNLEARNING_METHODS)} or retrain")
    unl.add_argument("--oracle", help="for --method retrain: the model trained without the forget facts")
    unl.add_argument("--validation", help="JSONL of other people's retain facts: budget choice only, never trained on")
    unl.add_argument("--reference", help="JSONL of facts about people the model never saw (LOKA's target)")
    unl.add_argument("--augment", help="JSONL of extra wordings of the forget facts a method may train on")
    budget_options(unl)
    unl.add_argument(
        "--option", action="append", type=_option, metavar="KEY=VALUE",
        help="a method option, read by its type (e.g. size=0.02, contrast=false, sizes=0.01,0.02)",
    )  # fmt: skip
    unl.add_argument("--seed", type=int, default=0)
    unl.add_argument("--out", required=True)
    _placement(unl)
    overwrite(unl)

    ev = command(
        "evaluate",
        "the shared evaluation: accuracies, membership inference, relearning, probe (vs the oracle)",
        "loka evaluate ./model-unlearned --forget f.jsonl --retain r.jsonl --holdout h.jsonl --oracle ./oracle",
        _evaluate,
    )
    ev.add_argument("model")
    ev.add_argument("--forget", required=True)
    ev.add_argument("--retain", required=True)
    ev.add_argument("--holdout", required=True, help="facts the model never trained on (MIA non-members)")
    ev.add_argument("--oracle", help="the model trained without the forget facts")
    ev.add_argument("--passages", help="JSONL of prefix -> continuation passages (verbatim extraction)")
    ev.add_argument("--no-probe", action="store_true")
    ev.add_argument("--no-relearn", action="store_true")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", help="also write the evaluation as JSON here")
    _placement(ev)
    overwrite(ev)

    def compare_options(p: argparse.ArgumentParser, out: str) -> None:
        testbed_options(p)
        p.add_argument("--out", default=out, help=f"directory for report.html and comparison.json (default {out})")
        p.add_argument("--seeds", type=int, default=3, help="method seeds per method (default 3)")
        p.add_argument(
            "--workers", type=int, default=None,
            help=f"method runs in this many processes of one thread each, on the testbed (default {WORKERS})",
        )  # fmt: skip
        p.add_argument(
            "--control-seeds", type=int, default=1,
            help="seeds that get a random control: a random-direction edit per method, LOKA's location rows (1)",
        )  # fmt: skip
        p.add_argument(
            "--locations", nargs="*", default=["random"], metavar="LOCATION",
            choices=("random", "least", "complement", "layers", "full"),
            help="LOKA's localization controls: the same edit on random | least | complement | layers | full "
            "(default: random; none with an empty list)",
        )  # fmt: skip
        budget_options(p)
        overwrite(p)

    cmp = command(
        "compare",
        "every method on the same sets, against the oracle and random controls; writes report.html",
        "loka compare --size tiny --out report/   |   loka compare --model ./m --forget f.jsonl --retain r.jsonl "
        "--holdout h.jsonl --oracle ./oracle",
        _compare,
    )
    compare_options(cmp, "loka-compare")
    cmp.add_argument("--model", help="a model directory (default: the testbed's)")
    for name in ("forget", "retain", "holdout", "passages"):
        cmp.add_argument(f"--{name}", help=f"JSONL of {name} facts (with --model)")
    cmp.add_argument("--oracle", help="with --model: the model trained without the forget facts")
    cmp.add_argument(
        "--methods", nargs="+", default=list(DEFAULT_METHODS), choices=UNLEARNING_METHODS, metavar="METHOD",
        help=f"{' | '.join(UNLEARNING_METHODS)} (default: all)",
    )  # fmt: skip
    cmp.add_argument("--option", action="append", type=_option, metavar="METHOD.KEY=VALUE")
    cmp.add_argument("--no-control", action="store_true", help="skip the random-control evaluations")
    _placement(cmp)

    demo = command(
        "demo",
        "the main job: every method on the built-in testbed, against the oracle; writes loka-demo/report.html",
        "loka demo",
        _demo,
    )
    compare_options(demo, DEMO_OUT)

    tf = command(
        "tofu",
        "TOFU scaled to a CPU: train the original and retain models, unlearn, print TOFU's table",
        "loka tofu --split forget01 --data-dir ../shared/data/tofu --out tofu-forget01/",
        _tofu,
    )
    tf.add_argument("--split", choices=("forget01", "forget05", "forget10"), default="forget01")
    tf.add_argument(
        "--retain-authors", type=int, help="other authors both models train on, at least 3 (default: the size preset)"
    )
    tf.add_argument("--size", choices=("default", "tiny"), default="default")
    tf.add_argument("--data-dir", help="TOFU's JSONL files (default: $LOKA_TOFU_DIR)")
    tf.add_argument("--cache-dir", help="where the trained models are kept (default: $LOKA_CACHE_DIR/tofu)")
    tf.add_argument(
        "--methods", nargs="+", default=["loka", "gradient_ascent", "task_vector"],
        choices=("loka", "gradient_ascent", "task_vector"), metavar="METHOD",
    )  # fmt: skip
    tf.add_argument("--option", action="append", type=_option, metavar="METHOD.KEY=VALUE")
    tf.add_argument("--seed", type=int, default=0)
    tf.add_argument("--seeds", type=int, default=1, help="method seeds per method (seed, seed+1, ...)")
    budget_options(tf)
    tf.add_argument("--out", default="loka-tofu", help="directory for tofu.json and tofu.html")
    overwrite(tf)

    upd = command(
        "update",
        "replace facts (old target -> new target) by a closed-form rewrite and export the checkpoint",
        "loka update ./model --updates updates.jsonl --retain retain.jsonl --out ./model-updated\n"
        '  (updates.jsonl lines: {"prompt": "Ana lives in", "target": "Oslo", "new_target": "Lima"})',
        _update,
    )
    upd.add_argument("model")
    upd.add_argument("--updates", required=True, help="JSONL: prompt, target (old), new_target (+ optional fields)")
    upd.add_argument("--retain", required=True, help="JSONL of facts whose outputs must not move")
    upd.add_argument("--layers", type=_ints, help="MLP layers to edit, e.g. 2,3 (default: the last)")
    upd.add_argument(
        "--positions", choices=("last", "subject", "both"), default="last",
        help="where the keys are read: the last prompt token, the subject's last token, or both (default last)",
    )  # fmt: skip
    upd.add_argument("--lam", type=float, help="weight of the retain constraint")
    upd.add_argument("--out", required=True)
    _placement(upd)
    overwrite(upd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if "WORLD_SIZE" in os.environ and args.command in _DATA_PARALLEL:
            return _run_data_parallel(args)
        return args.run(args)
    except (UsageError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
