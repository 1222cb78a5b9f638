"""The ``loka`` command line.

Every command has ``--help`` with an example. A user error (a missing file, a bad option) prints
one line ``error: ...`` and exits with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence

__all__ = ["main"]


class UserError(Exception):
    """A mistake in what the user asked for: reported as one line, exit status 2."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _testbed(args: argparse.Namespace) -> int:
    from loka import testbed

    start = time.perf_counter()
    tb = testbed.load(args.size, seed=args.seed, cache_dir=args.cache_dir, progress=not args.quiet)
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


def _demo(args: argparse.Namespace) -> int:
    args.size = args.size or "default"
    return _testbed(args)


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

    tb = command(
        "testbed",
        "build (or load from the cache) the fact-world testbed and print its accuracy table",
        "loka testbed --size tiny --seed 1",
        _testbed,
    )
    tb.add_argument("--size", choices=("default", "tiny"), default="default")
    tb.add_argument("--seed", type=int, default=0)
    tb.add_argument(
        "--cache-dir",
        default=None,
        help="where testbeds are cached (default: $LOKA_CACHE_DIR/testbed or ~/.cache/loka/testbed)",
    )

    demo = command(
        "demo", "the main job on the built-in testbed: build it and print what the models know", "loka demo", _demo
    )
    demo.add_argument("--size", choices=("default", "tiny"), default="default")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--cache-dir", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except (UserError, ValueError, FileNotFoundError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
