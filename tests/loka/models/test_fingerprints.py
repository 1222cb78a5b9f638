"""Fingerprint caching: the weights are hashed once per set of weights, streamed one tensor at a time."""

from __future__ import annotations

import gc
import hashlib
import weakref
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM

from loka.models import fingerprints, head_output_weights, hf_model, hf_state_dict, load_model, neuron_output_weights
from loka.models.fingerprints import fingerprint
from loka.models.weights import get_tensor
from tests.checkpoints import build_tiny_checkpoint

ARCHS = ("gpt2", "gpt_neox")


@pytest.fixture(scope="module", params=ARCHS)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


def load_hf(path: Path) -> nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def reference_sha256(model: object) -> str:
    """The scheme loka has always used: one host copy per tensor, sorted names, name/dtype/shape/bytes."""
    digest = hashlib.sha256()
    state = hf_state_dict(model)
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


class Counter:
    """Wraps ``_hash_tensor``: counts calls and records what each call was given."""

    def __init__(self) -> None:
        self.inner = fingerprints._hash_tensor
        self.seen: list[tuple[str, Tensor]] = []

    def __call__(self, digest: object, name: str, tensor: Tensor) -> None:
        self.seen.append((name, tensor))
        self.inner(digest, name, tensor)

    @property
    def calls(self) -> int:
        return len(self.seen)


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> Counter:
    c = Counter()
    monkeypatch.setattr(fingerprints, "_hash_tensor", c)
    return c


def test_value_is_unchanged_from_the_uncached_scheme(checkpoint: Path) -> None:
    bridge = load_model(checkpoint)
    assert fingerprint(bridge).weights_sha256 == reference_sha256(bridge)
    bf16 = load_hf(checkpoint).to(torch.bfloat16)
    assert fingerprint(bf16).weights_sha256 == reference_sha256(bf16)
    assert fingerprint(bf16) != fingerprint(bridge)


def test_hashes_once_per_set_of_weights(checkpoint: Path, counter: Counter) -> None:
    bridge = load_model(checkpoint)
    n_tensors = len(hf_state_dict(bridge))
    first = fingerprint(bridge)
    assert counter.calls == n_tensors
    assert fingerprint(bridge) == first
    assert fingerprint(hf_model(bridge)) == first  # a bridge and its HF model share the entry
    assert counter.calls == n_tensors


def test_in_place_edit_invalidates(checkpoint: Path, counter: Counter) -> None:
    model = load_hf(checkpoint)
    n_tensors = len(hf_state_dict(model))
    before = fingerprint(model)
    with torch.no_grad():
        neuron_output_weights(model, 1, 3).of(model).zero_()  # an in-place write through a view
    after = fingerprint(model)
    assert after.weights_sha256 != before.weights_sha256
    assert after.weights_sha256 == reference_sha256(model)
    assert counter.calls == 2 * n_tensors
    assert fingerprint(model) == after
    assert counter.calls == 2 * n_tensors


def test_optimizer_step_invalidates_a_bridge(checkpoint: Path) -> None:
    bridge = load_model(checkpoint)
    before = fingerprint(bridge)
    weight = get_tensor(hf_model(bridge), head_output_weights(bridge, 0, 1).name)
    optimizer = torch.optim.SGD([weight], lr=0.1)
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    after = fingerprint(bridge)
    assert after != before
    assert after.weights_sha256 == reference_sha256(bridge)


def test_replaced_parameter_invalidates(checkpoint: Path) -> None:
    model = load_hf(checkpoint)
    before = fingerprint(model)
    module = model.get_output_embeddings()
    module.weight = nn.Parameter(module.weight.detach() + 1.0)  # a new tensor, version 0
    assert fingerprint(model).weights_sha256 == reference_sha256(model) != before.weights_sha256


def test_refresh_sees_writes_through_data(checkpoint: Path, counter: Counter) -> None:
    model = load_hf(checkpoint)
    before = fingerprint(model)
    next(model.parameters()).data.mul_(2.0)  # `.data` does not share the version counter
    assert fingerprint(model) == before  # the documented blind spot
    assert fingerprint(model, refresh=True).weights_sha256 == reference_sha256(model) != before.weights_sha256


def test_copy_with_equal_weights_has_the_same_fingerprint(checkpoint: Path) -> None:
    bridge = load_model(checkpoint)
    plain = load_hf(checkpoint)
    assert fingerprint(bridge) == fingerprint(plain) == fingerprint(load_model(checkpoint))
    copy = load_hf(checkpoint)
    with torch.no_grad():
        for p in copy.parameters():  # rewrite every weight with the same values: new versions
            p.copy_(p.clone())
    assert fingerprint(copy) == fingerprint(plain)


def test_streams_one_live_tensor_at_a_time(checkpoint: Path, counter: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner function gets one tensor per call, the live one (no host copy of a CPU model),
    and chunked reads give the same value as one read."""
    model = load_hf(checkpoint)
    live = {p.data_ptr() for p in model.parameters()} | {b.data_ptr() for b in model.buffers()}
    whole = fingerprint(model)
    largest = max(t.numel() for t in hf_state_dict(model).values())
    assert counter.calls == len(hf_state_dict(model))
    for _name, tensor in counter.seen:
        assert tensor.numel() <= largest
        assert tensor.data_ptr() in live  # the parameter itself, not a copy
    monkeypatch.setattr(fingerprints, "CHUNK_BYTES", 100)  # many slices per tensor
    assert fingerprint(model, refresh=True) == whole


def test_cache_does_not_keep_a_model_alive(checkpoint: Path) -> None:
    model = load_hf(checkpoint)
    fingerprint(model)
    assert model in fingerprints._CACHE
    alive = weakref.ref(model)  # other tests' models may be collected at the same time: count only this one
    del model
    gc.collect()
    assert alive() is None
