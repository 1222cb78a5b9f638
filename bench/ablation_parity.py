"""Print how exactly baked and exported edits reproduce hook ablation, per architecture and mode.

    python bench/ablation_parity.py

For tiny random GPT-2, GPT-NeoX and Llama checkpoints (the test suite's), a mask of 3 neurons and
3 heads in each mode: max |logits(baked) - logits(hooked)| and max |logits(exported, reloaded with
plain transformers) - logits(baked)|. The tests assert both are below 1e-5.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablation import export_checkpoint  # noqa: E402
from loka.models import load_model, logits, quiet_transformers  # noqa: E402
from tests.ablation.test_bake import MODES, bake_or_add_bias, hooked, make_mask  # noqa: E402
from tests.checkpoints import ARCHITECTURES, VOCAB_SIZE, build_tiny_checkpoint  # noqa: E402


def main() -> None:
    ids = torch.randint(0, VOCAB_SIZE, (3, 10), generator=torch.Generator().manual_seed(0))
    print(f"{'arch':<10}{'mode':<7}{'baked vs hooked':>18}{'export vs baked':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHITECTURES:
            model = load_model(build_tiny_checkpoint(arch, Path(tmp) / arch))
            for mode in MODES:
                mask = make_mask(model, mode, ids)
                baked = bake_or_add_bias(model, mask)
                out = export_checkpoint(baked, Path(tmp) / f"{arch}-{mode}", mask=mask)
                with quiet_transformers():
                    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
                with torch.no_grad():
                    baked_logits = logits(baked, ids)
                    bake_gap = (baked_logits - hooked(model, mask, ids)).abs().max().item()
                    export_gap = (reloaded(ids).logits - baked_logits).abs().max().item()
                print(f"{arch:<10}{mode:<7}{bake_gap:>18.2e}{export_gap:>18.2e}")


if __name__ == "__main__":
    main()
