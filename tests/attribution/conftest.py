"""Fixtures shared by the attribution tests: one torch thread, the tiny testbed's model, a donor pool."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

from loka.data import KnowledgeSet
from loka.models import load_model
from loka.testbed import Testbed


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine, torch's thread pool spin-waits against
    other processes and small forwards run tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tiny_testbed: Testbed) -> TransformerBridge:
    return load_model(tiny_testbed.model_dir)


@pytest.fixture(scope="module")
def pool(tiny_testbed: Testbed) -> KnowledgeSet:
    """Donors for resampling and subject replacement: every trained fact."""
    return tiny_testbed.forget + tiny_testbed.retain
