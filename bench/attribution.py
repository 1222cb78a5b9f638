"""Benchmark attribution: speed ratios and peak memory, all measured in one run.

For two models, on one batch each, it prints:

1. ``time(grad x act for all neurons and heads) / time(one forward + backward)`` on the same
   batch (goal <= 3.0). The forward + backward is what training costs: the metric's forward with
   full logits, then gradients for every weight. grad x act is ``attribution.attribute`` end to
   end (validation, encoding, the model fingerprint included).
2. ``time(TL's get_act_patch_attn_head_out_all_pos) / time(loka's batched exact head patching)``
   on the same inputs and metric (zero ablation of every head at every position, metric = mean
   summed target log-probability), with the largest difference between the two results, also
   relative to the metric (float32 rounding grows with it: the large model's metric sums about
   50 log-probabilities over a 50257-token vocabulary) (goal >= 5).
3. Peak memory, above the loaded model, of a forward pass, a forward + backward, grad x act and
   exact head patching, each measured in a fresh child process after one warm-up run (on CPU:
   the high-water mark of the resident set, reset just before the run, with glibc told to mmap
   every tensor so that freed memory leaves the resident set; on CUDA: ``max_memory_allocated``).

Timings are the best of ``--repeats`` runs after a warm-up (one run, no warm-up, for the large
model's sweeps), with one torch thread unless ``--threads`` says otherwise.

Models: the default testbed (``loka.testbed.load("default")``, 4 layers x 128, built and cached
on first use; ``--cache-dir`` points elsewhere), on 32 forget facts; and a randomly initialised
GPT-2-shaped model (12 layers x 768, 12 heads, d_mlp 3072, vocab 50257) written to a temporary
directory, on 8 of the testbed's passages (at most 64 tokens each). On the large model TL's sweep
takes one full forward per head (144 of them), so by default both sides patch the heads of
``--large-head-layers`` (the first and last layer: 24 heads) with the same per-head work as the
full sweep (TL's ``generic_activation_patch`` with the setter and hook of
``get_act_patch_attn_head_out_all_pos``); ``--large-head-layers all`` runs the full sweep.

Reading the numbers: exact patching is compute-bound on a CPU. Every patch is a full forward in
TL's sweep and here alike, so batching saves only the per-call overhead and the unembedding
(logits are computed at the prediction positions only): the ratio is about 1 at one thread. The
>= 5 goal is met where a forward of one small batch is mostly overhead (a GPU; or torch's thread
pool on a contended CPU, ``--threads 2`` on a shared 2-core machine).

    python bench/attribution.py                  # both models
    python bench/attribution.py --skip-large     # the testbed only
"""
# ruff: noqa: E402  (the path fix below must run before the imports)

from __future__ import annotations

import sys
from pathlib import Path

# This script is named like the package it measures: run as a script, its own directory comes
# first on sys.path and would shadow the `attribution` package.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.memory

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # TL's sweeps draw progress bars

import argparse
import json
import platform
import resource
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd
import torch
from transformer_lens import patching
from transformer_lens.ActivationCache import ActivationCache
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import attribution
from bench.memory import status_kb
from loka import testbed
from loka.data import KnowledgeSet
from loka.models import input_device, load_model, logits, quiet_transformers

GOAL_GRAD = 3.0
GOAL_PATCH = 5.0
WORKLOADS = ("forward", "forward_backward", "grad_x_act", "exact_heads")


# ----------------------------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------------------------


