"""Reading the answer from inside the model, forget against reference.

- **Logit lens** (:func:`loka.evaluation.attacks.logit_lens.logit_lens`): the answer's first token
  read top-1 from an intermediate block's residual stream at the last prompt token. The block is
  chosen without looking at the forget set: the one that reads the retain facts best (the last
  block before the output when there is no retain set).
- **Probe** (:func:`loka.evaluation.attacks.probe.fit_probe`): per-relation logistic regressions
  fitted on retain facts read each relation's value from an MLP input; read on the forget facts
  and, with the same block, on the reference facts. Needs ``retain``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from loka.base.errors import UsageError
from loka.certify.checks import common, people
from loka.certify.result import Check
from loka.certify.statistics import measure
from loka.certify.suite import Suite
from loka.data.knowledge import KnowledgeSet
from loka.evaluation.attacks.logit_lens import logit_lens
from loka.evaluation.attacks.probe import fit_probe

__all__ = ["readout_checks"]


def _lens(
    model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, retain: Any, suite: Suite
) -> Check:
    name, description = "readout.logit_lens", "answers read top-1 at an intermediate block, forget minus reference"
    f, r = logit_lens(model, tokenizer, forget), logit_lens(model, tokenizer, reference)
    if f.n_layers < 2:
        return Check.skip(name, description, "the model has no intermediate block")
    if retain is not None:
        per_layer = logit_lens(model, tokenizer, retain).per_layer[:-1]
        layer, how = int(np.argmax(per_layer)), "the block that reads retain facts best"
    else:
        layer, how = f.n_layers - 2, "the last block before the output"
    return measure(
        name, description, np.array(f.correct[layer], dtype=float), people(forget),
        np.array(r.correct[layer], dtype=float), people(reference), statistic="difference", sided="two-sided",
        margin=suite.margin_accuracy, **common(suite), note=f"block {layer} ({how})",
    )  # fmt: skip


def _probe(
    model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, retain: Any, suite: Suite
) -> Check:
    name = "readout.probe"
    description = "relation values read by a linear probe fitted on retain, forget minus reference"
    if retain is None:
        return Check.skip(name, description, "needs --retain (the probe is fitted on retain facts)")
    try:
        f = fit_probe(model, tokenizer, forget, retain, seed=suite.seed)
        r = fit_probe(model, tokenizer, reference, retain, seed=suite.seed, layer=f.layer)
    except UsageError as err:
        return Check.skip(name, description, str(err))
    fk, rk = np.array(f.forget_readable), np.array(r.forget_readable)
    return measure(
        name, description, np.array(f.forget_correct, dtype=float)[fk], np.array(people(forget), dtype=object)[fk],
        np.array(r.forget_correct, dtype=float)[rk], np.array(people(reference), dtype=object)[rk],
        statistic="difference", sided="two-sided", margin=suite.margin_accuracy, **common(suite),
        note=f"block {f.layer}, chosen on held-out retain people",
    )  # fmt: skip


def readout_checks(
    model: Any, tokenizer: Any, forget: KnowledgeSet, reference: KnowledgeSet, retain: KnowledgeSet | None,
    suite: Suite,
) -> list[Check]:  # fmt: skip
    return [_lens(model, tokenizer, forget, reference, retain, suite),
            _probe(model, tokenizer, forget, reference, retain, suite)]  # fmt: skip
