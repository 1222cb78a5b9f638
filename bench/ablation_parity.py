"""Print how exactly baked and exported edits reproduce hook ablation, per architecture and mode.

    python bench/ablation_parity.py

For tiny random GPT-2, GPT-NeoX and Llama checkpoints (:mod:`loka.testbed.checkpoints`, the ones
the test suite uses), a mask of 3 neurons and 3 heads in each mode: max |logits(baked) -
logits(hooked)| and max |logits(exported, reloaded with plain transformers) - logits(baked)|.
``tests/ablation/test_bake.py`` and ``tests/ablation/test_export.py`` assert both are below 1e-5.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM

from ablation import AblationMask, ablate, bake, export_checkpoint, mean_activations
from loka.models import load_model, logits, quiet_transformers
from loka.testbed.checkpoints import ARCHITECTURES, VOCAB_SIZE, build_tiny_checkpoint

COMPONENTS = [("neuron", 0, 5), ("neuron", 0, 6), ("neuron", 1, 63), ("head", 0, 1), ("head", 1, 0), ("head", 1, 3)]
MODES = ("zero", "mean", "scale")


def make_mask(model: TransformerBridge, mode: str, ids: Tensor) -> AblationMask:
    """The components above in ``mode``: means over ``ids``; scale factors from -0.5 to 1.5."""
    zero = AblationMask.from_components(COMPONENTS, model=model)
    if mode == "mean":
        return zero.with_mode("mean", means=mean_activations(model, ids))
    if mode == "scale":
        factors = torch.linspace(-0.5, 1.5, zero.neurons.numel()).reshape(zero.neurons.shape)
        heads = torch.full(zero.heads.shape, 0.3)
        return AblationMask(
            zero.neurons, zero.heads, mode="scale", neuron_scales=factors, head_scales=heads,
            fingerprint=zero.fingerprint,
        )  # fmt: skip
    return zero


def main() -> None:
    ids = torch.randint(0, VOCAB_SIZE, (3, 10), generator=torch.Generator().manual_seed(0))
    print(f"{'arch':<10}{'mode':<7}{'baked vs hooked':>18}{'export vs baked':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHITECTURES:
            model = load_model(build_tiny_checkpoint(arch, Path(tmp) / arch))
            for mode in MODES:
                mask = make_mask(model, mode, ids)
                llama_mean = mode == "mean" and arch == "llama"  # Llama has no MLP output bias to fold means into
                baked = bake(model, mask, missing_bias="add" if llama_mean else "refuse")
                out = export_checkpoint(baked, Path(tmp) / f"{arch}-{mode}", mask=mask)
                with quiet_transformers():
                    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
                with torch.no_grad():
                    baked_logits = logits(baked, ids)
                    with ablate(model, mask):
                        hooked_logits = logits(model, ids)
                    bake_gap = (baked_logits - hooked_logits).abs().max().item()
                    export_gap = (reloaded(ids).logits - baked_logits).abs().max().item()
                print(f"{arch:<10}{mode:<7}{bake_gap:>18.2e}{export_gap:>18.2e}")


if __name__ == "__main__":
    main()
