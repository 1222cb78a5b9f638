"""Random controls of the same size as an edit: did the *choice* of what was edited matter?

An unlearning edit that lowers forget accuracy proves little by itself: any large enough change
to the weights lowers accuracy somewhere. The control is the same amount of change, put in a
random place, and it is judged by the same evaluation:

- for a mask, :meth:`AblationMask.random_like` (the same number of neurons and heads per layer);
- for a weight edit (a rewrite, a fine-tune, a task vector), :func:`random_edit_like`: every
  weight tensor that the edit changed gets a change with the *same singular values* (so the same
  rank and Frobenius norm) along random directions; tensors the edit left alone stay identical.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from loka.base.errors import UsageError
from loka.models import hf_state_dict, plain_copy, same_kind_as

__all__ = ["random_edit_like", "random_change_like"]

_RANK_TOLERANCE = 1e-6  # singular values below this fraction of the largest are treated as 0


def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> Float[Tensor, "rows cols"]:
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # a uniformly (Haar) distributed orthonormal frame


def random_change_like(change: Tensor, generator: torch.Generator) -> Tensor:
    """A tensor with ``change``'s shape and singular values (vectors: its norm), random directions."""
    if change.ndim != 2:
        direction = torch.randn(change.shape, generator=generator, dtype=torch.float64)
        return (direction * change.double().norm() / direction.norm()).to(change.dtype)
    singular = torch.linalg.svdvals(change.double())
    rank = int((singular > _RANK_TOLERANCE * singular.max()).sum()) if singular.numel() else 0
    if rank == 0:
        return torch.zeros_like(change)
    u = _orthonormal(change.shape[0], rank, generator)
    v = _orthonormal(change.shape[1], rank, generator)
    return ((u * singular[:rank]) @ v.T).to(change.dtype)


@torch.no_grad()
def random_edit_like(model: Any, edited: Any, *, seed: int = 0) -> Any:
    """A copy of ``model`` changed as much as ``edited`` is, in random directions (see the module
    docstring). ``edited`` must have ``model``'s architecture and weight names; the result is a
    TransformerBridge when ``model`` is one, else a plain HF model."""
    original, changed = hf_state_dict(model), hf_state_dict(edited)
    if original.keys() != changed.keys():
        extra = sorted(original.keys() ^ changed.keys())
        raise UsageError(f"edited model has different weights from the original (e.g. {extra[0]!r}); same model needed")
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, weight in original.items():
        if changed[name].shape != weight.shape:
            raise UsageError(f"{name} has shape {tuple(changed[name].shape)} in edited, {tuple(weight.shape)} here")
        change = changed[name].to(weight.device, weight.dtype) - weight
        state[name] = weight + random_change_like(change, generator).to(weight.device) if change.any() else weight
    return same_kind_as(plain_copy(model, state=state), model)
