"""TOFU's report: the table (text and HTML), the utility-vs-forget-quality figure, and its files."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loka.base.errors import UsageError
from loka.benchmarks.tofu import metrics as tm
from loka.benchmarks.tofu.scoring import TofuScores, jsonable
from loka.comparison.report import figure_html, html_page

__all__ = ["TofuReport"]


_COLUMNS = (  # (title, attribute, format of the value)
    ("forget quality", "forget_quality", "{:.2e}"),
    ("utility", "model_utility", "{:.3f}"),
    ("forget R-L", "forget_rouge_l", "{:.3f}"),
    ("forget prob", "forget_probability", "{:.3f}"),
    ("forget TR", "forget_truth_ratio", "{:.3f}"),
    ("MIA AUC", "mia_auc", "{:.3f}"),
    ("retain R-L", "retain_rouge_l", "{:.3f}"),
)
_SPREAD_COLUMNS = (_COLUMNS[0], _COLUMNS[1], _COLUMNS[5])  # forget quality, utility, MIA AUC
_COMPUTE_TITLES = ("steps", "fwd tokens", "seconds")
_NOTES = (
    "forget quality: KS-test p-value, forget truth ratios vs the retain model's (higher = closer to it)\n"
    "utility: hmean of prob., ROUGE-L and truth ratio on retain_eval authors (no method trained on them), "
    "real authors, world facts\n"
    "R-L: ROUGE-L recall of the greedy answer; TR: truth ratio; MIA: LOSS on answers, forget vs non-member "
    "holdout authors (no method was given them)\n"
    "steps, fwd tokens, seconds: each method's compute under the shared budget (tokens through forward passes, "
    "checks included); seconds of training for the original and the retain model"
)


def _tokens(n: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def _cells(m: TofuScores) -> list[str]:
    """The table's cells of one row: model, seed, the TOFU columns, then compute."""
    values = ["-" if getattr(m, key) is None else fmt.format(getattr(m, key)) for _, key, fmt in _COLUMNS]
    compute = m.compute or {}
    return [
        m.name,
        "-" if m.seed is None else str(m.seed),
        *values,
        str(int(compute["steps"])) if "steps" in compute else "-",
        _tokens(compute["forward_tokens"]) if "forward_tokens" in compute else "-",
        "-" if m.seconds is None else f"{m.seconds:.1f}",
    ]


