"""One method's runs (:class:`MethodOutcome`), the table's columns, and how a column's interval is read
off the evaluations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ablation import AblationMask
from loka.evaluation.intervals import Interval, auc_interval, mean_interval, per_person
from loka.evaluation.result import UnlearningEvaluation, forget_quality
from loka.methods.budget import Compute

__all__ = [
    "DEFAULT_METHODS",
    "FORMAT",
    "JSON_FILE",
    "HTML_FILE",
    "MethodOutcome",
    "COLUMNS",
    "LOCALIZATION_COLUMNS",
    "LOCATION_PREFIX",
    "CALIBRATED",
    "metric",
    "column_interval",
]

DEFAULT_METHODS: tuple[str, ...] = ("loka", "gradient_ascent", "npo", "rmu", "task_vector")
FORMAT = "loka-comparison"
JSON_FILE, HTML_FILE = "comparison.json", "report.html"


@dataclass(frozen=True)
class MethodOutcome:
    """One row of the comparison: a method's evaluation under each seed, what each run spent, its
    settings, and the evaluations of its random controls."""

    name: str
    runs: tuple[UnlearningEvaluation, ...]
    computes: tuple[Compute, ...] = ()
    configs: tuple[Mapping[str, Any], ...] = ()
    controls: tuple[UnlearningEvaluation, ...] = ()
    mask: AblationMask | None = None
    seconds: float | None = None  # wall seconds per run (the oracle: its training time)

    @property
    def evaluation(self) -> UnlearningEvaluation:
        """The first seed's evaluation (one run; the table and the verdicts read every seed)."""
        return self.runs[0]

    @property
    def config(self) -> Mapping[str, Any]:
        return self.configs[0] if self.configs else {}

    def interval(self, column: str, *, controls: bool = False, seeds: int | None = None) -> Interval | None:
        """Mean and 95% interval of ``column`` (see :data:`COLUMNS`) over people and seeds: every
        run's, or the first ``seeds`` runs' (to meet a control on the seeds it ran; the runs and
        the controls are in seed order), of the method or (``controls``) of its random controls.
        Computed once per outcome: the bootstrap is the slow part of a table."""
        cache = self.__dict__.setdefault("_intervals", {})
        runs = self.controls if controls else self.runs
        n = len(runs) if seeds is None else min(seeds, len(runs))
        if (column, controls, n) not in cache:
            cache[column, controls, n] = column_interval(runs[:n], column)
        return cache[column, controls, n]

    @property
    def trained_against(self) -> tuple[str, ...]:
        """The columns whose statistic this method optimised (:func:`trained_against`): a good
        number there is no evidence for it."""
        return trained_against(self.configs)

    def forget_quality(self, *, controls: bool = False) -> str:
        """The forget-quality grade (:func:`loka.evaluation.result.forget_quality`) of the mean
        forget and retain accuracy over every run (or every control)."""
        forget, retain = self.interval("forget", controls=controls), self.interval("retain", controls=controls)
        if forget is None or retain is None:
            return "-"
        return forget_quality(forget.mean, retain.mean)

    @property
    def parameter_fraction(self) -> float | None:
        """Mean share of the model's parameters the runs changed (1 for methods that train every
        weight; None for the original and the oracle)."""
        shares = [
            c["chosen"]["parameter_fraction"] for c in self.configs if "parameter_fraction" in c.get("chosen", {})
        ]
        if shares:
            return float(np.mean(shares))
        return 1.0 if self.computes else None

    def compute_summary(self) -> dict[str, float] | None:
        """Mean optimizer steps, forward tokens (millions) and seconds over the runs."""
        if not self.computes:
            return None
        mean = lambda xs: float(np.mean(list(xs)))  # noqa: E731
        return {
            "steps": mean(c.steps for c in self.computes),
            "forward_Mtokens": mean(c.forward_tokens for c in self.computes) / 1e6,
            "backward_Mtokens": mean(c.backward_tokens for c in self.computes) / 1e6,
            "seconds": mean(c.seconds for c in self.computes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "trained_against": list(self.trained_against),
            "intervals": {c: (i.to_dict() if (i := self.interval(c)) else None) for c in COLUMNS},
            "control_intervals": (
                {c: (i.to_dict() if (i := self.interval(c, controls=True)) else None) for c in COLUMNS}
                if self.controls
                else None
            ),
            "compute": self.compute_summary(),
            "parameter_fraction": self.parameter_fraction,
            "computes": [c.to_dict() for c in self.computes],
            "configs": [dict(c) for c in self.configs],
            "mask": None if self.mask is None else self.mask.summary(),
            "runs": [r.to_dict() for r in self.runs],
            "controls": [r.to_dict() for r in self.controls],
        }


# column -> (detail key, kind, scalar fallback path); "mean" columns average a per-person value,
# "auc" columns are a membership attack's ROC AUC (members vs non-members, resampled by person)
COLUMNS: dict[str, tuple[str, str, str]] = {
    "forget": ("forget", "mean", "forget_accuracy"),
    "retain": ("retain", "mean", "retain_accuracy"),
    "para": ("paraphrase", "mean", "paraphrase_forget_accuracy"),
    "unseen": ("unseen_wording", "mean", "unseen_wording_forget_accuracy"),
    "MIA": ("mia.loss", "auc", "membership_inference_auc"),
    "MIA ans": ("mia.loss_answer", "auc", "mia_aucs.loss_answer"),
    "Min-K": ("mia.min_k", "auc", "mia_aucs.min_k"),
    "Min-K++": ("mia.min_k_plus_plus", "auc", "mia_aucs.min_k_plus_plus"),
    "in-ctx": ("in_context", "mean", "in_context_forget_accuracy"),
    "relearn": ("relearning", "mean", "relearning.after"),
    "benign": ("benign", "mean", "benign_relearning.after"),
    "LoRA": ("relearning_lora", "mean", "lora_relearning.after"),
    "quant8": ("quant.8bit.forget", "mean", "quantization.forget_8bit"),
    "quant4": ("quant.4bit.forget", "mean", "quantization.forget_4bit"),
    "lens": ("logit_lens", "mean", "logit_lens.best"),
    "probe": ("probe", "mean", "probe.forget_accuracy"),
    "extract": ("extraction", "mean", "extraction.exact_match"),
}
# the columns the localization verdict compares (located vs each control)
LOCALIZATION_COLUMNS = ("forget", "retain", "para", "relearn", "MIA")
LOCATION_PREFIX = "loka @"
# checks that must first tell the original from the oracle (else "uninformative")
CALIBRATED = (
    "MIA",
    "MIA ans",
    "Min-K",
    "Min-K++",
    "in-ctx",
    "relearn",
    "benign",
    "LoRA",
    "quant8",
    "quant4",
    "lens",
    "probe",
)


def trained_against(configs: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """The columns a method's runs optimised, from their recorded settings: LOKA's
    ``erase="subject"`` pulls the forget texts' whole-text loss onto the reference people's (the
    statistic of ``MIA``), and its ``adversary_weight`` > 0 trains against a relearning step (what
    ``relearn`` measures). Min-K, Min-K++, the answer-token MIA, the in-context attack, benign
    and LoRA relearning, quantization, the lens and the probe are trained against by no method
    here: they are the held-out judges."""
    columns = []
    if any(c.get("erase") == "subject" for c in configs):
        columns.append("MIA")
    if any((c.get("adversary_weight") or 0) > 0 for c in configs):
        columns.append("relearn")
    return tuple(columns)


def metric(evaluation: UnlearningEvaluation | None, path: str) -> float | None:
    """``evaluation``'s number at a dotted ``path`` (``"relearning.after"``), None where absent."""
    value: Any = evaluation
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return None if value is None else float(value)


def column_interval(runs: Sequence[UnlearningEvaluation], column: str) -> Interval | None:
    """The mean and 95% interval of one column over ``runs`` (one per seed), by person."""
    if not runs:
        return None
    key, kind, path = COLUMNS[column]
    if kind == "auc":
        members = [r.details.get(f"{key}.members") for r in runs]
        nonmembers = [r.details.get(f"{key}.nonmembers") for r in runs]
        if all(m is not None for m in members) and all(n is not None for n in nonmembers):
            return auc_interval([m[1] for m in members], members[0][0], [n[1] for n in nonmembers], nonmembers[0][0])  # type: ignore[index]
    else:
        details = [r.details.get(key) for r in runs]
        if all(d is not None for d in details):
            tables = [dict(zip(*per_person(d[1], d[0]), strict=True)) for d in details]  # type: ignore[index]
            people = [p for p in tables[0] if all(p in t for t in tables)]
            if people:
                return mean_interval([[t[p] for p in people] for t in tables])
    values = [v for r in runs if (v := metric(r, path)) is not None]
    if not values:
        return None
    return Interval(float(np.mean(values)), float(np.min(values)), float(np.max(values)), 0, len(values))
