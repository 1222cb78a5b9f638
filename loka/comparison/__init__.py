"""Every unlearning method under one protocol, judged by one evaluation, with intervals.

:func:`compare` runs the methods under a :class:`loka.protocol.Protocol` (the same sets, the same
:class:`loka.methods.Budget`, several method seeds), evaluates each run beside the exact-retrain
oracle and beside a random control of the same size (:mod:`ablation.control`: the same number of components
per layer for a mask, the same singular values per changed weight tensor for a weight edit), and
returns a :class:`Comparison`: ``.table()`` for the terminal, ``.to_dict()`` for JSON,
``.figures()`` for plotly and ``.save(out_dir)`` for ``comparison.json`` + a self-contained
``report.html`` (:mod:`loka.report`). :func:`compare_testbed` does it on the built-in testbed;
``loka compare`` and ``loka demo`` are the command line for both.

Every number is a mean with a 95% interval over people and seeds (:mod:`loka.intervals`); two
numbers differ only where their intervals do not overlap. The checks that must first tell the
original model from the oracle (membership inference, relearning, probe) are shown only when
they do; otherwise the table says "uninformative".

Layout: ``running`` (jobs, worker processes, :func:`compare`), ``outcomes`` (a method's runs and the
columns), ``table`` (:class:`Comparison`: the table, verdicts, JSON), ``curve`` (the budget curve)
and ``report`` (the HTML page, rendered from the comparison's plain data).
"""

from __future__ import annotations

from loka.comparison.outcomes import COLUMNS, DEFAULT_METHODS, HTML_FILE, JSON_FILE, MethodOutcome
from loka.comparison.running import compare, compare_testbed
from loka.comparison.table import Comparison

__all__ = [
    "COLUMNS",
    "DEFAULT_METHODS",
    "HTML_FILE",
    "JSON_FILE",
    "Comparison",
    "MethodOutcome",
    "compare",
    "compare_testbed",
]
