"""Integrated gradients (attribution.integrated_gradients) against a hand-written Riemann sum.

The model is a tiny random GPT-2 checkpoint (tests/checkpoints.py): the hand computation runs
each fact alone, scales one hook's whole activation by ``j / m`` through a TL hook, reads the
target's log-probability from the full logits with ``log_softmax``, and sums the gradients; the
library batches facts (with padding) and steps (as stacked copies). Under two gloo ranks (the
slow test at the end) the scores equal one process's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformer_lens.model_bridge import TransformerBridge

import attribution
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.models import load_model
from tests.checkpoints import birth_facts, build_tiny_checkpoint
from tests.ranks import run_all, torchrun

HOOKS = [f"blocks.{layer}.{site}" for layer in range(2) for site in ("mlp.hook_post", "attn.hook_z")]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("gpt2", tmp_path_factory.mktemp("gpt2"))


@pytest.fixture(scope="module")
def tiny(checkpoint: Path) -> TransformerBridge:
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def facts() -> KnowledgeSet:
    return birth_facts(3)  # "Ada<x> Lo was born in" -> "city <i>": several target tokens each


def log_prob(model: TransformerBridge, fact: KnowledgeSet, hooks: list[Any]) -> torch.Tensor:
    """log p(target | prompt) of the one fact of ``fact``, from the full logits."""
    batch = fact.encode(model)
    with model.hooks(fwd_hooks=hooks):
        logits = model(batch.input_ids)
    log_probs = logits[0].float().log_softmax(-1)
    total = torch.zeros(())
    for position, token, real in zip(
        batch.prediction_positions[0].tolist(), batch.target_ids[0].tolist(), batch.target_mask[0].tolist(), strict=True
    ):
        if real:
            total = total + log_probs[position, token]
    return total


def riemann_ig(model: TransformerBridge, facts: KnowledgeSet, name: str, steps: int) -> torch.Tensor:
    """Mean over facts of IG = a * (1/m) sum_j dM/da at (j/m) a, per unit of hook ``name``."""
    per_fact = []
    for fact in facts:
        one = KnowledgeSet((fact,))
        clean: dict[str, torch.Tensor] = {}

        def keep(act, hook, store=clean):
            store["a"] = act.detach().clone()
            return act

        with torch.no_grad():
            log_prob(model, one, [(name, keep)])
        a = clean["a"]
        summed = torch.zeros_like(a)
        for j in range(1, steps + 1):
            point = (j / steps * a).requires_grad_(True)
            value = log_prob(model, one, [(name, lambda act, hook, p=point: p)])
            (grad,) = torch.autograd.grad(value, point)
            summed += grad
        ig = a * summed / steps
        per_fact.append(ig.sum(dim=(0, 1)) if ig.ndim == 3 else ig.sum(dim=(0, 1, 3)))
    return torch.stack(per_fact).mean(0)


def layer_zeroed_effect(model: TransformerBridge, facts: KnowledgeSet, name: str) -> torch.Tensor:
    """Mean over facts of M(clean) - M(hook ``name`` zeroed)."""
    with torch.no_grad():
        clean = [log_prob(model, KnowledgeSet((f,)), []) for f in facts]
        zeroed = [log_prob(model, KnowledgeSet((f,)), [(name, lambda act, hook: torch.zeros_like(act))]) for f in facts]
    return (torch.stack(clean) - torch.stack(zeroed)).mean()


def of_hook(scores: attribution.AttributionScores, name: str) -> torch.Tensor:
    layer = int(name.split(".")[1])
    return scores.neurons[layer] if name.endswith("hook_post") else scores.heads[layer]


def test_equals_a_hand_written_riemann_sum(tiny, facts):
    steps = 5
    scores = attribution.attribute(
        tiny, facts, method="integrated_gradients", steps=steps, batch_size=2, chunk_size=2, progress=False
    )
    for name in HOOKS:
        expected = riemann_ig(tiny, facts, name, steps)
        assert torch.allclose(-of_hook(scores, name), expected, rtol=1e-4, atol=1e-6), name
        kind = "neurons" if "mlp" in name else "heads"
        assert torch.equal(scores.importance(kind), -scores.of(kind))
    meta = scores.metadata
    assert (meta.method, meta.baseline, meta.direction, meta.options["steps"]) == (
        "integrated_gradients", "zero", "ablate", steps
    )  # fmt: skip


@pytest.mark.parametrize("positions", ["all", "last"])
def test_one_step_is_gradient_times_activation_at_the_clean_run(tiny, facts, positions):
    """With m = 1 the only point of the path is alpha = 1, the clean run: the score is
    -a * dM/da there, which is what grad_x_act computes for baseline='zero'."""
    ig = attribution.attribute(
        tiny, facts, method="integrated_gradients", steps=1, positions=positions, batch_size=2, progress=False
    )
    gxa = attribution.attribute(
        tiny, facts, method="grad_x_act", baseline="zero", positions=positions, batch_size=2, progress=False
    )
    assert torch.allclose(ig.neurons, gxa.neurons, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ig.heads, gxa.heads, rtol=1e-5, atol=1e-7)
    assert ig.metadata.clean_metric == pytest.approx(gxa.metadata.clean_metric)


def test_steps_per_forward_and_facts_per_batch_do_not_change_the_scores(tiny, facts):
    options = dict(method="integrated_gradients", steps=7, progress=False)
    one = attribution.attribute(tiny, facts, batch_size=1, chunk_size=1, **options)
    many = attribution.attribute(tiny, facts, batch_size=3, **options)  # all 7 steps in one forward
    assert torch.allclose(one.neurons, many.neurons, rtol=1e-4, atol=1e-6)
    assert torch.allclose(one.heads, many.heads, rtol=1e-4, atol=1e-6)


def test_a_hook_sums_to_the_effect_of_zeroing_it(tiny, facts):
    """Completeness: the exact integral over one hook's units is M(a) - M(0) for that hook; the
    right Riemann sum approaches it like 1/m (on this model: errors of 0.04-0.05 at 16 steps,
    0.006-0.013 at 64, against effects of 0.6-2.3)."""
    coarse = attribution.attribute(tiny, facts, method="integrated_gradients", steps=16, progress=False)
    fine = attribution.attribute(tiny, facts, method="integrated_gradients", steps=64, progress=False)
    for name in HOOKS:
        target = layer_zeroed_effect(tiny, facts, name)
        fine_error = abs(of_hook(fine, name).sum().neg() - target).item()
        coarse_error = abs(of_hook(coarse, name).sum().neg() - target).item()
        assert fine_error < 0.03 * abs(target.item()) + 0.005, (name, fine_error, target.item())
        assert 3 < coarse_error / fine_error < 5.5, (name, coarse_error, fine_error)  # 4x the steps, 1/4 the error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(steps=0), "steps must be an integer at least 1"),
        (dict(steps=2.5), "steps must be an integer at least 1"),
        (dict(steps=True), "steps must be an integer at least 1"),
        (dict(baseline="corrupt"), "starts from zero ablation"),
        (dict(baseline="mean"), "starts from zero ablation"),
        (dict(direction="denoise"), "scores in the 'ablate' direction"),
        (dict(corruption="noise"), "corruption is read by"),
        (dict(donors=birth_facts(2)), "donors is read by"),
        (dict(samples=2), "samples must be 1"),
        (dict(chunk_size=0), "chunk_size must be an integer at least 1"),
        (dict(mask_config=attribution.LearnedMaskConfig()), "mask_config is read by method='learned_mask' only"),
    ],
)
def test_bad_options_are_one_line_errors(tiny, facts, options, message):
    with pytest.raises(UsageError, match=message) as caught:
        attribution.attribute(tiny, facts, method="integrated_gradients", progress=False, **options)
    assert "\n" not in str(caught.value)


def test_steps_belong_to_integrated_gradients(tiny, facts):
    with pytest.raises(UsageError, match="steps is read by method='integrated_gradients' only"):
        attribution.attribute(tiny, facts, method="grad_x_act", steps=5, progress=False)
    # The other methods keep their defaults when baseline is left unset.
    scores = attribution.attribute(tiny, facts, method="grad_x_act", components="heads", progress=False)
    assert (scores.metadata.baseline, scores.metadata.direction) == ("corrupt", "denoise")


# Data parallel -------------------------------------------------------------------------------
RUNS = {
    "ig": dict(method="integrated_gradients", steps=3),
    "magnitude": dict(method="activation_magnitude"),
}


def _results(model: Any) -> dict[str, torch.Tensor]:
    facts = birth_facts(5)
    out = {}
    for name, options in RUNS.items():
        scores = attribution.attribute(model, facts, batch_size=2, progress=False, **options)
        out[f"{name}.neurons"] = scores.neurons
        out[f"{name}.heads"] = scores.heads
        out[f"{name}.clean_metric"] = torch.tensor([scores.metadata.clean_metric])
    return out


def _worker(out_dir: Path, checkpoint: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tensors = _results(load_model(checkpoint))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / f"rank{rank}.safetensors"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_return_the_one_process_result(tmp_path: Path, checkpoint: Path, tiny):
    """5 facts in batches of 2: rank 0 runs one batch, rank 1 two; both return the full scores."""
    run_all([torchrun(__file__, str(tmp_path), str(checkpoint))], tmp_path, timeout=300)
    expected = _results(tiny)
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            assert torch.allclose(got[name], value, rtol=0, atol=1e-6), (name, (got[name] - value).abs().max().item())


if __name__ == "__main__":  # a rank, launched by the slow test through torch.distributed.run
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker(Path(sys.argv[1]), sys.argv[2])
