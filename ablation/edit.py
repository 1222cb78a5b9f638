"""Localized edits: fine-tune only the weights that belong to the masked components.

Zeroing a component removes everything it does; an edit instead changes what it does, and
nothing else. ``edit(model, mask, objective)`` trains a copy of ``model`` on a loss that the
caller supplies (loka's methods pass gradient ascent on the forget set plus descent on the retain
set), with every weight frozen except the slices that the masked components own
(:mod:`ablation.params`): a neuron's input and output weights, a head's query/key/value and
output blocks.

Freezing is *gradient masking*: each parameter that holds a trainable slice gets a gradient hook
that multiplies its gradient by a 0/1 mask of the same shape, and every other parameter has
``requires_grad=False``. With plain SGD or Adam (no weight decay) a zero gradient leaves a weight
exactly as it was; after every step the frozen entries are also copied back from the original
values, so that no optimizer detail (momentum, decay, a caller's in-place change) can move them.
Everything outside the mask is therefore bit-identical afterwards; the tests check it.

Training runs on a plain Hugging Face copy of the model, in eval mode (no dropout): ``objective``
receives that copy and returns a scalar loss to *minimise*; compute logits with
``loka.models.logits(model, ...)``, which works for both kinds of model. The edited copy is
returned as the kind of model that came in (a new bridge for a bridge); the input is untouched.
The mask's mode does not matter here, only which components it selects.

Memory: by default the trainable copy is a full copy of the model (:func:`loka.models.plain_copy`).
``share=True`` copies only the parameters that hold a trainable slice and shares every other one
with the input (:func:`loka.models.copies.shared_copy`): an edit of one layer then costs that
layer's tensors (plus the optimizer's state for them), not a second model. The returned model's
shared parameters are the input's tensors, frozen (``requires_grad=False``); writing one in place
later would write the input too, so pass ``share=True`` only when the edited model is read, not
edited further in place (or call :func:`loka.models.copies.materialize` on it first).
On a model whose ``device_map`` offloads modules, either copy keeps the modules it does not train
offloaded (reading the same offloaded values) and holds the trained ones in memory on their
execution device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ablation.mask import AblationMask
from ablation.params import parameter_masks
from loka.base.checks import check_number
from loka.base.distributed import active, all_reduce_gradients, all_reduce_sum
from loka.base.errors import UsageError
from loka.models import plain_copy, same_kind_as
from loka.models.copies import shared_copy, shares_storage
from loka.models.weights import weight_values

__all__ = ["Optimizer", "edit"]

logger = logging.getLogger(__name__)

Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[Optimizer, ...] = get_args(Optimizer)
Objective = Callable[[Any], Tensor]
StepCallback = Callable[[int, float], bool | None]


def edit(
    model: Any,
    mask: AblationMask,
    objective: Objective,
    *,
    steps: int = 100,
    lr: float = 1e-3,
    optimizer: Optimizer = "adam",
    on_step: StepCallback | None = None,
    progress: bool = False,
    share: bool = False,
) -> Any:
    """Fine-tune only the masked components' weights of a copy of ``model`` to minimise ``objective``.

    Args:
        model: a ``TransformerBridge`` or plain HF model; it is not modified.
        mask: which components may change (validated against ``model``; must not be empty).
        objective: ``objective(trainable_model) -> scalar loss`` (a plain HF model in eval mode).
        steps: optimizer steps (at most; ``on_step`` may stop earlier).
        lr: learning rate.
        optimizer: ``"adam"`` (no weight decay) or ``"sgd"`` (no momentum).
        on_step: called as ``on_step(step, loss)`` after every step; returning True stops.
        progress: show a tqdm bar.
        share: copy only the parameters the mask's components own and share the others with
            ``model`` (frozen); see the module docstring. The weights are the same either way.

    Returns:
        The edited copy, the same kind of model as ``model``.
    """
    if not isinstance(mask, AblationMask):
        raise UsageError(f"mask must be an ablation.AblationMask, got {type(mask).__name__}")
    if not callable(objective):
        raise UsageError(f"objective must be a callable model -> scalar loss, got {type(objective).__name__}")
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {optimizer!r}; use one of {OPTIMIZERS}")
    check_number("steps", steps, low=1, integer=True)
    check_number("lr", lr, above=True)
    if len(mask) == 0:
        raise UsageError("edit needs at least one masked component to train, but the mask is empty")
    mask.validate(model)
    if not isinstance(share, bool):
        raise UsageError(f"share must be True or False, got {share!r}")

    allowed = parameter_masks(model, mask.neurons, mask.heads)
    trainable = shared_copy(model, allowed) if share else plain_copy(model, onload=allowed)
    shared = shares_storage(trainable, model) if share else set()
    params = dict(trainable.named_parameters())
    allowed = {name: keep.to(params[name].device) for name, keep in allowed.items()}
    # The input is never written, so its weights are the values the frozen entries go back to
    # (an offloaded one read from its offload hook, to the trained copy's device).
    originals: dict[str, Tensor] = {
        name: value.detach().to(params[name].device) for name, value in weight_values(model, allowed).items()
    }
    for p in trainable.parameters():
        p.requires_grad_(False)
    handles = []
    for name, keep in allowed.items():
        param = params[name]
        param.requires_grad_(True)
        handles.append(param.register_hook(lambda grad, _keep=keep: grad * _keep.to(grad.dtype)))
    chosen = [params[name] for name in allowed]
    opt = torch.optim.Adam(chosen, lr=lr) if optimizer == "adam" else torch.optim.SGD(chosen, lr=lr)

    try:
        for step in tqdm(range(steps), desc="edit", disable=not progress):
            opt.zero_grad(set_to_none=True)
            loss = objective(trainable)
            if not isinstance(loss, Tensor) or loss.numel() != 1 or not loss.requires_grad:
                got = (
                    type(loss).__name__
                    if not isinstance(loss, Tensor)
                    else f"a tensor of shape {list(loss.shape)} with requires_grad={loss.requires_grad}"
                )
                raise UsageError(
                    f"objective must return a scalar loss tensor that depends on the model's weights, got {got}"
                )
            # under a process group each rank's loss is its share of the batch (loka.base.distributed):
            # the value reported is their sum, and the gradients are added before the step
            value = float(loss.detach()) if not active() else float(all_reduce_sum(loss.detach().double().reshape(1)))
            if not math.isfinite(value):
                raise UsageError(f"objective returned a non-finite loss ({value}) at step {step}")
            loss.reshape(()).backward()
            all_reduce_gradients(chosen)
            opt.step()
            with torch.no_grad():
                for name, keep in allowed.items():
                    params[name].copy_(torch.where(keep, params[name], originals[name]))
            logger.debug("edit step %d: loss %.6g", step, value)
            if on_step is not None and on_step(step, value):
                break
    finally:
        for handle in handles:
            handle.remove()
    for name, p in trainable.named_parameters():
        p.requires_grad_(name not in shared)
    trainable.zero_grad(set_to_none=True)
    return same_kind_as(trainable, model)
