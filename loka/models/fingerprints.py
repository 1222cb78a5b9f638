"""Fingerprints: what a model is and which exact weights it has, so a result can name its model."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from loka.errors import UsageError
from loka.models.architectures import Model, architecture
from loka.models.weights import hf_state_dict, model_dims

__all__ = ["ModelFingerprint", "fingerprint"]


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


def fingerprint(model: Model) -> ModelFingerprint:
    """Architecture, sizes and a sha256 of every weight of ``model`` (bridge or HF).

    The hash runs over the HF state dict in sorted name order (name, dtype, shape, bytes), so
    equal weights give equal hashes, for a bridge and for the plain HF model alike, and any
    change to any weight changes it.
    """
    sizes = model_dims(model)
    digest = hashlib.sha256()
    state = hf_state_dict(model)
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        header = f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return ModelFingerprint(
        architecture=architecture(model).model_type,
        n_layers=sizes.n_layers,
        n_heads=sizes.n_heads,
        d_mlp=sizes.d_mlp,
        d_vocab=sizes.d_vocab,
        weights_sha256=digest.hexdigest(),
    )
