"""Placement and precision: ``load_model``'s device, dtype and device_map, and ``input_device``.

This machine has one CPU and no GPU, so a map that splits the blocks over two devices cannot be
built here; what can be checked is that every way of asking for the CPU (``device="cpu"``,
``device_map={"": "cpu"}``, ``device_map="auto"``, a per-module map, a map that offloads a
block or the embedding to disk) gives the default model's logits exactly, that bfloat16 runs the
HF model's own bfloat16 forward, that attribution scores in bfloat16 rank components as float32
does, and that bad inputs are one-line UsageErrors naming what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr
from torch import Tensor
from transformers import AutoModelForCausalLM

import attribution
from loka.base.errors import UsageError
from loka.data import Prompts
from loka.models import DTYPES, input_device, load_model, logits, resolve_dtype
from tests.checkpoints import ARCHITECTURES, VOCAB_SIZE, build_tiny_checkpoint

LLAMA_MODULES = ("model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "model.rotary_emb", "lm_head")


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint("llama", tmp_path_factory.mktemp("llama-devices"))


@pytest.fixture(scope="module")
def input_ids() -> Tensor:
    return torch.randint(0, VOCAB_SIZE, (2, 10), generator=torch.Generator().manual_seed(0))


def _logits(model, ids: Tensor) -> Tensor:
    with torch.no_grad():
        return logits(model, ids)


def test_bfloat16_equals_hf_bfloat16_forward(checkpoint: Path, input_ids: Tensor) -> None:
    model = load_model(checkpoint, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = hf(input_ids).logits
    actual = _logits(model, input_ids)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual.float(), expected.float(), atol=1e-2, rtol=0)
    # and bfloat16 is a rounding of float32, not another model
    full = _logits(load_model(checkpoint), input_ids)
    assert (actual.float() - full).abs().max() < 0.05 * full.abs().max()


@pytest.mark.parametrize(
    "placement",
    [{"device": "cpu"}, {"device": torch.device("cpu")}, {"device_map": {"": "cpu"}}, {"device_map": "auto"}],
    ids=["device", "torch-device", "map-all-cpu", "map-auto"],
)
def test_every_cpu_placement_gives_the_default_logits(llama_dir: Path, input_ids: Tensor, placement: dict) -> None:
    reference = _logits(load_model(llama_dir), input_ids)
    model = load_model(llama_dir, **placement)
    assert input_device(model) == torch.device("cpu")
    assert torch.equal(_logits(model, input_ids), reference)


@pytest.mark.parametrize("offloaded", ["model.layers.1", "model.embed_tokens"])
def test_per_module_map_with_disk_offload(llama_dir: Path, input_ids: Tensor, offloaded: str) -> None:
    """A hand-written map (accelerate dispatches it and hooks every module): the same logits. When
    the embedding itself is offloaded its weight sits on ``meta`` between calls, so the first
    parameter's device says nothing about where inputs go; ``input_device`` still says the CPU."""
    reference = _logits(load_model(llama_dir), input_ids)
    device_map = {name: "cpu" for name in LLAMA_MODULES} | {offloaded: "disk"}
    model = load_model(llama_dir, device_map=device_map)
    assert model.original_model.hf_device_map[offloaded] == "disk"
    assert input_device(model) == torch.device("cpu")
    if offloaded == "model.embed_tokens":
        assert next(model.parameters()).device == torch.device("meta")  # why input_device exists
    torch.testing.assert_close(_logits(model, input_ids), reference, atol=1e-6, rtol=0)


def test_input_device_of_plain_hf_model_and_prompt_batches(llama_dir: Path, tiny_testbed) -> None:
    hf = AutoModelForCausalLM.from_pretrained(llama_dir)
    assert input_device(hf) == torch.device("cpu")
    model = load_model(tiny_testbed.model_dir)
    prompts = Prompts.of(tiny_testbed.forget)
    for _, batch in prompts.batches(model, batch_size=8):
        assert batch.input_ids.device == input_device(model)


def test_dtype_names_and_torch_dtypes() -> None:
    assert resolve_dtype(None) is torch.float32
    for name, dtype in DTYPES.items():
        assert resolve_dtype(name) is dtype and resolve_dtype(dtype) is dtype
    assert resolve_dtype("torch.bfloat16") is torch.bfloat16


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "float64"}, "dtype 'float64' is not supported; use one of float32, bfloat16, float16"),
        ({"dtype": torch.int8}, "use one of float32, bfloat16, float16"),
        ({"dtype": "fp16"}, "use one of float32, bfloat16, float16"),
        ({"device": "gpu0"}, "device 'gpu0' is not a torch device"),
        ({"device": "cpu", "device_map": "auto"}, "give device or device_map, not both"),
        ({"max_memory": {"cpu": "1GiB"}}, "give device_map"),
        ({"device_map": "everywhere"}, "use one of auto, balanced, balanced_low_0, sequential"),
        ({"device_map": {}}, "non-empty dict"),
        ({"device_map": {"model": 1.5}}, "use a device such as"),
    ],
)
def test_bad_placement_is_a_one_line_usage_error(llama_dir: Path, options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        load_model(llama_dir, **options)
    assert "\n" not in str(raised.value)


def test_unavailable_device_is_a_usage_error(llama_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError, match="could not load"):
        load_model(llama_dir, device="cuda")


def test_bfloat16_attribution_ranks_like_float32(tiny_testbed) -> None:
    """grad x act on a bfloat16 model, accumulated in float32 by attribution, ranks neurons and
    heads as the float32 model does."""
    facts = tiny_testbed.forget
    options = dict(method="grad_x_act", baseline="zero", progress=False)
    full = attribution.attribute(load_model(tiny_testbed.model_dir), facts, **options)
    half = attribution.attribute(load_model(tiny_testbed.model_dir, dtype="bfloat16"), facts, **options)
    for kind in ("neurons", "heads"):
        a, b = full.of(kind), half.of(kind)
        assert b.dtype == torch.float32 and torch.isfinite(b).all()
        rho = spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic
        assert rho >= 0.95, (kind, rho)


@pytest.mark.parametrize("command", ["locate", "ablate", "unlearn", "evaluate", "certify", "compare", "update"])
def test_cli_placement_flags(llama_dir: Path, command: str) -> None:
    """Every command that loads a model takes --device, --dtype and --device-map to load_model."""
    from loka.cli import common
    from loka.cli import parser as cli_parser

    required = {
        "locate": ["M", "--forget", "f", "--out", "o"],
        "ablate": ["M", "mask.json", "--out", "o"],
        "unlearn": ["M", "--forget", "f", "--retain", "r", "--method", "loka", "--out", "o"],
        "evaluate": ["M", "--forget", "f", "--retain", "r", "--holdout", "h"],
        "certify": ["M", "M", "--forget", "f", "--reference", "u", "--out", "o"],
        "compare": ["--model", "M"],
        "update": ["M", "--updates", "u", "--retain", "r", "--out", "o"],
    }[command]
    parser = cli_parser.build_parser()
    args = parser.parse_args([command, *required, "--dtype", "bfloat16", "--device-map", "auto"])
    model = common.read_model(str(llama_dir), args)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    args = parser.parse_args([command, *required, "--device", "cpu"])
    assert (args.device, args.dtype, args.device_map) == ("cpu", None, None)
    with pytest.raises(UsageError, match="not both"):
        common.read_model(
            str(llama_dir), parser.parse_args([command, *required, "--device", "cpu", "--device-map", "auto"])
        )
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required, "--dtype", "float64"])
