"""``loka.certify`` end to end on the tiny testbed, and every bad input refused before a model loads."""

from __future__ import annotations

import json
import shutil

import pytest

from loka.base.errors import UsageError
from loka.certify import Certificate, Check, certify, check_inputs, suite
from loka.certify.checks.blind import blind_check
from loka.data import KnowledgeSet

# the quick suite with fewer splits and resamples: the same tests, a third of the time
FAST = suite("quick", n_splits=100, n_resamples=300, blind_splits=5)


@pytest.fixture(scope="module")
def original(tiny_testbed):
    tb = tiny_testbed
    return certify(tb.model_dir, tb.model_dir, tb.forget, tb.holdout, suite=FAST, salt="fixed")


def test_the_original_fails_the_held_out_direct_answer_check(original):
    answers = original.check("direct.answers")
    assert answers.role == "held-out" and answers.verdict == "FAIL"
    assert answers.forget_value == 1.0 and answers.reference_value < 0.2  # it knows them; strangers are guessed
    assert original.check("membership.loss").verdict == "FAIL"
    assert original.status == "FAIL" and not original.passed
    # BEFORE is AFTER: the ratio attack sees nothing (it is information only)
    assert original.check("membership.ratio_to_before").observed == 0.5
    assert original.check("membership.ratio_to_before").role == "info"
    assert original.check("collateral.retain").skipped == "no --retain given"
    assert original.reference_valid  # the testbed's holdout people are comparable with the forget people


def test_a_check_the_original_passes_is_never_counted(original):
    """BEFORE holds the facts: a check it PASSes cannot see them, so it is information only (here
    BEFORE is AFTER, so every PASS of a fact check is one)."""
    uninformative = [c for c in original.checks if "uninformative" in c.note]
    assert all(c.role == "info" and c.verdict == "PASS" for c in uninformative)
    assert not [c.name for c in original.held_out if c.verdict == "PASS"]
    for c in original.checks:  # the margin a PASS is judged at is never below the FAIL margin, nor beyond the cap
        if c.skipped is None and c.pass_margin is not None:
            assert c.margin <= c.pass_margin <= max(c.margin, FAST.margin_max)


def test_the_oracle_does_not_fail(tiny_testbed):
    tb = tiny_testbed
    cert = certify(tb.model_dir, tb.oracle_dir, tb.forget, tb.holdout, tb.retain, suite=FAST, salt="fixed")
    assert not [c.name for c in cert.held_out if c.verdict == "FAIL"]
    assert cert.status in ("PASS", "INCONCLUSIVE")
    assert cert.check("collateral.retain").verdict == "PASS"  # the oracle keeps every retain fact
    # the ratio to BEFORE finds the forget set in any real erasure: recorded, never counted
    ratio = cert.check("membership.ratio_to_before")
    assert ratio.verdict == "FAIL" and not ratio.counts


def test_provenance_and_files(original, tiny_testbed, tmp_path):
    prov = original.provenance
    assert prov["before"]["model"] == prov["after"]["model"] and "model.safetensors" in prov["after"]["model"]
    assert "tokenizer.json" in prov["after"]["tokenizer"]
    assert prov["forget"]["salt"] == "fixed" and len(prov["forget"]["facts"]) == len(tiny_testbed.forget)
    assert tiny_testbed.forget[0].subject not in json.dumps(prov)  # salted hashes only
    assert prov["suite_sha256"] == FAST.sha256 and prov["method"]["name"] is None
    out = original.save(tmp_path / "cert")
    data = json.loads((out / "certificate.json").read_text())
    assert data["status"] == "FAIL" and data["suite"]["sha256"] == FAST.sha256
    assert Certificate.from_dict(data).to_dict() == original.to_dict()
    page = (out / "certificate.html").read_text()
    assert "<script src=" not in page and "Plotly.newPlot" in page  # plotly inlined: renders offline
    assert "agrees with an oracle" in page  # the shipped calibration, per check
    with pytest.raises(FileExistsError):
        original.save(out)
    original.save(out, overwrite=True)


