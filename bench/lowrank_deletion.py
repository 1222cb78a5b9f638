"""Low-rank deletion: project MLP output weights off the key directions the forget facts use.

    python bench/lowrank_deletion.py [--size default|larger] [--world 0] [--layers "0;1;1,2,3;0,1,2,3"]
                                     [--positions subject,last] [--ranks 4,16,64] [--draws 3]
                                     [--kinds generalized,difference,people,forget_pca]
                                     [--planted 0.02 [--plant-seed 0]] [--repair 100] [--out FILE.json]

An MLP layer reads a key ``k`` (``hook_post``, ``[d_mlp]``) and writes ``k @ W_out``. Deleting a
rank-r subspace ``Q`` (``[d_mlp, r]``, orthonormal) of the keys sets ``W_out <- (I - Q Q^T) W_out``:
whatever a key holds along ``Q`` no longer reaches the residual stream, at every token (baked,
nothing trained; the closed-form rewrite's key machinery, :mod:`ablation.rewrite_keys`). Which
subspace (per layer, from the forget facts' keys at ``--positions``: the subject's last token or
the last prompt token; the retain keys from ``retain_train``, the facts methods may read):

* ``generalized``: the top generalized eigenvectors of (forget key covariance, retain key
  covariance over every retain token): the directions with the most forget energy per unit of
  retain energy;
* ``difference``: the top eigenvectors of (forget covariance - retain covariance);
* ``people``: one direction per forget person, the mean of their keys minus the retain mean
  (at most the number of people);
* ``forget_pca``: the top eigenvectors of the forget covariance alone (no contrast: what the forget
  facts use, shared or not);
* ``random``: a random orthonormal subspace of the same rank (``--draws`` of them, the mean).

Printed per (layers, positions, kind, rank): forget accuracy, its other wordings (natural testbed),
validation retain, and the selectivity ``forget drop - retain drop``. ``--planted RATIO``: the
planted testbed, where the planted people's facts live in known neurons (retain: testbed people
planting never used, halved into train and validation).

``--repair STEPS``: hidden or removed? For each contrast kind, the deletion with the lowest forget
accuracy that keeps validation retain at >= ``--repair-floor`` (0.90) x the model's is repaired the way
``bench/deletion_repair.py`` repairs deleted neurons: AdamW (lr ``--repair-lr``) on every block
weight, minimising KL(original || repaired) on ``retain_train`` answers only (batches of 64), with
the deleted subspace projected off the edited ``W_out`` again after every step, so it stays
deleted. No forget fact is read and the retain people's answers are drawn independently of the
forget people's: forget accuracy that comes back was never in the deleted subspace. Printed every
20 steps, with a random subspace of the same rank and layers repaired the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from larger import load_case  # noqa: E402

import loka  # noqa: E402
from ablation.covariance import key_covariance  # noqa: E402
from ablation.rewrite import _bake  # noqa: E402
from ablation.rewrite_keys import read_keys, w_out  # noqa: E402
from loka.data.knowledge import Prompts  # noqa: E402
from loka.methods.terms import RetainTerm  # noqa: E402
from loka.methods.training import accuracy  # noqa: E402
from loka.models import architecture, plain_copy  # noqa: E402

KINDS = ("generalized", "difference", "people", "forget_pca", "random")


def subspace(kind: str, forget_keys: torch.Tensor, retain_cov: torch.Tensor, subjects: list[str],
             retain_mean: torch.Tensor, rank: int, generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """An orthonormal ``[d_mlp, rank]`` basis of the chosen key subspace (float64)."""
    d = retain_cov.shape[0]
    forget_cov = forget_keys.T @ forget_keys / forget_keys.shape[0]
    if kind == "random":
        basis = torch.randn(d, rank, generator=generator, dtype=torch.float64)
    elif kind == "forget_pca":
        basis = torch.linalg.eigh(forget_cov).eigenvectors[:, -rank:]
    elif kind == "difference":
        basis = torch.linalg.eigh(forget_cov - retain_cov).eigenvectors[:, -rank:]
    elif kind == "generalized":
        ridge = 1e-3 * retain_cov.diagonal().mean() * torch.eye(d, dtype=torch.float64)
        inverse = torch.linalg.inv(torch.linalg.cholesky(retain_cov + ridge))
        vectors = torch.linalg.eigh(inverse @ forget_cov @ inverse.T).eigenvectors[:, -rank:]
        basis = inverse.T @ vectors
    elif kind == "people":
        names = sorted(set(subjects))
        means = torch.stack([forget_keys[[i for i, s in enumerate(subjects) if s == n]].mean(0) for n in names])
        basis = (means - retain_mean).T[:, :rank]
    else:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    return torch.linalg.qr(basis).Q


def repair(model: object, basis: dict[int, torch.Tensor], deltas: dict[int, torch.Tensor], term: RetainTerm,
           measure: object, *, steps: int, lr: float) -> list[dict[str, float]]:  # fmt: skip
    """Delete (``deltas``, baked into a full copy), then the retain-only repair with the subspaces
    ``basis`` projected off the edited ``W_out`` after every step; forget / retain every 20 steps."""
    edited = plain_copy(_bake(model, deltas))
    spec = architecture(model)
    outputs = {layer: edited.get_parameter(spec.name(spec.mlp_out_weight, layer)) for layer in basis}
    params = []
    for name, param in edited.named_parameters():  # every block weight trains; embeddings and final norm stay
        param.requires_grad_(any(block in name for block in (".h.", ".layers.")))
        params += [param] if param.requires_grad else []
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    curve = [measure(edited)]  # type: ignore[operator]
    for step in range(1, steps + 1):
        edited.train()
        loss = term(edited, torch.randperm(len(term), generator=generator)[:64])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for layer, param in outputs.items():
                q = basis[layer].to(param.dtype)
                if spec.mlp_out_neuron_dim == 0:  # [d_mlp, d_model]
                    param -= q @ (q.T @ param)
                else:  # [d_model, d_mlp]
                    param -= (param @ q) @ q.T
        if step % 20 == 0:
            edited.eval()
            curve.append(measure(edited))  # type: ignore[operator]
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default")
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--layers", default="0;1;1,2,3;0,1,2,3", help="layer sets, ';' between sets")
    parser.add_argument("--positions", default="subject,last")
    parser.add_argument("--ranks", default="4,16,64")
    parser.add_argument("--kinds", default="generalized,difference,people,forget_pca")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--planted", type=float)
    parser.add_argument("--plant-seed", type=int, default=0)
    parser.add_argument("--repair", type=int, default=0, help="repair steps (0: no repair)")
    parser.add_argument("--repair-lr", type=float, default=3e-4)
    parser.add_argument("--repair-floor", type=float, default=0.9, help="repair the best deletion above this x retain")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    layer_sets = [[int(v) for v in part.split(",")] for part in args.layers.split(";")]
    ranks = [int(v) for v in args.ranks.split(",")]
    kinds = [*args.kinds.split(","), "random"]

    case = load_case(args.size, args.world, args.planted, args.plant_seed)
    model_dir, oracle_dir, label = case.model_dir, case.oracle_dir, case.label
    forget, retain, validation, paraphrases = case.forget, case.retain, case.validation, case.paraphrases
    model = loka.load_model(model_dir)
    tokenizer = model.tokenizer

    def measure(m: object) -> dict[str, float]:
        row = {"forget": accuracy(m, forget, tokenizer), "retain": accuracy(m, validation, tokenizer)}
        if paraphrases is not None:
            row["para"] = accuracy(m, paraphrases, tokenizer)
        return row

    start = time.perf_counter()
    layers = sorted({layer for group in layer_sets for layer in group})
    retain_cov = key_covariance(model, retain, layers=layers)
    positions = args.positions.split(",")
    forget_prompts, retain_prompts = Prompts.of(forget), Prompts.of(retain)
    forget_keys = {p: read_keys(model, forget_prompts, layers, p)[0] for p in positions}
    retain_keys = {p: read_keys(model, retain_prompts, layers, p)[0] for p in positions}
    subjects = [fact.subject for fact in forget_prompts.knowledge]
    base, oracle = measure(model), measure(loka.load_model(oracle_dir))

    def bases(group: list[int], position: str, kind: str, rank: int, draw: int = 0) -> dict[int, torch.Tensor]:
        generator = torch.Generator().manual_seed(draw)
        return {
            layer: subspace(kind, forget_keys[position][layer][:, 0], retain_cov.of(layer), subjects,
                            retain_keys[position][layer][:, 0].mean(0), rank, generator)
            for layer in group
        }  # fmt: skip

    def deltas_of(basis: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {layer: (-(q @ (q.T @ w_out(model, layer).double()))).float() for layer, q in basis.items()}

    print(f"{label}: {len(forget)} forget facts; keys read in {time.perf_counter() - start:.1f} s")
    print(f"original {base}\noracle   {oracle}")
    print("\nforget / para / retain after deleting the rank-r key subspace; sel = forget drop - retain drop")
    rows = []
    for group in layer_sets:
        for position in positions:
            for kind in kinds:
                cells = []
                for rank in ranks:
                    draws = args.draws if kind == "random" else 1
                    results = []
                    for draw in range(draws):
                        results.append(measure(_bake(model, deltas_of(bases(group, position, kind, rank, draw)))))
                    mean = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
                    selectivity = (base["forget"] - mean["forget"]) - (base["retain"] - mean["retain"])
                    rows.append({"layers": group, "positions": position, "kind": kind, "rank": rank, **mean,
                                 "selectivity": selectivity})  # fmt: skip
                    para = f"/{mean['para']:.2f}" if "para" in mean else ""
                    cells.append(f"r{rank}: {mean['forget']:.2f}{para}/{mean['retain']:.2f} sel {selectivity:+.2f}")
                print(f"{','.join(map(str, group)):<8} {position:<8} {kind:<12} " + " | ".join(cells), flush=True)
    repairs = {}
    if args.repair:
        term = RetainTerm(model, retain.encode(tokenizer))
        print(f"\nrepair on retain_train only ({args.repair} steps, lr {args.repair_lr:g}); the deleted "
              "subspace stays deleted")  # fmt: skip
        for kind in kinds[:-1]:
            fit = [r for r in rows if r["kind"] == kind and r["retain"] >= args.repair_floor * base["retain"]]
            if not fit:
                continue
            best = min(fit, key=lambda r: r["forget"])
            for name, chosen in ((kind, kind), (f"random for {kind}", "random")):
                basis = bases(best["layers"], best["positions"], chosen, best["rank"])
                curve = repair(model, basis, deltas_of(basis), term, measure, steps=args.repair, lr=args.repair_lr)
                repairs[name] = {"setting": {k: best[k] for k in ("layers", "positions", "rank")}, "curve": curve}
                where = f"layers {best['layers']}, {best['positions']}, r{best['rank']}"
                print(f"{name:<22} {where:<28} " + " -> ".join(
                    f"{c['forget']:.2f}/{c['retain']:.2f}" for c in curve), flush=True)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"label": label, "args": vars(args) | {"out": str(args.out)},
                                        "original": base, "oracle": oracle, "rows": rows,
                                        "repairs": repairs}, indent=1))  # fmt: skip
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
