"""A newcomer's first hour: every command that ``loka --help`` lists and the README's Python lines,
run on the files the tiny testbed itself writes beside its models (``forget.jsonl``, whose facts
carry paraphrases, ``retain.jsonl``, ``holdout.jsonl``, ``passages.jsonl``, ``original/``,
``oracle/``), with small budgets.

Issue 24 found that the first thing a new user tries, ``loka unlearn <testbed>/original --forget
forget.jsonl --retain retain.jsonl --reference holdout.jsonl --method loka``, crashed: every test
before it reached LOKA through :class:`loka.protocol.Protocol`, which strips the paraphrases. These
tests take the files as they are, and check what a newcomer then meets: the leak guard
(``loka_seen.json`` beside the edited model; ``loka evaluate`` refuses to score a method on what it
was given), the way through it (split the sets by person, as the protocol does), and an
evaluation without an oracle that says which checks it could not calibrate.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import loka
from ablation import AblationMask, bake
from loka.base.errors import UsageError
from loka.cli import main
from loka.cli.commands.certify import EXIT_STATUS
from loka.cli.parser import build_parser
from loka.data import KnowledgeSet
from loka.models import hf_state_dict, load_model
from loka.protocol import SEEN_FILE, Protocol, Seen
from loka.scoring.metrics import score_facts

ROOT = Path(__file__).resolve().parents[3]
TOFU_DIR = next(
    (d for d in (ROOT / "shared/data/tofu", ROOT.parent / "shared/data/tofu") if (d / "full.jsonl").is_file()), None
)
SMALL = ["--max-steps", "2", "--check-every", "1"]  # a budget of two steps: the path, not the result


def loka_cli(*argv: object) -> tuple[int, str, str]:
    """``loka ARGV --quiet`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*map(str, argv), "--quiet"])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tb(tiny_testbed):
    return tiny_testbed


@pytest.fixture(scope="module")
def own(tb) -> dict[str, Path]:
    """The testbed's own files, by name."""
    files = {name: tb.root / f"{name}.jsonl" for name in ("forget", "retain", "holdout", "passages")}
    return {**files, "original": tb.model_dir, "oracle": tb.oracle_dir}


@pytest.fixture(scope="module")
def split(tb, tmp_path_factory) -> dict[str, Path]:
    """The sets of :meth:`Protocol.from_testbed` (the comparison's: retain people split into train /
    validation / eval, holdout people into reference and MIA non-members, the forget facts in one
    wording) as JSONL: what a newcomer writes after the leak guard's error."""
    root = tmp_path_factory.mktemp("split")
    protocol = Protocol.from_testbed(tb)
    names = ("forget", "retain_train", "retain_validation", "retain_eval", "reference", "nonmembers")
    return {name: getattr(protocol, name).to_jsonl(root / f"{name}.jsonl") for name in names}


@pytest.fixture(scope="module")
def edited(own, tmp_path_factory) -> tuple[Path, str]:
    """The issue's command on the testbed's own files, with a two-step budget (and attribution's
    exact re-check of candidates off, to stay quick)."""
    out = tmp_path_factory.mktemp("unlearn") / "edited"
    code, stdout, stderr = loka_cli(
        "unlearn", own["original"], "--forget", own["forget"], "--retain", own["retain"], "--reference",
        own["holdout"], "--method", "loka", "--out", out, *SMALL, "--option", "check_scores=0",
    )  # fmt: skip
    assert code == 0, stderr
    return out, stdout


# --- the commands ---------------------------------------------------------------------------------
COVERED = {"testbed", "locate", "mask", "ablate", "unlearn", "evaluate", "certify", "update", "compare", "demo", "tofu"}


def test_help_lists_the_commands_this_file_runs():
    """``loka --help`` (the console entry point) lists exactly the commands of the parser, each
    command module of ``loka/cli/commands`` is behind one, and every one is run as a newcomer would: here, or
    (``tofu``, on the tiny TOFU scale) in ``test_cli.py``."""
    result = subprocess.run([sys.executable, "-m", "loka.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    listed = set(re.findall(r"^    ([a-z]+) ", result.stdout, flags=re.M))
    parser_commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    modules = {p.stem for p in (ROOT / "loka/cli/commands").glob("*.py") if p.stem != "__init__"}
    assert listed == parser_commands == COVERED
    assert modules <= listed


def test_testbed_prints_where_its_files_are(tb, own, testbed_cache):
    code, out, _ = loka_cli("testbed", "--size", "tiny", "--seed", tb.config.world.seed, "--cache-dir", testbed_cache)
    assert code == 0 and str(tb.root) in out and tb.accuracy_table().format() in out
    for name in ("forget", "retain", "holdout", "passages"):
        assert KnowledgeSet.from_jsonl(own[name]) == getattr(tb, name)
    assert all(f.paraphrases for f in tb.forget)  # what the issue's command trips on


def test_locate_mask_ablate_on_the_testbeds_files(own, tmp_path):
    code, out, _ = loka_cli(
        "locate", own["original"], "--forget", own["forget"], "--retain", own["retain"], "--out", tmp_path / "scores"
    )
    assert code == 0 and "top components: L" in out
    code, _, _ = loka_cli("mask", tmp_path / "scores", "--k", 8, "--out", tmp_path / "mask.json")
    assert code == 0
    mask = AblationMask.load(tmp_path / "mask.json")
    assert len(mask) == 8
    code, out, _ = loka_cli("mask", "--show", tmp_path / "mask.json")
    assert code == 0 and "8 components" in out
    code, _, _ = loka_cli("ablate", own["original"], tmp_path / "mask.json", "--out", tmp_path / "ablated")
    assert code == 0
    exported, baked = (
        hf_state_dict(load_model(tmp_path / "ablated")),
        hf_state_dict(bake(load_model(own["original"]), mask)),
    )
    assert exported.keys() == baked.keys() and all(torch.equal(exported[k], baked[k]) for k in baked)


def test_the_issues_unlearn_command_runs_and_records_what_the_method_saw(tb, edited):
    """``loka unlearn <tiny>/original --forget forget.jsonl --retain retain.jsonl --reference
    holdout.jsonl --method loka`` (the IndexError of issue 24): LOKA erases the subject too (the
    names are located and the whole texts pulled to the strangers'), and ``loka_seen.json`` holds
    every person, id and wording it was given, as salted hashes: no name in the clear."""
    out, stdout = edited
    assert f"written to {out} (what it saw: {out / SEEN_FILE})" in stdout
    record = json.loads((out / "loka_edit.json").read_text())
    assert record["settings"]["erase"] == "subject" and record["documents"] == [SEEN_FILE]
    text = (out / SEEN_FILE).read_text()
    data = json.loads(text)
    people = {*tb.forget.subjects, *tb.retain.subjects, *tb.holdout.subjects}
    wordings = sum(1 + len(f.paraphrases) for ks in (tb.forget, tb.retain, tb.holdout) for f in ks)
    assert data["counts"] == {"subjects": len(people), "ids": len(tb.forget) + len(tb.retain) + len(tb.holdout),
                              "prompts": wordings}  # fmt: skip
    assert not any(person in text for person in people)
    seen = Seen.load(out / SEEN_FILE)
    for ks in (tb.forget, tb.retain, tb.holdout, tb.forget.paraphrased()):
        assert seen.clash(ks, by_person=False) is not None


def test_evaluate_refuses_what_the_method_was_given_and_writes_nothing(own, edited, tmp_path):
    """Evaluated on the same files, the method would be scored on retain people it trained on and
    on MIA non-members that were its reference: one line, exit 2, no JSON written; the same with
    ``--seen`` pointing at the record from elsewhere."""
    out, _ = edited
    sets = ["--forget", own["forget"], "--retain", own["retain"], "--holdout", own["holdout"]]
    code, stdout, err = loka_cli("evaluate", out, *sets, "--json", tmp_path / "ev.json")
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert err.startswith("error: the method was given person ") and "which the evaluation scores as retain" in err
    code, _, err = loka_cli(
        "evaluate", own["original"], *sets, "--seen", out / SEEN_FILE, "--json", tmp_path / "ev.json"
    )
    assert code == 2 and "which the evaluation scores as retain" in err
    assert not any(tmp_path.iterdir())


def test_certify_refuses_the_reference_the_method_was_given(own, edited, tmp_path):
    """``loka certify`` with the holdout people as the never-seen reference: the issue's command
    gave them to LOKA as its reference, so they are not never-seen; one line, exit 2, nothing written."""
    out, _ = edited
    code, stdout, err = loka_cli("certify", own["original"], out, "--forget", own["forget"], "--reference",
                                 own["holdout"], "--out", tmp_path / "cert")  # fmt: skip
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "which the certificate scores as reference" in err
    assert not (tmp_path / "cert").exists()


def test_certify_on_people_the_method_never_saw(own, split, tmp_path):
    """The way through: the method is given the protocol's sets; the certificate compares the
    testbed's forget.jsonl (paraphrases included: wordings the method never saw) with the MIA
    non-members as the reference, and reads the method's name from loka_edit.json."""
    out = tmp_path / "ga"
    code, _, err = loka_cli(
        "unlearn", own["original"], "--forget", split["forget"], "--retain", split["retain_train"], "--reference",
        split["reference"], "--method", "gradient_ascent", "--out", out, *SMALL,
    )  # fmt: skip
    assert code == 0, err
    code, stdout, err = loka_cli(
        "certify", own["original"], out, "--forget", own["forget"], "--reference", split["nonmembers"], "--retain",
        split["retain_eval"], "--attacks", "quick", "--out", tmp_path / "cert",
    )  # fmt: skip
    data = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    assert code == EXIT_STATUS[data["status"]], err  # the exit status is the verdict
    assert f"leak guard: {out / SEEN_FILE}" in stdout
    roles = {c["name"]: c["role"] for c in data["checks"]}
    assert data["provenance"]["method"]["name"] == "gradient_ascent"
    assert roles["direct.answers"] == "dev" and roles["direct.other_wordings"] == "held-out"


def test_evaluate_on_people_the_method_never_saw(own, split, tmp_path):
    """The way through the guard: the method gets the protocol's sets (forget in one wording, half
    the retain people, half the holdout people as its reference); evaluate scores the testbed's
    forget.jsonl (its paraphrases are wordings the method never saw), the other retain people and
    the other holdout people. Without an oracle the table says which checks are not calibrated;
    the CLI's JSON equals the Python evaluation."""
    out = tmp_path / "ga"
    code, _, err = loka_cli(
        "unlearn", own["original"], "--forget", split["forget"], "--retain", split["retain_train"], "--validation",
        split["retain_validation"], "--reference", split["reference"], "--method", "gradient_ascent", "--out", out,
        *SMALL,
    )  # fmt: skip
    assert code == 0, err
    sets = ["--forget", own["forget"], "--retain", split["retain_eval"], "--holdout", split["nonmembers"]]
    code, stdout, err = loka_cli(
        "evaluate", out, *sets, "--no-probe", "--no-relearn", "--before", own["original"],
        "--json", tmp_path / "ev.json",
    )  # fmt: skip
    assert code == 0, err
    assert "leak guard on" in stdout
    assert "not calibrated: membership inference, quantization, logit lens. No oracle was given" in stdout
    saved = json.loads((tmp_path / "ev.json").read_text())
    assert saved["uncalibrated"] == ["membership inference", "quantization", "logit lens"]
    # instead, the checks that need no oracle: loka certify's quick suite, forget vs the holdout people
    assert "no --oracle: the checks that need none (loka certify, quick suite)" in stdout
    certificate = saved["certificate"]
    names = {c["name"] for c in certificate["checks"]}
    assert {"direct.answers", "direct.other_wordings"} <= names and certificate["suite"]["name"] == "quick"
    direct = loka.evaluate(
        load_model(out), forget=KnowledgeSet.from_jsonl(own["forget"]), probe=False, relearn=False,
        retain=KnowledgeSet.from_jsonl(split["retain_eval"]), holdout=KnowledgeSet.from_jsonl(split["nonmembers"]),
        seen=out / SEEN_FILE,
    )  # fmt: skip
    assert saved["forget_accuracy"] == direct.forget_accuracy and saved["mia_aucs"] == dict(direct.mia_aucs)
    assert saved["paraphrase_forget_accuracy"] == direct.paraphrase_forget_accuracy is not None
    code, stdout, _ = loka_cli("evaluate", out, *sets, "--no-probe", "--no-relearn", "--oracle", own["oracle"])
    assert code == 0 and "not calibrated" not in stdout and "PrivLeak vs the oracle" in stdout
    assert "no --oracle" not in stdout


def test_update_on_the_testbeds_files(tb, own, tmp_path):
    """Two forget facts get new answers (the newcomer writes the updates file; the rest are the
    testbed's own files); the model answers them, and keeps the retain facts."""
    births = [f for f in tb.forget if f.relation == "birthplace"][:2]
    cities = sorted({f.target for f in tb.retain if f.relation == "birthplace"})
    updates = [{"prompt": f.prompt, "target": f.target, "subject": f.subject,
                "new_target": next(c for c in cities if c != f.target)} for f in births]  # fmt: skip
    (tmp_path / "updates.jsonl").write_text("".join(json.dumps(u) + "\n" for u in updates))
    code, _, err = loka_cli(
        "update", own["original"], "--updates", tmp_path / "updates.jsonl", "--retain", own["retain"],
        "--out", tmp_path / "updated",
    )  # fmt: skip
    assert code == 0, err
    updated = load_model(tmp_path / "updated")
    new = KnowledgeSet.from_records([{k: v for k, v in u.items() if k != "new_target"} | {"target": u["new_target"]}
                                     for u in updates])  # fmt: skip
    assert score_facts(updated, new).first_token_accuracy == 1.0
    assert score_facts(updated, tb.retain).first_token_accuracy >= 0.9


@pytest.mark.slow
def test_compare_on_the_testbeds_files(own, tmp_path):
    """``loka compare --model`` with the testbed's own files and its oracle: LOKA (the forget
    facts' paraphrases become the evaluation's wordings) and its random location control."""
    code, stdout, err = loka_cli(
        "compare", "--model", own["original"], "--forget", own["forget"], "--retain", own["retain"], "--holdout",
        own["holdout"], "--oracle", own["oracle"], "--methods", "loka", "--seeds", 1, *SMALL, "--out", tmp_path / "c",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert [o["name"] for o in data["outcomes"]] == ["original", "oracle", "loka", "loka @random"]
    assert "localization, loka @random:" in stdout


@pytest.mark.slow
def test_demo_on_the_tiny_testbed(testbed_cache, tb, tmp_path):
    code, stdout, err = loka_cli(
        "demo", "--size", "tiny", "--seed", tb.config.world.seed, "--cache-dir", testbed_cache, "--seeds", 1,
        "--locations", "--workers", 1, *SMALL, "--out", tmp_path / "demo",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "demo" / "comparison.json").read_text())
    assert [o["name"] for o in data["outcomes"]] == ["original", "oracle", "loka", "gradient_ascent", "npo",
                                                      "task_vector"]  # fmt: skip
    assert (tmp_path / "demo" / "report.html").is_file()


# --- the README's Python ----------------------------------------------------------------------------
def _readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python block"
    return blocks[0]


@pytest.mark.slow
def test_the_readmes_python_block_runs(tb, testbed_cache, tmp_path, monkeypatch):
    """The README's block as written (its ``...`` inside ``ablate`` included), on this session's
    tiny testbed: the export exists and the evaluation holds the oracle's."""
    code = _readme_python().replace(
        'loka.testbed.load("tiny")', "loka.testbed.load('tiny', seed=SEED, cache_dir=CACHE)"
    )
    assert "cache_dir=CACHE" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"SEED": tb.config.world.seed, "CACHE": testbed_cache}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "out" / "edited" / "loka_edit.json").is_file()
    ev = namespace["ev"]
    assert ev.oracle is not None and "PrivLeak vs the oracle" in printed.getvalue()


def test_the_readmes_api_lines(tb, own):
    """The README's bullets and the issue's Python call: ``KnowledgeSet.from_jsonl`` reads the
    testbed's files; ``loka.unlearn(model, tb.forget, tb.retain, reference=tb.holdout,
    method="loka")`` runs; ``loka.evaluate(..., seen=result.seen)`` then refuses the same sets
    (the method saw the retain people and the holdout people), and scores the protocol's."""
    assert loka.KnowledgeSet.from_jsonl(own["forget"]) == tb.forget
    model = loka.load_model(tb.model_dir)
    result = loka.unlearn(
        model, tb.forget, tb.retain, reference=tb.holdout, method="loka", progress=False, check_scores=0,
        budget=loka.methods.Budget(max_steps=1, check_every=1),
    )  # fmt: skip
    assert result.config["erase"] == "subject" and result.compute.steps == 1
    with pytest.raises(UsageError, match="which the evaluation scores as retain"):
        loka.evaluate(result.model, forget=tb.forget, retain=tb.retain, holdout=tb.holdout, seen=result.seen)
    protocol = Protocol.from_testbed(tb)
    with pytest.raises(UsageError, match="the method was given person"):
        loka.evaluate(result.model, protocol=protocol, seen=result.seen)
    fair = loka.unlearn(
        model, protocol.forget, protocol.retain_train, validation=protocol.retain_validation,
        reference=protocol.reference, method="gradient_ascent", progress=False,
        budget=loka.methods.Budget(max_steps=1, check_every=1),
    )  # fmt: skip
    ev = loka.evaluate(fair.model, protocol=protocol, seen=fair.seen, probe=False, relearn=False)
    assert ev.uncalibrated == ("membership inference", "quantization", "logit lens")
    assert ev.forget_accuracy == score_facts(fair.model, protocol.forget).first_token_accuracy
