"""Certify an erasure without an oracle: ``loka certify BEFORE AFTER --forget F --reference U``.

Every check compares the forget set with **reference** facts (never-seen people or texts of the
same kind) inside the same edited model; its null is measured between random halves of the
reference people; its interval is over people; its threshold is part of a suite fixed (and hashed)
before the run; its verdict is PASS, FAIL or INCONCLUSIVE, with Holm's correction across checks.
Only checks the method could not have trained against (held-out) count. See
``notes/erasure-evidence.md`` for what the literature measured, and :mod:`loka.certify.statistics`
for the tests.

Modules by job: ``suite`` (thresholds, the dev table), ``statistics`` (null, intervals, Holm,
verdicts), ``checks/`` (one module per attack family), ``hashing`` (provenance),
``certificate`` (the result, JSON and HTML), ``run`` (:func:`certify`).
"""

from loka.certify.certificate import Certificate
from loka.certify.result import Check, Null
from loka.certify.run import certify, check_inputs
from loka.certify.suite import Suite, suite

__all__ = ["certify", "check_inputs", "Certificate", "Check", "Null", "Suite", "suite"]
