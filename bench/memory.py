"""Benchmark memory: the peak memory of every public operation, as a multiple of the weights' bytes.

On a random model of a real shape (:mod:`bench.models`: ``gpt2-small``, 12 x 768, by default;
``pythia-410m``; ``tiny``) and a few synthetic facts, it runs, in one process and in this order:

1. ``loka.load_model(dir)``                                  (the model itself included)
2. ``loka.fingerprint(model)``, first call and second call   (the second is served from the cache)
3. ``attribution.attribute(..., method="grad_x_act")``       on ``--facts`` facts, all neurons and heads
4. ``attribution.attribute(..., method="activation_patching", components="heads")`` on 2 facts
5. ``ablation.bake(model, mask)``                            the top ``--k`` components of (3)
6. ``ablation.edit(model, mask, objective, steps=--steps)``  same mask, answer NLL as objective
7. ``loka.unlearn(model, forget, retain, method="loka")``   ``--steps`` optimizer steps at most
8. ``loka.evaluate(model, forget=, retain=, holdout=)``      no probe, no relearning attack
9. ``ablation.export_checkpoint(baked, dir)``
10. on the CPU, the model loaded again with the second half of its blocks offloaded to disk
    (a ``device_map``), and an edit and ``unlearn(method="loka")`` on it

Bake and edit run with a full copy and with ``share=True`` (only the changed tensors new);
``unlearn(method="loka")`` with its default (``share=True``) and with ``share=False``.

and prints, per operation, its wall time and its peak memory above what was live just before it
(the operation's own working memory plus what it returns), in MiB and as a multiple of the
model's parameter bytes (fp32: 4 bytes a parameter).

How peaks are measured. On CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus ``memory_allocated`` before. On a CPU: the resident set's
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` before each operation) minus
the resident set before it; glibc is told (``mallopt``) to mmap every allocation of 64 KiB and
more, so freed tensors leave the resident set and one operation's garbage does not hide the next
one's peak. Without ``/proc/self/clear_refs`` the figure is the growth of ``ru_maxrss`` (a lower
bound, zero when an earlier operation peaked higher). Memory-mapped checkpoint pages count while
they are resident, as they do for the machine; the last column says how much of a peak they are
(a freshly loaded model's weights may still be file-backed, so the first operation that reads
every weight, the first fingerprint, pages them in: file-backed pages, not a copy).

    python bench/memory.py                       # gpt2-small on the CPU, 1 thread
    python bench/memory.py --model pythia-410m --device cuda
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages and bench.models

import argparse
import ctypes
import gc
import json
import os
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

import ablation
import attribution
import loka
from ablation.params import parameter_masks
from bench.models import NAMES, build_bench_model, synthetic_facts
from loka.data import KnowledgeSet
from loka.models import hf_state_dict
from loka.scoring.objectives import answer_log_probs, sequence_log_probs

MIB = 2**20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def mmap_large_allocations(threshold: int = 64 * 1024) -> bool:
    """Ask glibc to mmap (and unmap on free) every allocation of ``threshold`` bytes or more."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``, ``RssFile``), None where unreadable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMeter:
    """Peak memory of one call above what was live before it (device memory on CUDA, else RSS)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.file_growth = 0

    def run(self, fn: Callable[[], Any]) -> tuple[Any, float, int]:
        """``fn()``, its wall seconds and its peak in bytes above the memory live before it.

        On a CPU :attr:`file_growth` is then the growth of the file-backed resident set
        (``RssFile``: pages of memory-mapped checkpoints read for the first time), which is part
        of the peak but no copy of anything."""
        gc.collect()
        self.file_growth = 0
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            return out, seconds, torch.cuda.max_memory_allocated() - base
        file_before = status_kb("RssFile") or 0
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            base_kb, reset = status_kb("VmRSS") or 0, True
        except OSError:
            base_kb, reset = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, False
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        peak_kb = (status_kb("VmHWM") or 0) if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.file_growth = max(0, (status_kb("RssFile") or 0) - file_before) * 1024
        return out, seconds, max(0, peak_kb - base_kb) * 1024


@dataclass(frozen=True)
class Row:
    operation: str
    seconds: float
    peak_bytes: int
    file_bytes: int


def param_bytes(model: Any) -> int:
    """Bytes of the model's weights under their HF names (tied weights once; no bridge extras)."""
    seen: dict[int, int] = {}
    for tensor in hf_state_dict(model).values():
        seen[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def nll_objective(facts: KnowledgeSet, tokenizer: Any, device: str) -> Callable[[Any], torch.Tensor]:
    """``model -> mean answer log-probability of facts`` (minimising it pushes the answers down)."""
    batch = facts.encode(tokenizer).to(device)

    def objective(model: Any) -> torch.Tensor:
        return sequence_log_probs(answer_log_probs(model, batch), batch).mean()

    return objective


def run(args: argparse.Namespace) -> tuple[list[Row], int, str]:
    torch.set_num_threads(args.threads)
    if not args.device.startswith("cuda"):
        mmap_large_allocations()
    model_dir = build_bench_model(args.model, args.cache_dir)
    facts = synthetic_facts(n_forget=max(1, args.facts // 2), n_retain=args.facts, n_holdout=max(1, args.facts // 2))
    meter = PeakMeter(args.device)
    rows: list[Row] = []

    def step(name: str, fn: Callable[[], Any]) -> Any:
        out, seconds, peak = meter.run(fn)
        rows.append(Row(name, seconds, peak, meter.file_growth))
        print(f"  {name:<48} {seconds:8.2f} s  {peak / MIB:9.1f} MiB", flush=True)
        return out

    model = step("load_model", lambda: loka.load_model(model_dir, device=args.device))
    size = param_bytes(model)
    shape = f"{model.cfg.n_layers} layers x {model.cfg.d_model}, {size / MIB:.0f} MiB of parameters"
    forget = facts.forget
    step("fingerprint (first call)", lambda: loka.fingerprint(model))
    step("fingerprint (cached)", lambda: loka.fingerprint(model))
    scores = step(
        f"attribute grad_x_act ({len(forget)} facts)",
        lambda: attribution.attribute(model, forget, method="grad_x_act", baseline="zero", progress=False),
    )
    two = KnowledgeSet(forget.facts[:2], name="two")
    step(
        "attribute activation_patching, heads (2 facts)",
        lambda: attribution.attribute(
            model, two, method="activation_patching", components="heads", baseline="zero", progress=False
        ),
    )
    mask = ablation.AblationMask.from_scores(scores, k=args.k)
    weights = hf_state_dict(model)
    trained = parameter_masks(model, mask.neurons, mask.heads)
    owned = sum(weights[name].numel() * weights[name].element_size() for name in trained)
    shape += f"; the {args.k} components' tensors (what an edit trains): {owned / MIB:.0f} MiB = {owned / size:.2f} x"
    baked = step(f"bake ({args.k} components)", lambda: ablation.bake(model, mask))
    step(f"bake ({args.k} components, share=True)", lambda: ablation.bake(model, mask, share=True))
    objective = nll_objective(forget, model.tokenizer, args.device)
    for share in (False, True):
        edited = step(
            f"edit ({args.k} components, {args.steps} steps{', share=True' if share else ''})",
            lambda share=share: ablation.edit(model, mask, objective, steps=args.steps, lr=1e-3, share=share),
        )
        del edited
    loka_options = dict(
        method="loka",
        max_steps=args.steps,
        check_every=args.steps,
        progress=False,
        size=args.k,
        **({} if args.check_scores is None else {"check_scores": args.check_scores}),
    )
    for share in (True, False):
        result = step(
            f"unlearn method=loka ({args.steps} steps{'' if share else ', share=False'})",
            lambda share=share: loka.unlearn(model, forget, facts.retain, share=share, **loka_options),
        )
        del result
    step(
        "evaluate (no probe, no relearning)",
        lambda: loka.evaluate(
            model, forget=forget, retain=facts.retain, holdout=facts.holdout, probe=False, relearn=False
        ),
    )
    with tempfile.TemporaryDirectory(prefix="loka-memory-") as tmp:
        step("export_checkpoint", lambda: ablation.export_checkpoint(baked, Path(tmp) / "out", mask=mask))
    if args.offload and not args.device.startswith("cuda"):
        del model, baked
        gc.collect()
        placement = half_on_disk(model_dir)
        model = step(
            "load_model (second half of the blocks on disk)", lambda: loka.load_model(model_dir, device_map=placement)
        )
        edited = step(
            f"  edit on it ({args.k} components, {args.steps} steps)",
            lambda: ablation.edit(model, mask, objective, steps=args.steps, lr=1e-3, share=True),
        )
        del edited
        result = step(
            f"  unlearn method=loka on it ({args.steps} steps)",
            lambda: loka.unlearn(model, forget, facts.retain, **loka_options),
        )
        del result
    return rows, size, shape


def half_on_disk(model_dir: Path) -> dict[str, str]:
    """A device map for ``model_dir`` that keeps the embeddings, the first half of the blocks and
    the head on the CPU and offloads the second half of the blocks to disk."""
    config = json.loads((model_dir / "config.json").read_text())
    n_layers = int(config.get("n_layer") or config["num_hidden_layers"])
    blocks, rest = {
        "gpt2": ("transformer.h", ("transformer.wte", "transformer.wpe", "transformer.ln_f", "lm_head")),
        "gpt_neox": ("gpt_neox.layers", ("gpt_neox.embed_in", "gpt_neox.final_layer_norm", "gpt_neox.rotary_emb",
                                         "embed_out")),
    }[config["model_type"]]  # fmt: skip
    placement = dict.fromkeys(rest, "cpu")
    placement.update({f"{blocks}.{i}": "cpu" if i < n_layers // 2 else "disk" for i in range(n_layers)})
    return placement


def report(rows: list[Row], size: int, shape: str, args: argparse.Namespace) -> None:
    where = args.device if args.device.startswith("cuda") else f"cpu, {args.threads} thread(s)"
    print(f"\nPeak memory per operation: {args.model} ({shape}); {where}")
    print(f"{'operation':<48} {'time s':>8} {'peak MiB':>10} {'x params':>9} {'of it mmap MiB':>15}")
    for row in rows:
        print(
            f"{row.operation:<48} {row.seconds:8.2f} {row.peak_bytes / MIB:10.1f} {row.peak_bytes / size:9.2f}"
            f" {row.file_bytes / MIB:15.1f}"
        )
    print(
        "peak: above the memory live before the operation, its result included; 'of it mmap': growth of the\n"
        "file-backed resident set (checkpoint pages read for the first time; no copy)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=NAMES, default="gpt2-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--facts", type=int, default=4, help="forget facts (retain: twice as many)")
    parser.add_argument("--k", type=int, default=100, help="components baked / edited / unlearned")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps for edit and unlearn")
    parser.add_argument(
        "--check-scores",
        type=int,
        default=None,
        help="LOKA's exact re-check of its top attributions (default: LokaConfig's; 0 skips it, slow on a CPU)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where bench models are built")
    parser.add_argument(
        "--no-offload",
        dest="offload",
        action="store_false",
        help="skip the rows on a model whose second half of blocks is offloaded to disk (CPU only)",
    )
    args = parser.parse_args(argv)
    rows, size, shape = run(args)
    report(rows, size, shape, args)


if __name__ == "__main__":
    main()