def metric_of(facts: KnowledgeSet, model: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The batch's token ids and TL's view of the metric: mean over facts of log p(target)."""
    batch = facts.encode(model).to(device_of(model))
    return batch.input_ids, lambda out: batch.target_log_probs(out).sum(-1).mean()


def device_of(model: Any) -> torch.device:
    return input_device(model)


def forward(model: Any, facts: KnowledgeSet) -> None:
    batch = facts.encode(model).to(device_of(model))
    with torch.no_grad():
        logits(model, batch.input_ids, batch.attention_mask)


def forward_backward(model: Any, facts: KnowledgeSet) -> None:
    batch = facts.encode(model).to(device_of(model))
    value = batch.target_log_probs(logits(model, batch.input_ids, batch.attention_mask)).sum(-1).mean()
    torch.autograd.grad(value, [p for p in model.parameters() if p.requires_grad], allow_unused=True)


def grad_x_act(model: Any, facts: KnowledgeSet) -> attribution.AttributionScores:
    return attribution.attribute(
        model, facts, method="grad_x_act", baseline="zero", direction="ablate", batch_size=len(facts), progress=False
    )


def exact_heads(model: Any, facts: KnowledgeSet, layers: list[int] | None = None) -> torch.Tensor:
    """loka's exact zero-ablation of every head (of ``layers``), as ``[layer, head]``."""
    if layers is None:
        scores = attribution.attribute(
            model, facts, method="activation_patching", components="heads", baseline="zero", direction="ablate",
            batch_size=len(facts), progress=False,
        )  # fmt: skip
        return scores.heads
    heads = [("head", layer, h) for layer in layers for h in range(model.cfg.n_heads)]
    effects = attribution.patch_components(model, facts, heads, batch_size=len(facts))
    return effects.effects.view(len(layers), model.cfg.n_heads)


def tl_heads(model: Any, facts: KnowledgeSet, layers: list[int] | None = None) -> torch.Tensor:
    """TransformerLens's sweep on the same inputs, as effects (patched metric - clean metric)."""
    tokens, metric = metric_of(facts, model)
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_z"))
        zeros = ActivationCache({name: torch.zeros_like(act) for name, act in cache.items()}, model)
        clean = metric(clean_logits)
        if layers is None:
            patched = patching.get_act_patch_attn_head_out_all_pos(model, tokens, zeros, metric)
        else:
            index = pd.DataFrame(
                [(layer, h) for layer in layers for h in range(model.cfg.n_heads)], columns=["layer", "head"]
            )
            sweep = partial(
                patching.generic_activation_patch,
                patch_setter=patching.layer_head_vector_patch_setter,
                activation_name="z",
            )
            patched = sweep(model, tokens, zeros, metric, index_df=index).view(len(layers), model.cfg.n_heads)
    return (patched - clean).cpu()


# ----------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------


def best_of(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> tuple[float, Any]:
    """Smallest wall time of ``repeats`` calls (after one untimed warm-up call), and the result."""
    result = fn() if warmup else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), result


def child_peak_mb(workload: str, model_dir: Path, facts_file: Path, device: str, layers: str) -> float | None:
    """Run one workload in a fresh process; its peak memory above the loaded model, in MiB."""
    command = [
        sys.executable,
        __file__,
        "--child",
        workload,
        "--model-dir",
        str(model_dir),
        "--facts-file",
        str(facts_file),
        "--device",
        device,
        "--threads",
        str(torch.get_num_threads()),
        "--large-head-layers",
        layers,
    ]
    # Tensors of 64 KiB and more are then mmapped and unmapped when freed, so the resident set
    # follows live memory and its high-water mark is the workload's peak.
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        print(f"  (memory child {workload} failed: {done.stderr.strip()[-300:]})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]


def run_child(args: argparse.Namespace) -> None:
    """Child process: load, warm up, reset the high-water mark, run the workload once."""
    torch.set_num_threads(args.threads)
    with quiet_transformers():
        model = load_model(args.model_dir, device=args.device)
    facts = KnowledgeSet.from_jsonl(args.facts_file)
    layers = parse_layers(args.large_head_layers, model.cfg.n_layers)
    work: Callable[[], Any] = {
        "forward": lambda: forward(model, facts),
        "forward_backward": lambda: forward_backward(model, facts),
        "grad_x_act": lambda: grad_x_act(model, facts),
        "exact_heads": lambda: exact_heads(model, facts, layers),
    }[args.child]
    work()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        work()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            base_kb, reset = status_kb("VmRSS"), True
        except OSError:
            base_kb, reset = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
        work()
        peak_kb = status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = max(0, (peak_kb or 0) - (base_kb or 0)) * 1024
    print(json.dumps({"peak_mb": peak / 2**20}))


def parse_layers(value: str, n_layers: int) -> list[int] | None:
    if value == "all":
        return None
    if value == "ends":
        return sorted({0, n_layers - 1})
    return [int(v) for v in value.split(",")]


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    model_dir: Path
    facts: KnowledgeSet
    head_layers: str  # "all", "ends" or a comma list


def large_model_dir(tokenizer_dir: Path, out: Path) -> Path:
    """A random GPT-2 small shape (12 x 768, vocab 50257) with the testbed's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = GPT2Config(
        n_layer=12,
        n_embd=768,
        n_head=12,
        n_inner=3072,
        vocab_size=50257,
        n_positions=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]), quiet_transformers():
        torch.manual_seed(0)
        GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def short_passages(bed: testbed.Testbed, model_dir: Path, n: int, max_tokens: int = 64) -> tuple[Any, ...]:
    """The first ``n`` of the testbed's passages that read as at most ``max_tokens`` tokens."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = KnowledgeSet(bed.passages.facts).encode(tokenizer).attention_mask.sum(-1).tolist()
    chosen = tuple(f for f, length in zip(bed.passages, lengths, strict=True) if length <= max_tokens)[:n]
    if len(chosen) < n:
        raise RuntimeError(f"the testbed has only {len(chosen)} passages of at most {max_tokens} tokens")
    return chosen


def measure(case: Case, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with quiet_transformers():
        model = load_model(case.model_dir, device=args.device)
    facts = case.facts
    width = facts.encode(model).input_ids.shape[1]
    layers = parse_layers(case.head_layers, model.cfg.n_layers)
    n_heads = model.cfg.n_heads * (model.cfg.n_layers if layers is None else len(layers))
    shape = f"{model.cfg.n_layers} layers x {model.cfg.d_model}, d_mlp {model.cfg.d_mlp}, {model.cfg.n_heads} heads"
    print(f"\n== {case.name}: {shape}; batch {len(facts)} facts x {width} tokens ==", flush=True)
    repeats = args.repeats if model.cfg.d_model < 512 else 1

    t_fb, _ = best_of(lambda: forward_backward(model, facts), repeats)
    t_gxa, scores = best_of(lambda: grad_x_act(model, facts), repeats)
    print(f"  forward+backward {t_fb:.3f} s, grad x act {t_gxa:.3f} s", flush=True)
    big = model.cfg.d_model >= 512
    t_tl, tl = best_of(lambda: tl_heads(model, facts, layers), repeats, warmup=not big)
    t_ours, ours = best_of(lambda: exact_heads(model, facts, layers), repeats, warmup=not big)
    diff = (tl - ours).abs().max().item()
    scale = abs(attribution.metric_values(model, facts).mean)  # float32 rounding scales with the metric
    print(f"  TL heads {t_tl:.3f} s, loka heads {t_ours:.3f} s, max |diff| {diff:.2e} (metric {scale:.1f})", flush=True)

    facts_file = workdir / f"{case.name.replace(' ', '_')}.jsonl"
    facts.to_jsonl(facts_file)
    peaks = {w: child_peak_mb(w, case.model_dir, facts_file, args.device, case.head_layers) for w in WORKLOADS}
    return {
        "case": case,
        "width": width,
        "n_heads": n_heads,
        "all_heads": layers is None,
        "t_fb": t_fb,
        "t_gxa": t_gxa,
        "t_tl": t_tl,
        "t_ours": t_ours,
        "diff": diff,
        "relative_diff": diff / max(scale, 1e-12),
        "peaks": peaks,
        "scores_finite": bool(torch.isfinite(scores.neurons).all()),
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print("\n" + "=" * 100)
    print(
        f"attribution benchmark  (torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()})"
    )
    print("=" * 100)
    header = f"{'model':<34}{'measure':<52}{'value':>10}{'goal':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        name = f"{r['case'].name} ({len(r['case'].facts)}x{r['width']})"
        rows = [
            ("forward + backward (s)", f"{r['t_fb']:.3f}", ""),
            ("grad x act, all neurons + heads (s)", f"{r['t_gxa']:.3f}", ""),
            ("  ratio grad x act / (forward + backward)", f"{r['t_gxa'] / r['t_fb']:.2f}", f"<= {GOAL_GRAD:g}"),
        ]
        which = f"all {r['n_heads']}" if r["all_heads"] else f"{r['n_heads']}"
        rows += [
            (f"TL head patching sweep, {which} heads (s)", f"{r['t_tl']:.3f}", ""),
            (f"loka batched exact patching, {which} heads (s)", f"{r['t_ours']:.3f}", ""),
            ("  ratio TL / loka", f"{r['t_tl'] / r['t_ours']:.2f}", f">= {GOAL_PATCH:g}"),
            ("  max |TL - loka| (results equal)", f"{r['diff']:.1e}", "< 1e-4"),
            ("  max |TL - loka| / |mean metric|", f"{r['relative_diff']:.1e}", ""),
        ]
        peaks = r["peaks"]
        base = peaks.get("forward")
        for workload in WORKLOADS:
            mb = peaks.get(workload)
            value = "n/a" if mb is None else f"{mb:.1f}"
            rows.append((f"peak memory above model, {workload} (MiB)", value, ""))
            if workload != "forward" and mb is not None and base:
                rows.append((f"  ratio {workload} / forward", f"{mb / base:.2f}", ""))
        for i, (measure_name, value, goal) in enumerate(rows):
            print(f"{name if i == 0 else '':<34}{measure_name:<52}{value:>10}{goal:>8}")
        print("-" * len(header))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=None, help="testbed cache (default: loka's normal cache)")
    parser.add_argument("--facts", type=int, default=32, help="forget facts in the testbed batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats on the small model (best is kept)")
    parser.add_argument("--skip-large", action="store_true", help="only the testbed")
    parser.add_argument(
        "--large-head-layers", default="ends", help="'ends' (first and last layer), 'all', or a comma list"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine torch's pool spin-waits against other processes)",
    )
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--facts-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        run_child(args)
        return

    bed = testbed.load("default", cache_dir=args.cache_dir, progress=True)
    cases = [Case("default testbed", bed.model_dir, KnowledgeSet(bed.forget.facts[: args.facts], name="forget"), "all")]
    with tempfile.TemporaryDirectory(prefix="loka-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_large:
            large = large_model_dir(bed.model_dir, workdir / "gpt2-12x768")
            passages = KnowledgeSet(short_passages(bed, large, 8), name="passages")
            cases.append(Case("random GPT-2 12x768", large, passages, args.large_head_layers))
        results = [measure(case, args, workdir) for case in cases]
    report(results, args)


if __name__ == "__main__":
    main()
