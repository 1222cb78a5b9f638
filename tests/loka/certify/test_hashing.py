"""Provenance: stable hashes, salted forget items, the suite's hash."""

from __future__ import annotations

import hashlib

import pytest

from loka.base.errors import UsageError
from loka.certify import suite
from loka.certify.hashing import directory_hashes, knowledge_sha256, salted_hashes
from loka.certify.suite import DEV_CHECKS, dev_checks
from loka.data import KnowledgeSet

FACTS = KnowledgeSet.from_records(
    [
        {"prompt": "Ana Sol was born in", "target": "Lima", "subject": "Ana Sol"},
        {"prompt": "Ana Sol works for", "target": "Acme", "subject": "Ana Sol"},
    ]
)


def test_salted_hashes_are_stable_for_a_salt_and_differ_for_items_and_salts():
    a, b = salted_hashes(FACTS, "s1"), salted_hashes(FACTS, "s1")
    assert a == b and len(a["facts"]) == 2 and len(a["people"]) == 1
    assert salted_hashes(FACTS, "s2")["facts"] != a["facts"]
    other = KnowledgeSet.from_records([{"prompt": "Ana Sol was born in", "target": "Oslo", "subject": "Ana Sol"}])
    assert not set(salted_hashes(other, "s1")["facts"]) & set(a["facts"])
    # what is stored is sha256(salt + NUL + item), never the item
    assert a["people"] == [hashlib.sha256(b"s1\0Ana Sol").hexdigest()]
    assert "Ana Sol" not in str(a)
    with pytest.raises(UsageError, match="salt"):
        salted_hashes(FACTS, "")


def test_reference_and_directory_hashes(tmp_path):
    assert knowledge_sha256(FACTS) == knowledge_sha256(KnowledgeSet(FACTS.facts, name="other name"))
    assert knowledge_sha256(FACTS) != knowledge_sha256(KnowledgeSet(FACTS.facts[:1]))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "tokenizer.json").write_text("{}")
    hashes = directory_hashes(tmp_path)
    assert set(hashes["model"]) == {"config.json", "model.safetensors"}
    assert hashes["tokenizer"] == {"tokenizer.json": hashlib.sha256(b"{}").hexdigest()}
    assert directory_hashes(tmp_path) == hashes
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert directory_hashes(tmp_path)["model"]["model.safetensors"] != hashes["model"]["model.safetensors"]
    with pytest.raises(FileNotFoundError):
        directory_hashes(tmp_path / "missing")


def test_suites_are_fixed_and_hashed():
    quick, full = suite("quick"), suite("full")
    assert not quick.relearning and not quick.quantization and full.relearning and full.quantization
    assert quick.sha256 == suite("quick").sha256 and quick.sha256 != full.sha256
    assert suite("full", margin_auc=0.2).sha256 != full.sha256  # a threshold is part of the hash
    with pytest.raises(UsageError, match="unknown attack suite"):
        suite("everything")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="alpha"):
        suite("full", alpha=1.5)
    assert dev_checks("loka") == DEV_CHECKS["loka"] and dev_checks(None) == () and dev_checks("retrain") == ()
