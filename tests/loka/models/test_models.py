"""loka.models: loading through TransformerLens, component weight slices, fingerprints."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer, OPTConfig, OPTForCausalLM

from loka.base.errors import UsageError
from loka.models import (
    SUPPORTED_ARCHITECTURES,
    ModelFingerprint,
    WeightSlice,
    architecture,
    fingerprint,
    head_output_weights,
    hf_model,
    hf_state_dict,
    load_model,
    logits,
    neuron_input_weights,
    neuron_output_weights,
)
from loka.models.forward import shared_forwards
from tests.checkpoints import (
    ARCHITECTURES,
    D_MLP,
    D_MODEL,
    N_HEADS,
    N_LAYERS,
    VOCAB_SIZE,
    build_tiny_checkpoint,
)

D_HEAD = D_MODEL // N_HEADS


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def bridge(checkpoint: Path) -> TransformerBridge:
    """Shared, never mutated: tests that edit weights load their own model."""
    return load_model(checkpoint)


@pytest.fixture(scope="module")
def input_ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (3, 12), generator=torch.Generator().manual_seed(0))


def load_hf(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def ablated_logits(model: TransformerBridge, ids: Tensor, hook_name: str, index: int) -> Tensor:
    """Logits with ``hook_name``'s activation zeroed at ``index``: a neuron of ``mlp.hook_post``
    ``[batch, pos, d_mlp]``, or a head of ``attn.hook_z`` ``[batch, pos, n_heads, d_head]``."""

    def zero(activation: Tensor, hook: object) -> Tensor:
        activation = activation.clone()
        if hook_name.endswith("hook_z"):
            activation[:, :, index, :] = 0.0
        else:
            activation[:, :, index] = 0.0
        return activation

    with torch.no_grad():
        return model.run_with_hooks(ids, return_type="logits", fwd_hooks=[(hook_name, zero)])


# ---------------------------------------------------------------- loading and hooks


def test_load_model_logits_equal_hf_eager(checkpoint: Path, bridge: TransformerBridge, input_ids: Tensor) -> None:
    assert isinstance(bridge, TransformerBridge)
    assert not bridge.training and not hf_model(bridge).training
    with torch.no_grad():
        expected = load_hf(checkpoint)(input_ids).logits
        actual = bridge(input_ids, return_type="logits")
    assert actual.shape == (3, 12, VOCAB_SIZE)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_gpt2_activation_runs_fused_in_float32_and_as_transformers_in_bfloat16(checkpoint: Path) -> None:
    from transformers.activations import NewGELUActivation

    from loka.models.activations import FusedGELUTanh, fuse_activations

    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    torch.testing.assert_close(FusedGELUTanh()(x), NewGELUActivation()(x), atol=1e-12, rtol=0)
    gelu_new = json.loads((checkpoint / "config.json").read_text()).get("activation_function") == "gelu_new"
    kinds = lambda m: {type(x) for x in hf_model(m).modules()}  # noqa: E731
    assert (FusedGELUTanh in kinds(load_model(checkpoint))) == gelu_new
    assert NewGELUActivation not in kinds(load_model(checkpoint))
    assert FusedGELUTanh not in kinds(load_model(checkpoint, dtype="bfloat16"))
    hf = load_hf(checkpoint)
    assert fuse_activations(hf) == (N_LAYERS if gelu_new else 0) and fuse_activations(hf) == 0


def test_component_hooks_fire_for_every_layer(bridge: TransformerBridge, input_ids: Tensor) -> None:
    assert (bridge.cfg.n_layers, bridge.cfg.d_mlp, bridge.cfg.n_heads, bridge.cfg.d_head) == (
        N_LAYERS,
        D_MLP,
        N_HEADS,
        D_HEAD,
    )
    with torch.no_grad():
        _, cache = bridge.run_with_cache(input_ids)
    for layer in range(N_LAYERS):
        assert cache[f"blocks.{layer}.mlp.hook_post"].shape == (3, 12, D_MLP)
        assert cache[f"blocks.{layer}.attn.hook_z"].shape == (3, 12, N_HEADS, D_HEAD)


def test_tokenizer_pads_batches(bridge: TransformerBridge) -> None:
    tokenizer = bridge.tokenizer
    batch = tokenizer(["a", "a longer prompt"], padding=True, return_tensors="pt")
    pad = batch["attention_mask"] == 0
    assert pad[0].any() and not pad[1].any()
    assert (batch["input_ids"][pad] == tokenizer.pad_token_id).all()


def test_load_model_sets_missing_pad_token_to_eos(tmp_path: Path) -> None:
    path = build_tiny_checkpoint("gpt2", tmp_path / "gpt2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).pad_token is None
    model = load_model(path)
    assert model.tokenizer.pad_token == model.tokenizer.eos_token == "<|endoftext|>"


# ---------------------------------------------------------------- logits()


def test_logits_helper_equals_bridge_and_hf(checkpoint: Path, bridge: TransformerBridge, input_ids: Tensor) -> None:
    hf = load_hf(checkpoint)
    with torch.no_grad():
        plain = logits(bridge, input_ids)
        torch.testing.assert_close(plain, bridge(input_ids, return_type="logits"), atol=0, rtol=0)
        torch.testing.assert_close(logits(hf, input_ids), hf(input_ids).logits, atol=0, rtol=0)
        torch.testing.assert_close(plain, logits(hf, input_ids), atol=1e-4, rtol=0)


def test_logits_helper_passes_mask_and_positions(
    checkpoint: Path, bridge: TransformerBridge, input_ids: Tensor
) -> None:
    hf = load_hf(checkpoint)
    # left padding: row 1 starts with 4 pad positions
    mask = torch.ones_like(input_ids)
    mask[1, :4] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    real = mask.bool()
    with torch.no_grad():
        padded = logits(bridge, input_ids, attention_mask=mask, position_ids=positions)
        torch.testing.assert_close(
            padded[real],
            logits(hf, input_ids, attention_mask=mask, position_ids=positions)[real],
            atol=1e-4,
            rtol=0,
        )
        # the padded row's real tokens see what the same tokens alone see
        alone = logits(bridge, input_ids[1:2, 4:])
        torch.testing.assert_close(padded[1, 4:], alone[0], atol=1e-4, rtol=0)

        # gapped positions without a mask: still one causal sequence per row (not "packed")
        gapped = torch.tensor([[0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23]]).expand(3, -1)
        moved = logits(bridge, input_ids, position_ids=gapped)
        torch.testing.assert_close(moved, logits(hf, input_ids, position_ids=gapped), atol=1e-4, rtol=0)
        ones = torch.ones_like(input_ids)
        torch.testing.assert_close(
            moved, hf(input_ids, attention_mask=ones, position_ids=gapped).logits, atol=1e-4, rtol=0
        )
    # position_ids really reach the model: the gaps change the output
    assert (moved - logits(bridge, input_ids).detach()).abs().max() > 1e-2


def test_logits_keeps_gradients(bridge: TransformerBridge, input_ids: Tensor) -> None:
    out = logits(bridge, input_ids)
    assert out.requires_grad
    with torch.no_grad():
        assert not logits(bridge, input_ids).requires_grad


def test_shared_forwards_run_equal_inputs_once_with_the_same_gradients(bridge: TransformerBridge, input_ids: Tensor):
    """Inside ``shared_forwards`` two losses on equal inputs read one forward; their gradient is the
    gradient of two separate forwards; other inputs, grad modes and models run their own."""
    hf = hf_model(bridge)
    params = [p for p in hf.parameters() if p.requires_grad]

    def grads(shared: bool) -> list[Tensor]:
        hf.zero_grad(set_to_none=True)
        with shared_forwards() if shared else contextlib.nullcontext():
            first = logits(hf, input_ids)
            again = logits(hf, input_ids.clone())
            assert (again is first) == shared
            other = logits(hf, input_ids[:, :-1])
            assert other is not first
            with torch.no_grad():
                assert not logits(hf, input_ids).requires_grad
        (first.logsumexp(-1).mean() + 2 * again.log_softmax(-1)[..., 0].mean() + other.mean()).backward()
        return [p.grad.clone() for p in params if p.grad is not None]

    for a, b in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    with shared_forwards():
        assert logits(bridge, input_ids) is not logits(hf, input_ids)  # another model object: its own forward


# ---------------------------------------------------------------- weight slices


def test_architecture_and_hf_model(checkpoint: Path, bridge: TransformerBridge) -> None:
    hf = load_hf(checkpoint)
    assert hf_model(bridge) is bridge.original_model
    assert hf_model(hf) is hf
    assert architecture(bridge) is architecture(hf) is SUPPORTED_ARCHITECTURES[hf.config.model_type]
    with pytest.raises(UsageError, match="TransformerBridge or a transformers PreTrainedModel"):
        hf_model(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_architecture_rejects_unsupported_model_type() -> None:
    config = OPTConfig(
        vocab_size=50,
        hidden_size=16,
        word_embed_proj_dim=16,
        ffn_dim=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=16,
    )
    with pytest.raises(ValueError, match=r"model_type 'opt'.*'gpt2', 'gpt_neox', 'llama'"):
        architecture(OPTForCausalLM(config))


def test_spec_names_exist_in_hf_state_dict(checkpoint: Path) -> None:
    state = load_hf(checkpoint).state_dict()
    spec = SUPPORTED_ARCHITECTURES[json.loads((checkpoint / "config.json").read_text())["model_type"]]
    for layer in range(N_LAYERS):
        assert state[spec.name(spec.mlp_out_weight, layer)].shape[spec.mlp_out_neuron_dim] == D_MLP
        assert state[spec.name(spec.attn_out_weight, layer)].shape[spec.attn_out_head_dim] == N_HEADS * D_HEAD
        for template in spec.mlp_in_weights:
            assert state[spec.name(template, layer)].shape[spec.mlp_in_neuron_dim] == D_MLP
        for template in spec.mlp_in_biases:
            assert state[spec.name(template, layer)].shape == (D_MLP,)
        for template in (spec.mlp_out_bias, spec.attn_out_bias):
            if template is not None:
                assert state[spec.name(template, layer)].shape == (D_MODEL,)


@pytest.mark.parametrize(("layer", "index"), [(0, 5), (1, D_MLP - 1)])
def test_zeroing_neuron_output_weights_equals_zero_ablating_hook_post(
    checkpoint: Path, bridge: TransformerBridge, input_ids: Tensor, layer: int, index: int
) -> None:
    expected = ablated_logits(bridge, input_ids, f"blocks.{layer}.mlp.hook_post", index)
    original = logits(bridge, input_ids).detach()
    assert (expected - original).abs().max() > 1e-3  # the ablation is not a no-op

    weights = neuron_output_weights(bridge, layer, index)
    assert weights == WeightSlice(weights.name, weights.dim, index, index + 1)
    for edited in (
        load_hf(checkpoint),
        load_model(checkpoint),
    ):  # plain HF, and in place in a bridge
        view = weights.of(edited)
        assert view.numel() == D_MODEL and view.abs().sum() > 0
        with torch.no_grad():
            view.zero_()
            torch.testing.assert_close(logits(edited, input_ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("layer", "head"), [(0, 1), (1, N_HEADS - 1)])
def test_zeroing_head_output_weights_equals_zero_ablating_hook_z(
    checkpoint: Path, bridge: TransformerBridge, input_ids: Tensor, layer: int, head: int
) -> None:
    expected = ablated_logits(bridge, input_ids, f"blocks.{layer}.attn.hook_z", head)
    original = logits(bridge, input_ids).detach()
    assert (expected - original).abs().max() > 1e-3

    weights = head_output_weights(bridge, layer, head)
    assert (weights.start, weights.stop) == (head * D_HEAD, (head + 1) * D_HEAD)
    for edited in (load_hf(checkpoint), load_model(checkpoint)):
        view = weights.of(edited)
        assert view.numel() == D_HEAD * D_MODEL
        with torch.no_grad():
            view.zero_()
            torch.testing.assert_close(logits(edited, input_ids), expected, atol=1e-5, rtol=0)


def test_zeroing_neuron_input_weights_also_silences_the_neuron(
    checkpoint: Path, bridge: TransformerBridge, input_ids: Tensor
) -> None:
    # gelu(0) = silu(0) = 0: a neuron whose pre-activation is 0 outputs 0.
    layer, index = 1, 9
    expected = ablated_logits(bridge, input_ids, f"blocks.{layer}.mlp.hook_post", index)
    edited = load_hf(checkpoint)
    with torch.no_grad():
        for weights in neuron_input_weights(edited, layer, index):
            weights.of(edited).zero_()
        torch.testing.assert_close(logits(edited, input_ids), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: neuron_output_weights(m, N_LAYERS, 0), r"layer must be in range\(0, 2\)"),
        (lambda m: neuron_output_weights(m, -1, 0), r"layer must be in range\(0, 2\)"),
        (lambda m: neuron_output_weights(m, 0, D_MLP), r"neuron index must be in range\(0, 64\)"),
        (lambda m: neuron_input_weights(m, 0, -1), r"neuron index must be in range\(0, 64\)"),
        (lambda m: head_output_weights(m, 0, N_HEADS), r"head must be in range\(0, 4\)"),
        (lambda m: head_output_weights(m, 2, 0), r"layer must be in range\(0, 2\)"),
    ],
)
def test_out_of_range_components_raise(bridge: TransformerBridge, make: Callable, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(bridge)


# ---------------------------------------------------------------- state dict and fingerprint


def test_hf_state_dict_of_bridge_equals_hf_and_round_trips(
    checkpoint: Path, bridge: TransformerBridge, input_ids: Tensor, tmp_path: Path
) -> None:
    expected = load_hf(checkpoint).state_dict()
    actual = hf_state_dict(bridge)
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, atol=0, rtol=0)
    hf_model(bridge).save_pretrained(tmp_path, state_dict=actual)
    with torch.no_grad():
        torch.testing.assert_close(logits(load_hf(tmp_path), input_ids), logits(bridge, input_ids), atol=1e-4, rtol=0)


def test_fingerprint_identifies_weights(checkpoint: Path, bridge: TransformerBridge) -> None:
    first = fingerprint(bridge)
    assert first == fingerprint(load_model(checkpoint)) == fingerprint(load_hf(checkpoint))
    sizes = (first.n_layers, first.n_heads, first.d_mlp, first.d_vocab)
    assert sizes == (N_LAYERS, N_HEADS, D_MLP, VOCAB_SIZE)
    assert first.architecture == architecture(bridge).model_type
    assert len(first.weights_sha256) == 64

    edited = load_hf(checkpoint)
    with torch.no_grad():
        head_output_weights(edited, 1, 0).of(edited)[0, 0] += 1e-3
    assert fingerprint(edited).weights_sha256 != first.weights_sha256


def test_fingerprint_of_checkpoint_depends_on_seed_only(checkpoint: Path, tmp_path: Path) -> None:
    arch = architecture(load_hf(checkpoint)).model_type
    again = build_tiny_checkpoint(arch, tmp_path / "again")  # type: ignore[arg-type]
    other = build_tiny_checkpoint(arch, tmp_path / "other", seed=1)  # type: ignore[arg-type]
    assert fingerprint(load_hf(again)) == fingerprint(load_hf(checkpoint))
    assert fingerprint(load_hf(other)) != fingerprint(load_hf(checkpoint))


def test_fingerprint_dict_round_trip(bridge: TransformerBridge) -> None:
    fp = fingerprint(bridge)
    data = json.loads(json.dumps(fp.to_dict()))
    assert ModelFingerprint.from_dict(data) == fp
    with pytest.raises(ValueError, match=r"missing \['weights_sha256'\]"):
        ModelFingerprint.from_dict({k: v for k, v in data.items() if k != "weights_sha256"})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        ModelFingerprint.from_dict({**data, "extra": 1})


# ---------------------------------------------------------------- bad inputs to load_model


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("gpt2", tmp_path_factory.mktemp("bad_inputs") / "gpt2")


def test_missing_paths_raise_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in (
        tmp_path / "nope",
        str(tmp_path / "nope"),
        "./nope",
        "../nope",
        "~/loka-no-such-model",
    ):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            load_model(path)
    # "models/tiny" could be a hub id, but "models" exists here, so it is a missing path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match=r"'models/tiny' does not exist"):
        load_model("models/tiny")


def test_directory_that_is_not_a_model_raises_file_not_found(tmp_path: Path, gpt2_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="is a file"):
        load_model(gpt2_dir / "config.json")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(gpt2_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model(no_weights)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(gpt2_dir, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_model(no_tokenizer)


def test_unsupported_architecture_raises_value_error(tmp_path: Path, gpt2_dir: Path) -> None:
    shutil.copytree(gpt2_dir, tmp_path / "bert")
    config = json.loads((gpt2_dir / "config.json").read_text())
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(
        ValueError,
        match=r"model_type 'bert'.*supported model types are 'gpt2', 'gpt_neox', 'llama'",
    ):
        load_model(tmp_path / "bert")


def test_unreachable_hub_id_raises_value_error_quickly() -> None:
    # No network here (fails at once, no retries); with network the repo does not exist.
    # Either way nothing is downloaded.
    with pytest.raises(ValueError, match=r"could not be loaded from the Hugging Face hub.*local model directory"):
        load_model("loka-tests/no-such-model-for-loka-tests")


def test_hub_id_in_offline_mode_raises_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="offline mode is on and it is not in the local cache"):
        load_model("loka-tests/no-such-model-for-loka-tests")
