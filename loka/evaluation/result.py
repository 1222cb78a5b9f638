"""What an evaluation found: :class:`UnlearningEvaluation`, with every check's number and its per-person detail."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from loka.base.records import from_jsonable
from loka.evaluation.attacks.extraction import Extraction
from loka.evaluation.attacks.logit_lens import LogitLens
from loka.evaluation.attacks.membership import privleak
from loka.evaluation.attacks.probe import Probe
from loka.evaluation.attacks.quantization import Quantization
from loka.evaluation.attacks.relearning import BenignRelearning, Relearning

__all__ = ["Detail", "UnlearningEvaluation", "forget_quality"]

Detail = tuple[tuple[str, ...], tuple[float, ...]]  # (person of each item, value of each item)
Quality = Literal["excellent", "good", "insufficient"]


def forget_quality(forget_accuracy: float, retain_accuracy: float) -> Quality:
    """The grade of a forget / retain accuracy pair: *excellent* when forget < 0.1 and retain > 0.9,
    *good* when < 0.3 and > 0.8, else *insufficient* (of one run, or of means over runs)."""
    if forget_accuracy < 0.1 and retain_accuracy > 0.9:
        return "excellent"
    if forget_accuracy < 0.3 and retain_accuracy > 0.8:
        return "good"
    return "insufficient"


# --- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnlearningEvaluation:
    """The shared verdict on one model. Accuracies are first-target-token top-1 unless named."""

    forget_accuracy: float
    retain_accuracy: float
    membership_inference_auc: float  # the LOSS attack's AUC, forget (members) vs holdout
    forget_exact_match: float
    retain_exact_match: float
    paraphrase_forget_accuracy: float | None
    mia_aucs: Mapping[str, float]
    extraction: Extraction | None = None
    relearning: Relearning | None = None
    probe: Probe | None = None
    oracle: UnlearningEvaluation | None = None  # the oracle's evaluation (the exact retrain)
    control: UnlearningEvaluation | None = None  # a random mask of the same size
    label: str = field(default="model", compare=False)
    unseen_wording_forget_accuracy: float | None = None  # a wording held out of the original's training
    quantization: Quantization | None = None  # forget / retain accuracy of 8- and 4-bit copies
    logit_lens: LogitLens | None = None  # forget answers read from each block's residual stream
    benign_relearning: BenignRelearning | None = None  # forget accuracy after a retain-only fine-tune
    in_context_forget_accuracy: float | None = None  # asked after the person's other forget facts
    lora_relearning: Relearning | None = None  # the relearning attack through LoRA adapters (held out)
    # per scored item: (whose it is, its value), e.g. "forget" -> first-token correct per forget fact;
    # what the intervals over people (loka.evaluation.intervals) are computed from
    details: Mapping[str, Detail] = field(default_factory=dict, compare=False, repr=False)

    @property
    def forget_quality(self) -> Quality:
        return forget_quality(self.forget_accuracy, self.retain_accuracy)

    @property
    def privacy_leakage(self) -> Literal["minimal", "moderate", "significant"]:
        deviation = abs(self.membership_inference_auc - 0.5)
        if deviation < 0.05:
            return "minimal"
        if deviation < 0.15:
            return "moderate"
        return "significant"

    @property
    def privleak(self) -> float | None:
        if self.oracle is None:
            return None
        return privleak(self.membership_inference_auc, self.oracle.membership_inference_auc)

    def verdict(self) -> str:
        """The evaluation in words: forgotten, suppressed, or leaking, and against what."""
        ref = self.oracle
        lines = [
            f"forget quality {self.forget_quality} (forget {self.forget_accuracy:.3f}, "
            f"retain {self.retain_accuracy:.3f}); privacy leakage {self.privacy_leakage} "
            f"(MIA AUC {self.membership_inference_auc:.3f})."
        ]
        if self.probe is not None:
            oracle_probe = ref.probe.forget_accuracy if ref is not None and ref.probe is not None else None
            bar = oracle_probe if oracle_probe is not None else self.probe.chance
            if self.forget_accuracy < 0.3 and self.probe.forget_accuracy > bar + 0.1:
                lines.append(
                    f"Suppression, not unlearning: the outputs forgot, but a linear probe still reads "
                    f"{self.probe.forget_accuracy:.0%} of the forget values from block {self.probe.layer}'s MLP input "
                    f"({'oracle' if oracle_probe is not None else 'chance'}: {bar:.0%})."
                )
        if self.relearning is not None and ref is not None and ref.relearning is not None:
            gap = self.relearning.after - ref.relearning.after
            if self.relearning.before < 0.3 and gap > 0.1:
                lines.append(
                    f"Relearnable: {self.relearning.steps} fine-tuning steps on half the forget facts bring the "
                    f"other half back to {self.relearning.after:.0%} (oracle: {ref.relearning.after:.0%})."
                )
        benign, oracle_benign = self.benign_relearning, ref.benign_relearning if ref is not None else None
        if benign is not None and oracle_benign is not None:
            if self.forget_accuracy < 0.3 and benign.after - oracle_benign.after > 0.1:
                lines.append(
                    f"Hidden, not removed: {benign.steps} fine-tuning steps on other people's facts alone (no forget "
                    f"fact) bring the forget answers back to {benign.after:.0%} (oracle: {oracle_benign.after:.0%})."
                )
        if self.quantization is not None and ref is not None and ref.quantization is not None:
            shared = [b for b in self.quantization.bits if b in ref.quantization.bits]
            gaps = {b: self.quantization.forget_accuracy(b) - ref.quantization.forget_accuracy(b) for b in shared}
            if self.forget_accuracy < 0.3 and gaps and max(gaps.values()) > 0.1:
                bits = max(gaps, key=lambda b: (gaps[b], -b))  # the width that restores most (fewer bits on a tie)
                point = self.quantization.at(bits)
                lines.append(
                    f"Quantization restores the forget answers: {bits}-bit forget {point.forget_accuracy:.0%} "
                    f"vs oracle {ref.quantization.forget_accuracy(bits):.0%} (unquantized {self.forget_accuracy:.0%}; "
                    f"{bits}-bit retain {point.retain_accuracy:.0%})."
                )
        if self.logit_lens is not None and ref is not None and ref.logit_lens is not None:
            lens, oracle_lens = self.logit_lens, ref.logit_lens
            if self.forget_accuracy < 0.3 and lens.best > oracle_lens.best + 0.1:
                lines.append(
                    f"Suppressed on the way out: the logit lens reads {lens.best:.0%} of the forget answers from the "
                    f"residual stream after block {lens.best_layer} (oracle: {oracle_lens.best:.0%})."
                )
        if ref is not None:
            lines.append(f"PrivLeak vs the oracle: {self.privleak:+.1f}%.")
        elif self.uncalibrated:
            lines.append(f"Not calibrated (no oracle), so they flag nothing: {', '.join(self.uncalibrated)}.")
        return " ".join(lines)

    @property
    def uncalibrated(self) -> tuple[str, ...]:
        """The checks that ran but have nothing to be calibrated against: without an oracle (a
        model that never saw the forget facts) no one knows what a clean model scores on them,
        so they flag nothing (the probe is read against chance only). Empty with an oracle."""
        if self.oracle is not None:
            return ()
        present = (("membership inference", True), ("relearning", self.relearning is not None),
                   ("benign relearning", self.benign_relearning is not None),
                   ("LoRA relearning", self.lora_relearning is not None),
                   ("quantization", self.quantization is not None), ("logit lens", self.logit_lens is not None),
                   ("probe", self.probe is not None))  # fmt: skip
        return tuple(name for name, ran in present if ran)

    def calibration_note(self) -> str | None:
        """One line saying which checks could not be calibrated and why; None with an oracle."""
        if not self.uncalibrated:
            return None
        return (
            f"not calibrated: {', '.join(self.uncalibrated)}. No oracle was given (a model trained without the "
            "forget facts), so nothing says what a clean model scores on these checks: their numbers are shown but "
            "flag nothing (privacy leakage is graded against AUC 0.5, which retrained models need not reach; the "
            "probe against chance). Give an oracle to calibrate them."
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            forget_quality=self.forget_quality,
            privacy_leakage=self.privacy_leakage,
            privleak=self.privleak,
            verdict=self.verdict(),
            uncalibrated=list(self.uncalibrated),
        )
        for name in ("oracle", "control"):
            sub = getattr(self, name)
            out[name] = sub.to_dict() if sub is not None else None
        if self.logit_lens is not None:
            out["logit_lens"].update(best=self.logit_lens.best, best_layer=self.logit_lens.best_layer)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UnlearningEvaluation:
        """The evaluation :meth:`to_dict` wrote (read back from its JSON; the derived keys are
        recomputed, not read)."""
        return from_jsonable(cls, data)

    def rows(self) -> list[tuple[str, float | None]]:
        rows: list[tuple[str, float | None]] = [
            ("forget accuracy", self.forget_accuracy),
            ("retain accuracy", self.retain_accuracy),
            ("forget exact match", self.forget_exact_match),
            ("retain exact match", self.retain_exact_match),
            ("paraphrase forget acc", self.paraphrase_forget_accuracy),
            ("unseen wording forget", self.unseen_wording_forget_accuracy),
            ("in-context forget acc", self.in_context_forget_accuracy),
            *[(f"MIA AUC ({name})", auc) for name, auc in self.mia_aucs.items()],
        ]
        if self.extraction is not None:
            rows += [
                ("extraction exact match", self.extraction.exact_match),
                ("extraction ROUGE-L", self.extraction.rouge_l),
            ]
        if self.relearning is not None:
            rows += [("relearn: before", self.relearning.before), ("relearn: after", self.relearning.after)]
        if self.benign_relearning is not None:
            rows += [("benign relearn: after", self.benign_relearning.after)]
        if self.lora_relearning is not None:
            rows += [("LoRA relearn: after", self.lora_relearning.after)]
        if self.probe is not None:
            rows += [("probe forget accuracy", self.probe.forget_accuracy)]
        if self.quantization is not None:
            for point in self.quantization.points:
                rows += [(f"quant {point.bits}-bit forget", point.forget_accuracy),
                         (f"quant {point.bits}-bit retain", point.retain_accuracy)]  # fmt: skip
        if self.logit_lens is not None:
            rows += [("logit lens forget (best)", self.logit_lens.best)]
        return rows

    def table(self) -> str:
        """A text table of this model's numbers beside the oracle's and the random control's."""
        columns = [("model", self)] + [(n, e) for n, e in (("oracle", self.oracle), ("control", self.control)) if e]
        values = [dict(e.rows()) for _, e in columns]
        header = f"{'':<24}" + "".join(f"{name:>10}" for name, _ in columns)
        lines = [header, "-" * len(header)]
        for name, _ in self.rows():
            cells = "".join(f"{v[name]:>10.3f}" if v.get(name) is not None else f"{'-':>10}" for v in values)
            lines.append(f"{name:<24}{cells}")
        lines.append(f"forget quality: {self.forget_quality}; privacy leakage: {self.privacy_leakage}")
        note = self.calibration_note()
        if note is not None:
            lines.append(note)
        return "\n".join(lines)
