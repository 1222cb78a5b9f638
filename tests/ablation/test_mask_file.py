"""ablation.mask_file: masks as readable JSON (+ safetensors values) round-trip exactly; bad files fail clearly."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ablation import AblationMask
from ablation.mask_file import values_path
from loka.models import ModelFingerprint

FINGERPRINT = ModelFingerprint("gpt2", 2, 4, 64, 300, "ab" * 32)


@st.composite
def masks(draw: st.DrawFn) -> AblationMask:
    n_layers = draw(st.integers(1, 4))
    d_mlp, n_heads, d_head = draw(st.integers(1, 12)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    has_neurons, has_heads = draw(st.sampled_from([(True, True), (True, False), (False, True)]))
    mode = draw(st.sampled_from(["zero", "mean", "scale", "resample"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)

    def bools(shape: tuple[int, ...]) -> torch.Tensor:
        flat = draw(st.lists(st.booleans(), min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]))
        return torch.tensor(flat, dtype=torch.bool).reshape(shape)

    def values(shape: tuple[int, ...]) -> torch.Tensor:
        n = int(torch.tensor(shape).prod())
        return torch.tensor(draw(st.lists(floats, min_size=n, max_size=n))).reshape(shape).to(dtype)

    neurons = bools((n_layers, d_mlp)) if has_neurons else None
    heads = bools((n_layers, n_heads)) if has_heads else None
    kwargs: dict[str, Any] = {}
    if mode == "mean":
        kwargs["neuron_means"] = values((n_layers, d_mlp)) if has_neurons else None
        kwargs["head_means"] = values((n_layers, n_heads, d_head)) if has_heads else None
    if mode == "scale":
        kwargs["neuron_scales"] = values((n_layers, d_mlp)) if has_neurons else None
        kwargs["head_scales"] = values((n_layers, n_heads)) if has_heads else None
    fp = draw(st.sampled_from([None, FINGERPRINT]))
    return AblationMask(neurons, heads, mode=mode, fingerprint=fp, **kwargs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks())
def test_save_load_round_trips_exactly(mask: AblationMask) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mask.json"
        mask.save(path)
        loaded = AblationMask.load(path)
        assert loaded == mask
        for name in ("neuron_means", "head_means", "neuron_scales", "head_scales"):
            a, b = getattr(mask, name), getattr(loaded, name)
            assert (a is None) == (b is None) and (a is None or (a.dtype == b.dtype and torch.equal(a, b)))
        text, values = path.read_bytes(), values_path(path)
        stored = values.read_bytes() if values.exists() else None
        loaded.save(path)  # saving what was loaded writes the same bytes
        assert path.read_bytes() == text
        assert (values.read_bytes() if values.exists() else None) == stored


def _scale_mask() -> AblationMask:
    neurons = torch.zeros(2, 8, dtype=torch.bool)
    neurons[0, [1, 5]] = True
    neurons[1, 7] = True
    heads = torch.zeros(2, 4, dtype=torch.bool)
    heads[1, 2] = True
    return AblationMask(neurons, heads, fingerprint=FINGERPRINT).with_mode("scale", scale=0.5)


def test_file_is_readable_json_with_indices_per_layer(tmp_path: Path) -> None:
    path = _scale_mask().save(tmp_path / "forget.json")
    data = json.loads(path.read_text())
    assert data["format"] == "loka-ablation-mask" and data["schema_version"] == 1
    assert data["mode"] == "scale" and data["fingerprint"] == FINGERPRINT.to_dict()
    assert data["neurons"] == [[1, 5], [7]] and data["heads"] == [[], [2]]
    assert data["values"]["file"] == "forget.safetensors" and (tmp_path / "forget.safetensors").is_file()
    assert data["values"]["tensors"] == ["neuron_scales", "head_scales"]
    assert '  "neurons": [\n    [1, 5],\n    [7]\n  ],\n' in path.read_text()  # one line per layer
    zero = AblationMask(torch.zeros(2, 8, dtype=torch.bool), None).save(tmp_path / "zero.json")
    assert json.loads(zero.read_text())["values"] is None and not (tmp_path / "zero.safetensors").exists()


def _write(tmp_path: Path, change: dict[str, Any]) -> Path:
    path = _scale_mask().save(tmp_path / "mask.json")
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))
    return path


def test_bad_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "mask.json"
    path.write_text('{"format": "loka-ablation-mask", "schema_version": 1,')
    with pytest.raises(ValueError, match=r"mask file .*mask.json: not valid JSON \(.* at line 1, column \d+\)"):
        AblationMask.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a loka ablation mask"):
        AblationMask.load(path)
    with pytest.raises(ValueError, match="cannot read mask file"):
        AblationMask.load(tmp_path / "missing.json")


def test_unknown_schema_version_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown schema version 2; this version of loka reads schema version 1"):
        AblationMask.load(_write(tmp_path, {"schema_version": 2}))


def test_out_of_range_index_names_the_entry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"neurons\[1\]: L1N8 is out of range \(d_mlp = 8\)"):
        AblationMask.load(_write(tmp_path, {"neurons": [[1], [8, 9]]}))
    with pytest.raises(ValueError, match=r"heads\[0\]: L0H1 is listed twice"):
        AblationMask.load(_write(tmp_path, {"heads": [[1, 1], []]}))
    with pytest.raises(ValueError, match=r"neurons\[0\] holds '3', which is not an integer index"):
        AblationMask.load(_write(tmp_path, {"neurons": [["3"], []]}))
    with pytest.raises(ValueError, match="one list of indices per layer"):
        AblationMask.load(_write(tmp_path, {"neurons": [[1]]}))


def test_unknown_mode_and_missing_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown ablation mode 'erase'; use one of \('zero', 'mean', 'scale', 'resample'\)"
    ):
        AblationMask.load(_write(tmp_path, {"mode": "erase"}))
    path = _write(tmp_path, {})
    data = json.loads(path.read_text())
    del data["heads"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"missing keys \['heads'\]"):
        AblationMask.load(path)
    with pytest.raises(ValueError, match="bad fingerprint"):
        AblationMask.load(_write(tmp_path, {"fingerprint": {"architecture": "gpt2"}}))


def test_mean_mode_without_means_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode 'mean' needs neuron_means for the ablated neurons"):
        AblationMask.load(_write(tmp_path, {"mode": "mean", "values": None}))


def test_missing_or_changed_values_file_is_rejected(tmp_path: Path) -> None:
    path = _scale_mask().save(tmp_path / "mask.json")
    values = values_path(path)
    stored = values.read_bytes()
    values.unlink()
    with pytest.raises(ValueError, match=r"values file .*mask.safetensors does not exist"):
        AblationMask.load(path)
    values.write_bytes(stored[:-1] + b" ")
    with pytest.raises(ValueError, match="does not match the sha256 recorded in the mask"):
        AblationMask.load(path)


def test_values_file_name_must_stay_beside_the_mask(tmp_path: Path) -> None:
    path = _scale_mask().save(tmp_path / "mask.json")
    data = json.loads(path.read_text())
    data["values"]["file"] = "../elsewhere.safetensors"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="must be a .safetensors file name beside the mask"):
        AblationMask.load(path)
    with pytest.raises(ValueError, match="name the JSON file"):
        _scale_mask().save(tmp_path / "mask.safetensors")
