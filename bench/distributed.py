"""Benchmark data parallel attribution: facts per second on 1 process vs 2, measured in one run.

It launches this script as two ranks under ``python -m torch.distributed.run`` (gloo, the CPU,
one torch thread per process). On the same facts, and alternating so that both see the same load
on a shared machine, it times :func:`attribution.attribute` end to end with its defaults
(noise-corrupted runs, denoising, neurons and heads) for ``method="grad_x_act"`` (best of
``--repeats``) and ``method="activation_patching"`` (exact, once):

- on 1 process: rank 0 alone, inside :func:`loka.base.distributed.local` (rank 1 waits at a barrier);
- on 2 processes: sharded over both ranks (:mod:`loka.base.distributed`).

A barrier starts and ends each timing, so a time is the slowest rank's. It prints facts per
second for each, the ratio 2 / 1 (ideal 2.0 on two free cores), and the largest difference
between the two results (sharding is meant to change nothing).

Sharding is by batch: a rank runs whole batches, so the facts must make at least two batches
(``--batch-size``) for the second rank to have work. On a shared machine the ratio also measures
what the other processes take.

Exact patching of every neuron of a 12 x 768 model is hours on a CPU; ``--exact-components heads``
times it on the heads only.

    python bench/distributed.py                     # the default testbed (built and cached on first use)
    python bench/distributed.py --model gpt2-small --exact-components heads   # random 12 x 768 (bench/models.py)
    python bench/distributed.py --model DIR --knowledge facts.jsonl
"""
# ruff: noqa: E402  (the path fix below must run before the imports)

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this directory comes first on sys.path; keep it from shadowing anything.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("grad_x_act", "activation_patching")
BENCH_NAMES = ("gpt2-small", "pythia-410m")  # bench/models.py (not imported: it needs the packages on the path)


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        help="a Hugging Face model directory, or a random bench model's name (bench/models.py: gpt2-small, "
        "pythia-410m), whose facts are the synthetic world's (default: the default testbed's model)",
    )
    parser.add_argument("--knowledge", help="facts as JSONL (default: the default testbed's forget set)")
    parser.add_argument("--cache-dir", help="where the default testbed is cached")
    parser.add_argument("--facts", type=int, default=64, help="facts for grad x act (default 64)")
    parser.add_argument("--exact-facts", type=int, default=4, help="facts for exact patching (default 4)")
    parser.add_argument(
        "--exact-components",
        choices=("both", "neurons", "heads"),
        default="both",
        help="what exact patching scores (default both; grad x act always scores both)",
    )
    parser.add_argument("--batch-size", type=int, default=2, help="facts per batch (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of grad x act, best kept (default 3)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a rank: where to write its timings
    return parser.parse_args(argv)


def _knowledge(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model and the knowledge set the bench runs on."""
    from loka import testbed
    from loka.data import KnowledgeSet
    from loka.models import load_model

    if args.model in BENCH_NAMES:
        sys.path.insert(0, str(ROOT))  # bench.models
        from bench.models import build_bench_model, synthetic_facts

        model = load_model(build_bench_model(args.model, args.cache_dir))
        people = (max(args.facts, args.exact_facts) + 1) // 2  # two facts per person
        facts = synthetic_facts(n_forget=people).forget
        knowledge = KnowledgeSet.from_jsonl(args.knowledge) if args.knowledge else facts
        return model, knowledge
    bed = None
    if args.model is None or args.knowledge is None:
        bed = testbed.load("default", cache_dir=args.cache_dir, progress=False)
    model = load_model(args.model or bed.model_dir)
    knowledge = KnowledgeSet.from_jsonl(args.knowledge) if args.knowledge else bed.forget
    return model, knowledge


def _timed(run: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """``run(*args, **kwargs)`` and the seconds from a barrier before it to a barrier after it
    (the slowest rank's time)."""
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    value = run(*args, **kwargs)
    dist.barrier()
    return time.perf_counter() - start, value


def _alone(model: Any, facts: Any, **options: Any) -> Any:
    """Attribution on rank 0 alone (rank 1 goes straight to the next barrier)."""
    import torch.distributed as dist

    import attribution
    from loka.base import distributed

    if dist.get_rank() != 0:
        return None
    with distributed.local():
        return attribution.attribute(model, facts, **options)


def _worker(args: argparse.Namespace) -> None:
    """One of two ranks: alternately time each method on rank 0 alone (inside
    :func:`loka.base.distributed.local`, rank 1 waiting at the barrier) and sharded over both ranks;
    rank 0 writes the best times and both results."""
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    import attribution
    from loka.data import KnowledgeSet

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    model, knowledge = _knowledge(args)
    counts = {"grad_x_act": args.facts, "activation_patching": args.exact_facts}
    repeats = {"grad_x_act": args.repeats, "activation_patching": 1}
    options = dict(batch_size=args.batch_size, progress=False)
    kinds = {
        "grad_x_act": ("neurons", "heads"),
        "activation_patching": ("neurons", "heads") if args.exact_components == "both" else (args.exact_components,),
    }
    warm = KnowledgeSet(knowledge.facts[: 2 * args.batch_size], name="warm-up")
    attribution.attribute(model, warm, method="grad_x_act", **options)
    out: dict[str, Any] = {}
    tensors = {}
    for method in METHODS:
        facts = KnowledgeSet(knowledge.facts[: counts[method]], name=knowledge.name)
        results: dict[int, Any] = {}
        best = {1: float("inf"), 2: float("inf")}
        for _ in range(repeats[method]):
            for n, run in ((1, _alone), (2, attribution.attribute)):
                seconds, results[n] = _timed(run, model, facts, method=method, components=kinds[method], **options)
                best[n] = min(best[n], seconds)
        out[method] = {"facts": len(facts)} | {f"facts_per_second_{n}": len(facts) / best[n] for n in (1, 2)}
        if dist.get_rank() == 0:
            for n, scores in results.items():
                for kind in kinds[method]:
                    tensors[f"{n}.{method}.{kind}"] = getattr(scores, kind)
    if dist.get_rank() == 0:
        Path(args.worker, "timings.json").write_text(json.dumps(out))
        save_file(tensors, str(Path(args.worker, "scores.safetensors")))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(argv: list[str], out: Path) -> dict[str, Any]:
    """Run this script as two gloo ranks; rank 0's timings."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        __file__,
        *argv,
        "--worker",
        str(out),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the ranks failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads((out / "timings.json").read_text())


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _arguments(argv)
    if args.worker:
        _worker(args)
        return
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        timings = _launch(argv, Path(tmp))
        scores = load_file(str(Path(tmp, "scores.safetensors")))
    model = args.model or "the default testbed"
    print(f"model: {model}; batch size {args.batch_size}; gloo on the CPU, one torch thread per process")
    for method in METHODS:
        found = timings[method]
        one, two = found["facts_per_second_1"], found["facts_per_second_2"]
        kinds = [k for k in ("neurons", "heads") if f"1.{method}.{k}" in scores]
        diff = max((scores[f"1.{method}.{k}"] - scores[f"2.{method}.{k}"]).abs().max().item() for k in kinds)
        print(
            f"{method:>20} ({' + '.join(kinds)}): {found['facts']} facts; "
            f"1 process {one:8.3f} facts/s, 2 processes {two:8.3f} facts/s; "
            f"ratio {two / one:.2f} (ideal 2.0); max |scores 2 - scores 1| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
