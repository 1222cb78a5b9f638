"""ablation.export_checkpoint: plain HF checkpoints + loka_edit.json, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

import ablation.export
from ablation import AblationMask, bake, export_checkpoint, mean_activations
from loka.base.errors import UsageError
from loka.models import fingerprint, logits
from tests.checkpoints import VOCAB_SIZE, build_tiny_checkpoint

COMPONENTS = [("neuron", 0, 5), ("neuron", 1, 63), ("head", 0, 1), ("head", 1, 3)]
PARITY = 1e-5


@pytest.fixture(scope="module")
def ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (3, 10), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def mask(model: TransformerBridge, ids: Tensor) -> AblationMask:
    return AblationMask.from_components(COMPONENTS, model=model, mode="mean", means=mean_activations(model, ids))


@pytest.fixture(scope="module")
def baked(model: TransformerBridge, mask: AblationMask) -> TransformerBridge:
    return bake(model, mask, missing_bias="add")  # Llama: mean mode switches on its optional biases


@pytest.fixture(scope="module")
def exported(baked: TransformerBridge, mask: AblationMask, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "edited"
    result = export_checkpoint(
        baked,
        out,
        mask=mask,
        method="bake",
        settings={"mode": "mean", "missing_bias": "add"},
        evaluation={"forget_accuracy": 0.05, "retain_accuracy": 0.97},
        notes="test export",
    )
    assert result == out
    return out


def test_plain_transformers_reloads_the_baked_logits(exported: Path, baked: TransformerBridge, ids: Tensor) -> None:
    reloaded = AutoModelForCausalLM.from_pretrained(exported).eval()  # plain transformers, no loka
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, logits(baked, ids), atol=PARITY, rtol=0)


def test_generate_returns_token_ids(exported: Path, checkpoint: Path, ids: Tensor) -> None:
    """No TransformerLens flag leaks into generation_config.json (generate() would return an object)."""
    generation = exported / "generation_config.json"
    if (checkpoint / "generation_config.json").is_file():
        assert generation.read_bytes() == (checkpoint / "generation_config.json").read_bytes()
    if generation.is_file():
        config = json.loads(generation.read_text())
        assert not any(config.get(flag) for flag in ("output_attentions", "return_dict_in_generate"))
    reloaded = AutoModelForCausalLM.from_pretrained(exported).eval()
    out = reloaded.generate(ids[:1], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert isinstance(out, Tensor) and out.shape == (1, ids.shape[1] + 3)


def test_tied_embeddings_stay_tied(exported: Path, checkpoint: Path) -> None:
    reloaded = AutoModelForCausalLM.from_pretrained(exported)
    source = json.loads((checkpoint / "config.json").read_text())
    assert json.loads((exported / "config.json").read_text()).get("tie_word_embeddings") == source.get(
        "tie_word_embeddings"
    )
    tied = reloaded.get_output_embeddings().weight is reloaded.get_input_embeddings().weight
    assert tied == bool(reloaded.config.tie_word_embeddings)
    if tied:  # GPT-2: the unembedding is the embedding, exactly
        original = AutoModelForCausalLM.from_pretrained(checkpoint)
        assert torch.equal(reloaded.get_output_embeddings().weight, original.get_input_embeddings().weight)


def test_directory_is_an_ordinary_safetensors_checkpoint(exported: Path, checkpoint: Path) -> None:
    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "loka_edit.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    config = json.loads((exported / "config.json").read_text())
    source = json.loads((checkpoint / "config.json").read_text())
    differs = {key for key in config.keys() | source.keys() if config.get(key) != source.get(key)}
    assert differs <= {"mlp_bias", "attention_bias"}  # only Llama's switched-on biases; no TL flags
    assert "output_attentions" not in config
    text = "Marie Curie was born in Warsaw."
    exported_tok, source_tok = AutoTokenizer.from_pretrained(exported), AutoTokenizer.from_pretrained(checkpoint)
    assert exported_tok(text).input_ids == source_tok(text).input_ids
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".edited.")]  # no temp dirs left


def test_loka_edit_json_records_the_edit(
    exported: Path, checkpoint: Path, model: TransformerBridge, baked: TransformerBridge, mask: AblationMask
) -> None:
    record = json.loads((exported / "loka_edit.json").read_text())
    assert record["format"] == "loka-edit" and record["schema_version"] == 1
    assert record["method"] == "bake" and record["settings"] == {"mode": "mean", "missing_bias": "add"}
    assert record["source"] == {"path": str(checkpoint.resolve()), "fingerprint": fingerprint(model).to_dict()}
    assert record["fingerprint"] == fingerprint(baked).to_dict()
    sha = hashlib.sha256((exported / "model.safetensors").read_bytes()).hexdigest()
    assert record["weights_sha256"] == {"model.safetensors": sha}
    assert record["evaluation"] == {"forget_accuracy": 0.05, "retain_accuracy": 0.97}
    assert record["notes"] == "test export"
    assert record["mask"]["file"] == "loka_mask.json" and record["mask"]["total"] == len(mask)
    assert AblationMask.load(exported / record["mask"]["file"]) == mask
    assert fingerprint(AutoModelForCausalLM.from_pretrained(exported)) == fingerprint(baked)


# ---------------------------------------------------------------- bad input: refused, nothing written


def _siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir()}


def test_existing_out_dir_is_refused_unless_overwrite(baked: TransformerBridge, exported: Path, ids: Tensor) -> None:
    before = (exported / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already exists; pass overwrite=True"):
        export_checkpoint(baked, exported)
    assert (exported / "model.safetensors").read_bytes() == before
    siblings = _siblings(exported)
    export_checkpoint(baked, exported, overwrite=True, notes="second")
    assert json.loads((exported / "loka_edit.json").read_text())["notes"] == "second"
    assert _siblings(exported) == siblings  # no temp or backup dirs left


def test_overwrite_only_replaces_a_previous_export(baked: TransformerBridge, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(FileExistsError, match=r"is not a loka export \(no loka_edit.json\)"):
        export_checkpoint(baked, precious, overwrite=True)
    assert (precious / "thesis.txt").read_text() == "do not delete"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        export_checkpoint(baked, tmp_path / "file", overwrite=True)


def test_source_directory_is_always_refused(baked: TransformerBridge, checkpoint: Path) -> None:
    listing = sorted(p.name for p in checkpoint.iterdir())
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="refusing to export onto .*: it is the source checkpoint's own directory"):
            export_checkpoint(baked, checkpoint, overwrite=overwrite)
    with pytest.raises(ValueError, match="it is a directory that contains the source checkpoint"):
        export_checkpoint(baked, checkpoint.parent, overwrite=True)
    assert sorted(p.name for p in checkpoint.iterdir()) == listing
    assert not [n for n in _siblings(checkpoint) if n.startswith(".")]


def test_explicit_source_directory_is_refused(baked: TransformerBridge, tmp_path: Path) -> None:
    other = build_tiny_checkpoint("gpt2", tmp_path / "other_source")
    with pytest.raises(ValueError, match="the source checkpoint's own directory"):
        export_checkpoint(baked, other, source=other, overwrite=True)


def test_unwritable_parent_is_a_clear_error(baked: TransformerBridge, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:  # root ignores permission bits: fall back to a filesystem nobody may create files in
            probe.mkdir()
            probe.rmdir()
            locked = Path("/sys")
            if os.access(locked, os.W_OK) and _can_create(locked):
                pytest.skip("no unwritable directory available here")
        except PermissionError:
            pass
        with pytest.raises(PermissionError, match=r"cannot export to .*: cannot write in"):
            export_checkpoint(baked, locked / "edited")
        assert not (locked / "edited").exists()
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_missing_parents_are_created_and_removed_on_failure(
    baked: TransformerBridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nested = export_checkpoint(baked, tmp_path / "missing" / "deeper" / "edited")  # as save_pretrained does
    assert (nested / "config.json").is_file()

    def refuse(out_dir: Path, what: str) -> Path:
        raise PermissionError(f"cannot export to {out_dir}: cannot write in {out_dir.parent} (simulated)")

    monkeypatch.setattr("ablation.export._temp_dir_beside", refuse)
    with pytest.raises(PermissionError, match=r"cannot write in .* \(simulated\)"):
        export_checkpoint(baked, tmp_path / "gone" / "deeper" / "edited")
    assert not (tmp_path / "gone").exists()


def _can_create(directory: Path) -> bool:
    try:
        (directory / ".loka-probe").mkdir()
    except OSError:
        return False
    (directory / ".loka-probe").rmdir()
    return True


def test_a_failure_midway_leaves_nothing_behind(
    baked: TransformerBridge, mask: AblationMask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_tokenizer(*args: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(ablation.export, "_write_tokenizer", broken_tokenizer)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(baked, tmp_path / "edited", mask=mask)
    assert list(tmp_path.iterdir()) == []
    # replacing a previous export that fails midway keeps the previous export
    monkeypatch.undo()
    previous = export_checkpoint(baked, tmp_path / "edited", notes="previous")
    monkeypatch.setattr(ablation.export, "_write_tokenizer", broken_tokenizer)
    with pytest.raises(OSError, match="disk full"):
        export_checkpoint(baked, previous, overwrite=True)
    assert json.loads((previous / "loka_edit.json").read_text())["notes"] == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["edited"]


def test_bad_arguments_are_refused_before_writing(baked: TransformerBridge, tmp_path: Path) -> None:
    out = tmp_path / "edited"
    with pytest.raises(ValueError, match="settings must be JSON-serialisable"):
        export_checkpoint(baked, out, settings={"lr": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="evaluation must be JSON-serialisable"):
        export_checkpoint(baked, out, evaluation={"auc": float("nan")})
    with pytest.raises(ValueError, match="is not a Hugging Face model directory"):
        export_checkpoint(baked, out, source=tmp_path)
    with pytest.raises(UsageError, match="mask must be an ablation.AblationMask"):
        export_checkpoint(baked, out, mask="mask.json")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="TransformerBridge or a transformers PreTrainedModel"):
        export_checkpoint(torch.nn.Linear(2, 2), out)
    for name in ("loka_edit.json", "../loka_x.json", "notes.json", "loka_x.txt"):
        with pytest.raises(UsageError, match=f"document name {name!r} is not allowed: a plain file name loka_"):
            export_checkpoint(baked, out, documents={name: {}})
    with pytest.raises(UsageError, match="document loka_x.json must be JSON-serialisable"):
        export_checkpoint(baked, out, documents={"loka_x.json": {"auc": float("nan")}})
    assert list(tmp_path.iterdir()) == []


def test_documents_are_written_beside_the_model_and_listed(baked: TransformerBridge, tmp_path: Path) -> None:
    out = export_checkpoint(baked, tmp_path / "edited", documents={"loka_seen.json": {"format": "loka-seen"}})
    assert json.loads((out / "loka_seen.json").read_text()) == {"format": "loka-seen"}
    record = json.loads((out / "loka_edit.json").read_text())
    assert record["documents"] == ["loka_seen.json"] and "loka_seen.json" not in record["weights_sha256"]


def test_plain_hf_model_exports_with_its_source_tokenizer(checkpoint: Path, tmp_path: Path, ids: Tensor) -> None:
    hf = AutoModelForCausalLM.from_pretrained(checkpoint)
    out = export_checkpoint(hf, tmp_path / "copy", source=checkpoint)
    assert (out / "tokenizer.json").read_bytes() == (checkpoint / "tokenizer.json").read_bytes()
    with torch.no_grad():
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(out)(ids).logits, hf(ids).logits, atol=0, rtol=0
        )
    record = json.loads((out / "loka_edit.json").read_text())
    assert record["source"]["fingerprint"] == record["fingerprint"]  # an unedited copy
