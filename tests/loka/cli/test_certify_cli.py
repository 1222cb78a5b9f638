"""``loka certify``: the files it writes, the leak guard, and one-line refusals that write nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from loka.cli import main
from loka.protocol import Seen


@pytest.fixture(scope="module")
def sets(tiny_testbed, tmp_path_factory):
    root = tmp_path_factory.mktemp("certify-sets")
    for name in ("forget", "retain", "holdout"):
        getattr(tiny_testbed, name).to_jsonl(root / f"{name}.jsonl")
    return root


def run(capsys, *args):
    code = main(["certify", *map(str, args), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_certify_writes_the_certificate(tiny_testbed, sets, tmp_path, capsys):
    model = tiny_testbed.model_dir
    code, out, err = run(capsys, model, model, "--forget", sets / "forget.jsonl", "--reference",
                         sets / "holdout.jsonl", "--attacks", "quick", "--out", tmp_path / "cert")  # fmt: skip
    assert code == 1, err  # the exit status is the verdict: the original against itself FAILs
    data = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    assert data["status"] == "FAIL" and data["suite"]["name"] == "quick"
    assert {c["name"]: c["verdict"] for c in data["checks"]}["direct.answers"] == "FAIL"
    assert (tmp_path / "cert" / "certificate.html").is_file()
    assert "direct.answers" in out and "FAIL in" in out and "leak guard: off" in out


def _refused(capsys, tmp_path, *args):
    code, out, err = run(capsys, *args, "--out", tmp_path / "cert")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "cert").exists()
    return err


def test_the_leak_guard_refuses_a_reference_the_method_was_given(tiny_testbed, sets, tmp_path, capsys):
    after = tmp_path / "after"
    shutil.copytree(tiny_testbed.oracle_dir, after)
    Seen.of(tiny_testbed.forget, tiny_testbed.holdout).hashed("salt").save(after / "loka_seen.json")
    err = _refused(capsys, tmp_path, tiny_testbed.model_dir, after, "--forget", sets / "forget.jsonl",
                   "--reference", sets / "holdout.jsonl")  # fmt: skip
    assert "the method was given person" in err and "which the certificate scores as reference" in err
    # the same through --seen, for a retain set
    Seen.of(tiny_testbed.forget, tiny_testbed.retain).save(tmp_path / "seen.json")
    err = _refused(capsys, tmp_path, tiny_testbed.model_dir, tiny_testbed.oracle_dir, "--forget",
                   sets / "forget.jsonl", "--reference", sets / "holdout.jsonl", "--retain", sets / "retain.jsonl",
                   "--seen", tmp_path / "seen.json")  # fmt: skip
    assert "which the certificate scores as retain" in err


def test_bad_inputs_are_one_line_and_write_nothing(tiny_testbed, sets, tmp_path, capsys):
    model, oracle = tiny_testbed.model_dir, tiny_testbed.oracle_dir
    forget, holdout = sets / "forget.jsonl", sets / "holdout.jsonl"
    assert "needs a reference set" in _refused(capsys, tmp_path, model, oracle, "--forget", forget)
    assert "overlap" in _refused(capsys, tmp_path, model, oracle, "--forget", forget, "--reference", forget)
    assert "does not exist" in _refused(capsys, tmp_path, model, oracle, "--forget", sets / "nope.jsonl",
                                        "--reference", holdout)  # fmt: skip
    assert "does not exist" in _refused(capsys, tmp_path, model, tmp_path / "nope", "--forget", forget,
                                        "--reference", holdout)  # fmt: skip
    (tmp_path / "empty.jsonl").write_text("")
    assert "has no facts" in _refused(capsys, tmp_path, model, oracle, "--forget", tmp_path / "empty.jsonl",
                                      "--reference", holdout)  # fmt: skip
    bigger = tmp_path / "bigger"
    shutil.copytree(model, bigger)
    config = json.loads((bigger / "config.json").read_text())
    (bigger / "config.json").write_text(json.dumps({**config, "n_embd": 128}))
    assert "different architectures" in _refused(capsys, tmp_path, model, bigger, "--forget", forget,
                                                 "--reference", holdout)  # fmt: skip
