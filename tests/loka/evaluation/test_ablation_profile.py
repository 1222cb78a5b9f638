"""The ablation profile: each row equals the same mask built by hand and scored under ``ablate``; the
random control matches the located per-layer counts; mean ablation writes the documented means;
the result formats, plots and round-trips; bad input fails before any forward pass."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import loka.evaluation.ablation_profile as profile_module
from ablation import AblationMask, ablate, mean_activations
from attribution import attribute
from loka.base.errors import UsageError
from loka.data import Fact, KnowledgeSet
from loka.evaluation.ablation_profile import RANDOM, AblationProfile, ablation_profile, per_layer_count, top_per_layer
from loka.models import load_model
from loka.scoring.metrics import score_facts
from loka.testbed import Testbed

OTHER_SHAPE = SimpleNamespace(neurons=torch.zeros(2, 64), heads=None)  # scores of a model with d_mlp = 64
PERCENTS = (2.0, 60.0)  # 6 and 154 of each layer's 256 neurons: the second one changes answers


@pytest.fixture(scope="module")
def model(tiny_testbed: Testbed) -> TransformerBridge:
    return load_model(tiny_testbed.model_dir)


@pytest.fixture(scope="module")
def sets(tiny_testbed: Testbed) -> tuple[KnowledgeSet, KnowledgeSet]:
    retain = tiny_testbed.retain
    return tiny_testbed.forget, KnowledgeSet(retain.facts[:40], name="retain")


@pytest.fixture(scope="module")
def locators(model: TransformerBridge, sets) -> dict:
    forget, _ = sets
    scores = attribute(model, forget, components="neurons", progress=False)
    noise = torch.rand(model.cfg.n_layers, model.cfg.d_mlp, generator=torch.Generator().manual_seed(3))
    return {"grad_x_act": scores, "noise": SimpleNamespace(neurons=noise, heads=None)}


@pytest.fixture(scope="module")
def recorded(model: TransformerBridge, sets, locators) -> tuple[AblationProfile, list[AblationMask]]:
    """The profile, and every mask it ablated with, in order (``ablate`` wrapped to record them)."""
    forget, retain = sets
    masks: list[AblationMask] = []
    original = profile_module.ablate

    def recording(m, mask, **kwargs):
        masks.append(mask)
        return original(m, mask, **kwargs)

    profile_module.ablate = recording
    try:
        profile = ablation_profile(model, forget, retain, locators, percents=PERCENTS, n_random=2, seed=0)
    finally:
        profile_module.ablate = original
    return profile, masks


def by_hand(model, importance: torch.Tensor, percent: float, mode: str, means=None) -> AblationMask:
    """The top ``percent``% of every layer, written out without the module's helpers."""
    components = []
    for layer in range(importance.shape[0]):
        count = math.ceil(percent / 100 * importance.shape[1] - 1e-9)
        order = sorted(range(importance.shape[1]), key=lambda i: (-float(importance[layer, i]), i))
        components += [("neuron", layer, i) for i in order[:count]]
    return AblationMask.from_components(components, model=model, mode=mode, means=means)


def test_rows_equal_hand_built_masks_scored_under_ablate(model, sets, locators, recorded):
    profile, _ = recorded
    forget, retain = sets
    means = mean_activations(model, retain.encode(model))
    assert profile.base_forget_accuracy == score_facts(model, forget).answer_accuracy
    changed = False
    for name, scores in locators.items():
        importance = scores.importance("neurons") if name == "grad_x_act" else scores.neurons
        for mode in ("zero", "mean"):
            for percent in PERCENTS:
                row = profile.row(name, mode, percent)
                mask = by_hand(model, importance, percent, mode, means if mode == "mean" else None)
                with ablate(model, mask):
                    forget_scores, retain_scores = score_facts(model, forget), score_facts(model, retain)
                assert row.forget_accuracy == (forget_scores.answer_accuracy,)
                assert row.retain_accuracy == (retain_scores.answer_accuracy,)
                assert row.per_layer == tuple(mask.neurons.sum(dim=1).tolist()) and row.n_components == len(mask)
                drop = profile.base_forget_accuracy - forget_scores.answer_accuracy
                assert row.forget_drop.mean == pytest.approx(drop)  # equal people: person mean = fact mean
                assert row.forget_drop.low <= row.forget_drop.mean <= row.forget_drop.high
                changed |= forget_scores.answer_accuracy < profile.base_forget_accuracy
    assert changed, "no ablation changed an answer: the equalities above would be trivial"


