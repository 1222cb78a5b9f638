"""The key covariance: ``E[k k^T]`` of an MLP layer's keys over a retain corpus, the rewrite's constraint.

It is per model, not per request: compute it once with :func:`key_covariance`, save it (safetensors
plus a readable JSON beside it) and pass it to every :func:`ablation.rewrite.rewrite` on that model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ablation.rewrite_keys import check_layers, check_model, device_of, post_hook, run_edited, w_out
from loka.base.errors import UsageError
from loka.data.knowledge import KnowledgeSet
from loka.models import ModelFingerprint, fingerprint

__all__ = ["KeyCovariance", "key_covariance"]


@dataclass(frozen=True)
class KeyCovariance:
    """``E[k k^T]`` of ``hook_post`` over every real token of a retain corpus, per layer.

    ``matrices[i]`` belongs to ``layers[i]``; ``fingerprint`` names the model it was computed on.
    Saved as safetensors (the matrices) with a readable JSON beside it (same stem).
    """

    layers: tuple[int, ...]
    matrices: Float[Tensor, "layer d_mlp d_mlp"]
    n_tokens: int
    fingerprint: ModelFingerprint

    def of(self, layer: int) -> Float[Tensor, "d_mlp d_mlp"]:
        if layer not in self.layers:
            raise UsageError(f"this key covariance has layers {list(self.layers)}, not layer {layer}")
        return self.matrices[self.layers.index(layer)]

    def metadata(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "n_tokens": self.n_tokens, "fingerprint": self.fingerprint.to_dict()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors) and ``path`` with suffix ``.json`` (the metadata)."""
        path = Path(path)
        meta = json.dumps(self.metadata(), indent=2)
        save_file({"covariance": self.matrices.contiguous().cpu()}, str(path), metadata={"loka": meta})
        path.with_suffix(".json").write_text(meta + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyCovariance:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"key covariance file {str(path)!r} does not exist")
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"key covariance {str(path)!r} has no metadata file {str(meta_path)!r}")
        meta = json.loads(meta_path.read_text())
        matrices = load_file(str(path))["covariance"]
        layers = tuple(int(layer) for layer in meta["layers"])
        if matrices.ndim != 3 or matrices.shape[0] != len(layers):
            raise UsageError(f"{path}: expected {len(layers)} covariance matrices, got shape {tuple(matrices.shape)}")
        return cls(layers, matrices, int(meta["n_tokens"]), ModelFingerprint.from_dict(meta["fingerprint"]))


@torch.no_grad()
def key_covariance(
    model: TransformerBridge, retain: KnowledgeSet, *, layers: Sequence[int] | None = None, batch_size: int = 64
) -> KeyCovariance:
    """The key covariance of ``layers`` (default: the last) over every real token of ``retain``'s
    texts (BOS, prompt and target), in float64."""
    check_model(model)
    layers = check_layers(model, layers)
    d_mlp = w_out(model, layers[0]).shape[0]
    sums = torch.zeros(len(layers), d_mlp, d_mlp, dtype=torch.float64)
    n_tokens = 0
    for batch in retain.batches(model, batch_size):
        batch = batch.to(device_of(model))
        _, store = run_edited(model, batch, keys_at=layers)
        real = batch.attention_mask.bool()
        for i, layer in enumerate(layers):
            k = store[post_hook(layer)][real].double().cpu()
            sums[i] += k.T @ k
        n_tokens += int(real.sum())
    return KeyCovariance(layers, sums / n_tokens, n_tokens, fingerprint(model))
