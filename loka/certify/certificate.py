"""The certificate: every check with its verdict, the provenance that names what was checked, and
how it is written (``certificate.json``, and ``certificate.html`` that renders offline).

What it says is behavioural evidence at a stated power, never proof: "no residual knowledge
detected under these attacks, at this many people" (``notes/erasure-evidence.md`` §3).
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from loka.base.files import check_output, json_default
from loka.certify.calibration import calibration, describe
from loka.certify.result import Check, Null
from loka.certify.suite import Suite

__all__ = ["Certificate", "CERTIFICATE_FORMAT", "JSON_FILE", "HTML_FILE"]

CERTIFICATE_FORMAT = "loka-certificate"
SCHEMA_VERSION = 1
JSON_FILE = "certificate.json"
HTML_FILE = "certificate.html"
Status = Literal["PASS", "FAIL", "INCONCLUSIVE"]
_COLOURS = {"PASS": "#1a9850", "FAIL": "#d73027", "INCONCLUSIVE": "#fdae61", None: "#999999"}


@dataclass(frozen=True)
class Certificate:
    """What ``loka certify`` found. ``checks`` hold every check (held-out, dev, info, skipped);
    ``blind`` the model-free comparability check; ``reference_valid`` is False when the blind
    check FAILed (then no check PASSes). ``provenance`` holds the hashes of both models and the
    tokenizer, the salted hashes of the forget items (and the salt), the reference's hash, the
    suite's hash, the method and its options when known and the toolkit version. ``status`` is
    the overall verdict of the held-out checks: FAIL if any FAILs, PASS if all PASS (and the
    reference is valid), else INCONCLUSIVE."""

    checks: tuple[Check, ...]
    suite: Suite
    provenance: dict[str, Any] = field(default_factory=dict)
    blind: Check | None = None
    reference_valid: bool = True
    seconds: float = 0.0

    @property
    def held_out(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.counts)

    @property
    def dev(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.role == "dev" and c.skipped is None)

    @property
    def status(self) -> Status:
        verdicts = [c.verdict for c in self.held_out]
        if "FAIL" in verdicts:
            return "FAIL"
        if verdicts and self.reference_valid and all(v == "PASS" for v in verdicts):
            return "PASS"
        return "INCONCLUSIVE"

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def check(self, name: str) -> Check:
        for c in (*self.checks, *([self.blind] if self.blind is not None else [])):
            if c.name == name:
                return c
        raise KeyError(f"no check {name!r}; checks are {[c.name for c in self.checks]}")

    # --- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CERTIFICATE_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "passed": self.passed,
            "reference_valid": self.reference_valid,
            "statement": self.statement(),
            "suite": {**self.suite.to_dict(), "sha256": self.suite.sha256},
            "provenance": self.provenance,
            "blind": None if self.blind is None else self.blind.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "coverage": self.coverage,
            "seconds": round(self.seconds, 2),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Certificate:
        def check(d: dict[str, Any]) -> Check:
            d = {k: v for k, v in d.items() if k != "deviation"}
            d["null"] = None if d.get("null") is None else Null(**d["null"])
            d["interval"] = None if d.get("interval") is None else tuple(d["interval"])
            return Check(**d)

        suite = {k: v for k, v in data["suite"].items() if k != "sha256"}
        suite["relearn_lrs"] = tuple(suite["relearn_lrs"])
        suite["quantization_schemes"] = tuple(tuple(s) for s in suite["quantization_schemes"])
        return cls(
            checks=tuple(check(c) for c in data["checks"]), suite=Suite(**suite), provenance=data["provenance"],
            blind=None if data.get("blind") is None else check(data["blind"]),
            reference_valid=data["reference_valid"], seconds=data.get("seconds", 0.0),
        )  # fmt: skip

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write ``certificate.json`` and ``certificate.html`` into ``directory`` (made if needed)."""
        out = check_output(directory, overwrite=overwrite, marker=JSON_FILE, what="certificate")
        out.mkdir(parents=True, exist_ok=True)
        for name, text in ((JSON_FILE, self.to_json()), (HTML_FILE, self.html())):
            tmp = out / f".{name}.tmp"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out / name)
        return out

    # --- reading ----------------------------------------------------------------------------------
    def statement(self) -> str:
        people = [c for c in self.held_out if not c.name.startswith("collateral.")]  # collateral counts retain people
        n_ref = max((c.n_reference for c in people), default=0)
        n_f = max((c.n_forget for c in people), default=0)
        if not self.reference_valid:
            return ("the reference set is not comparable with the forget set (a model-free classifier tells them "
                    "apart), so no check can pass")  # fmt: skip
        if self.status == "PASS":
            return (f"no residual knowledge detected under {len(self.held_out)} held-out attacks, comparing "
                    f"{n_f} forget people with {n_ref} never-seen reference people, each within its stated PASS "
                    "margin; evidence, not proof")  # fmt: skip
        if self.status == "FAIL":
            failed = [c.name for c in self.held_out if c.verdict == "FAIL"]
            residual = [n for n in failed if not n.startswith("collateral.")]
            parts = [f"residual knowledge detected: {', '.join(residual)}"] if residual else []
            if len(residual) < len(failed):
                parts.append("the edit damaged the retain facts")
            return "; ".join(parts)
        return "undecided: some held-out checks are too uncertain at this number of people to pass or fail"

    @property
    def coverage(self) -> dict[str, list[str]]:
        """Which attack families of the EDPB's list (Opinion 28/2024: attribute and membership
        inference, exfiltration, regurgitation, model inversion, reconstruction) the measured
        checks cover, by check name; a family with no check is listed with an empty list."""
        measured = [c.name for c in self.checks if c.skipped is None]
        families = {
            "membership inference": ("membership.",),
            "attribute inference": ("direct.", "readout.", "quantization."),
            "recovery by fine-tuning": ("relearning.",),
            "regurgitation of training data": ("extraction.",),
            "model inversion": (),
            "reconstruction": (),
        }
        return {family: [n for n in measured if n.startswith(prefixes)] if prefixes else []
                for family, prefixes in families.items()}  # fmt: skip

    def table(self) -> str:
        """A plain-text table of the checks (what the command line prints)."""
        lines = [f"{'check':<34}{'role':<10}{'forget':>8}{'ref':>8}{'stat':>8}{'null':>8}  {'interval':<17}"
                 f"{'margin':>10}{'p(Holm)':>9}  verdict"]  # fmt: skip
        lines.append("-" * len(lines[0]))
        for c in (*self.checks, *([self.blind] if self.blind is not None else [])):
            if c.skipped is not None:
                lines.append(f"{c.name:<34}{c.role:<10}skipped: {c.skipped}")
                continue

            def num(x: float | None) -> str:
                return "" if x is None else f"{x:.3f}"

            iv = "" if c.interval is None else f"[{c.interval[0]:.3f}, {c.interval[1]:.3f}]"
            p = c.p_holm if c.p_holm is not None else c.p_value
            lines.append(f"{c.name:<34}{c.role:<10}{num(c.forget_value):>8}{num(c.reference_value):>8}"
                         f"{num(c.observed):>8}{num(c.center):>8}  {iv:<17}{_margins(c):>10}{num(p):>9}  "
                         f"{c.verdict or ''}")  # fmt: skip
        lines.append(f"overall (held-out checks): {self.status} - {self.statement()}")
        return "\n".join(lines)

    def plot(self) -> Any:
        """A plotly figure: each measured check's deviation from its null centre with its interval,
        the PASS margin as a grey band, coloured by verdict."""
        import plotly.graph_objects as go

        shown = [c for c in (*self.checks, *([self.blind] if self.blind else [])) if c.skipped is None and c.interval]
        figure = go.Figure()
        for verdict in ("PASS", "FAIL", "INCONCLUSIVE", None):
            group = [c for c in shown if c.verdict == verdict]
            if not group:
                continue
            figure.add_trace(go.Scatter(
                x=[c.deviation for c in group], y=[f"{c.name} ({c.role})" for c in group], mode="markers",
                name=verdict or "not judged", marker={"color": _COLOURS[verdict], "size": 10},
                error_x={"type": "data", "symmetric": False,
                         "array": [c.interval[1] - c.observed for c in group],  # type: ignore[index,operator]
                         "arrayminus": [c.observed - c.interval[0] for c in group]},  # type: ignore[index,operator]
                customdata=[[c.equivalence_margin, c.p_holm if c.p_holm is not None else c.p_value] for c in group],
                hovertemplate="%{y}<br>deviation %{x:.3f}<br>margin ±%{customdata[0]}<br>p %{customdata[1]:.3g}",
            ))  # fmt: skip
        for i, c in enumerate(shown):
            low = -c.equivalence_margin if c.sided == "two-sided" else -1.0
            figure.add_shape(type="rect", x0=low, x1=c.equivalence_margin, y0=i - 0.4, y1=i + 0.4,
                             fillcolor="lightgrey", opacity=0.4, line_width=0, layer="below", yref="y")  # fmt: skip
        figure.update_layout(
            title=f"loka certificate: {self.status}", xaxis_title="forget minus null centre (accuracy or AUC)",
            yaxis={"categoryorder": "array", "categoryarray": [f"{c.name} ({c.role})" for c in shown]},
            height=220 + 28 * len(shown), template="plotly_white",
        )  # fmt: skip
        return figure

    def html(self) -> str:
        """A self-contained page (plotly's JavaScript inlined: it renders with no network)."""
        e = html.escape
        rows = []
        for c in (*self.checks, *([self.blind] if self.blind is not None else [])):
            if c.skipped is not None:
                rows.append(f"<tr><td>{e(c.name)}</td><td>{c.role}</td><td colspan=9>skipped: {e(c.skipped)}</td></tr>")
                continue
            iv = "" if c.interval is None else f"[{c.interval[0]:.3f}, {c.interval[1]:.3f}]"
            p = c.p_holm if c.p_holm is not None else c.p_value
            colour = _COLOURS[c.verdict]
            sign = "&plusmn;" if c.sided == "two-sided" else "+"
            margin = f"{sign}{c.margin:g}" + ("" if c.pass_margin in (None, c.margin) else
                                              f" (PASS within {sign}{c.pass_margin:.2f})")  # fmt: skip
            about = e(f"{c.description}; {c.test}" + (f"; {c.note}" if c.note else ""), quote=True)
            rows.append(
                f"<tr><td title='{about}'>{e(c.name)}</td><td>{c.role}</td>"
                f"<td>{_f(c.forget_value)}</td><td>{_f(c.reference_value)}</td><td>{_f(c.observed)}</td>"
                f"<td>{_f(c.center)}</td><td>{iv}</td><td>{margin}</td><td>{_f(p)}</td>"
                f"<td style='color:{colour};font-weight:bold'>{c.verdict or ''}</td><td>{e(describe(c.name))}</td></tr>"
            )
        prov = e(json.dumps(self.provenance, indent=1, default=json_default))
        figure = self.plot().to_html(full_html=False, include_plotlyjs=True)
        return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>loka certificate: {self.status}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}</style></head>
