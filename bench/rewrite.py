"""Bench: ablation.rewrite on the default testbed (erasure at 1/5/10% of the people, fact updates).

Forget sets are random subsets of the trained people (retain + forget); the rest of the retain
people are split in two: one half builds the key covariance, the other half (never seen by the
edit) measures retain accuracy. Erase targets come from the holdout people (never trained).
MIA AUC is loka.evaluation's LOSS attack (forget vs holdout); the oracle's is given where the
forget set is the testbed's own forget set (the oracle never saw exactly those people).

    python bench/rewrite.py [cache_dir]
"""

from __future__ import annotations

import random
import sys
import time
from typing import Any

import torch

from ablation.rewrite import key_covariance, rewrite
from loka import testbed
from loka.data import KnowledgeSet
from loka.evaluation import evaluate
from loka.metrics import score_facts
from loka.models import load_model


def people(knowledge: KnowledgeSet, names: set[str], label: str) -> KnowledgeSet:
    return knowledge.filter(lambda f: f.subject in names, name=label)


def accuracy(model: Any, knowledge: KnowledgeSet) -> float:
    return score_facts(model, knowledge).first_token_accuracy


def main(cache_dir: str = "/tmp/tbdefault") -> None:
    torch.set_num_threads(1)  # small ops: one thread is faster than two fighting for shared cores
    tb = testbed.load("default", cache_dir=cache_dir, progress=False)
    model = load_model(tb.model_dir)
    trained = tb.retain + tb.forget
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

    columns = ("forget", "para", "retain", "MIA", "oracle", "sec")
    header = f"{'forget set':24} {'layers':7} {'lam':>5} " + " ".join(f"{c:>7}" for c in columns)
    print("ERASE (original: forget 1.00, retain", f"{accuracy(model, eval_retain):.3f})")
    print(header)
    for label, forget, with_oracle in sets:
        keep = eval_retain.filter(lambda f, s=set(forget.subjects): f.subject not in s, name="retain/eval")
        for layers, lam in (([3], 0.1), ([3], 1.0), ([3], 10.0), ([2, 3], 1.0)):
            start = time.perf_counter()
            result = rewrite(model, forget, retain=None, covariance=cov, layers=layers, lam=lam, reference=tb.holdout)
            seconds = time.perf_counter() - start
            if with_oracle and oracle is None:
                oracle = evaluate(
                    tb.oracle_dir, forget=forget, retain=keep, holdout=tb.holdout, probe=False, relearn=False
                )
            ev = evaluate(
                result.model, forget=forget, retain=keep, holdout=tb.holdout, probe=False, relearn=False,
                oracle=oracle if with_oracle else None,
            )  # fmt: skip
            ref = f"{ev.reference.membership_inference_auc:.3f}" if ev.reference is not None else "-"
            print(
                f"{label:24} {','.join(map(str, layers)):7} {lam:5g} {ev.forget_accuracy:7.3f} "
                f"{ev.paraphrase_forget_accuracy or 0:7.3f} {ev.retain_accuracy:7.3f} "
                f"{ev.membership_inference_auc:7.3f} {ref:>7} {seconds:7.1f}"
            )
    if oracle is not None:
        print(
            f"oracle on the testbed forget set: forget {oracle.forget_accuracy:.3f}, "
            f"retain {oracle.retain_accuracy:.3f}"
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
        for layers in ([3], [2, 3]):
            start = time.perf_counter()
            result = rewrite(model, facts, retain=None, covariance=cov, layers=layers, lam=1.0, target=new)
            seconds = time.perf_counter() - start
            print(
                f"{len(facts):6} {','.join(map(str, layers)):7} {accuracy(result.model, updated):6.3f} "
                f"{accuracy(result.model, updated.paraphrased()):8.3f} {accuracy(result.model, facts):6.3f} "
                f"{accuracy(result.model, neighbours):10.3f} {accuracy(result.model, keep):7.3f} {seconds:5.1f}"
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