def _spread(values: Sequence[float], fmt: str) -> str:
    """``mean [min, max]`` of the values, each written with ``fmt``."""
    return f"{fmt.format(float(np.mean(values)))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) + 2 for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return cells[0].ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))

    return [line(header), "-" * sum(widths), *(line(r) for r in rows)]


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass(frozen=True)
class TofuReport:
    """TOFU's table for the original model, the retain model and each method at each seed.

    ``models`` are in row order (original, retain, then each method's seeds); ``seeds`` is how many
    seeds each method ran with; ``info`` holds the config, the author split, the budget, the cache
    directory, training logs and wall times. ``report["loka"]`` is a method's row when it ran with
    one seed; ``report["loka", 1]`` the row of seed 1; :meth:`runs` every row of a method.
    """

    split: str
    size: str
    n_retain_authors: int
    seed: int
    models: tuple[TofuScores, ...]
    info: Mapping[str, Any] = field(default_factory=dict)
    seeds: int = 1

    def runs(self, name: str) -> tuple[TofuScores, ...]:
        """Every row of model ``name`` (one per seed for a method)."""
        rows = tuple(m for m in self.models if m.name == name)
        if not rows:
            raise KeyError(f"no model {name!r} in the report; models are {list(self.names)}")
        return rows

    def __getitem__(self, key: str | tuple[str, int]) -> TofuScores:
        if isinstance(key, tuple):
            name, seed = key
            for m in self.runs(name):
                if m.seed == seed:
                    return m
            raise KeyError(f"{name!r} has no row for seed {seed}; its seeds are {[m.seed for m in self.runs(name)]}")
        rows = self.runs(key)
        if len(rows) > 1:
            raise KeyError(f"{key!r} ran with {len(rows)} seeds; ask for report[{key!r}, seed] or report.runs({key!r})")
        return rows[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.name for m in self.models))

    def spread(self, name: str, attribute: str) -> tuple[float, float, float]:
        """(mean, min, max) of one column over the rows (seeds) of ``name``."""
        values = [getattr(m, attribute) for m in self.runs(name)]
        if any(v is None for v in values):
            raise UsageError(f"{name!r} has no {attribute}")
        return float(np.mean(values)), float(min(values)), float(max(values))

    def _header(self) -> str:
        authors = self.info.get("authors", {})
        counts = {k: len(v) for k, v in authors.items()}
        split = (
            f"; retain authors {counts['retain_train']} train / {counts['retain_validation']} validation / "
            f"{counts['retain_eval']} eval; holdout authors {counts['reference']} reference / "
            f"{counts['nonmembers']} non-member"
            if counts
            else ""
        )
        seeds = self.info.get("method_seeds", [self.seed])
        budget = self.info.get("budget")
        line = (
            f"TOFU {self.split} ({self.size}: {len(self.info.get('forget_authors', [])) or '?'} forget authors"
            f"{split}; method seeds {', '.join(map(str, seeds))})"
        )
        if budget:
            line += (
                f"\nbudget for every method: stop at forget accuracy <= {budget['target_forget_accuracy']:.3g}"
                + (
                    f" ({self.info['relative_target']:g} x the original's {self.info['original_forget_accuracy']:.3f})"
                    if self.info.get("relative_target") is not None
                    else ""
                )
                + " "
                f"(checked every {budget['check_every']} steps), at most {budget['max_steps']} steps"
            )
        return line

    def _spread_rows(self) -> list[list[str]]:
        rows = []
        for name in self.names:
            runs = self.runs(name)
            if len(runs) < 2:
                continue
            rows.append([
                name, str(len(runs)),
                *(_spread([getattr(m, key) for m in runs], fmt) for _, key, fmt in _SPREAD_COLUMNS),
            ])  # fmt: skip
        return rows

    def table(self) -> str:
        """TOFU's table as text: one row per model and seed with each method's compute; with more
        than one seed, each method's mean [min, max] over its seeds."""
        header = ["model", "seed", *(t for t, _, _ in _COLUMNS), *_COMPUTE_TITLES]
        lines = [self._header(), *_text_table(header, [_cells(m) for m in self.models])]
        spread = self._spread_rows()
        if spread:
            lines += ["", "over each method's seeds: mean [min, max] (run-to-run spread, not a confidence interval)"]
            lines += _text_table(["model", "seeds", *(t for t, _, _ in _SPREAD_COLUMNS)], spread)
        lines.append(_NOTES)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "TOFU (Maini et al. 2024), scaled to a CPU",
            "split": self.split,
            "size": self.size,
            "n_retain_authors": self.n_retain_authors,
            "seed": self.seed,
            "seeds": self.seeds,
            "models": [m.to_dict() for m in self.models],
            "info": jsonable(self.info),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TofuReport:
        return cls(
            split=data["split"],
            size=data["size"],
            n_retain_authors=data["n_retain_authors"],
            seed=data["seed"],
            models=tuple(TofuScores.from_dict(m) for m in data["models"]),
            info=data.get("info", {}),
            seeds=data.get("seeds", 1),
        )

    def plot(self) -> Any:
        """TOFU's figure: model utility against forget quality (log scale), one point per model
        and seed, one colour per model."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for name in self.names:
            runs = [m for m in self.runs(name) if m.forget_quality is not None]
            if not runs:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[max(m.forget_quality, 1e-300) for m in runs],  # type: ignore[arg-type]
                    y=[m.model_utility for m in runs],
                    mode="markers+text",
                    name=name,
                    text=[name if m.seed is None else f"{name} (seed {m.seed})" for m in runs],
                    textposition="top center",
                    marker={"size": 12},
                )
            )
        fig.update_layout(
            title=f"TOFU {self.split}: model utility vs forget quality",
            xaxis={"title": "forget quality (KS-test p-value, log scale)", "type": "log"},
            yaxis={"title": "model utility"},
            template="plotly_white",
        )
        return fig

    def html(self) -> str:
        """A self-contained HTML report: the tables, the figure (plotly inlined) and the run."""
        header = ["model", "seed", *(t for t, _, _ in _COLUMNS), *_COMPUTE_TITLES]
        main = _html_table(header, [_cells(m) for m in self.models])
        spread = self._spread_rows()
        spread_html = (
            "<h2>Over each method's seeds: mean [min, max]</h2><p>The run-to-run spread of a method, not a "
            "confidence interval.</p>" + _html_table(["model", "seeds", *(t for t, _, _ in _SPREAD_COLUMNS)], spread)
            if spread
            else ""
        )
        utility_names = [f"{s}/{k}" for s in tm.UTILITY_SETS for k in tm.UTILITY_METRICS]
        parts = _html_table(
            ["model", "seed", *utility_names],
            [[m.name, "-" if m.seed is None else str(m.seed), *(f"{m.utility[n]:.3f}" for n in utility_names)]
             for m in self.models],
        )  # fmt: skip
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in _NOTES.splitlines())
        title = f"TOFU {self.split} ({self.size}, {self.n_retain_authors} retain authors)"
        body = (
            f"<pre>{html.escape(self._header())}</pre>{main}<ul>{notes}</ul>{spread_html}"
            f"<h2>Model utility, its nine parts</h2>{parts}"
            f"{figure_html(self.plot())}"
            f"<h2>Run</h2><pre>{html.escape(json.dumps(jsonable(self.info), indent=1))}</pre>"
        )
        return html_page(title, body)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tofu.json`` and ``tofu.html`` into ``directory`` (created if needed); returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tofu.json").write_text(json.dumps(self.to_dict(), indent=1))
        (out / "tofu.html").write_text(self.html(), encoding="utf-8")
        return out
