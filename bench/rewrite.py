"""Bench: erasure at 1/5/10% of the people and fact updates, on a testbed.

Forget sets are random subsets of the trained people (retain + forget); the rest of the retain
people are split in two: one half builds the edit (key covariance; LOKA's retain set, of which
``unlearn`` keeps a fifth for validation), the other half (never seen by the edit) measures retain
accuracy. Erase targets come from half of the holdout people (never trained; the *reference*), the
membership attack's non-members are the other half, so no edit is pulled toward the people it is
then scored against; edits are given the forget facts without their paraphrases. Rows: the closed-form
rewrite (``ablation.rewrite``, answer position, two layer sets) and the LOKA method
(``loka.unlearn(method="loka")``: attribution-chosen layers, localized fine-tune of their MLPs).
MIA is loka.evaluation's LOSS attack (forget vs non-members) over the whole text; MIA-ans scores the
answer tokens only. The oracle's are given where the forget set is the testbed's own forget set
(the oracle never saw exactly those people); "para" is accuracy on the forget facts' paraphrases.

    python bench/rewrite.py [--size default|tiny] [--seed N] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the packages, not bench/attribution.py

import torch  # noqa: E402

from ablation.rewrite import key_covariance, rewrite  # noqa: E402
from loka import testbed  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.evaluation import evaluate  # noqa: E402
from loka.methods import unlearn  # noqa: E402
from loka.models import load_model  # noqa: E402
from loka.protocol import strip_paraphrases  # noqa: E402
from loka.scoring.metrics import score_facts  # noqa: E402


def people(knowledge: KnowledgeSet, names: set[str], label: str) -> KnowledgeSet:
    return knowledge.filter(lambda f: f.subject in names, name=label)


def accuracy(model: Any, knowledge: KnowledgeSet) -> float:
    return score_facts(model, knowledge).first_token_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="default", choices=("default", "tiny"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-loka", action="store_true", help="only the closed-form rewrite rows")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small ops: one thread is faster than two fighting for shared cores
    tb = testbed.load(args.size, seed=args.seed, cache_dir=args.cache_dir, progress=False)
    model = load_model(tb.model_dir)
    trained = tb.retain + tb.forget
    nonmembers, reference = tb.holdout.split(0.5, seed=0, by="subject")  # disjoint by person
    rng = random.Random(0)
    retain_people = list(tb.retain.subjects)
    rng.shuffle(retain_people)
    cov_people, eval_people = set(retain_people[::2]), set(retain_people[1::2])
    cov_retain = people(tb.retain, cov_people, "retain/covariance")
    eval_retain = people(tb.retain, eval_people, "retain/eval")

    start = time.perf_counter()
    cov = key_covariance(model, cov_retain, layers=range(model.cfg.n_layers))
    print(
        f"key covariance: {cov.n_tokens} tokens of {len(cov_people)} retain people, {time.perf_counter() - start:.1f} s"
    )
    print(f"retain accuracy is measured on {len(eval_people)} other retain people; erase targets from holdout\n")

    total = len(trained.subjects)
    sets: list[tuple[str, KnowledgeSet, bool]] = []
    for fraction in (0.01, 0.05, 0.10):
        n = round(fraction * total)
        chosen = set(random.Random(n).sample(sorted(eval_people | set(tb.forget.subjects)), n))
        # forget people are taken from the eval half or the testbed's forget people; keep eval disjoint
        sets.append((f"{fraction:.0%} ({n} people)", people(trained, chosen, f"forget{n}"), False))
    sets.append((f"testbed forget ({len(tb.forget.subjects)})", tb.forget, True))
    oracle = None

    columns = ("forget", "para", "retain", "MIA", "MIA-ans", "oracle", "sec")
    header = f"{'forget set':24} {'edit':18} " + " ".join(f"{c:>7}" for c in columns)
    print("ERASE (original: forget 1.00, retain", f"{accuracy(model, eval_retain):.3f})")
    print(header)
    for label, forget, with_oracle in sets:
        keep = eval_retain.filter(lambda f, s=set(forget.subjects): f.subject not in s, name="retain/eval")
        if with_oracle and oracle is None:
            oracle = evaluate(tb.oracle_dir, forget=forget, retain=keep, holdout=nonmembers, probe=False, relearn=False)
        edits: list[tuple[str, Any]] = [
            (f"rewrite L{','.join(map(str, layers))} {lam:g}", dict(layers=layers, lam=lam))
            for layers, lam in (([3], 1.0), ([2, 3], 1.0), ([0, 1, 2, 3], 1.0))
            if max(layers) < model.cfg.n_layers
        ]
        if not args.no_loka:
            edits.append(("loka", None))
        for name, options in edits:
            start = time.perf_counter()
            if options is None:
                train = cov_retain.filter(lambda f, s=set(forget.subjects): f.subject not in s, name="retain/edit")
                given = strip_paraphrases(forget)
                edited = unlearn(model, given, train, method="loka", reference=reference, progress=False).model
            else:
                given = strip_paraphrases(forget)
                edited = rewrite(model, given, retain=None, covariance=cov, reference=reference, **options).model
            seconds = time.perf_counter() - start
            ev = evaluate(
                edited, forget=forget, retain=keep, holdout=nonmembers, probe=False, relearn=False,
                oracle=oracle if with_oracle else None,
            )  # fmt: skip
            ref = (
                f"{ev.oracle.membership_inference_auc:.2f}/{ev.oracle.mia_aucs['loss_answer']:.2f}"
                if ev.oracle is not None
                else "-"
            )
            print(
                f"{label:24} {name:18} {ev.forget_accuracy:7.3f} "
                f"{ev.paraphrase_forget_accuracy or 0:7.3f} {ev.retain_accuracy:7.3f} "
                f"{ev.membership_inference_auc:7.3f} {ev.mia_aucs['loss_answer']:7.3f} {ref:>9} "
                f"{seconds:7.1f}",
                flush=True,
            )
    if oracle is not None:
        print(
            f"oracle on the testbed forget set: forget {oracle.forget_accuracy:.3f}, "
            f"para {oracle.paraphrase_forget_accuracy or 0:.3f}, retain {oracle.retain_accuracy:.3f}, "
            f"MIA {oracle.membership_inference_auc:.3f}, MIA-ans {oracle.mia_aucs['loss_answer']:.3f}"
        )

    print("\nUPDATE (each fact's target -> another value of the same relation)")
    print(
        f"{'facts':>6} {'layers':7} {'new':>6} {'new para':>8} {'old':>6} {'neighbours':>10} {'retain':>7} {'sec':>5}"
    )
    for n_people in (1, 4, 18):
        names = set(random.Random(100 + n_people).sample(sorted(eval_people), n_people))
        facts = people(tb.retain, names, "update")
        values: dict[str, list[str]] = {}
        for f in tb.retain:
            values.setdefault(f.relation or "", []).append(f.target)
        pick = random.Random(n_people)
        new = {f.id: pick.choice([v for v in values[f.relation or ""] if v != f.target]) for f in facts}
        updated = KnowledgeSet(
            tuple(f.__class__(f.id, f.prompt, new[f.id], f.subject, f.relation, f.paraphrases) for f in facts)
        )
        keep = eval_retain.filter(lambda f, names=names: f.subject not in names)
        neighbours = keep.filter(lambda f, r=set(facts.relations): f.relation in r)
        for layers in ([model.cfg.n_layers - 1], [model.cfg.n_layers - 2, model.cfg.n_layers - 1]):
            start = time.perf_counter()
            result = rewrite(model, facts, retain=None, covariance=cov, layers=layers, lam=1.0, target=new)
            seconds = time.perf_counter() - start
            print(
                f"{len(facts):6} {','.join(map(str, layers)):7} {accuracy(result.model, updated):6.3f} "
                f"{accuracy(result.model, updated.paraphrased()):8.3f} {accuracy(result.model, facts):6.3f} "
                f"{accuracy(result.model, neighbours):10.3f} {accuracy(result.model, keep):7.3f} {seconds:5.1f}"
            )


if __name__ == "__main__":
    main()
