"""The ``loka`` command line.

Every command has ``--help`` with an example. A user error (a :class:`loka.base.errors.UsageError`: an
unknown method or option, a mask for another model, bad JSON in an input; or a file problem: a
missing file, an output that exists) prints one line ``error: ...`` and exits with status 2, having
written nothing; ``--debug`` shows the traceback instead. Any other exception is a bug and shows
its traceback. ``--quiet`` turns the progress bars off.

``locate``, ``unlearn`` and ``evaluate`` run data parallel under torchrun (``torchrun
--nproc_per_node N -m loka.cli unlearn ...``; :mod:`loka.base.distributed`): gloo on the CPU, NCCL with
one GPU per rank for ``--device cuda``; only rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from loka.base.errors import UsageError
from loka.cli.commands.ablate import ablate_command
from loka.cli.commands.certify import certify_command
from loka.cli.commands.compare import compare_command, demo_command
from loka.cli.commands.evaluate import evaluate_command
from loka.cli.commands.locate import locate_command
from loka.cli.commands.mask import mask_command
from loka.cli.commands.testbed import testbed_command
from loka.cli.commands.tofu import tofu_command
from loka.cli.commands.unlearn import unlearn_command
from loka.cli.commands.update import update_command
from loka.cli.common import (
    DEFAULT_METHODS,
    DEMO_OUT,
    UNLEARNING_METHODS,
    WORKERS,
    add_common,
    int_list,
    key_value,
    placement_options,
)
from loka.cli.launcher import DATA_PARALLEL, run_data_parallel

__all__ = ["build_parser", "main"]


# --- the parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
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
        add_common(p)
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
        testbed_command,
    )
    testbed_options(tb)

    locate = command(
        "locate",
        "score every MLP neuron and attention head for the forget facts (and contrast with retain)",
        "loka locate ./model --forget forget.jsonl --retain retain.jsonl --out scores/",
        locate_command,
    )
    locate.add_argument("model", help="a local Hugging Face model directory (or hub id)")
    locate.add_argument("--forget", required=True, help="JSONL of facts to locate")
    locate.add_argument("--retain", help="JSONL of facts to keep: the saved scores become the contrast")
    locate.add_argument(
        "--method", default="grad_x_act",
        choices=("grad_x_act", "activation_patching", "integrated_gradients", "activation_magnitude"),
    )  # fmt: skip
    locate.add_argument(
        "--baseline", choices=("zero", "mean", "resample", "corrupt"),
        help="default: each kind's recommended settings (grad_x_act and activation_patching: neurons by zero "
        "ablation in log-odds, heads by denoising a noise-corrupted run); zero for the other methods",
    )  # fmt: skip
    locate.add_argument("--direction", choices=("ablate", "denoise"), help="default: denoise for corrupt")
    locate.add_argument(
        "--metric", choices=("log_prob", "log_odds"),
        help="what an effect moves: log p of the answer or its log-odds (no saturation on sure facts); "
        "default: each kind's recommended metric, or log_prob when --baseline or --direction is given",
    )  # fmt: skip
    locate.add_argument("--steps", type=int, default=20, help="integrated gradients: Riemann steps (20)")
    locate.add_argument("--positions", choices=("all", "last", "subject"), default="all")
    locate.add_argument(
        "--components", nargs="+", choices=("neurons", "heads"), default=["neurons", "heads"], metavar="KIND"
    )
    locate.add_argument("--contrast", choices=("ratio", "difference"), default="ratio")
    locate.add_argument("--seed", type=int, default=0)
    prof = locate.add_argument_group("ablation profile (with --retain): located vs random components, no training")
    prof.add_argument("--no-profile", dest="profile", action="store_false", help="skip the ablation profile")
    prof.add_argument(
        "--profile-percents", type=float, nargs="+", default=[0.5, 1.0, 2.0, 5.0], metavar="K",
        help="k: the top k%% of every layer is ablated (0 < k <= 100; default 0.5 1 2 5)",
    )  # fmt: skip
    prof.add_argument("--profile-modes", nargs="+", choices=("zero", "mean"), default=["zero", "mean"])
    prof.add_argument("--profile-random", type=int, default=3, help="random draws of the control per k (3)")
    locate.add_argument("--out", required=True, help="directory for scores (safetensors + JSON) and plots.html")
    placement_options(locate)
    overwrite(locate)

    mask = command(
        "mask",
        "make an ablation mask from saved scores, or --show a mask's per-layer summary",
        "loka mask scores/ --k 100 --per-layer-max 40 --out mask.json   |   loka mask --show mask.json",
        mask_command,
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
        ablate_command,
    )
    ablate.add_argument("model")
    ablate.add_argument("mask", metavar="MASK_JSON")
    ablate.add_argument("--out", required=True)
    placement_options(ablate)
    overwrite(ablate)

    unl = command(
        "unlearn",
        "remove the forget facts with one method and export the edited checkpoint",
        "loka unlearn ./model --forget forget.jsonl --retain retain.jsonl --method loka --out ./model-unlearned",
        unlearn_command,
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
        "--option", action="append", type=key_value, metavar="KEY=VALUE",
        help="a method option, read by its type (e.g. size=0.02, contrast=false, sizes=0.01,0.02)",
    )  # fmt: skip
    unl.add_argument("--seed", type=int, default=0)
    unl.add_argument("--out", required=True)
    placement_options(unl)
    overwrite(unl)

    ev = command(
        "evaluate",
        "the shared evaluation: accuracies, membership inference, relearning, probe (vs the oracle)",
        "loka evaluate ./model-unlearned --forget f.jsonl --retain r.jsonl --holdout h.jsonl --oracle ./oracle",
        evaluate_command,
    )
    ev.add_argument("model")
    ev.add_argument("--forget", required=True)
    ev.add_argument("--retain", required=True)
    ev.add_argument("--holdout", required=True, help="facts the model never trained on (MIA non-members)")
    ev.add_argument("--oracle", help="the model trained without the forget facts (calibrates the attacks)")
    ev.add_argument(
        "--before", metavar="DIR",
        help="the model before the edit; without --oracle, the reference-calibrated checks (loka certify's quick "
        "suite: forget vs --holdout people inside the model) need it: a check it passes too cannot see the facts",
    )  # fmt: skip
    ev.add_argument(
        "--seen", metavar="SEEN_JSON",
        help="what the method was given (loka_seen.json, written by loka unlearn; default: the one in the model "
        "directory, if any): refuse to score anything in it",
    )  # fmt: skip
    ev.add_argument("--passages", help="JSONL of prefix -> continuation passages (verbatim extraction)")
    ev.add_argument("--no-probe", action="store_true")
    ev.add_argument("--no-relearn", action="store_true")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", help="also write the evaluation as JSON here")
    placement_options(ev)
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
            "--control-seeds", type=int, default=None,
            help="seeds that get a random control: a random-direction edit per method, LOKA's location rows "
            "(default: every seed, so a control has as many seeds as its method; fewer are met on the same seeds)",
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
        compare_command,
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
    cmp.add_argument("--option", action="append", type=key_value, metavar="METHOD.KEY=VALUE")
    cmp.add_argument("--no-control", action="store_true", help="skip the random-control evaluations")
    placement_options(cmp)

    demo = command(
        "demo",
        "the main job: every method on the built-in testbed, against the oracle; writes loka-demo/report.html",
        "loka demo",
        demo_command,
    )
    compare_options(demo, DEMO_OUT)

    cert = command(
        "certify",
        "evidence of erasure without an oracle: forget vs never-seen reference people inside AFTER, every null "
        "measured, writes certificate.json and certificate.html; exits 0 on PASS, 1 on FAIL, 3 on INCONCLUSIVE "
        "(2: a usage error, nothing written)",
        "loka certify ./model ./model-unlearned --forget f.jsonl --reference strangers.jsonl --retain r.jsonl "
        "--out cert/",
        certify_command,
    )
    cert.add_argument("before", metavar="BEFORE", help="the model directory before the edit")
    cert.add_argument("after", metavar="AFTER", help="the edited model directory")
    cert.add_argument("--forget", required=True, help="JSONL of the facts (or passages) that should be gone")
    cert.add_argument(
        "--reference",
        help="(required) JSONL of facts of the same kind about people (or texts) neither model ever saw",
    )  # fmt: skip
    cert.add_argument("--retain", help="JSONL of facts that should stay (collateral damage, probe, relearning)")
    cert.add_argument(
        "--attacks", choices=("quick", "full"), default="full",
        help="the attack suite: quick leaves out relearning and quantization (default full)",
    )  # fmt: skip
    cert.add_argument(
        "--seen", metavar="SEEN_JSON",
        help="what the method was given (default: loka_seen.json in AFTER, if any): refuse to score anything in it",
    )  # fmt: skip
    cert.add_argument("--out", required=True, help="directory for certificate.json and certificate.html")
    placement_options(cert)
    overwrite(cert)

    tf = command(
        "tofu",
        "TOFU scaled to a CPU: train the original and retain models, unlearn, print TOFU's table",
        "loka tofu --split forget01 --data-dir ../shared/data/tofu --out tofu-forget01/",
        tofu_command,
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
    tf.add_argument("--option", action="append", type=key_value, metavar="METHOD.KEY=VALUE")
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
        update_command,
    )
    upd.add_argument("model")
    upd.add_argument("--updates", required=True, help="JSONL: prompt, target (old), new_target (+ optional fields)")
    upd.add_argument("--retain", required=True, help="JSONL of facts whose outputs must not move")
    upd.add_argument("--layers", type=int_list, help="MLP layers to edit, e.g. 2,3 (default: the last)")
    upd.add_argument(
        "--positions", choices=("last", "subject", "both"), default="last",
        help="where the keys are read: the last prompt token, the subject's last token, or both (default last)",
    )  # fmt: skip
    upd.add_argument("--lam", type=float, help="weight of the retain constraint")
    upd.add_argument("--out", required=True)
    placement_options(upd)
    overwrite(upd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if "WORLD_SIZE" in os.environ and args.command in DATA_PARALLEL:
            return run_data_parallel(args)
        return args.run(args)
    except (UsageError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
