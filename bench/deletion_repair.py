"""Delete, then repair on retain data alone: was the knowledge in the deleted components?

    python bench/deletion_repair.py [--size default|larger] [--world 0] [--fraction 0.1] [--mask-retain-weight 1]
                                    [--lr 3e-4] [--steps 100] [--planted 0.02 [--plant-seed 0]]

Deletes (zero ablation, baked) a located set, then repairs the deleted model the way a deletion
method would: AdamW on every block weight *except* the deleted components' own slices (their
gradients are masked to zero, so they stay deleted), minimising KL(original || repaired) on the
answers of ``retain_train`` facts only (:class:`loka.methods.terms.RetainTerm`; batches of 64).
No forget fact is read, and the retain people's answers are drawn independently of the forget
people's, so the repair cannot teach a forget answer: forget accuracy that comes back was never
in the deleted components (the deletion damaged a mechanism the repair restores).

Natural testbed: the set is LOKA's ``localize="mask"`` at ``--fraction`` of the neurons (global
top count), and a random set of the same per-layer counts. ``--planted RATIO``: the planted
testbed's answer key, LOKA's default ranking and the mask at the key's size, and random sets
(retain: testbed people planting never used, halved into train and validation). Printed: forget,
paraphrase (natural only) and validation retain after the deletion and every 20 repair steps,
and the oracle's forget accuracy.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from larger import load_testbed  # noqa: E402

import loka  # noqa: E402
from ablation import AblationMask, bake  # noqa: E402
from ablation.params import parameter_masks  # noqa: E402
from ablation.selection import random_like_layers  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.methods.localized.localization import MASK_DEFAULTS, locate  # noqa: E402
from loka.methods.terms import RetainTerm  # noqa: E402
from loka.methods.training import accuracy  # noqa: E402
from loka.models import plain_copy  # noqa: E402
from loka.protocol import Protocol  # noqa: E402
from loka.testbed.planted import load_planted  # noqa: E402


def repair(model, mask: AblationMask, term: RetainTerm, *, lr: float, steps: int, measure) -> list[str]:  # noqa: ANN001
    """Delete ``mask`` (zero, baked, a full copy), then the retain-only repair; one line per check."""
    edited = plain_copy(bake(model, mask, share=False))
    owned = parameter_masks(model, mask.neurons, mask.heads)
    params = []
    for name, param in edited.named_parameters():
        if not any(block in name for block in (".h.", ".layers.")):
            param.requires_grad_(False)  # embeddings and the final norm stay as they are
            continue
        params.append(param)
        if name in owned:
            keep = (~owned[name]).to(param.dtype)
            param.register_hook(lambda grad, keep=keep: grad * keep)  # the deleted slices get no update
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    lines = [f"deleted: {measure(edited)}"]
    for step in range(1, steps + 1):
        loss = term(edited, torch.randperm(len(term), generator=generator)[:64])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 20 == 0:
            lines.append(f"repair {step}: {measure(edited)}")
    still_zero = all(not edited.get_parameter(n).detach()[m].any() for n, m in owned.items() if "c_proj" in n)
    lines.append(f"deleted output rows still zero: {still_zero}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default")
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--mask-retain-weight", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--planted", type=float)
    parser.add_argument("--plant-seed", type=int, default=0)
    args = parser.parse_args()
    mask_config = replace(MASK_DEFAULTS, retain_weight=args.mask_retain_weight)
    if args.planted:
        planted = load_planted(args.size, ratio=args.planted, world_seed=args.world, seed=args.plant_seed)
        model, oracle = loka.load_model(planted.model_dir), loka.load_model(planted.oracle_dir)
        forget, key, half = planted.forget, planted.mask, len(planted.retain) // 2
        retain = KnowledgeSet(planted.retain.facts[:half], name="retain_train")
        validation = KnowledgeSet(planted.retain.facts[half:], name="retain_validation")
        paraphrases, count = None, int(key.sum())
    else:
        testbed = load_testbed(args.size, args.world)
        model, oracle = loka.load_model(testbed.model_dir), loka.load_model(testbed.oracle_dir)
        protocol = Protocol.from_testbed(testbed)
        forget, retain, validation = protocol.forget, protocol.retain_train, protocol.retain_validation
        paraphrases, key = protocol.paraphrase_eval, None
        count = round(args.fraction * model.cfg.n_layers * model.cfg.d_mlp)
    tokenizer = model.tokenizer

    def measure(m) -> str:  # noqa: ANN001
        para = "" if paraphrases is None else f" para {accuracy(m, paraphrases, tokenizer):.3f}"
        return f"forget {accuracy(m, forget, tokenizer):.3f}{para} retain {accuracy(m, validation, tokenizer):.3f}"

    print(f"{'planted' if key is not None else 'testbed'} {args.size} w{args.world}: {count} neurons deleted; "
          f"before: {measure(model)}; oracle forget {accuracy(oracle, forget, tokenizer):.3f}")  # fmt: skip
    sets = {"mask": locate(model, forget, retain, size=count, localize="mask", mask=mask_config).mask}
    if key is not None:
        sets["answer key"] = AblationMask.from_components(AblationMask(key, None).components, model=model)
        sets["contrast"] = locate(model, forget, retain, size=count, check=0).mask
    first = sets.get("answer key", sets["mask"])
    sets["random"] = AblationMask(random_like_layers(first.neurons, torch.Generator().manual_seed(0)), None,
                                  fingerprint=first.fingerprint)  # fmt: skip
    term = RetainTerm(model, retain.encode(tokenizer))
    for name, mask in sets.items():
        print(f"\n{name} ({len(mask)} neurons, per layer {mask.neurons.sum(-1).tolist()})")
        for line in repair(model, mask, term, lr=args.lr, steps=args.steps, measure=measure):
            print("  " + line, flush=True)


if __name__ == "__main__":
    main()
