"""``certify``: check that an edited model (AFTER) holds no more about the forget set than about
never-seen reference people, and write down what was checked.

Every input is checked before a model is loaded, and a mistake is one :class:`UsageError` (or a
``FileNotFoundError`` for a missing path): no reference, sets that overlap (a person, prompt or
fact id in two of them), an empty set, models of different architectures, or (the leak guard
``loka evaluate`` applies too, :func:`loka.protocol.refuse_seen`) a reference, retain or
other-wording item that the method was given, as AFTER's ``loka_seen.json`` records.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from loka.base.errors import UsageError
from loka.certify import hashing
from loka.certify.certificate import Certificate
from loka.certify.checks import Sets
from loka.certify.checks.blind import blind_check
from loka.certify.checks.collateral import collateral_check
from loka.certify.checks.direct import direct_checks
from loka.certify.checks.extraction import extraction_check
from loka.certify.checks.membership import membership_checks
from loka.certify.checks.quantization import quantization_checks
from loka.certify.checks.readout import readout_checks
from loka.certify.checks.relearning import relearning_checks
from loka.certify.result import Check
from loka.certify.statistics import decide
from loka.certify.suite import SUITES, Suite, SuiteName, dev_checks
from loka.certify.suite import suite as named_suite
from loka.data.knowledge import KnowledgeSet
from loka.models import fingerprint, load_model
from loka.protocol import SEEN_FILE, Seen, refuse_seen

__all__ = ["certify", "check_inputs", "EDIT_FILE"]

logger = logging.getLogger(__name__)
EDIT_FILE = "loka_edit.json"  # ablation.export.EDIT_FILE (ablation sits below certify, but the name is all we need)
MIN_REFERENCE_PEOPLE = 4  # two per half: the fewest a null from splits (and the blind check's folds) can use
_UNKNOWN_METHOD = (
    f"no {EDIT_FILE} beside AFTER: the method is unknown, so no check is known to be one it trained against; "
    "every check counts as held-out"
)
_FACT_FAMILIES = ("direct", "membership", "relearning", "quantization", "readout")
_SENSITIVE = ("direct.", "membership.", "quantization.", "readout.")  # the families re-run on BEFORE
_ARCHITECTURE_KEYS = (
    "model_type", "architectures", "n_layer", "num_hidden_layers", "n_embd", "hidden_size", "n_head",
    "num_attention_heads", "n_inner", "intermediate_size", "vocab_size", "n_positions", "max_position_embeddings",
)  # fmt: skip


def _knowledge(value: Any, name: str, *, required: bool) -> KnowledgeSet | None:
    if value is None:
        if required:
            hint = " (never-seen people or texts of the same kind as the forget set)" if name == "reference" else ""
            raise UsageError(f"certify needs a {name} set{hint}")
        return None
    if isinstance(value, str | os.PathLike):
        return KnowledgeSet.from_jsonl(value)
    if not isinstance(value, KnowledgeSet):
        raise UsageError(f"{name} must be a KnowledgeSet or the path of a JSONL file, got {type(value).__name__}")
    return value


def _config(model: Any) -> dict[str, Any] | None:
    if isinstance(model, str | os.PathLike):
        path = Path(model).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{str(path)!r} has no config.json: not a Hugging Face model directory")
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UsageError(f"{config}: not valid JSON ({err.msg})") from None
        return {k: data[k] for k in _ARCHITECTURE_KEYS if k in data}
    if not callable(getattr(model, "parameters", None)):
        raise UsageError(f"expected a model or a model directory, got {type(model).__name__}")
    return None


def _check_same_architecture(before: Any, after: Any) -> None:
    a, b = _config(before), _config(after)
    if a is None or b is None:  # loaded models: compare their fingerprints' shapes
        fa, fb = (fingerprint(m) if not isinstance(m, str | os.PathLike) else None for m in (before, after))
        if fa is not None and fb is not None:
            a = {k: v for k, v in fa.to_dict().items() if k != "weights_sha256"}
            b = {k: v for k, v in fb.to_dict().items() if k != "weights_sha256"}
        else:
            return
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ:
        k = differ[0]
        raise UsageError(f"BEFORE and AFTER are different architectures ({k}: {a.get(k)!r} vs {b.get(k)!r}); "
                         "certify compares a model with its own edit")  # fmt: skip


def _seen(seen: Any, after: Any) -> tuple[Seen | None, str | None]:
    if isinstance(seen, Seen):
        return seen, "given"
    if seen is not None:
        return Seen.load(seen), str(seen)
    if isinstance(after, str | os.PathLike):
        beside = Path(after).expanduser() / SEEN_FILE
        if beside.is_file():
            return Seen.load(beside), str(beside)
    return None, None


def check_inputs(
    before: Any, after: Any, forget: Any, reference: Any, retain: Any = None, *, seen: Any = None
) -> tuple[KnowledgeSet, KnowledgeSet, KnowledgeSet | None, Seen | None, str | None]:
    """Everything :func:`certify` checks before it loads a model (the CLI calls it before it
    writes anything): returns the three sets, the seen record and where it came from."""
    forget_ = _knowledge(forget, "forget", required=True)
    reference_ = _knowledge(reference, "reference", required=True)
    retain_ = _knowledge(retain, "retain", required=False)
    assert forget_ is not None and reference_ is not None
    pairs = [(forget_, "forget", reference_, "reference")]
    if retain_ is not None:
        pairs += [(forget_, "forget", retain_, "retain"), (reference_, "reference", retain_, "retain")]
    for a, a_name, b, b_name in pairs:
        shared = Seen.of(a).clash(b)
        if shared is not None:
            raise UsageError(f"{a_name} and {b_name} overlap ({shared} is in both); they must be disjoint")
    units = {f.subject if f.subject is not None else f.id for f in reference_}
    if len(units) < MIN_REFERENCE_PEOPLE:
        raise UsageError(
            f"the reference holds {len(units)} people (or texts without a subject); every null is measured between "
            f"random halves of them, so it needs at least {MIN_REFERENCE_PEOPLE}"
        )
    _check_same_architecture(before, after)
    seen_, where = _seen(seen, after)
    paraphrases = forget_.paraphrased() if any(f.paraphrases for f in forget_) else None
    scored = [("reference", reference_, True), ("retain", retain_, True), ("forget paraphrases", paraphrases, False)]
    refuse_seen(seen_, scored, scorer="the certificate")
    return forget_, reference_, retain_, seen_, where


def _edit_record(after: Any) -> dict[str, Any] | None:
    if not isinstance(after, str | os.PathLike):
        return None
    path = Path(after).expanduser() / EDIT_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err.msg})") from None
    return data if isinstance(data, dict) else None


def _model_hashes(model: Any, loaded: Any) -> dict[str, Any]:
    if isinstance(model, str | os.PathLike):
        return {"path": str(model), **hashing.directory_hashes(Path(model).expanduser())}
    return {"weights_sha256": fingerprint(loaded).weights_sha256}


def _version() -> str:
    # the root package is imported already (it is this module's parent); naming it in an import
    # would make the import linter see every room it exports
    return str(getattr(sys.modules["loka"], "__version__", "unknown"))


def _sensitivity(
    checks: list[Check], before: Any, tokenizer: Any, sets: Sets, suite: Suite, *, same: bool
) -> list[Check]:
    """Re-run the cheap fact checks on BEFORE (the model that holds the facts): a check BEFORE
    PASSes too cannot see the facts on this model, so AFTER's verdict on it says nothing; it is
    turned into information (never counted), with BEFORE's numbers in its note."""
    f, r = sets.forget, sets.reference
    assert f is not None and r is not None
    if same:
        on_before = checks
    else:
        on_before = direct_checks(before, tokenizer, f, r, suite)
        on_before += membership_checks(before, None, tokenizer, f, r, suite)
        if suite.quantization:
            on_before += quantization_checks(before, tokenizer, f, r, suite)
        on_before += readout_checks(before, tokenizer, f, r, sets.retain, suite)
        on_before = decide(on_before, alpha=suite.alpha)
    passed = {c.name: c for c in on_before if c.verdict == "PASS" and c.name.startswith(_SENSITIVE)}
    out = []
    for c in checks:
        b = passed.get(c.name)
        if b is not None and c.skipped is None and c.role != "info":
            why = (f"uninformative: BEFORE, which holds the facts, passes it too (forget {b.forget_value:.3f}, "
                   f"reference {b.reference_value:.3f}); never counted")  # fmt: skip
            c = c.with_(role="info", note=(c.note + "; " if c.note else "") + why)
        out.append(c)
    return out


