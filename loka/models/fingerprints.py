"""Fingerprints: what a model is and which exact weights it has, so a result can name its model.

:func:`fingerprint` hashes every weight once per *set of weights*, not once per call. Attribution,
ablation (mask validation, bake, rewrite candidates) and export each ask for the fingerprint of
the model they are given; at 7B parameters one full hash takes minutes, so the result is cached
per model and reused for as long as no weight has changed.

How "no weight has changed" is decided, with no hashing: every tensor of the state dict is
recorded as (a weak reference to the live tensor, its ``_version``, its ``data_ptr``, dtype,
shape, stride, device). PyTorch bumps ``_version`` on every in-place write to a tensor or to any
view of it (``w.zero_()`` under ``torch.no_grad()``, ``param.copy_``, an optimizer step,
``load_state_dict``); assigning a new tensor (``module.weight = nn.Parameter(...)``,
``param.data = ...``) changes the tensor or its ``data_ptr``. Any such difference means the
weights are hashed again. One write escapes every counter: an in-place op on ``param.data`` (a
tensor whose version counter is not shared); loka never writes weights that way, and
``fingerprint(model, refresh=True)`` rehashes regardless.

The hash streams: one tensor at a time, in slices of at most :data:`CHUNK_BYTES`, each moved to
the host only while it is hashed (a CPU tensor that is contiguous is hashed in place, with no
copy), so hashing never holds a host copy of the whole model. The value is the one loka has
always computed (sha256 over name, dtype, shape and raw bytes in sorted name order); chunking
does not change it, so fingerprints stored in saved masks, scores and checkpoints stay valid.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from loka.base.errors import UsageError
from loka.models.architectures import Model, architecture, hf_model
from loka.models.weights import get_tensor, hf_state_dict, is_wrapped, model_dims, weight_values

__all__ = ["CHUNK_BYTES", "ModelFingerprint", "fingerprint"]

CHUNK_BYTES = 64 * 2**20
"""Largest slice of one tensor (in bytes) that is moved to the host at once while hashing."""


@dataclass(frozen=True)
class ModelFingerprint:
    """What a model is (architecture and sizes) and which exact weights it has (sha256)."""

    architecture: str
    n_layers: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    weights_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelFingerprint:
        expected = {f.name for f in fields(cls)}
        missing, extra = expected - set(d), set(d) - expected
        if missing or extra:
            raise UsageError(
                f"a ModelFingerprint needs exactly the keys {sorted(expected)}; "
                f"missing {sorted(missing)}, unexpected {sorted(extra)}."
            )
        return cls(**d)


def _version(tensor: Tensor) -> int | None:
    """``tensor._version``, or None for a tensor without a version counter (an inference tensor)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


@dataclass(frozen=True)
class _TensorState:
    """What identifies one live tensor's current contents without reading them."""

    ref: weakref.ReferenceType[Tensor] = field(compare=False)
    version: int | None
    data_ptr: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    device: torch.device

    @classmethod
    def of(cls, tensor: Tensor) -> _TensorState:
        return cls(
            weakref.ref(tensor),
            _version(tensor),
            tensor.data_ptr(),
            tensor.dtype,
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.device,
        )

    def matches(self, tensor: Tensor) -> bool:
        """Whether ``tensor`` is the same object, unwritten since this state was taken."""
        return self.version is not None and self.ref() is tensor and self == _TensorState.of(tensor)


@dataclass(frozen=True)
class _Cached:
    names: tuple[str, ...]
    states: tuple[_TensorState, ...]
    fingerprint: ModelFingerprint


_CACHE: weakref.WeakKeyDictionary[Any, _Cached] = weakref.WeakKeyDictionary()
"""Per HF model (a bridge and its ``original_model`` share one entry): the last fingerprint and
the tensor states it was computed from. Weak, so a model that is dropped is dropped here too."""


def _live_tensors(hf: Any) -> dict[str, Tensor]:
    """The live parameters and buffers under their plain HF names (not detached copies, whose
    Python identity would change from call to call)."""
    if not is_wrapped(hf):
        return hf.state_dict(keep_vars=True)
    return {name: get_tensor(hf, name) for name in hf_state_dict(hf)}


def _hash_tensor(digest: Any, name: str, tensor: Tensor) -> None:
    """Feed one tensor (header, then its raw bytes) into ``digest``.

    The bytes are read in slices of at most :data:`CHUNK_BYTES`; each slice is copied to the host
    only if the tensor lives elsewhere (a contiguous CPU tensor is read in place). Any dtype works,
    bf16 included: the bytes are viewed as ``uint8``.
    """
    tensor = tensor.detach()
    header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
    digest.update(header.encode())
    flat = tensor.contiguous().reshape(-1)  # a copy only for a non-contiguous tensor, on its device
    raw = flat.view(torch.uint8) if flat.numel() else flat.new_empty(0, dtype=torch.uint8)
    for start in range(0, raw.numel(), CHUNK_BYTES):
        chunk = raw[start : start + CHUNK_BYTES]
        digest.update(chunk.to("cpu").numpy())


def _compute(model: Model, tensors: Mapping[str, Tensor]) -> ModelFingerprint:
    sizes = model_dims(model)
    digest = hashlib.sha256()
    offloaded = weight_values(model, [name for name, tensor in tensors.items() if tensor.is_meta])
    for name in sorted(tensors):
        _hash_tensor(digest, name, offloaded.get(name, tensors[name]))
    return ModelFingerprint(
        architecture=architecture(model).model_type,
        n_layers=sizes.n_layers,
        n_heads=sizes.n_heads,
        d_mlp=sizes.d_mlp,
        d_vocab=sizes.d_vocab,
        weights_sha256=digest.hexdigest(),
    )


def fingerprint(model: Model, *, refresh: bool = False) -> ModelFingerprint:
    """Architecture, sizes and a sha256 of every weight of ``model`` (bridge or HF).

    The hash runs over the HF state dict in sorted name order (name, dtype, shape, bytes), so
    equal weights give equal hashes, for a bridge and for the plain HF model alike, and any
    change to any weight changes it. It is computed once per set of weights: a second call on a
    model whose tensors are unchanged (same objects, same ``_version``, same storage) returns the
    cached value without hashing; an in-place edit or a replaced tensor invalidates it.
    ``refresh=True`` hashes regardless (for weights written through ``param.data``, which no
    version counter sees).
    """
    hf = hf_model(model)
    tensors = _live_tensors(hf)
    names = tuple(sorted(tensors))
    cached = None if refresh else _CACHE.get(hf)
    if (
        cached is not None
        and cached.names == names
        and all(state.matches(tensors[name]) for name, state in zip(names, cached.states, strict=True))
    ):
        return cached.fingerprint
    # Read the states before hashing: a write during the hash then makes the next call rehash.
    states = tuple(_TensorState.of(tensors[name]) for name in names)
    result = _compute(model, tensors)
    _CACHE[hf] = _Cached(names, states, result)
    return result
