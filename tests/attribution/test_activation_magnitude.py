"""Activation magnitude (attribution.activation_magnitude) against a hand computation.

On tiny random checkpoints of every architecture (their MLP and attention output weights are
laid out differently: GPT-2's Conv1D is ``[in, out]``, NeoX and Llama's Linear ``[out, in]``),
the activations come from TransformerLens's ``run_with_cache``, one fact at a time, and the
weights from TL's ``W_out`` / ``W_O`` views, not from loka.models.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import attribution
from loka.base.errors import UsageError
from loka.data import KnowledgeSet
from loka.models import load_model
from tests.checkpoints import ARCHITECTURES, birth_facts, build_tiny_checkpoint


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TransformerBridge:
    return load_model(build_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module")
def facts() -> KnowledgeSet:
    return birth_facts(3)


def by_hand(model: TransformerBridge, facts: KnowledgeSet, last_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(neurons, heads): mean over facts of the mean over positions of |a| (||z_h||), times
    ||W_out[l][i]|| (the largest singular value of W_O[l][h])."""
    n_layers = model.cfg.n_layers
    neuron_sizes, head_sizes = [], []
    for fact in facts:
        batch = KnowledgeSet((fact,)).encode(model)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch.input_ids)
        position = slice(int(batch.prediction_positions[0, 0]), int(batch.prediction_positions[0, 0]) + 1)
        rows = position if last_only else slice(None)
        layers = range(n_layers)
        neuron_sizes.append(torch.stack([cache[f"blocks.{i}.mlp.hook_post"][0, rows].abs().mean(0) for i in layers]))
        head_sizes.append(torch.stack([cache[f"blocks.{i}.attn.hook_z"][0, rows].norm(dim=-1).mean(0) for i in layers]))
    w_out = torch.stack([model.blocks[i].mlp.W_out.detach().norm(dim=-1) for i in range(n_layers)])
    w_o = torch.stack(
        [torch.stack([torch.linalg.svdvals(w)[0] for w in model.blocks[i].attn.W_O.detach()]) for i in range(n_layers)]
    )
    return torch.stack(neuron_sizes).mean(0) * w_out, torch.stack(head_sizes).mean(0) * w_o


@pytest.mark.parametrize("positions", ["all", "last"])
def test_equals_a_hand_computation(tiny, facts, positions):
    scores = attribution.attribute(
        tiny, facts, method="activation_magnitude", positions=positions, batch_size=2, progress=False
    )
    neurons, heads = by_hand(tiny, facts, last_only=positions == "last")
    assert torch.allclose(scores.importance("neurons"), neurons, rtol=1e-4, atol=1e-6)
    assert torch.allclose(scores.importance("heads"), heads, rtol=1e-4, atol=1e-6)
    assert (scores.neurons <= 0).all() and (scores.heads <= 0).all()  # ablate convention: -magnitude
    meta = scores.metadata
    assert (meta.method, meta.baseline, meta.direction) == ("activation_magnitude", "zero", "ablate")
    assert "spectral" in meta.options["score"]


def test_one_kind_only(tiny, facts):
    both = attribution.attribute(tiny, facts, method="activation_magnitude", progress=False)
    heads = attribution.attribute(tiny, facts, method="activation_magnitude", components="heads", progress=False)
    assert heads.neurons is None
    assert torch.allclose(heads.heads, both.heads)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(baseline="mean"), "starts from zero ablation"),
        (dict(direction="denoise"), "scores in the 'ablate' direction"),
        (dict(steps=3), "steps is read by method='integrated_gradients' only"),
        (dict(chunk_size=4), "chunk_size is read by"),
        (dict(retain=birth_facts(2)), "retain is read by method='learned_mask' only"),
        (dict(components="mlp"), "unknown components 'mlp'"),
    ],
)
def test_bad_options(tiny, facts, options, message):
    with pytest.raises(UsageError, match=message):
        attribution.attribute(tiny, facts, method="activation_magnitude", progress=False, **options)