def test_random_control_has_the_located_per_layer_counts(recorded, model):
    profile, masks = recorded
    # per (mode, k): one mask per locator, then n_random = 2 random draws
    groups = [masks[i : i + 4] for i in range(0, len(masks), 4)]
    assert len(groups) == 2 * len(PERCENTS)
    for group in groups:
        located, draws = group[:2], group[2:]
        counts = located[0].neurons.sum(dim=1)
        assert torch.equal(located[1].neurons.sum(dim=1), counts)
        for draw in draws:
            assert torch.equal(draw.neurons.sum(dim=1), counts)
            assert not torch.equal(draw.neurons, located[0].neurons)
            assert draw.mode == located[0].mode
        assert not torch.equal(draws[0].neurons, draws[1].neurons)
    for mode in ("zero", "mean"):
        for percent in PERCENTS:
            control = profile.row(RANDOM, mode, percent)
            assert control.per_layer == profile.row("grad_x_act", mode, percent).per_layer
            assert len(control.forget_accuracy) == 2 and control.forget.n_seeds == 2


def test_mean_ablation_writes_the_documented_means(model, sets, locators, recorded):
    forget, retain = sets
    _, masks = recorded
    # over every real token of the retain facts, in the profile's batches of 64 (bit-equal)
    expected = mean_activations(model, retain.encode(model), batch_size=64).neurons
    other = mean_activations(model, forget.encode(model), batch_size=64).neurons
    assert not torch.allclose(expected, other)
    mean_masks = [m for m in masks if m.mode == "mean"]
    assert mean_masks and all(torch.equal(m.neuron_means, expected) for m in mean_masks)
    assert all(m.neuron_means is None for m in masks if m.mode == "zero")
    seen: list[AblationMask] = []
    original = profile_module.ablate

    def recording(m, mask, **kwargs):
        seen.append(mask)
        return original(m, mask, **kwargs)

    profile_module.ablate = recording
    try:
        ablation_profile(
            model, forget, retain, {"noise": locators["noise"]}, percents=(1,), modes=("mean",), n_random=0,
            mean_over="forget",
        )  # fmt: skip
    finally:
        profile_module.ablate = original
    assert len(seen) == 1
    assert torch.equal(seen[0].neuron_means, other)


def test_selection_helpers():
    assert [per_layer_count(p, 256) for p in (0.25, 0.5, 1, 2, 5, 10, 100)] == [1, 2, 3, 6, 13, 26, 256]
    assert per_layer_count(0.25, 4) == 1
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9], [3.0, -1.0, 2.0, 0.0]])
    assert top_per_layer(scores, 2).tolist() == [[False, True, False, True], [True, False, True, False]]


