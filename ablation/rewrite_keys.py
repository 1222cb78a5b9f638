"""Keys: what an MLP layer reads (``hook_post``) at chosen positions of chosen prompts, edit or not.

The rewrite (:mod:`ablation.rewrite`) edits ``W_out`` so that the *keys* of forget prompts map
to new values; this module reads those keys. :func:`run_edited` runs a bridge once with
``hook_post @ Delta`` added to chosen layers' MLP outputs (the edit as hooks) and saves the
activations asked for (recorded with :func:`loka.models.recording.record`); :func:`read_keys` gathers
the keys of every prompt (:class:`loka.data.Prompts`) at the ``"last"`` prompt token (the
position that predicts the answer; the same word as :mod:`attribution.positions`), at the
subject's last token or at both. The input checks shared by the rewrite, the key covariance and
the targets are here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from einops import einsum
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from loka.base.errors import UsageError
from loka.data.encoding import FactBatch
from loka.data.knowledge import Prompts
from loka.models import architecture, hf_model, input_device, logits
from loka.models.recording import record
from loka.models.weights import weight_values

__all__ = [
    "BATCH_SIZE",
    "POSITIONS",
    "HookList",
    "Positions",
    "check_layers",
    "check_model",
    "device_of",
    "edit_hooks",
    "gather_positions",
    "key_positions",
    "post_hook",
    "read_keys",
    "run_edited",
    "w_out",
]

Positions = Literal["last", "subject", "both"]  # "last": the last prompt token, as in attribution
POSITIONS: tuple[Positions, ...] = get_args(Positions)
BATCH_SIZE = 64
HookList = list[tuple[str, Callable[..., Tensor]]]


def post_hook(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def edit_hooks(deltas: Mapping[int, Tensor], store: dict[str, Tensor]) -> HookList:
    """Hooks that save ``hook_post`` and add ``hook_post @ Delta`` to ``hook_mlp_out``."""
    hooks: HookList = []
    for layer, delta in deltas.items():

        def add(out: Tensor, hook: Any, layer: int = layer, delta: Tensor = delta) -> Tensor:
            key = store[post_hook(layer)]
            return out + einsum(key, delta.to(key.dtype), "b p m, m d -> b p d")

        hooks.append((f"blocks.{layer}.hook_mlp_out", add))
    return hooks


def run_edited(
    model: TransformerBridge,
    batch: FactBatch,
    *,
    keys_at: Sequence[int] = (),
    deltas: Mapping[int, Tensor] | None = None,
    resid_layer: int | None = None,
    resid_add: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Float[Tensor, "batch pos d_vocab"], dict[str, Tensor]]:
    """One forward pass with ``deltas`` applied; returns the logits and the saved activations
    (``hook_post`` of ``keys_at`` and the edited layers, ``resid`` after ``resid_layer``, to which
    ``resid_add`` may add something first)."""
    deltas = deltas or {}
    store: dict[str, Tensor] = {}

    hooks: HookList = [record(store, post_hook(layer), detach=False) for layer in sorted(set(keys_at) | set(deltas))]
    hooks += edit_hooks(deltas, store)
    if resid_layer is not None:

        def resid(act: Tensor, hook: Any) -> Tensor:
            act = resid_add(act) if resid_add is not None else act
            store["resid"] = act
            return act

        hooks.append((f"blocks.{resid_layer}.hook_resid_post", resid))
    with model.hooks(fwd_hooks=hooks):
        out = logits(model, batch.input_ids, attention_mask=batch.attention_mask)
    return out, store


def gather_positions(
    act: Float[Tensor, "batch pos d"], index: Int[Tensor, "batch cls"]
) -> Float[Tensor, "batch cls d"]:
    return act.gather(1, index.unsqueeze(-1).expand(-1, -1, act.shape[-1]))


def device_of(model: Any) -> torch.device:
    return input_device(model)


def check_model(model: Any) -> None:
    if not isinstance(model, TransformerBridge):
        raise UsageError(
            f"rewrite reads keys through TransformerLens hooks: pass a TransformerBridge, got {type(model).__name__}"
        )


def _n_layers(model: Any) -> int:
    return int(hf_model(model).config.num_hidden_layers)


def check_layers(model: Any, layers: Sequence[int] | int | None) -> tuple[int, ...]:
    n = _n_layers(model)
    if layers is None:
        return (n - 1,)
    if isinstance(layers, int):
        layers = (layers,)
    chosen = tuple(sorted(set(layers)))
    if not chosen:
        raise UsageError("layers is empty; pass at least one MLP layer (or None for the last one)")
    bad = [layer for layer in chosen if not isinstance(layer, int) or not 0 <= layer < n]
    if bad:
        raise UsageError(f"layer(s) {bad} do not exist: this model has MLP layers 0..{n - 1}")
    return chosen


def w_out(model: Any, layer: int, state: Mapping[str, Tensor] | None = None) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of ``layer`` in TL orientation (a view of the HF weight)."""
    spec = architecture(model)
    name = spec.name(spec.mlp_out_weight, layer)
    weight = state[name] if state is not None else weight_values(model, [name])[name]  # offloaded: its value
    return weight if spec.mlp_out_neuron_dim == 0 else weight.T


def key_positions(batch: FactBatch, positions: Positions) -> Int[Tensor, "batch cls"]:
    answer = batch.answer_positions
    if positions == "last":
        return answer[:, None]
    has_subject = batch.subject_mask.any(-1)
    if not has_subject.all():
        missing = batch.fact_ids[int((~has_subject).nonzero()[0])]
        raise UsageError(
            f"positions={positions!r} needs each prompt to contain its fact's subject, but {missing!r} does not"
        )
    index = torch.arange(batch.subject_mask.shape[1], device=answer.device)
    subject = torch.where(batch.subject_mask, index, -1).amax(-1)
    return subject[:, None] if positions == "subject" else torch.stack([answer, subject], -1)


@torch.no_grad()
def read_keys(
    model: TransformerBridge,
    prompts: Prompts,
    layers: Sequence[int],
    positions: Positions,
    deltas: Mapping[int, Tensor] | None = None,
    resid_layer: int | None = None,
) -> tuple[dict[int, Tensor], Tensor | None]:
    """Keys ``[n_prompts, cls, d_mlp]`` per layer and the residual after ``resid_layer``."""
    keys: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    resid: list[Tensor] = []
    for _, batch in prompts.batches(model, BATCH_SIZE):
        index = key_positions(batch, positions)
        _, store = run_edited(model, batch, keys_at=layers, deltas=deltas, resid_layer=resid_layer)
        for layer in layers:
            keys[layer].append(gather_positions(store[post_hook(layer)], index).double())
        if resid_layer is not None:
            resid.append(gather_positions(store["resid"], index).double())
    return {layer: torch.cat(k) for layer, k in keys.items()}, torch.cat(resid) if resid else None
