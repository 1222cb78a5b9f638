"""The `loka` command line: exit codes, output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attribution
from ablation import AblationMask, bake
from loka.base.errors import UsageError
from loka.cli import main
from loka.data import KnowledgeSet
from loka.evaluation import evaluate
from loka.models import load_model, logits
from loka.scoring.metrics import score_facts

LOKA = Path(sys.executable).parent / "loka"


def test_testbed_command_prints_the_table(tiny_testbed, testbed_cache, capsys):
    code = main(["testbed", "--size", "tiny", "--cache-dir", str(testbed_cache), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert str(tiny_testbed.root) in out
    assert tiny_testbed.accuracy_table().format() in out
    assert "forget facts" in out and "oracle" in out


def test_user_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["testbed", "--size", "tiny", "--seed", "-1", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "error: seed must be a non-negative integer, got -1\n"
    assert not any(tmp_path.iterdir())


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UsageError, match="seed must be a non-negative integer"):
        main(["testbed", "--seed", "-1", "--cache-dir", str(tmp_path), "--debug"])


def test_internal_errors_show_a_traceback_and_usage_errors_one_line(tmp_path, monkeypatch, capsys):
    """Only a UsageError (or a file problem) is the user's to fix: any other exception, even a
    ValueError from deep inside a library, propagates with its traceback."""
    import loka.testbed

    def broken(*args, **kwargs):
        raise ValueError("Input contains NaN")  # as sklearn would say

    monkeypatch.setattr(loka.testbed, "load", broken)
    with pytest.raises(ValueError, match="Input contains NaN") as raised:
        main(["testbed", "--size", "tiny", "--cache-dir", str(tmp_path)])
    assert type(raised.value) is ValueError
    assert capsys.readouterr().err == ""

    def mistaken(*args, **kwargs):
        raise UsageError("size must be one of 'default', 'tiny'")

    monkeypatch.setattr(loka.testbed, "load", mistaken)
    assert main(["testbed", "--size", "tiny", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "error: size must be one of 'default', 'tiny'\n"


@pytest.mark.skipif(not LOKA.exists(), reason="console script not installed in this environment")
@pytest.mark.parametrize(
    "command", ["testbed", "locate", "mask", "ablate", "unlearn", "evaluate", "certify", "compare", "demo", "update"]
)
def test_console_script_help_shows_an_example(command):
    result = subprocess.run([str(LOKA), command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "example:" in result.stdout and f"loka {command}" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "loka.cli", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


# --- the knowledge-ablation commands on the tiny testbed -------------------------------------------
@pytest.fixture(scope="module")
def files(tiny_testbed, tmp_path_factory):
    """The tiny testbed's sets as JSONL, and two updates of retain people's birthplaces."""
    root = tmp_path_factory.mktemp("cli")
    for name in ("forget", "retain", "holdout"):
        getattr(tiny_testbed, name).to_jsonl(root / f"{name}.jsonl")
    births = [f for f in tiny_testbed.retain if f.relation == "birthplace"][:2]
    cities = sorted({f.target for f in tiny_testbed.retain if f.relation == "birthplace"})
    updates = [
        {"id": f.id, "prompt": f.prompt, "target": f.target, "subject": f.subject,
         "new_target": next(c for c in cities if c != f.target)}
        for f in births
    ]  # fmt: skip
    (root / "updates.jsonl").write_text("".join(json.dumps(u) + "\n" for u in updates))
    others = tiny_testbed.retain.filter(lambda f: f.subject not in {b.subject for b in births})
    others.to_jsonl(root / "neighbours.jsonl")
    return root


def run(capsys, *argv):
    code = main([*map(str, argv), "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def test_locate_prints_and_draws_the_ablation_profile(tiny_testbed, files, tmp_path, capsys):
    """``loka locate --retain`` ablates the located top k% of every layer and random components of the
    same per-layer count: what it prints and saves is what the library computes on the saved scores."""
    from loka.evaluation.ablation_profile import AblationProfile, ablation_profile

    model = tiny_testbed.model_dir
    code, out, _ = run(
        capsys, "locate", model, "--forget", files / "forget.jsonl", "--retain", files / "retain.jsonl",
        "--components", "neurons", "--out", tmp_path / "scores", "--profile-percents", 2, 10,
        "--profile-modes", "zero", "--profile-random", 2,
    )  # fmt: skip
    assert code == 0 and "ablation profile:" in out
    saved = AblationProfile.load(tmp_path / "scores")
    scores = attribution.AttributionScores.load(tmp_path / "scores")
    forget, retain = KnowledgeSet.from_jsonl(files / "forget.jsonl"), KnowledgeSet.from_jsonl(files / "retain.jsonl")
    expected = ablation_profile(
        load_model(model), forget, retain, {"located": scores}, percents=(2, 10), modes=("zero",),
        components="neurons", n_random=2, seed=0,
    )  # fmt: skip
    assert saved.to_dict() == expected.to_dict()
    assert expected.format() in out
    assert "ablation profile" in (tmp_path / "scores" / "plots.html").read_text()
    assert expected.row("random", "zero", 10).per_layer == expected.row("located", "zero", 10).per_layer


def test_locate_reads_the_metric(tiny_testbed, files, tmp_path, capsys):
    model = tiny_testbed.model_dir
    code, _, _ = run(
        capsys, "locate", model, "--forget", files / "forget.jsonl", "--metric", "log_odds", "--baseline", "zero",
        "--components", "neurons", "--out", tmp_path / "scores",
    )  # fmt: skip
    assert code == 0
    saved = attribution.AttributionScores.load(tmp_path / "scores")
    direct = attribution.attribute(
        load_model(model), KnowledgeSet.from_jsonl(files / "forget.jsonl"), components="neurons", baseline="zero",
        metric="log_odds",
    )  # fmt: skip
    assert saved.metadata.metric == "log_odds" and saved.metadata.positions == "all"
    assert torch.allclose(saved.neurons, direct.neurons, atol=1e-5)


def test_locate_mask_ablate_evaluate(tiny_testbed, files, tmp_path, capsys):
    model = tiny_testbed.model_dir
    code, out, _ = run(
        capsys, "locate", model, "--forget", files / "forget.jsonl", "--retain", files / "retain.jsonl",
        "--out", tmp_path / "scores", "--no-profile",
    )  # fmt: skip
    assert code == 0 and "top components: L" in out and "ablation profile" not in out
    scores = attribution.AttributionScores.load(tmp_path / "scores")
    forget_scores = attribution.AttributionScores.load(tmp_path / "scores" / "forget")
    retain_scores = attribution.AttributionScores.load(tmp_path / "scores" / "retain")
    expected = forget_scores.contrast(retain_scores)
    assert torch.equal(scores.neurons, expected.neurons) and torch.equal(scores.heads, expected.heads)
    # no settings given: each kind's recommended ones, as attribute() chooses them, and said so
    settings = {kind: forget_scores.metadata.of_kind(kind) for kind in ("neurons", "heads")}
    assert [(m.baseline, m.direction, m.metric) for m in settings.values()] == [
        ("zero", "ablate", "log_odds"), ("corrupt", "denoise", "log_odds"),
    ]  # fmt: skip
    assert "neurons: grad_x_act, zero, ablate, log_odds; heads: grad_x_act, corrupt, denoise, log_odds" in out
    assert "Plotly.newPlot" in (tmp_path / "scores" / "plots.html").read_text()

    code, out, _ = run(
        capsys, "mask", tmp_path / "scores", "--k", 12, "--per-layer-max", 8, "--out", tmp_path / "m.json"
    )
    assert code == 0
    mask = AblationMask.load(tmp_path / "m.json")
    assert mask == AblationMask.from_scores(scores, k=12, per_layer_max=8)
    code, out, _ = run(capsys, "mask", "--show", tmp_path / "m.json")
    assert code == 0 and "12 components, mode zero" in out
    per_layer = mask.summary()
    assert all(f"L{i}:{n}" in out for i, n in enumerate(per_layer["neurons"]["per_layer"]))

    code, out, _ = run(capsys, "ablate", model, tmp_path / "m.json", "--out", tmp_path / "ablated")
    assert code == 0
    exported = load_model(tmp_path / "ablated")
    baked = bake(load_model(model), mask)
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    torch.testing.assert_close(logits(exported, ids), logits(baked, ids), atol=1e-5, rtol=0)

    code, out, _ = run(
        capsys, "evaluate", tmp_path / "ablated", "--forget", files / "forget.jsonl", "--retain",
        files / "retain.jsonl", "--holdout", files / "holdout.jsonl", "--no-probe", "--no-relearn",
        "--json", tmp_path / "ev.json",
    )  # fmt: skip
    assert code == 0 and "forget quality" in out
    assert "no --oracle: give --before DIR" in out  # the checks that need no oracle read the unedited model
    saved = json.loads((tmp_path / "ev.json").read_text())
    assert "certificate" not in saved
    direct = evaluate(exported, forget=tiny_testbed.forget, retain=tiny_testbed.retain,
                      holdout=tiny_testbed.holdout, probe=False, relearn=False)  # fmt: skip
    assert saved["forget_accuracy"] == direct.forget_accuracy and saved["mia_aucs"] == dict(direct.mia_aucs)


def test_unlearn_exports_the_edited_model(tiny_testbed, files, tmp_path, capsys):
    code, out, _ = run(
        capsys, "unlearn", tiny_testbed.model_dir, "--forget", files / "forget.jsonl", "--retain",
        files / "retain.jsonl", "--method", "task_vector", "--option", "finetune_steps=2", "--max-steps", "5",
        "--out", tmp_path / "tv",
    )  # fmt: skip
    assert code == 0 and "forget accuracy 1.000 -> " in out and "2 steps" in out
    record = json.loads((tmp_path / "tv" / "loka_edit.json").read_text())
    assert record["method"] == "task_vector" and record["settings"]["finetune_steps"] == 2
    assert record["settings"]["chosen"]["scale"] > 0 and record["settings"]["budget"]["max_steps"] == 5


def test_unlearn_with_loka_on_a_model_offloaded_to_disk(tiny_testbed, files, tmp_path, capsys):
    """``--device-map auto --max-memory cpu=...`` smaller than the model: accelerate offloads
    modules to disk (their weights on ``meta`` between calls); LOKA still edits and exports it."""
    cap = ["--device-map", "auto", "--max-memory", "cpu=200KB"]
    offloaded = load_model(tiny_testbed.model_dir, device_map="auto", max_memory={"cpu": "200KB"})
    assert any(p.is_meta for p in offloaded.parameters())  # the cap really offloads
    code, out, _ = run(
        capsys, "unlearn", tiny_testbed.model_dir, "--forget", files / "forget.jsonl", "--retain",
        files / "retain.jsonl", "--method", "loka", "--max-steps", "2", *cap, "--out", tmp_path / "off",
    )  # fmt: skip
    assert code == 0 and "written to" in out
    record = json.loads((tmp_path / "off" / "loka_edit.json").read_text())
    assert record["method"] == "loka" and record["settings"]["share"] is True
    assert not any(p.is_meta for p in load_model(tmp_path / "off").parameters())
    code, _, err = run(capsys, "evaluate", tiny_testbed.model_dir, "--forget", files / "forget.jsonl",
                       "--retain", files / "retain.jsonl", "--holdout", files / "holdout.jsonl",
                       "--max-memory", "cpu=1GiB")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "max_memory caps the devices of a device_map" in err


def test_update_replaces_facts_and_keeps_neighbours(tiny_testbed, files, tmp_path, capsys):
    code, out, _ = run(
        capsys, "update", tiny_testbed.model_dir, "--updates", files / "updates.jsonl", "--retain",
        files / "neighbours.jsonl", "--out", tmp_path / "upd",
    )  # fmt: skip
    assert code == 0, out
    updated = load_model(tmp_path / "upd")
    updates = [json.loads(line) for line in (files / "updates.jsonl").read_text().splitlines()]
    new = KnowledgeSet.from_records([{k: v for k, v in u.items() if k != "new_target"} | {"target": u["new_target"]}
                                     for u in updates])  # fmt: skip
    assert score_facts(updated, new).first_token_accuracy == 1.0
    neighbours = KnowledgeSet.from_jsonl(files / "neighbours.jsonl")
    assert score_facts(updated, neighbours).first_token_accuracy >= 0.95
    assert json.loads((tmp_path / "upd" / "loka_edit.json").read_text())["settings"]["kind"] == "update"


@pytest.mark.slow
def test_compare_writes_a_report(tiny_testbed, testbed_cache, tmp_path, capsys):
    code, out, _ = run(
        capsys, "compare", "--size", "tiny", "--cache-dir", testbed_cache, "--methods", "task_vector",
        "--max-steps", "10", "--check-every", "5", "--seeds", "1", "--no-control", "--out", tmp_path / "cmp",
    )  # fmt: skip
    assert code == 0
    assert "task_vector" in out and "oracle" in out and f"report: {tmp_path / 'cmp' / 'report.html'}" in out
    data = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [o["name"] for o in data["outcomes"]] == ["original", "oracle", "task_vector"]
    assert len(data["outcomes"][2]["runs"]) == 1 and data["outcomes"][2]["computes"][0]["steps"] <= 10
    assert "[" in out and "Mtok" in out  # intervals and compute in the printed table


BAD = [
    (["locate", "{model}", "--forget", "nope.jsonl", "--out", "{out}"], "knowledge file 'nope.jsonl' does not exist"),
    (["locate", "{tmp}/missing-model", "--forget", "{files}/forget.jsonl", "--out", "{out}"], "does not exist"),
    (["locate", "{model}", "--forget", "{tmp}/bad.jsonl", "--out", "{out}"], "bad.jsonl:2: not valid JSON"),
    (["unlearn", "{model}", "--forget", "{files}/forget.jsonl", "--retain", "{files}/retain.jsonl",
      "--method", "frob", "--out", "{out}"], "unknown method 'frob'; choose one of loka, gradient_ascent"),
    (["unlearn", "{model}", "--forget", "{files}/forget.jsonl", "--retain", "{files}/forget.jsonl",
      "--method", "task_vector", "--out", "{out}"], "forget and retain overlap"),
    (["ablate", "{oracle}", "{tmp}/m.json", "--out", "{out}"], "this mask was made for another model"),
    (["ablate", "{model}", "{tmp}/m.json", "--out", "{files}"], "exists; pass --overwrite"),
    (["mask", "{tmp}/scores", "--k", "3", "--fraction", "0.1", "--out", "{out}"], "exactly one of --k N"),
    (["mask", "{tmp}", "--k", "3", "--out", "{out}"], "holds no saved AttributionScores"),
    (["update", "{model}", "--updates", "{files}/forget.jsonl", "--retain", "{files}/retain.jsonl", "--out", "{out}"],
     "each line needs prompt, target (the old answer) and new_target"),
    (["update", "{model}", "--updates", "{files}/updates.jsonl", "--retain", "{files}/neighbours.jsonl",
      "--layers", "7", "--out", "{out}"], "layer(s) [7] do not exist"),
    (["compare", "--forget", "{files}/forget.jsonl", "--out", "{out}"], "--forget need --model"),
    (["evaluate", "{model}", "--forget", "{files}/forget.jsonl", "--retain", "{files}/retain.jsonl",
      "--holdout", "{files}/retain.jsonl"], "holdout and forget and retain overlap"),
    (["compare", "--size", "tiny", "--max-steps", "0", "--out", "{out}"], "max_steps must be an integer at least 1"),
    (["unlearn", "{model}", "--forget", "{files}/forget.jsonl", "--retain", "{files}/retain.jsonl",
      "--method", "loka", "--option", "sise=0.02", "--out", "{out}"],
     "unknown option for 'loka': 'sise'; options are edit, size, localize"),
    (["compare", "--size", "tiny", "--option", "loka.size=lots", "--out", "{out}"],
     "option size='lots' for 'loka': expected a number or an integer or 'auto'"),
    (["compare", "--size", "tiny", "--option", "task_vector.scales=0.5,-1", "--out", "{out}"],
     "scales must be positive numbers, got (0.5, -1.0)"),
]  # fmt: skip


@pytest.mark.parametrize("argv,message", BAD, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(BAD)])
def test_bad_inputs_are_one_line_errors_and_write_nothing(tiny_testbed, files, tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "target": "b"}\n{"prompt": \n')
    mask = AblationMask.from_components([("neuron", 0, 1)], model=load_model(tiny_testbed.model_dir))
    mask.save(tmp_path / "m.json")
    (tmp_path / "scores").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    values = dict(model=tiny_testbed.model_dir, oracle=tiny_testbed.oracle_dir, tmp=tmp_path, files=files,
                  out=tmp_path / "out")  # fmt: skip
    code, out, err = run(capsys, *[a.format(**values) for a in argv])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


ROOT = Path(__file__).resolve().parents[3]
TOFU_DIR = next(
    (d for d in (ROOT / "shared/data/tofu", ROOT.parent / "shared/data/tofu") if (d / "full.jsonl").is_file()), None
)


@pytest.mark.skipif(TOFU_DIR is None, reason="TOFU data not found beside the repository")
@pytest.mark.slow
def test_tofu_prints_the_table_and_writes_the_report(testbed_cache, tmp_path, capsys):
    code, out, _ = run(
        capsys, "tofu", "--size", "tiny", "--data-dir", TOFU_DIR, "--cache-dir", testbed_cache / "tofu",
        "--methods", "gradient_ascent", "--max-steps", "20", "--check-every", "10", "--out", tmp_path / "tofu",
    )  # fmt: skip
    assert code == 0
    assert "forget quality" in out and "gradient_ascent" in out and "retain" in out
    data = json.loads((tmp_path / "tofu" / "tofu.json").read_text())
    assert "gradient_ascent" in json.dumps(data)
    assert (tmp_path / "tofu" / "tofu.html").is_file()
    code, _, err = run(capsys, "tofu", "--size", "tiny", "--data-dir", TOFU_DIR, "--out", tmp_path / "tofu")
    assert code == 2 and "pass --overwrite" in err


def test_the_cli_names_every_unlearning_method():
    """The CLI names the methods so that --help needs no torch import; they must be loka.methods'."""
    from loka.cli import common
    from loka.comparison import DEFAULT_METHODS
    from loka.methods import METHODS

    assert common.UNLEARNING_METHODS == tuple(m for m in METHODS if m != "retrain") == DEFAULT_METHODS
