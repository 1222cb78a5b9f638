"""Does the location matter? LOKA's localization table and budget curve on the testbed.

    python bench/localization.py table [--size default] [--world 0] [--seeds 3] [--forget-share 0.05]
                                       [--locations random,least,complement,layers,full] [--option KEY=VALUE]
    python bench/localization.py curve [--size default] [--world 0] [--seeds 3]
                                       [--sizes 0.0025,0.005,0.01,0.02,0.05,0.1] [--out DIR]

``table``: :func:`loka.comparison.compare_testbed` with LOKA only and its localization controls
(the same edit, objective, budget and seeds on random / least-attributed / complement / whole-layer
/ all components), full evaluation (relearning, MIA, probe), then the verdicts in words.
``curve``: :func:`loka.comparison.curve.budget_curve`, located vs random at every size, forget / retain-eval /
paraphrase answer-token accuracy and the share of parameters changed.

``--forget-share`` below the testbed's 5% forgets only the first people of its forget set (1% =
a fifth of them); the oracle never saw any of them, so it stays exact for those people.
``--out DIR`` writes the comparison (``comparison.json`` + ``report.html``) or the curve
(``curve.json`` + ``curve.html``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.comparison import compare_testbed  # noqa: E402
from loka.comparison.curve import budget_curve  # noqa: E402
from loka.comparison.report import figures_html  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.methods import Budget  # noqa: E402
from loka.methods.localized.localization import LOCATIONS  # noqa: E402
from loka.protocol import Protocol  # noqa: E402


def _protocol(tb: object, share: float, seed: int) -> Protocol:
    protocol = Protocol.from_testbed(tb, seed=seed)
    n_people = len(protocol.forget.subjects) + len(tb.retain.subjects) + len(tb.holdout.subjects)  # type: ignore[attr-defined]
    keep = round(share * n_people)
    if share >= 0.05 or keep >= len(protocol.forget.subjects):
        return protocol
    people = set(sorted(protocol.forget.subjects)[: max(1, keep)])
    pick = lambda ks: None if ks is None else KnowledgeSet(tuple(f for f in ks if f.subject in people), name=ks.name)  # noqa: E731
    return Protocol(
        forget=pick(protocol.forget), retain_train=protocol.retain_train, retain_validation=protocol.retain_validation,
        retain_eval=protocol.retain_eval, nonmembers=protocol.nonmembers, reference=protocol.reference,
        augment=pick(protocol.augment), paraphrase_eval=pick(protocol.paraphrase_eval),
        unseen_wording_eval=pick(protocol.unseen_wording_eval), passages=pick(protocol.passages),
        name=f"{protocol.name}, forget {len(people)} people",
    )  # fmt: skip


def _options(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("table", "curve"))
    parser.add_argument("--size", default="default", choices=("default", "tiny"))
    parser.add_argument("--world", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--forget-share", type=float, default=0.05, help="share of all people to forget (<= 0.05)")
    parser.add_argument("--locations", default=",".join(x for x in LOCATIONS if x != "located"))
    parser.add_argument("--sizes", default="0.0025,0.005,0.01,0.02,0.05,0.1")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a LOKA option")
    parser.add_argument("--max-steps", type=int, default=500, help="the budget's step cap for every run (500)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tb = loka.testbed.load(args.size, seed=args.world, progress=False)
    protocol = _protocol(tb, args.forget_share, 0)
    options = _options(args.option)
    print(f"{protocol.name}: {len(protocol.forget)} forget facts, options {options}", flush=True)
    if args.what == "table":
        comparison = compare_testbed(
            tb, protocol=protocol, methods=("loka",), locations=[x for x in args.locations.split(",") if x],
            seeds=args.seeds, options={"loka": options}, budget=Budget(max_steps=args.max_steps), progress=False,
        )  # fmt: skip
        print(comparison.table())
        for name, verdict in comparison.localization().items():
            print(f"\n{name}: {verdict}")
        if args.out:
            comparison.save(args.out, overwrite=True)
    else:
        sizes = [float(s) for s in args.sizes.split(",") if s]
        curve = budget_curve(loka.load_model(tb.model_dir), protocol, sizes=sizes, seeds=args.seeds, options=options,
                             budget=Budget(max_steps=args.max_steps), progress=False)  # fmt: skip
        print(curve.table())
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "curve.json").write_text(json.dumps(curve.to_dict()) + "\n")
            (out / "curve.html").write_text(figures_html("LOKA budget curve", {"budget curve": curve.plot()}))
    print(f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
