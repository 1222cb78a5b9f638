"""What an edit of chosen components may move: the weights those components own, nothing else."""

from __future__ import annotations

from typing import Any

import torch

from ablation.params import parameter_masks
from loka.models import hf_state_dict


def only_owned_weights_moved(model: Any, result: Any) -> int:
    """Assert that every weight ``result.mask``'s components do not own (:mod:`ablation.params`) is
    bit-identical in ``result.model`` and in ``model``; return how many entries moved."""
    owned = parameter_masks(model, result.mask.neurons, result.mask.heads)
    before, after = hf_state_dict(model), hf_state_dict(result.model)
    moved = 0
    for name, old in before.items():
        frozen = ~owned[name] if name in owned else torch.ones_like(old, dtype=torch.bool)
        assert torch.equal(old[frozen], after[name][frozen]), name
        moved += int((old != after[name]).sum())
    return moved