<body><h1 style="color:{_COLOURS[self.status]}">{self.status}</h1><p>{e(self.statement())}</p>
<p>suite <b>{self.suite.name}</b> (sha256 {self.suite.sha256[:16]}...), alpha {self.suite.alpha} (Holm over
the held-out and dev checks). Only held-out checks count: a dev check is one the method could have trained
against, an info check is never counted. Each null is measured between random halves of the reference
people; each interval ({self.suite.confidence:.0%}) resamples people. A check FAILs when a deviation from the null's
centre beyond its margin (fixed in the suite) is shown; it PASSes when its interval lies within the PASS margin: the
margin, widened to what {self.suite.power:.0%} of clean models reach at this many people, at most
&plusmn;{self.suite.margin_max:g}. A check that BEFORE passes too is information only.
Hover a check's name for what it measures.</p>
<table><tr><th>check</th><th>role</th><th>forget</th><th>reference</th><th>statistic</th><th>null centre</th>
<th>interval</th><th>margin</th><th>p (Holm)</th><th>verdict</th><th>agrees with an oracle</th></tr>
{chr(10).join(rows)}</table>
<p>{e(_calibration_note())}</p>
{figure}
<h2>Provenance</h2><pre>{prov}</pre></body></html>
"""


def _margins(c: Check) -> str:
    """The FAIL margin, and the PASS margin after it when they differ ("0.15/0.23")."""
    if c.pass_margin is None or c.pass_margin == c.margin:
        return f"{c.margin:g}"
    return f"{c.margin:g}/{c.pass_margin:.2f}"


def _calibration_note() -> str:
    data = calibration()
    if data is None:
        return "No calibration of the checks is shipped with this install."
    setup, overall = data.get("setup", {}), data.get("overall", {})
    fp = overall.get("false_pass_rate")
    return (
        "'agrees with an oracle': on loka's default testbed (worlds "
        f"{', '.join(str(w) for w in setup.get('worlds', []))}; seeds {setup.get('seeds')}), how often this check's "
        "verdict equalled the one read from the exact-retrain oracle (INCONCLUSIVE never agrees), over the "
        "original, the oracle, every method, an output-only suppression and a loss-matching edit, and how often it "
        f"PASSed where knowledge remained. Overall verdict: {overall.get('agreement', 0):.0%} agreement"
        + ("" if fp is None else f", false PASS {fp:.0%}")
        + ". It describes the checks on that testbed, not this model."
    )


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"
