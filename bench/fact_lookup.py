"""Fact-lookup layers: where a probe reads a person's attribute at the subject, and what deleting there does.

    python bench/fact_lookup.py [--size default|larger] [--world 0] [--percents 1,2,5,10,20]
                                [--rise 0.1] [--draws 3] [--out FILE.json]

1. **The probe.** For every layer, the residual stream after the block (``blocks.{l}.hook_resid_post``)
   at the subject's last token of each fact's prompt (and, as the probe's own check, at the last
   prompt token, where the model writes the answer); per relation, a multinomial logistic
   regression (sklearn) from it to the fact's answer (its first token), fitted on ``retain_train``
   and scored on ``retain_validation``: other people, whose answers were drawn independently, so a
   probe that scores above the majority class reads an attribute the model has looked up for
   *that* person, not a pattern of the training people. The same probe on ``nonmembers`` (people
   the model never saw) is the chance control. Layer "-1" is the embeddings (``hook_embed`` +
   ``hook_pos_embed``).
2. **The fact-lookup layers** (Guo et al. 2025, "Mechanistic unlearning": facts are looked up in
   the MLPs that read the subject): the MLP layers whose block raises the validation probe by at
   least ``--rise`` (the mean over relations). Where no block does so at the subject, the blocks
   that do so at the last token are used instead (and the printout says so).
3. **Deletion there.** Zero ablation (baked) of the top k% of neurons of the lookup layers only,
   ranked by LOKA's attribution at the subject tokens (``localize="lookup"``) and at every token
   (``"all"``), against random neurons of the same layers and count (``--draws``); and the same k%
   of *every* layer, ranked at the last token (``"output"``: the output side). Forget (the one
   wording methods get), its other wordings, validation retain, and the selectivity (forget drop -
   retain drop).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from larger import load_testbed  # noqa: E402

from ablation import AblationMask, bake  # noqa: E402
from ablation.rewrite_keys import key_positions  # noqa: E402
from loka import load_model  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.evaluation.ablation_profile import top_per_layer  # noqa: E402
from loka.methods.localized.localization import locate  # noqa: E402
from loka.methods.training import accuracy  # noqa: E402
from loka.protocol import Protocol  # noqa: E402


@torch.no_grad()
def subject_states(
    model: object, facts: KnowledgeSet, where: str = "subject"
) -> tuple[np.ndarray, list[str], list[int]]:
    """``[n_layers + 1, n_facts, d_model]`` residual states at each prompt's subject's last token
    (``where="last"``: the last prompt token; embeddings first), the relation and the first answer
    token of each fact."""
    n_layers = model.cfg.n_layers  # type: ignore[attr-defined]
    names = ["hook_embed", "hook_pos_embed", *(f"blocks.{layer}.hook_resid_post" for layer in range(n_layers))]
    states, relations, answers = [], [], []
    for batch in facts.batches(model, 64):
        _, cache = model.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask,  # type: ignore[attr-defined]
                                        names_filter=lambda name: name in names)  # fmt: skip
        index = key_positions(batch, where)[:, 0]
        rows = torch.arange(len(index))
        embed = cache["hook_embed"][rows, index] + cache["hook_pos_embed"][rows, index]
        layers = [embed] + [cache[f"blocks.{layer}.hook_resid_post"][rows, index] for layer in range(n_layers)]
        states.append(torch.stack(layers).float().numpy())
        answers += batch.target_ids[rows, 0].tolist()  # type: ignore[attr-defined]
    relations = [fact.relation for fact in facts]
    return np.concatenate(states, axis=1), relations, answers


def probe_curve(train: tuple, tests: dict[str, tuple]) -> dict[str, list[float]]:
    """Per layer, the mean over relations of each test set's probe accuracy (and the majority class's)."""
    x_train, rel_train, y_train = train
    curves: dict[str, list[float]] = defaultdict(list)
    for layer in range(x_train.shape[0]):
        scores: dict[str, list[float]] = defaultdict(list)
        for relation in sorted(set(rel_train)):
            pick = [i for i, r in enumerate(rel_train) if r == relation]
            y = np.array(y_train)[pick]
            probe = LogisticRegression(max_iter=2000, C=1.0).fit(x_train[layer][pick], y)
            for name, (x, rel, answers) in tests.items():
                test = [i for i, r in enumerate(rel) if r == relation]
                if test:
                    scores[name].append(probe.score(x[layer][test], np.array(answers)[test]))
                    if layer == 0:
                        values, counts = np.unique(y, return_counts=True)
                        majority = values[counts.argmax()]
                        scores[f"{name} majority"].append(float((np.array(answers)[test] == majority).mean()))
        for name, values in scores.items():
            curves[name].append(float(np.mean(values)))
    return dict(curves)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="default")
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--percents", default="1,2,5,10,20")
    parser.add_argument("--rise", type=float, default=0.1)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    testbed = load_testbed(args.size, args.world)
    protocol = Protocol.from_testbed(testbed)
    model = load_model(testbed.model_dir)
    tokenizer = model.tokenizer
    forget, retain, validation = protocol.forget, protocol.retain_train, protocol.retain_validation
    paraphrases = protocol.paraphrase_eval

    n_layers = model.cfg.n_layers
    probes = {}
    for where in ("subject", "last"):
        tests = {"validation": validation, "nonmembers": protocol.nonmembers, "forget": forget}
        curves = probe_curve(
            subject_states(model, retain, where),
            {name: subject_states(model, facts, where) for name, facts in tests.items()},
        )
        probes[where] = curves
        print(f"testbed {args.size} w{args.world}: probe accuracy at the {where} token (mean over relations)")
        print(f"{'after':<10} " + " ".join(f"{name:>11}" for name in ("validation", "nonmembers", "forget")))
        for layer in range(n_layers + 1):
            label = "embed" if layer == 0 else f"block {layer - 1}"
            print(f"{label:<10} " + " ".join(f"{curves[name][layer]:11.3f}" for name in tests))
        majority = [f"{k.split()[0]} {v[0]:.3f}" for k, v in curves.items() if "majority" in k]
        print("majority class: " + ", ".join(majority))
    curves = probes["subject"]
    rising = {where: [layer for layer, rise in enumerate(np.diff(probes[where]["validation"])) if rise >= args.rise]
              for where in probes}  # fmt: skip
    lookup = rising["subject"] or rising["last"]
    print(f"blocks that raise the validation probe by >= {args.rise}: at the subject {rising['subject']}, "
          f"at the last token {rising['last']}; deleting in {lookup}"
          + ("" if rising["subject"] else " (none at the subject: the last token's instead)"))  # fmt: skip

    def measure(m: object) -> dict[str, float]:
        return {"forget": accuracy(m, forget, tokenizer), "para": accuracy(m, paraphrases, tokenizer),
                "retain": accuracy(m, validation, tokenizer)}  # fmt: skip

    base = measure(model)
    scores = {name: locate(model, forget, retain, size=1, localize=name, check=0).scores.importance("neurons")
              for name in ("lookup", "all", "output")}  # fmt: skip
    d_mlp = model.cfg.d_mlp
    within = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    within[lookup] = True
    print(f"\nzero deletion (baked); original {base}; sel = forget drop - retain drop")
    rows = []

    def row(name: str, chosen: torch.Tensor, percent: float) -> None:
        result = measure(bake(model, AblationMask.from_components(AblationMask(chosen, None).components, model=model),
                              share=True))  # fmt: skip
        sel = (base["forget"] - result["forget"]) - (base["retain"] - result["retain"])
        rows.append({"locator": name, "percent": percent, "neurons": int(chosen.sum()), **result, "selectivity": sel})
        print(f"{name:<24} {percent:5g}% {int(chosen.sum()):5d}  forget {result['forget']:.2f} para "
              f"{result['para']:.2f} retain {result['retain']:.2f}  sel {sel:+.2f}", flush=True)  # fmt: skip

    for percent in (float(v) for v in args.percents.split(",")):
        count = max(1, round(percent / 100 * d_mlp))
        if lookup:
            for name in ("lookup", "all"):
                row(f"{name} in lookup layers", top_per_layer(scores[name], count) & within, percent)
            for draw in range(args.draws):
                generator = torch.Generator().manual_seed(draw)
                chosen = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
                for layer in lookup:
                    chosen[layer, torch.randperm(d_mlp, generator=generator)[:count]] = True
                row(f"random in lookup layers #{draw}", chosen, percent)
        row("output, every layer", top_per_layer(scores["output"], count), percent)
    if args.out:
        record = {"args": {k: str(v) for k, v in vars(args).items()}, "probe": probes, "rising": rising,
                  "lookup_layers": lookup, "original": base, "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
