"""One error contract across the three packages: a caller's mistake is a ``loka.UsageError``
(a ``ValueError``), the same type for the same mistake wherever it is made."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import ablation
import attribution
import loka
from ablation import AblationMask
from loka.base.errors import UsageError
from loka.scoring.unknown import unknown_distributions


@pytest.fixture(scope="module")
def model(tiny_testbed):
    return loka.load_model(tiny_testbed.model_dir)


def test_usage_error_is_exported_and_is_a_value_error():
    assert loka.UsageError is UsageError and issubclass(UsageError, ValueError)


def test_a_model_that_is_not_a_bridge_is_the_same_error_everywhere(tiny_testbed, model):
    """Attribution, hooks, the rewrite and the unknown-people read all need a TransformerBridge;
    each says so with a UsageError (ablation and loka.scoring.unknown raised TypeError before)."""
    hf = AutoModelForCausalLM.from_pretrained(tiny_testbed.model_dir)
    facts = tiny_testbed.forget
    mask = AblationMask.from_components([("neuron", 0, 1)], model=model)
    calls = {
        "attribution.attribute": lambda: attribution.attribute(hf, facts, progress=False),
        "ablation.ablate": lambda: ablation.ablate(hf, mask).__enter__(),
        "ablation.rewrite": lambda: ablation.rewrite(hf, facts, retain=tiny_testbed.retain),
        "loka.scoring.unknown.unknown_distributions": lambda: unknown_distributions(hf, facts, tiny_testbed.holdout),
    }
    for name, call in calls.items():
        with pytest.raises(UsageError, match="TransformerBridge") as raised:
            call()
        assert type(raised.value) is UsageError, name
    with pytest.raises(UsageError, match="TransformerBridge or a transformers PreTrainedModel"):
        ablation.bake(torch.nn.Linear(2, 2), mask)


def test_a_bad_mask_argument_is_a_usage_error(model):
    with pytest.raises(UsageError, match="mask must be an ablation.AblationMask"):
        ablation.bake(model, "mask.json")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="mask must be an ablation.AblationMask"):
        ablation.edit(model, "mask.json", lambda m: torch.zeros(()))  # type: ignore[arg-type]
