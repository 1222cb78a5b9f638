"""GPU check: loka's main path on an accelerator in low precision, compared with float32 on the CPU.

One command for a machine with CUDA. On a random GPT-2-small-shaped model (12 x 768, vocab
50257; :mod:`bench.models`) loaded in ``--dtype`` (bfloat16 by default) on ``--device`` it runs,
timing each step and measuring its peak memory (:class:`bench.memory.PeakMeter`):

1. ``loka.load_model(dir, device=, dtype=)``
2. ``attribution.attribute(..., method="grad_x_act", baseline="zero")`` on a few facts
3. ``loka.unlearn(..., method="loka")`` for ``--steps`` optimizer steps (a LOKA edit)
4. ``loka.evaluate(...)`` on a few facts (no probe, no relearning attack)
5. ``ablation.export_checkpoint(edited, dir)``, then ``load_model`` of the export

and checks each against a reference, the same model in float32 on the CPU:

* attribution: Spearman rank correlation of the neuron scores and of the head scores with the
  reference's, each >= :data:`MIN_SPEARMAN` (0.95);
* logits of the unedited model at every answer position, centred per row (so a constant shift,
  which softmax ignores, is not an error): ``||delta|| / ||reference|| <= LOGIT_RTOL[dtype]``
  (bfloat16 0.05, float16 0.01, float32 0.001; bfloat16 keeps 8 significant bits, about 0.4%
  per rounding, and the error grows through the layers);
* the LOKA edit: the edited copy is on the same device and dtype, its weights differ from the
  original's and its logits are finite; evaluation returns accuracies in [0, 1];
* the export: reloaded in the same dtype, it has the edited model's fingerprint and logits.

With two or more GPUs it then loads the model with ``device_map="balanced"`` (spread over
two GPUs) and repeats the attribution and logits checks; with fewer it says it skipped them.
The exit status is 0 when every check passes, 1 when one fails, 2 when the device is missing.

``--device cpu`` runs the same path on the CPU (slow for the 12 x 768 model in bfloat16), and
``--model tiny`` on a 2-layer random model so the whole check takes seconds
(``tests/test_gpu_check.py`` runs ``--device cpu --model tiny``).

    python bench/gpu_check.py                              # cuda, bfloat16, gpt2-small
    python bench/gpu_check.py --device cpu --model tiny    # the test's run
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages and bench.models

import argparse
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
from scipy.stats import spearmanr

import ablation
import attribution
import loka
from bench.memory import MIB, PeakMeter, mmap_large_allocations
from bench.models import NAMES, build_bench_model, synthetic_facts
from loka.data import KnowledgeSet
from loka.models import hf_model, hf_state_dict
from loka.models import logits as model_logits

MIN_SPEARMAN = 0.95
LOGIT_RTOL = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}
"""Largest ``||delta|| / ||reference||`` of centred answer-position logits, by the model's dtype."""
EXPORT_RTOL = 1e-3
"""The same, for the reloaded export against the edited model (same weights, same device)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Run:
    """Steps (time, peak memory) and checks of one gpu_check run."""

    def __init__(self, device: str) -> None:
        self.meter = PeakMeter(device)
        self.checks: list[Check] = []

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        out, seconds, peak = self.meter.run(fn)
        print(f"  {name:<40} {seconds:8.2f} s   peak {peak / MIB:9.1f} MiB", flush=True)
        return out

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))
        print(f"  [{'ok' if ok else 'MISMATCH'}] {name}: {detail}", flush=True)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)


def answer_logits(model: Any, facts: KnowledgeSet) -> torch.Tensor:
    """float32 CPU logits at every real answer position of ``facts``, centred per row."""
    batch = facts.encode(model.tokenizer)
    with torch.no_grad():
        out = model_logits(model, batch.input_ids, attention_mask=batch.attention_mask)
    rows = batch.target_logits(out.cpu()).float()[batch.target_mask]
    return rows - rows.mean(-1, keepdim=True)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-12))


def grad_x_act(model: Any, facts: KnowledgeSet) -> attribution.AttributionScores:
    return attribution.attribute(model, facts, method="grad_x_act", baseline="zero", progress=False)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().double().numpy(), b.flatten().double().numpy()).statistic)


def check_attribution(run: Run, scores: Any, reference: Any, where: str) -> None:
    for kind in ("neurons", "heads"):
        rho = spearman(getattr(scores, kind).cpu(), getattr(reference, kind).cpu())
        run.check(
            f"{where}: grad x act {kind} vs fp32 CPU", rho >= MIN_SPEARMAN, f"Spearman {rho:.4f} (>= {MIN_SPEARMAN})"
        )


def check_logits(
    run: Run, model: Any, facts: KnowledgeSet, reference: torch.Tensor, dtype: torch.dtype, where: str
) -> None:
    got = answer_logits(model, facts)
    err, tol = relative_error(got, reference), LOGIT_RTOL[dtype]
    worst = float((got - reference).abs().max())
    run.check(
        f"{where}: logits vs fp32 CPU", err <= tol, f"relative error {err:.2e} (<= {tol:.0e}), max |delta| {worst:.3g}"
    )


def placement(model: Any) -> tuple[set[str], set[torch.dtype]]:
    params = list(hf_model(model).parameters())
    return {str(p.device) for p in params}, {p.dtype for p in params}


def weights_differ(a: Any, b: Any) -> bool:
    sa, sb = hf_state_dict(a), hf_state_dict(b)
    return any(not torch.equal(sa[n].cpu(), sb[n].cpu()) for n in sa)


def device_map_check(
    run: Run,
    model_dir: Path,
    dtype: torch.dtype,
    n_params: int,
    sets: tuple[KnowledgeSet, KnowledgeSet],
    reference: tuple[Any, torch.Tensor],
) -> None:
    """Attribution (on ``sets[0]``) and logits (on ``sets[1]``) of the model spread over two GPUs
    (``device_map="balanced"``, GPU 0 capped at 60% of the weights so that it cannot hold them all),
    against the float32 CPU ``reference`` (scores, logits)."""
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus < 2:
        print(f"\n-- device_map over 2 GPUs: skipped ({n_gpus} GPU(s) visible; needs 2 or more)")
        return
    print("\n-- device_map over 2 GPUs")
    weight_bytes = n_params * torch.finfo(dtype).bits // 8
    memory = {0: int(0.6 * weight_bytes) + 64 * MIB, 1: 4 * weight_bytes + 64 * MIB}
    model = run.step(
        "load_model(device_map='balanced')",
        lambda: loka.load_model(model_dir, dtype=dtype, device_map="balanced", max_memory=memory),
    )
    devices, _ = placement(model)
    run.check("device_map spreads the model", len(devices - {"cpu"}) >= 2, f"parameters on {sorted(devices)}")
    scores = run.step("attribute grad_x_act", lambda: grad_x_act(model, sets[0]))
    check_attribution(run, scores, reference[0], "device_map")
    check_logits(run, model, sets[1], reference[1], dtype, "device_map")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bfloat16")
    parser.add_argument("--model", choices=NAMES, default="gpt2-small")
    parser.add_argument("--facts", type=int, default=4, help="forget facts (retain: twice as many)")
    parser.add_argument("--steps", type=int, default=3, help="LOKA optimizer steps")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where bench models are built")
    parser.add_argument("--no-device-map", action="store_true", help="skip the 2-GPU device_map check")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device} but CUDA is not available; use --device cpu to run the CPU path")
        return 2
    if not args.device.startswith("cuda"):
        mmap_large_allocations()  # so that the CPU peaks measure live memory (see bench/memory.py)
    dtype = DTYPES[args.dtype]
    model_dir = build_bench_model(args.model, args.cache_dir)
    facts = synthetic_facts(n_forget=max(1, args.facts // 2), n_retain=args.facts, n_holdout=max(1, args.facts // 2))
    forget, everything = facts.forget, facts.forget + facts.retain
    run = Run(args.device)

    print(f"gpu_check: {args.model} ({model_dir}); reference float32 on cpu")
    reference = loka.load_model(model_dir, device="cpu", dtype=torch.float32)
    ref_scores = grad_x_act(reference, forget)
    ref_logits = answer_logits(reference, everything)
    n_params = sum(p.numel() for p in hf_model(reference).parameters())
    del reference

    print(f"\n-- {args.dtype} on {args.device}")
    model = run.step("load_model", lambda: loka.load_model(model_dir, device=args.device, dtype=dtype))
    devices, dtypes = placement(model)
    run.check(
        "load_model placement", dtypes == {dtype}, f"parameters on {sorted(devices)} as {sorted(map(str, dtypes))}"
    )
    check_logits(run, model, everything, ref_logits, dtype, args.device)
    scores = run.step("attribute grad_x_act", lambda: grad_x_act(model, forget))
    check_attribution(run, scores, ref_scores, args.device)

    result = run.step(
        f"unlearn method=loka ({args.steps} steps)",
        lambda: loka.unlearn(
            model, forget, facts.retain, method="loka", max_steps=args.steps, check_every=args.steps, progress=False
        ),
    )
    edited = result.model
    edited_devices, edited_dtypes = placement(edited)
    run.check(
        "LOKA edit",
        edited_devices == devices and edited_dtypes == {dtype} and weights_differ(edited, model),
        f"edited copy on {sorted(edited_devices)} as {sorted(map(str, edited_dtypes))}, weights changed: "
        f"{weights_differ(edited, model)}",
    )
    edited_logits = answer_logits(edited, everything)
    run.check("edited logits finite", bool(torch.isfinite(edited_logits).all()), f"{edited_logits.numel()} values")

    evaluation = run.step(
        "evaluate (no probe, no relearning)",
        lambda: loka.evaluate(
            edited, forget=forget, retain=facts.retain, holdout=facts.holdout, probe=False, relearn=False
        ),
    )
    accuracies = (evaluation.forget_accuracy, evaluation.retain_accuracy)
    run.check(
        "evaluate", all(0.0 <= a <= 1.0 for a in accuracies), f"forget {accuracies[0]:.3f}, retain {accuracies[1]:.3f}"
    )

    with tempfile.TemporaryDirectory(prefix="loka-gpu-check-") as tmp:
        out = run.step("export_checkpoint", lambda: ablation.export_checkpoint(edited, Path(tmp) / "edited"))
        reloaded = loka.load_model(out, device=args.device, dtype=dtype)
        same = loka.fingerprint(reloaded) == loka.fingerprint(edited)
        err = relative_error(answer_logits(reloaded, everything), edited_logits)
        run.check(
            "export round trip",
            same and err <= EXPORT_RTOL,
            f"same fingerprint: {same}, logits relative error {err:.1e}",
        )
        del reloaded

    if args.device.startswith("cuda") and not args.no_device_map:
        del model, edited, result
        device_map_check(run, model_dir, dtype, n_params, (forget, everything), (ref_scores, ref_logits))

    failed = [c.name for c in run.checks if not c.ok]
    print(
        f"\ngpu_check: {len(run.checks) - len(failed)}/{len(run.checks)} checks passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 0 if run.passed else 1


if __name__ == "__main__":
    sys.exit(main())