def test_format_plot_and_save(recorded, tmp_path: Path):
    profile, _ = recorded
    text = profile.format()
    lines = text.splitlines()
    assert len(lines) == 3 + len(profile.rows) == 3 + 2 * len(PERCENTS) * 3
    assert "grad_x_act" in text and RANDOM in text and "\n" in text
    figure = profile.plot()
    assert len(figure.data) == 2 * 2 * 3  # modes x panels x (2 locators + random)
    dashed = [t for t in figure.data if t.line.dash == "dash"]
    assert {t.name for t in dashed} == {RANDOM} and len(dashed) == 4
    assert all(list(t.x) == list(PERCENTS) for t in figure.data)
    path = profile.save(tmp_path / "out")
    assert path.name == "ablation_profile.json"
    data = json.loads(path.read_text())
    assert data["percents"] == list(PERCENTS) and len(data["rows"]) == len(profile.rows)
    assert AblationProfile.load(tmp_path / "out") == profile
    assert json.loads(profile.to_json()) == data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"percents": (0,)}, r"percents are percentages in \(0, 100\]"),
        ({"percents": (101,)}, r"percents are percentages in \(0, 100\]"),
        ({"percents": (0.5, 0.5)}, r"percents has duplicates"),
        ({"percents": ()}, r"percents must be a non-empty sequence"),
        ({"modes": ("resample",)}, r"unknown modes 'resample'; choose from zero, mean"),
        ({"components": "layers"}, r"unknown components 'layers'"),
        ({"components": "heads"}, r"locator 'noise' has no heads scores"),
        ({"mean_over": "holdout"}, r"unknown mean_over 'holdout'"),
        ({"n_random": -1}, r"n_random must be an integer at least 0"),
        ({"locators": {}}, r"locators must be a non-empty dict"),
        ({"locators": {RANDOM: None}}, r"'random' names the random control"),
        ({"locators": {"small": OTHER_SHAPE}}, r"shaped \[2, 64\] but the model has \[2, 256\]"),
        ({"retain": KnowledgeSet((Fact("x/1", "Kalo was born in", " "),))}, r"retain fact 'x/1' has no target"),
        ({"forget": [1, 2]}, r"forget must be a non-empty loka.KnowledgeSet"),
        ({"model": "gpt2"}, r"model must be a TransformerBridge"),
    ],
)  # fmt: skip
def test_bad_input_fails_before_any_work(model, sets, monkeypatch: pytest.MonkeyPatch, change: dict, message: str):
    def no_work(*args, **kwargs):
        raise AssertionError("scored or recorded before checking the input")

    monkeypatch.setattr(profile_module, "score_facts", no_work)
    monkeypatch.setattr(profile_module, "mean_activations", no_work)
    forget, retain = sets
    noise = SimpleNamespace(neurons=torch.rand(2, 256), heads=None)
    arguments = {"model": model, "forget": forget, "retain": retain, "locators": {"noise": noise}} | change
    positional = [arguments.pop(name) for name in ("model", "forget", "retain", "locators")]
    with pytest.raises(UsageError, match=message) as err:
        ablation_profile(*positional, **arguments)
    assert "\n" not in str(err.value)


def test_heads_and_all_components(model, sets):
    forget, retain = sets
    scores = attribute(model, forget, progress=False)  # neurons and heads
    for components, per_layer in (("heads", (2, 2)), ("all", (3, 3, 1, 1))):
        profile = ablation_profile(
            model, forget, retain, {"gxa": scores}, percents=(1.0 if components == "all" else 50.0,),
            modes=("zero",), n_random=1, components=components,
        )  # fmt: skip
        row = profile.row("gxa", "zero", profile.percents[0])
        # neurons (ceil(1% of 256) = 3), then heads (50% of 4 = 2; 1% of 4: at least 1)
        assert row.per_layer == per_layer
        heads = top_per_layer(scores.importance("heads"), per_layer[-1])
        components_ = [("head", layer, int(h)) for layer, h in heads.nonzero().tolist()]
        if components == "all":
            neurons = top_per_layer(scores.importance("neurons"), 3)
            components_ += [("neuron", layer, int(i)) for layer, i in neurons.nonzero().tolist()]
        with ablate(model, AblationMask.from_components(components_, model=model)):
            assert row.forget_accuracy == (score_facts(model, forget).answer_accuracy,)
        assert profile.row(RANDOM, "zero", profile.percents[0]).per_layer == per_layer


def test_forget_at_retain_walks_the_curve_from_the_unablated_model(recorded):
    """At matched retain: the first segment (k = 0, then the grid) whose retain falls across the
    target, linear in between, computed here by hand from the rows' exact means."""
    profile, _ = recorded
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    checked = 0
    for locator in ("grad_x_act", "noise", "random"):
        rows = sorted((r for r in profile.rows if (r.locator, r.mode) == (locator, "zero")), key=lambda r: r.percent)
        points = [(profile.base_retain_accuracy, profile.base_forget_accuracy)]
        points += [(mean(r.retain_accuracy), mean(r.forget_accuracy)) for r in rows]
        assert profile.forget_at_retain(locator, "zero", points[0][0]) == pytest.approx(points[0][1])
        falling = [(a, b) for a, b in itertools.pairwise(points) if b[0] < a[0]]
        if falling:  # the first segment that falls: its midpoint is matched halfway along it
            (r0, f0), (r1, f1) = falling[0]
            assert profile.forget_at_retain(locator, "zero", (r0 + r1) / 2) == pytest.approx((f0 + f1) / 2)
            checked += 1
        assert profile.forget_at_retain(locator, "zero", min(r for r, _ in points) - 0.01) is None
    assert checked  # some locator's ablations cost retain on the tiny testbed
    with pytest.raises(KeyError, match="no rows for locator='nope'"):
        profile.forget_at_retain("nope", "zero", 0.5)
