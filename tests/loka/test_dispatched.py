"""A model dispatched by accelerate (a per-module ``device_map``): attribution gives what it gives
on the same model loaded plainly, and an edit that cannot copy offloaded weights says so.

This machine has one device. transformers dispatches a model (an ``hf_device_map`` and a hook on
every module that moves inputs to that module's device, the code path of a model split over GPUs)
only when the map names more than one place, so one block is offloaded to disk: its weights sit on
``meta`` between calls and are loaded by its hook for each forward.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attribution
from loka.data import KnowledgeSet
from loka.errors import UsageError
from loka.methods import unlearn
from loka.models import load_model
from tests.checkpoints import build_tiny_checkpoint

MODULES = ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama-dispatched"))


def _facts() -> KnowledgeSet:
    records = [
        {"id": f"f{i}", "prompt": f"{name} was born in", "target": f"city {i}", "subject": name}
        for i, name in enumerate(f"Ada{chr(97 + i)} Lo" for i in range(6))
    ]
    return KnowledgeSet.from_records(records, name="facts")


def test_attribution_on_a_dispatched_model_equals_the_plain_model(llama_dir: Path) -> None:
    plain = load_model(llama_dir)
    dispatched = load_model(llama_dir, device_map=dict.fromkeys(MODULES, "cpu") | {"model.layers.1": "disk"})
    assert dispatched.original_model.hf_device_map["model.layers.1"] == "disk"
    facts = _facts()
    for method in ("grad_x_act", "activation_patching"):
        a = attribution.attribute(plain, facts, method=method, progress=False)
        b = attribution.attribute(dispatched, facts, method=method, progress=False)
        torch.testing.assert_close(b.neurons, a.neurons, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b.heads, a.heads, atol=1e-6, rtol=1e-5)
    forget, retain = KnowledgeSet(facts.facts[:3], name="f"), KnowledgeSet(facts.facts[3:], name="r")
    with pytest.raises(UsageError, match="offload"):
        unlearn(dispatched, forget, retain, method="loka", max_steps=1, progress=False, check_scores=0)
