"""Unlearning without subjects: a public question-answer benchmark's questions and passages.

    python bench/qa_case.py [--data bench/data/squad2_dev_5_articles.jsonl] [--forget-paragraphs 6]
                            [--holdout-paragraphs 16] [--max-context 800] [--max-answer-words 4]
                            [--split-seed 0] [--seeds 3] [--methods loka,npo,rmu,gradient_ascent,task_vector]
                            [--deletion-size 0.1] [--option METHOD.KEY=VALUE] [--locations random ...]
                            [--max-steps 500] [--workers 2] [--cache-dir DIR] [--out DIR]

The testbed's facts each name a person (a subject) whose name LOKA's default reads; real erasure
requests often have none. This case is built from SQuAD 2.0 (Rajpurkar et al. 2018; CC BY-SA 4.0):
``bench/data/squad2_dev_5_articles.jsonl`` holds the answerable questions of the first five articles
of its development set (173 Wikipedia paragraphs; each question with its most frequent answer),
derived from ``dev-v1.1.json`` of github.com/VinACE/san_mrc (a copy of those five articles,
sha256 db71d0a1...). Paragraphs with a context of at most ``--max-context`` characters keep
their questions whose answer has at most ``--max-answer-words`` words; paragraphs left with
fewer than 3 such questions are dropped. Then, by paragraph (seeded by ``--split-seed``):

- **forget**: every question of ``--forget-paragraphs`` paragraphs, and their paragraphs as
  passages (the first sentence as prompt, the rest as the continuation verbatim extraction scores);
- **holdout**: ``--holdout-paragraphs`` paragraphs no model is trained on (MIA non-members and
  reference);
- **retain**: every other paragraph's questions, split by question into the methods' train and
  validation sets and the evaluation's unseen retain set (:meth:`loka.protocol.Protocol.from_sets`).

The original (a 4-layer GPT-2, d_model 128, 256 positions or the longest text rounded up to
64, trained from scratch on a byte-level BPE of this text) learns every forget and retain
question (``Question: ...\\nAnswer:`` + answer) and every forget and retain paragraph; the
oracle the same without the forget paragraphs and their questions. Both are cached in
``--cache-dir`` (default ``$LOKA_CACHE_DIR/qa-case``, else ``~/.cache/loka/qa-case``) by a hash
of the data and the recipe. No fact has a subject or a
relation, so LOKA's subject terms and subject-position localization have nothing to read; its
default runs as it is (attribution over every prompt token).

:func:`loka.compare` then runs ``--methods`` (same sets, budget and seeds), a LOKA deletion
variant (``edit="ablate"``, ``localize="mask"``, zero, ``--deletion-size`` of the neurons), and
LOKA's location controls (``--locations``, default random), and prints every column with 95%
intervals over questions and seeds. ``--option`` passes a method's options (``loka.lr=auto``,
with ``--deletion-size 0``: the deletion variant takes LOKA's options, and it trains no rate).
The original's and the oracle's evaluations are kept beside the models and read back when
nothing they depend on changed. ``--out`` gets the comparison (``comparison.json``,
``report.html``) and the printed table (``table.txt``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import loka  # noqa: E402
from loka.cli.common import key_value, method_options  # noqa: E402
from loka.comparison import compare  # noqa: E402
from loka.data.facts import Fact  # noqa: E402
from loka.data.knowledge import KnowledgeSet  # noqa: E402
from loka.methods import Budget  # noqa: E402
from loka.protocol import Protocol  # noqa: E402
from loka.testbed import default_cache_dir, worker  # noqa: E402
from loka.testbed.training import ModelConfig, TrainConfig, train_tokenizer  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "squad2_dev_5_articles.jsonl"
TEMPLATE = "Question: {question}\nAnswer:"
MODEL = ModelConfig(n_layers=4, d_model=128, n_heads=4, d_mlp=512, vocab_size=2048, n_ctx=256)
TRAIN = TrainConfig(epochs=40, batch_size=32, lr=3e-3, passage_repeats=2, fact_loss="all", seed=0)
RECIPE = 1


def paragraphs(path: Path, max_context: int, max_answer_words: int) -> list[dict]:
    """The paragraphs of ``path`` that the case uses, each with its usable questions."""
    kept = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if len(record["context"]) > max_context:
            continue
        qas = [q for q in record["qas"] if len(q["answer"].split()) <= max_answer_words]
        if len(qas) >= 3:
            kept.append({**record, "qas": qas})
    return kept


def question_facts(chosen: list[dict], name: str) -> KnowledgeSet:
    facts = [Fact(id=q["id"], prompt=TEMPLATE.format(question=q["question"]), target=q["answer"])
             for p in chosen for q in p["qas"]]  # fmt: skip
    return KnowledgeSet(tuple(facts), name=name)


def passage_facts(chosen: list[dict]) -> KnowledgeSet:
    """Each paragraph as a passage fact: its first sentence, then the rest (what extraction scores)."""
    facts = []
    for p in chosen:
        parts = re.split(r"(?<=[.!?])\s+", p["context"], maxsplit=1)
        if len(parts) < 2:  # one sentence: its first half is the prompt
            words = p["context"].split()
            parts = [" ".join(words[: len(words) // 2]), " ".join(words[len(words) // 2 :])]
        first, rest = parts
        facts.append(Fact(id=f"{p['id']}/passage", prompt=first, target=rest))
    return KnowledgeSet(tuple(facts), name="passages")


def build(root: Path, forget: list[dict], retain: list[dict], holdout: list[dict]) -> None:
    """Train the original and the oracle into ``root`` (one worker process each), with ``build.json``
    (the seconds it took and the training logs)."""
    start = time.perf_counter()
    qa = {name: [(f.prompt, " " + f.target) for f in question_facts(chosen, name).facts]
          for name, chosen in (("forget", forget), ("retain", retain))}  # fmt: skip
    texts = {name: [p["context"] for p in chosen] for name, chosen in (("forget", forget), ("retain", retain))}
    with worker.build_directory(root) as (tmp, jobs):
        corpus = [p + a for p, a in qa["forget"] + qa["retain"]] + texts["forget"] + texts["retain"]
        corpus += [TEMPLATE.format(question=q["question"]) + " " + q["answer"] for p in holdout for q in p["qas"]]
        tokenizer = train_tokenizer(corpus, MODEL.vocab_size)
        tokenizer.save_pretrained(tmp / "tokenizer")
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in corpus) + 2
        model = replace(MODEL, n_ctx=max(MODEL.n_ctx, -(-longest // 64) * 64))  # every text fits
        specs = {
            "original": worker.job(
                tmp, "original", qa["forget"] + qa["retain"], texts["forget"] + texts["retain"], model, TRAIN
            ),
            "oracle": worker.job(tmp, "oracle", qa["retain"], texts["retain"], model, TRAIN),
        }
        for name, spec in specs.items():
            jobs[name] = worker.start(tmp, name, spec)
        logs = worker.wait(tmp, jobs, specs, progress=True, desc="training the QA case", what="the {name} model")
        shutil.rmtree(tmp / "tokenizer")
        seconds = round(time.perf_counter() - start, 1)
        (tmp / "build.json").write_text(json.dumps({"build_seconds": seconds, "training": logs}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--forget-paragraphs", type=int, default=6)
    parser.add_argument("--holdout-paragraphs", type=int, default=16)
    parser.add_argument("--max-context", type=int, default=800)
    parser.add_argument("--max-answer-words", type=int, default=4)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="loka,npo,rmu,gradient_ascent,task_vector")
    parser.add_argument("--deletion-size", type=float, default=0.1, help="0 leaves the deletion row out")
    parser.add_argument("--option", action="append", type=key_value, metavar="METHOD.KEY=VALUE",
                        help="an option of one method (loka.compare's options), e.g. loka.lr=auto")  # fmt: skip
    parser.add_argument("--locations", nargs="*", default=["random"], help="LOKA's location controls")
    parser.add_argument("--max-steps", type=int, default=Budget().max_steps, help="the budget's step cap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"--data {args.data}: no such file (the paragraphs' JSONL; see the docstring)")
    kept = paragraphs(args.data, args.max_context, args.max_answer_words)
    if args.forget_paragraphs < 1 or args.holdout_paragraphs < 2 or \
            args.forget_paragraphs + args.holdout_paragraphs + 10 > len(kept):  # fmt: skip
        raise SystemExit(f"--forget-paragraphs (>= 1) + --holdout-paragraphs (>= 2) must leave at least 10 of the "
                         f"{len(kept)} usable paragraphs for retain")  # fmt: skip
    order = list(range(len(kept)))
    random.Random(args.split_seed).shuffle(order)
    forget = [kept[i] for i in order[: args.forget_paragraphs]]
    holdout = [kept[i] for i in order[args.forget_paragraphs : args.forget_paragraphs + args.holdout_paragraphs]]
    retain = [kept[i] for i in order[args.forget_paragraphs + args.holdout_paragraphs :]]

    key = hashlib.sha256(json.dumps(
        [RECIPE, asdict(MODEL), asdict(TRAIN), [[p["id"], p["context"], p["qas"]] for p in forget + retain + holdout],
         len(forget), len(holdout)],
    ).encode()).hexdigest()[:16]  # fmt: skip
    cache = args.cache_dir or default_cache_dir().parent / "qa-case"  # the testbed cache's sibling, as TOFU's
    root = cache / f"squad-{key}"
    built = worker.build_once(root, "build.json", lambda: build(root, forget, retain, holdout))
    info = json.loads((root / "build.json").read_text())
    print(f"models {'trained' if built else 'read from the cache'}: {root} (build {info['build_seconds']} s)")

    protocol = Protocol.from_sets(
        forget=question_facts(forget, "forget"), retain=question_facts(retain, "retain"),
        holdout=question_facts(holdout, "holdout"), passages=passage_facts(forget), seed=args.split_seed,
        name="SQuAD 2.0 dev, 5 articles",
    )  # fmt: skip
    print(f"{len(kept)} paragraphs: forget {len(forget)}, holdout {len(holdout)}, retain {len(retain)}; "
          f"{protocol.describe()}")  # fmt: skip
    methods = tuple(m for m in args.methods.split(",") if m)
    options = method_options(args.option, list(methods))
    variants = {}
    if args.deletion_size > 0 and "loka" in methods:
        variants["loka deletion"] = {"edit": "ablate", "localize": "mask", "ablate_mode": "zero",
                                     "size": args.deletion_size}  # fmt: skip
    model = root / "original" if args.workers > 1 else loka.load_model(root / "original")
    result = compare(
        model, protocol=protocol, oracle=root / "oracle", methods=methods, options=options, variants=variants,
        budget=Budget(max_steps=args.max_steps), seeds=args.seeds, locations=args.locations if "loka" in methods
        else (), control=False, workers=args.workers, progress=False, title="unlearning without subjects: SQuAD 2.0",
        evaluation_cache=root / "evaluations",
    )  # fmt: skip
    text = "\n".join([result.table(), *(f"{name}: {verdict}" for name, verdict in result.localization().items())])
    print(text)
    if args.out:  # the comparison (JSON and report) and the printed table (as in bench/results/qa_case_squad*.txt)
        (result.save(args.out) / "table.txt").write_text(text + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
