"""Every unlearning method on the same forget / retain / holdout sets, judged by one evaluation.

:func:`compare` runs the methods, evaluates each edited model beside the exact-retrain oracle and
beside a random control of the same size (:mod:`ablation.control`: the same number of components
per layer for a mask, the same singular values per changed weight tensor for a weight edit), and
returns a :class:`Comparison`: ``.table()`` for the terminal, ``.to_dict()`` for JSON,
``.figures()`` for plotly and ``.save(out_dir)`` for ``comparison.json`` + a self-contained
``report.html`` (:mod:`loka.report`). :func:`compare_testbed` does it on the built-in testbed;
``loka compare`` and ``loka demo`` are the command line for both.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import attribution
from ablation import AblationMask, bake, random_edit_like
from loka.data import KnowledgeSet
from loka.evaluation import UnlearningEvaluation, evaluate
from loka.methods import METHODS, UnlearningResult, unlearn
from loka.models import load_model

__all__ = ["Comparison", "MethodOutcome", "compare", "compare_testbed", "DEFAULT_METHODS"]

logger = logging.getLogger(__name__)
DEFAULT_METHODS: tuple[str, ...] = ("loka", "gradient_ascent", "task_vector")
FORMAT = "loka-comparison"
JSON_FILE, HTML_FILE = "comparison.json", "report.html"


@dataclass(frozen=True)
class MethodOutcome:
    """One row of the comparison: a method's evaluation, its wall seconds and its settings."""

    name: str
    evaluation: UnlearningEvaluation
    seconds: float | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    mask: AblationMask | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": self.seconds,
            "config": dict(self.config),
            "mask": None if self.mask is None else self.mask.summary(),
            "evaluation": self.evaluation.to_dict(),
        }


_COLUMNS: tuple[tuple[str, str], ...] = (
    ("forget", "forget_accuracy"),
    ("retain", "retain_accuracy"),
    ("para", "paraphrase_forget_accuracy"),
    ("MIA", "membership_inference_auc"),
    ("MIA ans", "mia_aucs.loss_answer"),
    ("relearn", "relearning.after"),
    ("probe", "probe.forget_accuracy"),
    ("extract", "extraction.exact_match"),
)


def metric(evaluation: UnlearningEvaluation | None, path: str) -> float | None:
    """``evaluation``'s number at a dotted ``path`` (``"relearning.after"``), None where absent."""
    value: Any = evaluation
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Comparison:
    """The methods' outcomes, first the original model and (when known) the oracle."""

    outcomes: tuple[MethodOutcome, ...]
    scores: attribution.AttributionScores | None = None  # forget-set attribution (the report's heatmaps)
    title: str = "loka comparison"
    sets: Mapping[str, int] = field(default_factory=dict)  # facts per set

    def __getitem__(self, name: str) -> MethodOutcome:
        for outcome in self.outcomes:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no method {name!r} in this comparison; it has {[o.name for o in self.outcomes]}")

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.outcomes]

    def rows(self) -> list[tuple[str, dict[str, float | None], float | None, str]]:
        """(label, numbers by column, seconds, forget quality), with a control row under each
        method that has one."""
        rows = []
        for o in self.outcomes:
            ev = o.evaluation
            rows.append((o.name, {c: metric(ev, p) for c, p in _COLUMNS}, o.seconds, ev.forget_quality))
            if ev.control is not None:
                c = ev.control
                rows.append(("  random control", {k: metric(c, p) for k, p in _COLUMNS}, None, c.forget_quality))
        return rows

    def table(self) -> str:
        """The method x metric table (accuracies are first-token top-1; MIA is the LOSS attack's AUC,
        forget vs holdout, on the whole text; MIA ans scores the answer tokens only; relearn is held-out
        forget accuracy after the relearning attack)."""
        header = f"{'method':<18}" + "".join(f"{c:>9}" for c, _ in _COLUMNS) + f"{'seconds':>9}  quality"
        lines = [self.title, header, "-" * len(header)]
        for label, numbers, seconds, quality in self.rows():
            cells = "".join(f"{v:>9.3f}" if v is not None else f"{'-':>9}" for v in numbers.values())
            sec = f"{seconds:>9.1f}" if seconds is not None else f"{'-':>9}"
            lines.append(f"{label:<18}{cells}{sec}  {quality}")
        return "\n".join(lines)

    def verdicts(self) -> dict[str, str]:
        return {o.name: o.evaluation.verdict() for o in self.outcomes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "title": self.title,
            "sets": dict(self.sets),
            "outcomes": [o.to_dict() for o in self.outcomes],
            "top_components": [c.label for c in self.scores.top(20)] if self.scores is not None else None,
        }

    def figures(self) -> dict[str, Any]:
        """Plotly figures: ``"metrics"`` (bars per method), ``"relearning"`` (accuracy of the held-out
        forget half during the relearning attack), and the attribution heatmaps (``"heads"``,
        ``"neurons"``) when scores are attached."""
        from loka.report import comparison_figures

        return comparison_figures(self)

    def save(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``comparison.json`` and ``report.html`` into ``out_dir`` (created). An existing
        ``out_dir`` is an error unless ``overwrite`` and it holds an earlier comparison."""
        from loka.report import write_report

        out = Path(out_dir).expanduser()
        check_output_dir(out, overwrite=overwrite, marker=JSON_FILE)
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_FILE).write_text(json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        write_report(self, out / HTML_FILE)
        return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def check_output_dir(out: Path, *, overwrite: bool, marker: str) -> None:
    """A new (or empty) directory, or with ``overwrite`` one that ``marker`` says loka wrote."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {str(out)!r} exists and is a file; give a directory path")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {str(out)!r} exists and is not empty; pass --overwrite to replace")
        if not (out / marker).is_file():
            raise FileExistsError(f"refusing to overwrite {str(out)!r}: it has no {marker}, so loka did not write it")


