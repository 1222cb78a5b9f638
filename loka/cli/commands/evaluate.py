"""``loka evaluate``: the shared evaluation of one model directory.

The leak guard of the comparison holds here too: when the model directory holds ``loka_seen.json``
(written by ``loka unlearn``: what the method was given) or ``--seen FILE`` names one, the command
refuses, before it loads a model or writes anything, to score the method on any person, fact or
wording it was given (:func:`loka.evaluation.pipeline.check_unseen`). Without ``--oracle`` the
table says which checks could not be calibrated, and the command runs the checks that need no oracle
instead: :func:`loka.certify` with its quick suite, the forget people against the ``--holdout``
people (never seen) inside the same model, each with a null measured from holdout-vs-holdout
splits, each read against ``--before`` (the model before the edit: a check it passes too cannot
see the facts; without ``--before`` the checks are not run and the command says so). With
``--json`` the certificate is stored under ``"certificate"``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loka.base.files import check_output as new_output
from loka.cli.common import read_knowledge, read_model
from loka.cli.launcher import is_main_process

__all__ = ["evaluate_command"]


def evaluate_command(args: argparse.Namespace) -> int:
    from loka.certify.run import MIN_REFERENCE_PEOPLE
    from loka.evaluation.pipeline import check_unseen, evaluate
    from loka.protocol import SEEN_FILE

    out = new_output(args.json, overwrite=args.overwrite, is_dir=False) if args.json else None
    sets = {name: read_knowledge(getattr(args, name)) for name in ("forget", "retain", "holdout", "passages")}
    beside = Path(args.model).expanduser() / SEEN_FILE
    seen_file = args.seen if args.seen is not None else (beside if beside.is_file() else None)
    seen = check_unseen(seen_file, forget=sets["forget"], retain=sets["retain"], holdout=sets["holdout"])
    model = read_model(args.model, args)
    evaluation = evaluate(
        model, **sets, oracle=args.oracle, probe=not args.no_probe, relearn=not args.no_relearn, seed=args.seed,
        seen=seen,
    )  # fmt: skip
    print(evaluation.table())
    print(evaluation.verdict())
    certificate = None
    people = len(set(sets["holdout"].subjects)) if sets["holdout"] is not None else 0
    if args.oracle is None and people < MIN_REFERENCE_PEOPLE:
        print(
            f"no --oracle, and the --holdout set has {people} people: the checks that need no oracle compare "
            f"the forget people with at least {MIN_REFERENCE_PEOPLE} never-seen people, so they were not run"
        )
    elif args.oracle is None and args.before is None:
        print("no --oracle: give --before DIR (the model before the edit) to run the checks that need none (a check "
              "the unedited model passes too cannot see the facts, so it is read against that model)")  # fmt: skip
    elif args.oracle is None:
        from loka.certify import certify

        print("\nno --oracle: the checks that need none (loka certify, quick suite): the forget people against the "
              "--holdout people inside this model")  # fmt: skip
        certificate = certify(
            args.before, model, sets["forget"], sets["holdout"], sets["retain"], attacks="quick", seen=seen,
            device=args.device, dtype=args.dtype, device_map=args.device_map,
            max_memory=dict(args.max_memory) if args.max_memory else None,
        )  # fmt: skip
        print(certificate.table())
    if seen_file is None:
        print(f"leak guard off: no {SEEN_FILE} beside the model and no --seen, so nothing checks that the method "
              "never saw what is scored")  # fmt: skip
    else:
        print(f"leak guard on: nothing scored was given to the method ({seen_file})")
    if out is not None and is_main_process():  # under torchrun, rank 0 writes
        data = evaluation.to_dict()
        if certificate is not None:
            data["certificate"] = certificate.to_dict()
        out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"written to {out}")
    return 0
