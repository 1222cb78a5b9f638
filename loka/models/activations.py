"""GPT-2's activation as one fused kernel: the same function, computed in one pass instead of seven.

GPT-2 checkpoints (``activation_function="gelu_new"``) run the tanh approximation of GELU as
``transformers``' ``NewGELUActivation``: seven element-wise tensor operations (a power, two
products, two sums, a tanh and a scale), each a kernel with its own memory pass and its own saved
tensor for the backward pass. ``torch.nn.functional.gelu(x, approximate="tanh")`` computes the same
formula in one kernel. In float32 the two agree to rounding (at most 2.4e-7 apart on values of
order 1; the default testbed's logits move by at most 1e-5). On the default testbed's model a
training step on one CPU thread takes 0.23 s fused against 0.27 s (``bench/speed.py`` prints the
ratio): the MLP activation is the largest tensor of a small model.

:func:`fuse_activations` swaps the modules of a float32 (or float64) model in place;
:func:`loka.models.load_model` and every copy (:mod:`loka.models.copies`) call it, so that every
forward and backward in loka runs fused. A bfloat16 or float16 model keeps ``transformers``' module:
there the seven roundings and the one differ by as much as bfloat16's own resolution (logits 0.04
apart, each as far from the float64 values as the other), and loka's half-precision logits stay
equal to ``transformers``' own. The checkpoint's config is left as it is: an exported model still
says ``"gelu_new"`` and loads as before anywhere else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["FusedGELUTanh", "fuse_activations"]


class FusedGELUTanh(torch.nn.Module):
    """``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`` in one kernel (GPT-2's ``gelu_new``)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fuse_activations(model: Any) -> int:
    """Replace every ``NewGELUActivation`` module of ``model`` (an ``nn.Module``: an HF model or a
    bridge's ``original_model``) by :class:`FusedGELUTanh` when its floating-point weights are
    float32 or float64 (else nothing); how many were replaced."""
    from transformers.activations import NewGELUActivation

    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes or not dtypes <= {torch.float32, torch.float64}:
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, FusedGELUTanh())
                swapped += 1
    return swapped
