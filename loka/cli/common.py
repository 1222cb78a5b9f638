"""What the commands share: common options, reading models and knowledge sets, method options and the budget."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from loka.base.errors import UsageError

__all__ = [
    "DEMO_OUT",
    "UNLEARNING_METHODS",
    "DEFAULT_METHODS",
    "DEMO_METHODS",
    "WORKERS",
    "add_common",
    "progress_on",
    "read_knowledge",
    "read_model",
    "placement_options",
    "memory_cap",
    "key_value",
    "config_options",
    "int_list",
    "method_options",
    "accuracy_text",
    "budget_from",
]

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
def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def progress_on(args: argparse.Namespace) -> bool:
    return not args.quiet


def read_knowledge(path: str | None) -> Any:
    from loka.data.knowledge import KnowledgeSet

    return None if path is None else KnowledgeSet.from_jsonl(path)


def read_model(name: str, args: argparse.Namespace) -> Any:
    """Load ``name`` where ``--device`` / ``--device-map`` say, in ``--dtype``."""
    from loka.models import load_model

    max_memory = dict(args.max_memory) if args.max_memory else None
    return load_model(name, device=args.device, dtype=args.dtype, device_map=args.device_map, max_memory=max_memory)


def placement_options(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--device-map``: where and in what precision the model loads."""
    g = p.add_argument_group("placement (where the model runs)")
    g.add_argument("--device", help="torch device for the whole model, e.g. cuda or cuda:1 (default cpu)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weights' dtype (default float32)")
    g.add_argument(
        "--device-map", choices=("auto", "balanced", "balanced_low_0", "sequential"),
        help="spread the model's blocks over the visible GPUs with accelerate (instead of --device)",
    )  # fmt: skip
    g.add_argument(
        "--max-memory", type=memory_cap, action="append", metavar="DEVICE=SIZE",
        help="with --device-map, cap a device (repeatable): 0=20GiB caps GPU 0, cpu=60GiB the CPU; what does "
        "not fit is offloaded (to the CPU, then to disk)",
    )  # fmt: skip


def memory_cap(text: str) -> tuple[int | str, str]:
    """``DEVICE=SIZE`` as accelerate's ``max_memory`` entry: a GPU index or ``cpu``, and a size."""
    key, sep, size = text.partition("=")
    if not sep or not key or not size:
        raise argparse.ArgumentTypeError(f"expected DEVICE=SIZE (e.g. 0=20GiB or cpu=60GiB), got {text!r}")
    return (int(key) if key.isdigit() else key), size


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` as ``(key, value text)``; the value is read by the option's type later
    (:meth:`loka.methods.MethodConfig.parse`), once the method is known."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. size=0.02), got {text!r}")
    return key, value


def config_options(method: str, given: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """``method``'s options from ``(key, text)`` pairs, each value read by the option's type; an
    unknown key is a UsageError that lists the method's options."""
    from loka.methods.registry import CONFIGS

    cls = CONFIGS[method]
    return {key: cls.parse(key, text) for key, text in given}


def int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (e.g. 2,3), got {text!r}") from None


def method_options(given: list[tuple[str, str]] | None, methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--option METHOD.KEY=VALUE`` pairs as ``{method: {key: value}}``, values read by type."""
    from loka.methods.registry import method_config

    pairs: dict[str, list[tuple[str, str]]] = {}
    for key, value in given or []:
        method, dot, name = key.partition(".")
        if not dot or method not in methods:
            raise UsageError(f"--option {key}: name it METHOD.OPTION with METHOD one of {methods}")
        pairs.setdefault(method, []).append((name, value))
    options = {method: config_options(method, items) for method, items in pairs.items()}
    for method, values in options.items():  # checked now, before a model is loaded or trained
        method_config(method, **values)
    return options


def accuracy_text(model: Any, knowledge: Any) -> str:
    from loka.scoring.metrics import score_facts

    return f"{score_facts(model, knowledge).first_token_accuracy:.3f}"


def budget_from(args: argparse.Namespace) -> Any:
    from loka.methods.budget import Budget

    return Budget(args.target_forget, args.check_every, args.max_steps)