def test_a_method_that_trained_against_a_check_does_not_count_it(tiny_testbed, tmp_path):
    after = tmp_path / "after"
    shutil.copytree(tiny_testbed.model_dir, after)
    (after / "loka_edit.json").write_text(json.dumps({"method": "loka", "settings": {"size": 0.05}}))
    cert = certify(tiny_testbed.model_dir, after, tiny_testbed.forget, tiny_testbed.holdout, suite=FAST)
    assert cert.check("direct.answers").role == "dev" and not cert.check("direct.answers").counts
    assert cert.check("membership.loss").role == "dev"
    assert cert.check("direct.other_wordings").role == "held-out"
    assert cert.provenance["method"] == {"name": "loka", "settings": {"size": 0.05}, "source": "loka_edit.json"}
    assert cert.status == "FAIL"  # the held-out checks still find the forget people


def test_a_reference_of_another_kind_is_invalid():
    cities = ("Lima", "Oslo", "Rome", "Cairo")

    def people(first: int) -> KnowledgeSet:
        return KnowledgeSet.from_records(
            [
                {
                    "prompt": f"Na{i} Sur{i} was born in",
                    "target": cities[(i + r) % 4],
                    "subject": f"Na{i} Sur{i}",
                    "id": f"{i}/{r}",
                }
                for i in range(first, first + 8)
                for r in range(2)
            ]  # fmt: skip
        )

    forget, same = people(10), people(30)  # names of one length: the length feature cannot tell them apart
    other = KnowledgeSet.from_records(
        [
            {
                "prompt": f"The favourite colour of Q{i} Ma is, as everybody knows,",
                "target": "a deep shade of blue",
                "subject": f"Q{i} Ma",
            }
            for i in range(8)
        ]  # fmt: skip
    )
    bad = blind_check(forget, other, suite("quick", blind_splits=5))
    assert bad.observed == 1.0 and bad.p_value < 0.05
    good = blind_check(forget, same, suite("quick", blind_splits=5))
    assert good.observed < 0.85
    passing = Check(name="x", description="", observed=0.0, interval=(0.0, 0.0), verdict="PASS")
    assert Certificate((passing,), FAST).status == "PASS"
    assert Certificate((passing,), FAST, reference_valid=False).status == "INCONCLUSIVE"


def test_bad_inputs_are_refused_before_a_model_loads(tiny_testbed, tmp_path):
    tb = tiny_testbed
    with pytest.raises(UsageError, match="needs a reference set"):
        check_inputs(tb.model_dir, tb.oracle_dir, tb.forget, None)
    with pytest.raises(UsageError, match="forget and reference overlap .person"):
        check_inputs(tb.model_dir, tb.oracle_dir, tb.forget, tb.forget)
    same_text = KnowledgeSet.from_records([{"prompt": tb.forget[0].prompt, "target": "x", "subject": "Someone Else"}])
    with pytest.raises(UsageError, match="forget and reference overlap .prompt"):
        check_inputs(tb.model_dir, tb.oracle_dir, tb.forget, same_text)
    with pytest.raises(UsageError, match="reference and retain overlap"):
        check_inputs(tb.model_dir, tb.oracle_dir, tb.forget, tb.holdout, tb.holdout)
    with pytest.raises(FileNotFoundError):
        check_inputs(tb.model_dir, tmp_path / "missing", tb.forget, tb.holdout)
    with pytest.raises(FileNotFoundError):
        check_inputs(tb.model_dir, tb.oracle_dir, tmp_path / "missing.jsonl", tb.holdout)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="has no facts"):
        check_inputs(tb.model_dir, tb.oracle_dir, tb.forget, tmp_path / "empty.jsonl")
    bigger = tmp_path / "bigger"
    bigger.mkdir()
    config = json.loads((tb.model_dir / "config.json").read_text())
    (bigger / "config.json").write_text(json.dumps({**config, "n_layer": 4}))
    with pytest.raises(UsageError, match="different architectures .n_layer: 2 vs 4"):
        check_inputs(tb.model_dir, bigger, tb.forget, tb.holdout)
    three = KnowledgeSet(tuple(f for f in tb.holdout if f.subject in tb.holdout.subjects[:3]))
    with pytest.raises(UsageError, match="the reference holds 3 people .* at least 4"):
        check_inputs(tb.model_dir, tb.oracle_dir, tb.forget, three)
    with pytest.raises(UsageError, match="unknown attack suite"):
        certify(tb.model_dir, tb.oracle_dir, tb.forget, tb.holdout, attacks="everything")  # type: ignore[arg-type]


