"""AttributionScores: ranking, contrast, persistence and plots."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import plotly.colors
import pytest
import torch

import attribution
from attribution import AttributionScores, ScoresMetadata
from loka.base.components import Component
from loka.data import KnowledgeSet
from loka.models import ModelFingerprint, fingerprint, load_model

MODEL = ModelFingerprint("gpt2", n_layers=2, n_heads=3, d_mlp=4, d_vocab=10, weights_sha256="ab" * 32)


def make(neurons, heads, direction="ablate", model=MODEL) -> AttributionScores:
    metadata = ScoresMetadata(
        method="activation_patching",
        baseline="zero",
        direction=direction,
        positions="all",
        metric="log_prob",
        model=model,
        n_facts=3,
        knowledge="forget",
        clean_metric=-0.5,
        base_metric=-0.5,
        options={"samples": 1},
    )
    as_tensor = lambda v: None if v is None else torch.tensor(v, dtype=torch.float32)
    return AttributionScores(as_tensor(neurons), as_tensor(heads), metadata)


NEURONS = [[0.0, -3.0, 0.5, -1.0], [-0.2, 0.1, -2.0, 0.0]]
HEADS = [[-2.5, 0.0, 0.3], [-0.1, -4.0, 1.0]]


def test_top_ranks_by_importance_with_the_sign_of_the_direction():
    ablated = make(NEURONS, HEADS)
    # Ablation: the most negative effect is the most important component.
    assert ablated.top(3) == [Component("head", 1, 1), Component("neuron", 0, 1), Component("head", 0, 0)]
    assert ablated.top(2, kind="neurons") == [("neuron", 0, 1), ("neuron", 1, 2)]
    assert ablated.top(kind="head")[-1] == ("head", 1, 2)  # all heads, least important last
    assert len(ablated.top(fraction=0.1)) == math.ceil(0.1 * 14)
    assert len(ablated.top(fraction=0.5, kind="heads")) == 3
    assert ablated.top(0) == []
    denoised = make(NEURONS, HEADS, direction="denoise")
    assert denoised.top(1) == [("head", 1, 2)]  # denoising: the most positive restores most
    assert torch.equal(denoised.importance("heads"), -ablated.importance("heads"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.top(1, fraction=0.5), "give k or fraction, not both"),
        (lambda s: s.top(fraction=1.5), r"fraction must be in \(0, 1\], got 1.5"),
        (lambda s: s.top(-1), "k must be a non-negative integer"),
        (lambda s: s.top(3, kind="mlp"), "unknown component kind 'mlp'; use 'neurons' or 'heads'"),
        (lambda s: s.of("heads"), r"these scores have no heads \(computed: neurons\)"),
    ],
)
def test_top_and_of_check_their_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call(make(NEURONS, None))


def test_scores_are_validated():
    with pytest.raises(ValueError, match="needs neuron scores, head scores, or both"):
        make(None, None)
    with pytest.raises(ValueError, match=r"heads scores must have shape \(2, 3\) for this model, got \(3, 2\)"):
        make(None, [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"1 neurons scores are not finite \(e.g. L1N2\)"):
        make([[0.0] * 4, [0.0, 0.0, float("nan"), 0.0]], None)
    with pytest.raises(ValueError, match="are not finite"):
        make(None, [[0.0, float("inf"), 0.0], [0.0] * 3])


def test_contrast_ratio_and_difference():
    forget = make(NEURONS, HEADS)
    retain = make([[-1.0, -3.0, 0.0, 0.0], [0.0, 0.0, -0.1, 0.2]], [[0.0] * 3, [-4.0, -4.0, 0.0]])
    ratio = forget.contrast(retain, kind="ratio", eps=0.5)
    i_forget = (-torch.tensor(NEURONS)).clamp(min=0)
    i_retain = (-retain.neurons).clamp(min=0)
    assert torch.allclose(ratio.neurons, i_forget / (i_retain + 0.5))
    assert ratio.metadata.direction == "contrast"
    assert ratio.metadata.method == "contrast-ratio(activation_patching)"
    # L1N2 matters to forget (2.0) and barely to retain (0.1); L0N1 matters to both (3.0, 3.0).
    assert ratio.top(1, kind="neurons") == [("neuron", 1, 2)]
    assert ratio.neurons[1, 2] > ratio.neurons[0, 1]
    default = forget.contrast(retain)
    assert default.metadata.options["eps"]["neurons"] == pytest.approx(0.01 * i_retain.mean().item())

    difference = forget.contrast(retain, kind="difference")
    z = lambda x: (x - x.mean()) / x.std()
    assert torch.allclose(difference.heads, z(-forget.heads) - z(-retain.heads))
    assert difference.top(1, kind="heads") == [("head", 0, 0)]  # forget-only head; L1H1 is shared


def test_contrast_checks_its_inputs():
    forget = make(NEURONS, HEADS)
    with pytest.raises(ValueError, match="unknown contrast kind 'ratios'; use 'ratio' or 'difference'"):
        forget.contrast(forget, kind="ratios")  # type: ignore[arg-type]
    other = replace(MODEL, weights_sha256="cd" * 32)
    with pytest.raises(ValueError, match=r"retain scores were computed on a different model .*weights sha256"):
        forget.contrast(make(NEURONS, HEADS, model=other))
    with pytest.raises(ValueError, match="the retain scores have no heads"):
        forget.contrast(make(NEURONS, None))
    with pytest.raises(ValueError, match="contrast two sets of effects, not a contrast"):
        forget.contrast(forget).contrast(forget)


def test_plots_put_layers_on_y_in_rdbu_centred_on_zero():
    figures = make(NEURONS, HEADS).plot(k=5)
    assert set(figures) == {"heads", "neurons", "neuron_distribution", "top"}
    heads = figures["heads"].data[0]
    assert heads.type == "heatmap"
    assert heads.zmid == 0
    rdbu = plotly.colors.get_colorscale("RdBu")
    assert [color for _, color in heads.colorscale] == [color for _, color in rdbu]
    assert list(heads.y) == [0, 1] and list(heads.x) == [0, 1, 2]
    assert heads.text[1][2] == "L1H2" and heads.z[1][2] == pytest.approx(1.0)
    assert figures["heads"].layout.yaxis.title.text == "layer"
    assert figures["neurons"].data[0].text[0][1] == "L0N1"
    assert [trace.name for trace in figures["neuron_distribution"].data] == ["L0", "L1"]
    assert list(figures["top"].data[0].y)[::-1] == ["L1H1", "L0N1", "L0H0", "L1N2", "L0N3"]


def test_save_and_load_round_trip_and_refuse_another_model(model, tiny_testbed, tmp_path: Path):
    facts = KnowledgeSet(tiny_testbed.forget.facts[:4])
    scores = attribution.attribute(model, facts, baseline="zero", direction="ablate", progress=False)
    assert scores.metadata.model == fingerprint(model)
    assert scores.metadata.n_facts == 4 and scores.metadata.knowledge == facts.name
    saved = scores.save(tmp_path / "scores")
    assert sorted(p.name for p in saved.iterdir()) == ["scores.json", "scores.safetensors"]
    info = json.loads((saved / "scores.json").read_text())
    assert info["metadata"]["model"]["weights_sha256"] == fingerprint(model).weights_sha256
    assert info["sign_convention"].startswith("effect of ablating = metric(ablated) - metric(clean)")
    assert info["tensors"] == {"neurons": [2, 256], "heads": [2, 4]}
    assert info["top_20"][0] == scores.top(1)[0].label

    loaded = AttributionScores.load(saved, model=model)
    assert torch.equal(loaded.neurons, scores.neurons) and torch.equal(loaded.heads, scores.heads)
    assert loaded.metadata == scores.metadata
    assert AttributionScores.load(saved).top(10) == scores.top(10)

    oracle = load_model(tiny_testbed.oracle_dir)  # same shapes, other weights
    with pytest.raises(ValueError, match=r"were computed on a different model than the one given: weights sha256"):
        AttributionScores.load(saved, model=oracle)
    with pytest.raises(ValueError, match=r"different model than the one given: n_heads 4 vs 3; d_mlp 256 vs 4"):
        AttributionScores.load(saved, model=MODEL)  # a fingerprint works as well as a model
    with pytest.raises(FileNotFoundError, match="holds no saved AttributionScores"):
        AttributionScores.load(tmp_path / "nothing")
