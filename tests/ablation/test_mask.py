"""ablation.mask: building masks, choosing components from scores, set algebra, validation, plots."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pytest
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ablation import AblationMask, MeanActivations
from loka.base.components import Component
from loka.base.errors import UsageError
from loka.models import ModelFingerprint, fingerprint, load_model
from tests.checkpoints import D_MLP, N_HEADS, N_LAYERS, build_tiny_checkpoint

D_HEAD = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TransformerBridge:
    return load_model(build_tiny_checkpoint("gpt2", tmp_path_factory.mktemp("mask") / "gpt2"))


@dataclass(frozen=True)
class StandInScores:
    """What from_scores needs of attribution.AttributionScores: .neurons / .heads (+ fingerprint)."""

    neurons: Tensor | None
    heads: Tensor | None
    fingerprint: ModelFingerprint | None = None


@dataclass(frozen=True)
class ScoresWithMetadata:
    neurons: Tensor | None
    heads: Tensor | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class AblationEffectScores:
    """Like AttributionScores with direction="ablate": raw effects are negative for the important
    components, and importance() flips them; the fingerprint is metadata.model."""

    neurons: Tensor | None
    heads: Tensor | None
    metadata: Any

    def importance(self, kind: str) -> Tensor:
        return -getattr(self, kind)


def _mask(neurons: list[list[int]] | None, heads: list[list[int]] | None, **kwargs: Any) -> AblationMask:
    def dense(rows: list[list[int]] | None, width: int) -> Tensor | None:
        if rows is None:
            return None
        m = torch.zeros(len(rows), width, dtype=torch.bool)
        for layer, row in enumerate(rows):
            m[layer, row] = True
        return m

    return AblationMask(dense(neurons, D_MLP), dense(heads, N_HEADS), **kwargs)


def _means() -> MeanActivations:
    g = torch.Generator().manual_seed(0)
    return MeanActivations(
        neurons=torch.randn(N_LAYERS, D_MLP, generator=g),
        heads=torch.randn(N_LAYERS, N_HEADS, D_HEAD, generator=g),
        n_tokens=10,
    )


# ---------------------------------------------------------------- construction


def test_from_components_marks_exactly_those_components(model: TransformerBridge) -> None:
    components = [("neuron", 0, 5), Component("head", 1, 3), "L1N63", ("neuron", 0, 5)]
    mask = AblationMask.from_components(components, model=model)
    assert mask.mode == "zero"
    assert mask.fingerprint == fingerprint(model)
    assert mask.neurons.shape == (N_LAYERS, D_MLP) and mask.heads.shape == (N_LAYERS, N_HEADS)
    assert mask.components == [("neuron", 0, 5), ("neuron", 1, 63), ("head", 1, 3)]
    assert len(mask) == 3


def test_from_components_names_a_component_the_model_lacks(model: TransformerBridge) -> None:
    with pytest.raises(ValueError, match=r"L1N64: index 64 is out of range \(d_mlp = 64\)"):
        AblationMask.from_components([("neuron", 0, 1), ("neuron", 1, 64)], model=model)
    with pytest.raises(ValueError, match=r"L2H0: layer 2 does not exist"):
        AblationMask.from_components(["L2H0"], model=model)


def test_constructor_copies_and_validates_tensors() -> None:
    neurons = torch.zeros(N_LAYERS, D_MLP, dtype=torch.bool)
    mask = AblationMask(neurons, None)
    neurons[0, 0] = True  # the caller's tensor changes; the mask does not
    assert len(mask) == 0
    with pytest.raises(ValueError, match="needs a neurons or a heads tensor"):
        AblationMask(None, None)
    with pytest.raises(ValueError, match="neurons must be a 2-d bool tensor"):
        AblationMask(torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match="neurons has 2 layers but heads has 3"):
        AblationMask(neurons, torch.zeros(3, N_HEADS, dtype=torch.bool))


def test_unknown_mode_is_rejected_with_the_allowed_modes() -> None:
    with pytest.raises(
        ValueError, match=r"unknown ablation mode 'mute'; use one of \('zero', 'mean', 'scale', 'resample'\)"
    ):
        _mask([[1], []], None, mode="mute")


def test_mean_mode_without_means_is_rejected(model: TransformerBridge) -> None:
    with pytest.raises(ValueError, match=r"mode 'mean' needs neuron_means .*ablation.mean_activations"):
        AblationMask.from_components(["L0N1"], model=model, mode="mean")
    with pytest.raises(ValueError, match="mode 'mean' needs head_means"):
        _mask(None, [[1], []], mode="mean")
    # an empty kind needs no means
    assert len(_mask([[], []], None, mode="mean")) == 0


def test_values_must_fit_the_mode_and_the_shape() -> None:
    with pytest.raises(ValueError, match="neuron_scales is given but mode 'mean' does not use it"):
        _mask([[1], []], None, mode="mean", neuron_means=torch.zeros(2, D_MLP), neuron_scales=torch.ones(2, D_MLP))
    with pytest.raises(ValueError, match=r"neuron_means must have shape \[2, 64\], got \[2, 63\]"):
        _mask([[1], []], None, mode="mean", neuron_means=torch.zeros(2, 63))
    with pytest.raises(ValueError, match=r"head_means must have shape \[2, 4, 'd_head'\]"):
        _mask(None, [[1], []], mode="mean", head_means=torch.zeros(2, N_HEADS))
    with pytest.raises(ValueError, match=r"neuron_scales\[0, 3\] is nan; values must be finite"):
        _mask(
            [[1], []],
            None,
            mode="scale",
            neuron_scales=torch.ones(2, D_MLP).index_fill(1, torch.tensor([3]), float("nan")),
        )


def test_with_mode_sets_and_drops_values() -> None:
    means = _means()
    mean_mask = _mask([[1, 2], []], [[], [3]]).with_mode("mean", means=means)
    assert torch.equal(mean_mask.neuron_means, means.neurons) and torch.equal(mean_mask.head_means, means.heads)
    scaled = mean_mask.with_mode("scale", scale=0.25)
    assert scaled.neuron_means is None and torch.equal(scaled.neuron_scales, torch.full((N_LAYERS, D_MLP), 0.25))
    assert scaled.with_mode("zero") == _mask([[1, 2], []], [[], [3]])
    with pytest.raises(ValueError, match="means are only used with mode='mean', not 'zero'"):
        mean_mask.with_mode("zero", means=means)
    with pytest.raises(ValueError, match="unknown ablation mode 'avg'"):
        mean_mask.with_mode("avg")  # type: ignore[arg-type]


# ---------------------------------------------------------------- from_scores


def test_from_scores_takes_the_top_k_overall() -> None:
    neurons = torch.zeros(N_LAYERS, D_MLP)
    neurons[0, 7], neurons[1, 2], neurons[1, 9] = 5.0, 4.0, 1.0
    heads = torch.zeros(N_LAYERS, N_HEADS)
    heads[1, 3] = 4.5
    mask = AblationMask.from_scores(StandInScores(neurons, heads), k=3)
    assert mask.components == [("neuron", 0, 7), ("neuron", 1, 2), ("head", 1, 3)]
    only_heads = AblationMask.from_scores(StandInScores(neurons, heads), k=1, kind="heads")
    assert only_heads.components == [("head", 1, 3)]
    # the singular (a component address's kind) names the same pool
    assert AblationMask.from_scores(StandInScores(neurons, heads), k=1, kind="head") == only_heads
    assert only_heads.neurons is not None and not only_heads.neurons.any()  # shape kept, nothing chosen


def test_from_scores_fraction_and_per_layer_max() -> None:
    neurons = torch.arange(N_LAYERS * D_MLP, dtype=torch.float32).reshape(N_LAYERS, D_MLP)  # layer 1 scores higher
    scores = StandInScores(neurons, None)
    assert len(AblationMask.from_scores(scores, fraction=0.1)) == 13  # ceil(0.1 * 128)
    assert len(AblationMask.from_scores(scores, fraction=1.0)) == N_LAYERS * D_MLP
    capped = AblationMask.from_scores(scores, k=10, per_layer_max=6)
    assert capped.neurons.sum(dim=1).tolist() == [4, 6]
    assert capped.neurons[1, -6:].all() and capped.neurons[0, -4:].all()
    with pytest.raises(ValueError, match="only 8 components can be chosen with per_layer_max=4, but 10 were asked for"):
        AblationMask.from_scores(scores, k=10, per_layer_max=4)


def test_from_scores_breaks_ties_by_kind_layer_index() -> None:
    scores = StandInScores(torch.ones(N_LAYERS, D_MLP), torch.ones(N_LAYERS, N_HEADS))
    assert AblationMask.from_scores(scores, k=2).components == [("neuron", 0, 0), ("neuron", 0, 1)]
    assert AblationMask.from_scores(scores, k=2, kind="heads").components == [("head", 0, 0), ("head", 0, 1)]


def test_from_scores_reads_the_fingerprint_from_the_scores(model: TransformerBridge) -> None:
    fp = fingerprint(model)
    neurons = torch.randn(N_LAYERS, D_MLP)
    assert AblationMask.from_scores(StandInScores(neurons, None, fp), k=1).fingerprint == fp
    in_metadata = ScoresWithMetadata(neurons, None, {"fingerprint": fp.to_dict()})
    assert AblationMask.from_scores(in_metadata, k=1).fingerprint == fp
    assert AblationMask.from_scores(StandInScores(neurons, None), k=1).fingerprint is None


def test_from_scores_ranks_by_importance_when_the_scores_define_it(model: TransformerBridge) -> None:
    effects = torch.zeros(N_LAYERS, D_MLP)
    effects[1, 9], effects[0, 2] = -3.0, 2.0  # ablating L1N9 lowers the metric: it matters
    heads = torch.zeros(N_LAYERS, N_HEADS)
    heads[0, 1] = -1.0

    @dataclass(frozen=True)
    class Metadata:
        model: ModelFingerprint

    scores = AblationEffectScores(effects, heads, Metadata(fingerprint(model)))
    mask = AblationMask.from_scores(scores, k=2)
    assert mask.components == [("neuron", 1, 9), ("head", 0, 1)]
    assert mask.fingerprint == fingerprint(model)


def test_from_scores_bad_arguments() -> None:
    scores = StandInScores(torch.randn(N_LAYERS, D_MLP), None)
    with pytest.raises(ValueError, match="give exactly one of k .* or fraction"):
        AblationMask.from_scores(scores)
    with pytest.raises(ValueError, match="give exactly one of k .* or fraction"):
        AblationMask.from_scores(scores, k=1, fraction=0.5)
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\], got 1.5"):
        AblationMask.from_scores(scores, fraction=1.5)
    with pytest.raises(ValueError, match="k=200 is more than the 128 components"):
        AblationMask.from_scores(scores, k=200)
    with pytest.raises(ValueError, match="kind='head' but scores.heads is None"):
        AblationMask.from_scores(scores, k=1, kind="head")
    with pytest.raises(UsageError, match=r"unknown kind 'neuronz'; use one of 'neurons', 'heads', 'all'"):
        AblationMask.from_scores(scores, k=1, kind="neuronz")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has neither .neurons nor .heads"):
        AblationMask.from_scores(object(), k=1)
    bad = torch.randn(N_LAYERS, D_MLP)
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"scores.neurons\[1, 4\] is nan"):
        AblationMask.from_scores(StandInScores(bad, None), k=1)


def test_from_scores_with_mean_mode_keeps_dense_means() -> None:
    means = _means()
    mask = AblationMask.from_scores(StandInScores(torch.randn(N_LAYERS, D_MLP), None), k=5, mode="mean", means=means)
    assert mask.mode == "mean" and torch.equal(mask.neuron_means, means.neurons) and mask.head_means is None


# ---------------------------------------------------------------- random_like


def test_random_like_keeps_counts_per_kind_and_layer() -> None:
    mask = _mask([[1, 2, 3], list(range(20))], [[0], []])
    control = AblationMask.random_like(mask, seed=0)
    assert control.neurons.sum(dim=1).tolist() == [3, 20] and control.heads.sum(dim=1).tolist() == [1, 0]
    assert control == AblationMask.random_like(mask, seed=0)
    assert control != AblationMask.random_like(mask, seed=1)
    assert not torch.equal(control.neurons, mask.neurons)


def test_random_like_moves_scale_factors_and_keeps_means() -> None:
    factors = torch.ones(N_LAYERS, D_MLP)
    factors[0, 1], factors[1, 5] = 0.5, 0.25
    scaled = _mask([[1], [5]], None, mode="scale", neuron_scales=factors)
    control = AblationMask.random_like(scaled, seed=3)
    assert control.neuron_scales[control.neurons].tolist() == [0.5, 0.25]
    means = _means()
    mean_mask = _mask([[1], [5]], None).with_mode("mean", means=means)
    assert torch.equal(AblationMask.random_like(mean_mask, seed=3).neuron_means, means.neurons)


# ---------------------------------------------------------------- set algebra


def test_set_algebra_matches_boolean_algebra() -> None:
    a = _mask([[1, 2], [3]], [[0], []])
    b = _mask([[2, 4], []], [[0], [1]])
    assert (a | b) == _mask([[1, 2, 4], [3]], [[0], [1]])
    assert (a & b) == _mask([[2], []], [[0], []])
    assert (a - b) == _mask([[1], [3]], [[], []])
    assert len(a | b) == 6 and len(a & b) == 2 and len(a - b) == 2
    neurons_only = _mask([[9], []], None)
    assert (a | neurons_only).components == [
        ("neuron", 0, 1),
        ("neuron", 0, 2),
        ("neuron", 0, 9),
        ("neuron", 1, 3),
        ("head", 0, 0),
    ]
    assert (a & neurons_only).heads is None


def test_union_keeps_each_components_own_value() -> None:
    fa, fb = torch.full((N_LAYERS, D_MLP), 0.5), torch.full((N_LAYERS, D_MLP), 0.1)
    a = _mask([[1], []], None, mode="scale", neuron_scales=fa)
    b = _mask([[1, 2], []], None, mode="scale", neuron_scales=fb)
    union = a | b
    assert union.neuron_scales[0, 1] == 0.5 and union.neuron_scales[0, 2] == pytest.approx(0.1)


def test_set_algebra_refuses_mixed_modes_models_and_shapes(model: TransformerBridge) -> None:
    a = _mask([[1], []], None)
    with pytest.raises(ValueError, match=r"different modes \('zero' \| 'scale'\)"):
        a | a.with_mode("scale", scale=0.5)
    other_fp = replace(fingerprint(model), weights_sha256="0" * 64)
    with pytest.raises(ValueError, match="made for different models"):
        replace(a, fingerprint=fingerprint(model)) & replace(a, fingerprint=other_fp)
    wide = AblationMask(torch.zeros(N_LAYERS, 2 * D_MLP, dtype=torch.bool), None)
    with pytest.raises(ValueError, match=r"neurons shapes \[2, 64\] and \[2, 128\] differ"):
        a - wide


# ---------------------------------------------------------------- validation against a model


def test_validate_accepts_its_model(model: TransformerBridge) -> None:
    mask = AblationMask.from_components(["L0N1", "L1H2"], model=model)
    assert mask.validate(model) == fingerprint(model)


def test_validate_rejects_another_models_mask(model: TransformerBridge, tmp_path: Path) -> None:
    mask = AblationMask.from_components(["L0N1"], model=model)
    other = load_model(build_tiny_checkpoint("gpt2", tmp_path / "other", seed=1))
    with pytest.raises(ValueError, match=r"made for another model: weights_sha256 is '[0-9a-f]{64}' in the mask"):
        mask.validate(other)
    neox = load_model(build_tiny_checkpoint("gpt_neox", tmp_path / "neox"))
    with pytest.raises(
        ValueError, match="made for another model: architecture is 'gpt2' in the mask's fingerprint but 'gpt_neox'"
    ):
        mask.validate(neox)


def test_validate_names_the_first_out_of_range_component(model: TransformerBridge) -> None:
    wide = torch.zeros(N_LAYERS, 2 * D_MLP, dtype=torch.bool)
    wide[0, 3] = wide[1, 70] = wide[1, 100] = True
    with pytest.raises(ValueError, match=r"neuron L1N70 is out of range for this model \(n_layers = 2, d_mlp = 64\)"):
        AblationMask(wide, None).validate(model)
    deep = torch.zeros(N_LAYERS + 1, N_HEADS, dtype=torch.bool)
    deep[2, 0] = True
    with pytest.raises(ValueError, match=r"head L2H0 is out of range"):
        AblationMask(None, deep).validate(model)
    with pytest.raises(ValueError, match=r"shaped \[3, 4\] but this model has \[n_layers, n_heads\] = \[2, 4\]"):
        AblationMask(None, torch.zeros(N_LAYERS + 1, N_HEADS, dtype=torch.bool)).validate(model)
    head_means = torch.zeros(N_LAYERS, N_HEADS, 5)
    with pytest.raises(ValueError, match="head_means have d_head = 5 but this model has d_head = 8"):
        _mask(None, [[1], []], mode="mean", head_means=head_means).validate(model)


# ---------------------------------------------------------------- reporting


def test_summary_counts_per_layer_and_kind(model: TransformerBridge) -> None:
    mask = AblationMask.from_components(["L0N1", "L0N2", "L1N3", "L1H0"], model=model)
    summary = mask.summary()
    assert summary["mode"] == "zero" and summary["total"] == 4
    assert summary["neurons"] == {"total": 3, "per_layer": [2, 1]}
    assert summary["heads"] == {"total": 1, "per_layer": [0, 1]}
    assert summary["model"]["weights_sha256"] == fingerprint(model).weights_sha256
    assert "neurons=3/128" in repr(mask)


def test_plot_has_layers_on_y_and_shows_what_is_removed() -> None:
    factors = torch.ones(N_LAYERS, N_HEADS)
    factors[1, 2] = 0.25
    mask = _mask(
        [[1, 2], [5]], [[], [2]], mode="scale", neuron_scales=torch.zeros(N_LAYERS, D_MLP), head_scales=factors
    )
    fig = mask.plot()
    assert isinstance(fig, go.Figure)
    neurons, heads = fig.data
    assert isinstance(neurons, go.Heatmap) and list(neurons.y) == [0, 1] and len(neurons.x) == D_MLP
    assert torch.tensor(neurons.z).sum() == 3.0  # factor 0: fully removed
    assert torch.tensor(heads.z)[1, 2] == 0.75 and torch.tensor(heads.z).sum() == 0.75
    assert heads.text[1][2] == "L1H2" and neurons.text[0][1] == "L0N1"
    assert fig.layout.yaxis.title.text == "layer"
    assert len(_mask([[1], []], None).plot().data) == 1
