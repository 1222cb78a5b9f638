"""TOFU on a CPU: the benchmark unlearning papers report, scaled down, with its own metrics.

TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs", arXiv:2401.06121)
fine-tunes a model on 200 fictitious authors x 20 QA pairs, asks a method to forget the last 2,
10 or 20 authors (``forget01`` / ``forget05`` / ``forget10``), and compares the result with a
*retain model* trained on everything except those authors. Its table has two headline numbers:

- **forget quality**: the KS-test p-value between the forget-set truth ratios of the unlearned
  model and of the retain model (high = indistinguishable from never having seen the authors);
- **model utility**: the harmonic mean of probability, ROUGE-L and truth ratio on the retain
  authors, on real authors and on world facts (nine numbers; see :mod:`loka.benchmarks.tofu.metrics`).

Here the protocol is scaled to a CPU. A pretrained LLM cannot be fine-tuned on two cores, so
:func:`run` trains a small GPT-2 *from scratch* (the testbed's recipe: :mod:`loka.testbed.training`)
on the forget split's authors, the first ``n_retain_authors`` other authors and the real-authors
and world-facts QA (the *original*), and the same recipe with the same seed on the same data minus
the forget authors (the *retain model*). Both are cached as Hugging Face directories under
``$LOKA_CACHE_DIR/tofu`` (else ``~/.cache/loka/tofu``), named by a hash of the whole config and
the data files' hashes, so a second run skips training.

**Who sees what** (a :class:`loka.protocol.Protocol`, checked disjoint when it is built; the split
is drawn by *author*, with the run's ``seed``, :func:`split_authors`). TOFU's own code fine-tunes
on the retain authors it then scores utility on, and gives its membership attack the same holdout
authors a method may use; a number measured on what a method was shown says how well it fits, not
how well it unlearns. So:

=======================  ===============================================  ==========================
set                      authors                                          used by
=======================  ===============================================  ==========================
forget                   the split's forget authors, first wording only   methods; scored (forget)
retain_train             60% of the retain authors                        methods (training)
retain_validation        10% of the retain authors                        methods (budget choice)
retain_eval              30% of the retain authors, drawn from authors    scored only: the "retain"
                         0-19 (the only ones ``retain_perturbed`` covers)  third of model utility
reference                half of the split's holdout authors              methods ("unknown person")
non-members              the other half of the holdout authors            scored only (MIA)
real authors, world      TOFU's utility QA (both models train on it)      scored only (utility)
facts
=======================  ===============================================  ==========================

Both trained models know every retain author; a method trains on the retain_train authors only, so
the retain part of the utility is measured on authors whose knowledge the method had no signal to
protect. The split is the same for every method and every method seed; each method runs under one
:class:`loka.methods.Budget` (``run(budget=...)``: check forget accuracy on the forget prompts
every ``check_every`` steps, stop at ``target_forget_accuracy`` or ``max_steps``), and the table
shows what each spent (:class:`loka.methods.Compute`: optimizer steps, forward tokens, seconds).
After every method :func:`run` checks what the method was shown (``UnlearningResult.seen``) and
refuses to score it on a retain_eval or non-member author it saw.

| column | set | definition |
|---|---|---|
| forget quality | forget | KS p-value of truth ratios vs the retain model |
| model utility | retain_eval, real authors, world facts | hmean of 9 numbers |
| forget ROUGE-L | forget | ROUGE-L recall of the greedy answer |
| forget prob. | forget | mean of ``exp(-nll)`` of the answer (its tokens and the EOS after them, as TOFU) |
| forget TR | forget | ``mean(min(R, 1/R))`` |
| MIA AUC | forget vs non-members | LOSS attack (Yeom et al. 2018) on the answer tokens + EOS, sklearn's ROC AUC |
| retain ROUGE-L | retain_eval | ROUGE-L recall of the greedy answer |

**Seeds** (``run(seeds=k)``): each method runs with seeds ``seed``, ``seed + 1``, ...,
``seed + k - 1`` on the same two trained models and the same author split; every seed is one row.
With ``k > 1`` the report adds each method's mean [min, max] *over its seeds* of forget quality,
model utility and MIA AUC. That range says how much a method's result moves from one run of it to
the next; it is not a confidence interval, and it does not cover another draw of authors or of the
trained models (forget quality is one KS p-value per model, so a per-author interval does not exist).

What differs from the paper: models trained from scratch never reach a pretrained model's
fluency, so absolute numbers (real authors and world facts above all: the model knows only the QA
it was trained on) are not comparable with the paper's Llama/Phi numbers; the *relations* between
rows are what the benchmark measures. The retain set of the utility is TOFU's ``retain_perturbed``
(authors 0-19, which carry paraphrased and perturbed answers) restricted to the retain_eval
authors, and the MIA's non-members are half of TOFU's holdout authors (see above).
Questions are read through ``"Question: {question}\\nAnswer:"`` (no chat template).
ROUGE-L is rouge-score's with Porter stemming, as in TOFU's code (:func:`loka.benchmarks.tofu.metrics.rouge_l`).
Membership attacks score the answer's tokens only, as open-unlearning's TOFU attacks do (``mia_aucs``
also holds zlib and Min-40%).

Sizes (``size=``), with wall times measured on 2 CPU cores shared with other jobs (load 2-5):

- ``"default"``: a 4-layer GPT-2 (d_model 128, d_mlp 512, vocab 2048 byte-level BPE trained on the
  run's texts, n_ctx 512; 1.1M parameters) trained on the 2 / 10 / 20 forget authors, 10 retain
  authors (6 retain_train, 1 retain_validation, 3 retain_eval) and all 100 real-authors + 117
  world-facts QA (457 QA for forget01), 30 epochs, batch 32, lr 3e-3, loss on every token.
  forget01: the two models train in parallel in about 6 min (10-13 min on a busier machine); the
  original model answers its training QA (greedy ROUGE-L recall 0.95 on forget, 0.97 on
  retain_eval) and the retain model does not know the forget authors (0.04). Under the default
  budget (load 6-7 on 2 cores, one seed): LOKA about 4 min (most of it attribution), gradient
  ascent and task vector about 20 s each, scoring one model about 20 s; the whole run 16 min, 6
  once the models are cached. Timings and the table: ``python bench/tofu.py``.
- ``"tiny"`` (tests): a 2-layer GPT-2 (d_model 64, vocab 1024), 3 retain authors (one in each
  retain set), 10 real-authors and 10 world-facts QA, 8 epochs, trained in this process; it learns
  little (ROUGE-L near 0), which is enough to check the plumbing; about 15 s to build.

Every method runs with its own defaults unless ``method_options`` says otherwise; the sets, the
seed and the budget are the protocol's, not options.

>>> report = run("forget01", seeds=3)      # doctest: +SKIP
>>> print(report.table())                  # doctest: +SKIP
>>> report.save("out/tofu")                # doctest: +SKIP  (tofu.json + tofu.html)

The package holds one module per job: :mod:`~loka.benchmarks.tofu.config` (splits, sizes, the
cache key), :mod:`~loka.benchmarks.tofu.data` (TOFU's files, the author split, author names),
:mod:`~loka.benchmarks.tofu.building` (training the two models), :mod:`~loka.benchmarks.tofu.metrics`
(TOFU's formulas), :mod:`~loka.benchmarks.tofu.scoring` (one model's numbers),
:mod:`~loka.benchmarks.tofu.report` (the table and the HTML page) and
:mod:`~loka.benchmarks.tofu.runner` (:func:`run`, the protocol).
"""

from __future__ import annotations

from loka.benchmarks.tofu.config import (
    METHODS,
    SIZES,
    SPLITS,
    TEMPLATE,
    TofuConfig,
    default_cache_dir,
    make_config,
)
from loka.benchmarks.tofu.data import AuthorSplit, EvalSet, TofuData, author_name, load_data, split_authors
from loka.benchmarks.tofu.report import TofuReport
from loka.benchmarks.tofu.runner import run
from loka.benchmarks.tofu.scoring import TofuScores, _answer_log_probs, _mia_aucs, _nll, evaluate_model  # noqa: F401

__all__ = [
    "SPLITS",
    "SIZES",
    "METHODS",
    "TEMPLATE",
    "TofuConfig",
    "TofuData",
    "TofuScores",
    "TofuReport",
    "EvalSet",
    "AuthorSplit",
    "author_name",
    "make_config",
    "split_authors",
    "load_data",
    "evaluate_model",
    "run",
    "default_cache_dir",
]