def _control(model: Any, result: UnlearningResult, seed: int) -> Any:
    if result.mask is not None:
        return bake(model, AblationMask.random_like(result.mask, seed=seed))
    return random_edit_like(model, result.model, seed=seed)


def compare(
    model: Any,
    *,
    forget: KnowledgeSet,
    retain: KnowledgeSet,
    holdout: KnowledgeSet,
    oracle: Any = None,
    oracle_seconds: float | None = None,
    passages: KnowledgeSet | None = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    control: bool = True,
    probe: bool = True,
    relearn: bool = True,
    attribute: bool = True,
    seed: int = 0,
    progress: bool = True,
    title: str = "loka comparison",
) -> Comparison:
    """Run ``methods`` on ``model`` (a TransformerBridge or a directory) and evaluate each.

    ``oracle`` (a model directory or model trained without ``forget``) is evaluated once and is
    every row's reference; ``oracle_seconds`` (its training time) goes in its row. ``options``
    maps a method name to its options for :func:`loka.unlearn`. ``control`` adds, for every
    method, the evaluation of a random edit of the same size (see the module docstring).
    ``attribute`` attaches forget-set attribution scores for the report's heatmaps.
    """
    unknown = [m for m in methods if m not in METHODS or m == "retrain"]
    if unknown:
        allowed = ", ".join(m for m in METHODS if m != "retrain")
        raise ValueError(f"unknown method {unknown[0]!r} for compare; choose from {allowed} (the oracle is oracle=)")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods repeat a name: {list(methods)}")
    options = dict(options or {})
    stray = sorted(set(options) - set(methods))
    if stray:
        raise ValueError(f"options given for {stray[0]!r}, which is not among the methods {list(methods)}")
    if isinstance(model, str | Path):
        model = load_model(model)
    sets = dict(forget=forget, retain=retain, holdout=holdout)
    common = dict(**sets, passages=passages, probe=probe, relearn=relearn, seed=seed)
    outcomes = []
    reference = None
    if oracle is not None:
        reference = evaluate(oracle, **common, label="oracle")
    outcomes.append(MethodOutcome("original", evaluate(model, **common, oracle=reference, label="original")))
    if reference is not None:
        outcomes.append(MethodOutcome("oracle", reference, oracle_seconds, {"oracle": str(oracle)}))
    scores = None
    if attribute:
        scores = attribution.attribute(
            model, forget, method="grad_x_act", baseline="corrupt", direction="denoise", positions="last",
            seed=seed, progress=progress,
        )  # fmt: skip
    for name in tqdm(methods, desc="compare: methods", disable=not progress, leave=False):
        logger.info("running %s", name)
        start = time.perf_counter()
        result = unlearn(model, forget, retain, method=name, seed=seed, progress=progress, **options.get(name, {}))
        seconds = time.perf_counter() - start
        random_control = _control(model, result, seed) if control else None
        evaluation = evaluate(result.model, **common, oracle=reference, control=random_control, label=name)
        outcomes.append(MethodOutcome(name, evaluation, seconds, dict(result.config), result.mask))
    counts = {name: len(ks) for name, ks in sets.items()}
    if passages is not None:
        counts["passages"] = len(passages)
    return Comparison(tuple(outcomes), scores, title, counts)


def compare_testbed(testbed: Any, **kwargs: Any) -> Comparison:
    """:func:`compare` on a :class:`loka.testbed.Testbed`: its original model, its forget / retain /
    holdout facts, the forget people's passages (verbatim extraction) and its oracle."""
    config = testbed.config
    kwargs.setdefault(
        "title",
        f"loka comparison on the {testbed.root.name.split('-')[0]} testbed (seed {config.world.seed}): "
        f"{len(testbed.forget)} forget / {len(testbed.retain)} retain / {len(testbed.holdout)} holdout facts",
    )
    return compare(
        load_model(testbed.model_dir),
        forget=testbed.forget,
        retain=testbed.retain,
        holdout=testbed.holdout,
        oracle=testbed.oracle_dir,
        oracle_seconds=testbed.info["training"]["oracle"]["seconds"],
        passages=testbed.passages_of("forget"),
        **kwargs,
    )