def certify(
    before: Any,
    after: Any,
    forget: Any,
    reference: Any,
    retain: Any = None,
    *,
    attacks: SuiteName = "full",
    suite: Suite | None = None,
    seen: Any = None,
    salt: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    max_memory: Mapping[str | int, str | int] | None = None,
) -> Certificate:
    """Certify ``after`` (an edit of ``before``; model directories or loaded models) on ``forget``
    against ``reference`` (never-seen people or texts of the same kind), with ``retain`` for the
    checks that need it (collateral damage, the probe, relearning's rehearsal). Sets are
    :class:`KnowledgeSet` values or JSONL paths. ``attacks`` names the suite ("quick" leaves
    out relearning and quantization); ``suite`` replaces it. ``seen`` (a :class:`Seen` or the
    path of a ``loka_seen.json``; default: the one in AFTER's directory) turns on the leak
    guard. ``salt`` fixes the salt of the forget items' hashes (random by default). ``device``,
    ``dtype``, ``device_map`` and ``max_memory`` say where model directories load
    (:func:`loka.models.load_model`)."""
    start = time.perf_counter()
    if suite is None:
        if attacks not in SUITES:
            raise UsageError(f"unknown attack suite {attacks!r}; choose one of {', '.join(SUITES)}")
        suite = named_suite(attacks)
    elif not isinstance(suite, Suite):
        raise UsageError(f"suite must be a loka.certify.Suite, got {type(suite).__name__}")
    forget_, reference_, retain_, _, seen_where = check_inputs(before, after, forget, reference, retain, seen=seen)
    sets = Sets.of(forget_, reference_, retain_)
    record = _edit_record(after)
    method = record.get("method") if record else None
    dev = set(dev_checks(method))

    def load(m: Any) -> Any:
        if not isinstance(m, str | os.PathLike):
            return m
        return load_model(m, device=device, dtype=dtype, device_map=device_map, max_memory=max_memory)

    same = before is after or (
        isinstance(before, str | os.PathLike)
        and isinstance(after, str | os.PathLike)
        and Path(before).expanduser().resolve() == Path(after).expanduser().resolve()
    )
    after_model = load(after)
    before_model = after_model if same else load(before)
    tokenizer = getattr(after_model, "tokenizer", None)
    if tokenizer is None:
        raise UsageError("AFTER has no tokenizer attached; load it with loka.load_model or pass a model directory")
    checks: list[Check] = []
    blind = None
    if sets.facts_comparable:
        f, r = sets.forget, sets.reference
        assert f is not None and r is not None
        blind = blind_check(f, r, suite)
        checks += direct_checks(after_model, tokenizer, f, r, suite)
        checks += membership_checks(after_model, before_model, tokenizer, f, r, suite)
        if suite.relearning:
            checks += relearning_checks(after_model, tokenizer, f, r, sets.retain, suite)
        if suite.quantization:
            checks += quantization_checks(after_model, tokenizer, f, r, suite)
        checks += readout_checks(after_model, tokenizer, f, r, sets.retain, suite)
    else:
        side = "forget" if sets.forget is None else "reference"
        why = f"the {side} set holds no facts (only passages): these checks compare facts"
        checks += [Check.skip(name, "", why) for name in _FACT_FAMILIES]
        if sets.forget_passages is not None and sets.reference_passages is not None:
            blind = blind_check(sets.forget_passages, sets.reference_passages, suite)
    checks.append(extraction_check(after_model, tokenizer, sets.forget_passages, sets.reference_passages, suite))
    checks.append(collateral_check(after_model, before_model, tokenizer, sets.retain, suite))
    checks = [c.with_(role="dev") if c.name in dev and c.role == "held-out" else c for c in checks]
    checks = decide(checks, alpha=suite.alpha)
    if suite.sensitivity and sets.facts_comparable:
        checks = _sensitivity(checks, before_model, tokenizer, sets, suite, same=same)
    reference_valid = True
    if blind is not None and blind.skipped is None:
        blind = decide([blind], alpha=suite.alpha)[0]
        reference_valid = blind.verdict != "FAIL"
    if not reference_valid:
        checks = [c.with_(verdict="INCONCLUSIVE", note=(c.note + "; " if c.note else "") + "reference invalid")
                  if c.verdict == "PASS" else c for c in checks]  # fmt: skip
    salt = hashing.new_salt() if salt is None else salt
    provenance = {
        "toolkit": {"name": "loka", "version": _version()},
        "before": _model_hashes(before, before_model),
        "after": _model_hashes(after, after_model),
        "forget": {
            "salt": salt,
            "hash": "sha256(salt + NUL + item), hex",
            "n_facts": len(forget_),
            "n_people": len(forget_.subjects),
            **hashing.salted_hashes(forget_, salt),
        },  # fmt: skip
        "reference": {
            "sha256": hashing.knowledge_sha256(reference_),
            "n_facts": len(reference_),
            "n_people": len(reference_.subjects),
        },  # fmt: skip
        "retain": None if retain_ is None else {"sha256": hashing.knowledge_sha256(retain_), "n_facts": len(retain_)},
        "suite_sha256": suite.sha256,
        "method": {
            "name": method,
            "settings": record.get("settings") if record else None,
            "source": EDIT_FILE if record else None,
        },  # fmt: skip
        "dev_checks": sorted(dev),
        "dev_note": None if record else _UNKNOWN_METHOD,
        "leak_guard": seen_where or "off (no loka_seen.json beside AFTER and none given)",
    }
    return Certificate(tuple(checks), suite, provenance, blind, reference_valid, time.perf_counter() - start)
