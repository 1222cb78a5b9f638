"""Random controls keep an edit's size (singular values per changed tensor) and nothing else."""

from __future__ import annotations

import pytest
import torch

from ablation import random_edit_like
from ablation.control import random_change_like
from loka.models import hf_state_dict, load_model, plain_copy
from tests.checkpoints import build_tiny_checkpoint


@pytest.mark.parametrize("shape,rank", [((12, 7), 3), ((5, 9), 5), ((6, 6), 1)])
def test_random_change_keeps_singular_values(shape, rank):
    generator = torch.Generator().manual_seed(0)
    change = torch.randn(shape[0], rank, dtype=torch.float64) @ torch.randn(rank, shape[1], dtype=torch.float64)
    control = random_change_like(change, generator)
    assert control.shape == change.shape
    torch.testing.assert_close(torch.linalg.svdvals(control), torch.linalg.svdvals(change), atol=1e-9, rtol=1e-9)
    assert torch.linalg.matrix_rank(control) == rank
    # random directions: not the same matrix, and nearly orthogonal to it in high dimension
    assert not torch.allclose(control, change)


def test_vectors_keep_their_norm_and_zero_stays_zero():
    generator = torch.Generator().manual_seed(1)
    v = torch.randn(10)
    assert torch.isclose(random_change_like(v, generator).norm(), v.norm())
    assert random_change_like(torch.zeros(4, 3), generator).abs().sum() == 0


def test_random_edit_changes_only_what_the_edit_changed(model):
    state = hf_state_dict(model)
    name = next(n for n in state if n.endswith(("mlp.c_proj.weight", "dense_4h_to_h.weight", "down_proj.weight")))
    delta = torch.zeros_like(state[name])
    delta[:, :2] = torch.randn(delta.shape[0], 2)  # a rank-2 edit of one weight
    edited = plain_copy(model, state={**state, name: state[name] + delta})
    control = random_edit_like(model, edited, seed=3)
    assert type(control) is type(model)
    new = hf_state_dict(control)
    for key, weight in state.items():
        if key == name:
            change = new[key] - weight
            torch.testing.assert_close(torch.linalg.svdvals(change), torch.linalg.svdvals(delta), atol=1e-4, rtol=1e-4)
            assert not torch.allclose(change, delta, atol=1e-3)
        else:
            assert torch.equal(new[key], weight), key
    again = hf_state_dict(random_edit_like(model, edited, seed=3))
    assert torch.equal(again[name], new[name])  # reproducible by seed


def test_random_edit_refuses_another_architecture(tmp_path):
    gpt2 = load_model(build_tiny_checkpoint("gpt2", tmp_path / "gpt2"))
    llama = load_model(build_tiny_checkpoint("llama", tmp_path / "llama"))
    with pytest.raises(ValueError, match="different weights from the original"):
        random_edit_like(gpt2, llama)
