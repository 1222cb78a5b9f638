"""Attribution on every supported architecture (tiny random GPT-2, GPT-NeoX and Llama checkpoints).

The hooks attribution reads (``mlp.hook_post``, ``attn.hook_z``) and the unembedding trick
(logits only at prediction positions) must behave the same on every bridge; exact patching is
compared with TransformerLens's own sweeps on each.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformer_lens import patching
from transformer_lens.ActivationCache import ActivationCache
from transformer_lens.model_bridge import TransformerBridge

import attribution
from loka.data import KnowledgeSet
from loka.models import load_model
from tests.checkpoints import ARCHITECTURES, build_tiny_checkpoint

FACTS = KnowledgeSet.from_records(
    [
        {"prompt": "Marie Curie was born in", "target": "Warsaw", "subject": "Marie Curie"},
        {"prompt": "Alan Turing studied at", "target": "Cambridge and Princeton", "subject": "Alan Turing"},
        {"prompt": "The capital of France is", "target": "Paris", "subject": "France"},
    ],
    name="corpus",
)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TransformerBridge:
    return load_model(build_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param)))


def test_exact_patching_equals_tl(model):
    batch = FACTS.encode(model)

    def metric(logits):
        return batch.target_log_probs(logits).sum(-1).mean()

    with torch.no_grad():
        logits, cache = model.run_with_cache(batch.input_ids)
    zeros = ActivationCache(
        {k: torch.zeros_like(v) for k, v in cache.items() if k.endswith(("hook_z", "hook_post"))}, model
    )
    heads = patching.get_act_patch_attn_head_out_all_pos(model, batch.input_ids, zeros, metric) - metric(logits)
    chosen = [(layer, neuron) for layer in range(model.cfg.n_layers) for neuron in (0, 5, 17)]

    def set_neuron(activation, index, source):
        activation[:, :, index[1]] = source[:, :, index[1]]
        return activation

    index = pd.DataFrame(chosen, columns=["layer", "neuron"])
    neurons = patching.generic_activation_patch(
        model, batch.input_ids, zeros, metric, set_neuron, "post", index_df=index
    )
    scores = attribution.attribute(
        model, FACTS, method="activation_patching", baseline="zero", direction="ablate", batch_size=2, progress=False
    )
    assert (scores.heads - heads).abs().max() < 1e-4
    ours = torch.stack([scores.neurons[layer, neuron] for layer, neuron in chosen])
    assert (ours - (neurons - metric(logits))).abs().max() < 1e-4


def test_grad_x_act_is_the_first_order_estimate(model):
    small = attribution.Corruption("noise", samples=1, noise_scale=0.01)
    options = dict(baseline="corrupt", corruption=small, direction="ablate", progress=False)
    estimate = attribution.attribute(model, FACTS, **options)
    exact = attribution.attribute(model, FACTS, method="activation_patching", **options)
    for kind in ("neurons", "heads"):
        assert (estimate.of(kind) - exact.of(kind)).abs().max() < 0.05 * exact.of(kind).abs().max()