def test_relearning_quantization_and_extraction_find_the_original_and_not_the_oracle(tiny_testbed):
    from loka.certify.checks.extraction import extraction_check
    from loka.certify.checks.quantization import quantization_checks
    from loka.certify.checks.relearning import relearning_checks
    from loka.certify.statistics import decide
    from loka.models import load_model

    tb = tiny_testbed
    full = suite("full", n_splits=100, n_resamples=300, relearn_lrs=(6e-4,))
    verdicts = {}
    for name, directory in (("original", tb.model_dir), ("oracle", tb.oracle_dir)):
        model = load_model(directory)
        tok = model.tokenizer
        checks = relearning_checks(model, tok, tb.forget, tb.holdout, tb.retain, full)
        checks += quantization_checks(model, tok, tb.forget, tb.holdout, full)
        checks.append(extraction_check(model, tok, tb.passages_of("forget"), tb.passages_of("holdout"), full))
        verdicts[name] = {c.name: c.verdict for c in decide(checks, alpha=full.alpha)}
    names = ["relearning.forget_half", "relearning.retain_only", "extraction.verbatim"]
    names += [f"quantization.{b}bit.{what}" for b in (8, 4) for what in ("answers", "loss")]
    assert set(verdicts["original"]) == set(names)
    assert all(verdicts["original"][n] == "FAIL" for n in names), verdicts["original"]
    assert "FAIL" not in verdicts["oracle"].values(), verdicts["oracle"]


def test_loaded_models_are_named_by_their_weights(tiny_testbed):
    from loka.models import fingerprint, load_model

    model = load_model(tiny_testbed.model_dir)
    cert = certify(model, model, tiny_testbed.forget, tiny_testbed.holdout, suite=FAST)
    assert cert.provenance["after"] == {"weights_sha256": fingerprint(model).weights_sha256}
    assert cert.check("direct.answers").verdict == "FAIL"


def test_passages_are_told_from_facts(tiny_testbed):
    from loka.certify.checks import Sets

    tb = tiny_testbed
    sets = Sets.of(tb.forget + tb.passages_of("forget"), tb.holdout + tb.passages_of("holdout"), tb.retain)
    assert sets.forget.ids == tb.forget.ids and sets.reference.ids == tb.holdout.ids
    assert sets.forget_passages.ids == tb.passages_of("forget").ids
    assert sets.reference_passages.ids == tb.passages_of("holdout").ids
    assert Sets.of(tb.forget, tb.holdout, None).forget_passages is None


def test_statement_and_coverage_from_constructed_checks():
    def judged(name: str, verdict: str) -> Check:
        return Check(name=name, description="", observed=0.0, interval=(0.0, 0.0), verdict=verdict)  # type: ignore[arg-type]

    damaged = Certificate((judged("direct.answers", "PASS"), judged("collateral.retain", "FAIL")), FAST)
    assert damaged.status == "FAIL" and damaged.statement() == "the edit damaged the retain facts"
    leaky = Certificate((judged("membership.loss", "FAIL"), Check.skip("extraction.verbatim", "", "no passages")), FAST)
    assert leaky.statement() == "residual knowledge detected: membership.loss"
    assert leaky.coverage["membership inference"] == ["membership.loss"]
    assert leaky.coverage["regurgitation of training data"] == [] and leaky.coverage["model inversion"] == []
    dev_fail = Certificate((judged("direct.answers", "FAIL").with_(role="dev"), judged("readout.probe", "PASS")), FAST)
    assert dev_fail.status == "PASS"  # a dev check never decides
