"""Recall@k against planted neurons (attribution.recall): hand examples, ties, and bad input."""

from __future__ import annotations

import pytest
import torch

from attribution.recall import Recall, recall_at_k
from attribution.scores import AttributionScores, ScoresMetadata
from loka.base.errors import UsageError
from loka.models import ModelFingerprint

# Two layers of six neurons. Layer 0 has a tie at the boundary of its top 2 (indices 1 and 2 both
# score 3); layer 1 has a tie inside its top 3 (indices 3 and 5 both score 7).
SCORES = torch.tensor(
    [
        [5.0, 3.0, 3.0, 1.0, 0.0, -2.0],
        [0.0, 2.0, 9.0, 7.0, 1.0, 7.0],
    ]
)
PLANTED = torch.zeros(2, 6, dtype=torch.bool)
PLANTED[0, 2] = True  # tied with index 1 at the boundary: index 1 wins the tie (lower index)
PLANTED[0, 4] = True  # never in a top 2 or 3
PLANTED[1, 5] = True  # tied with index 3 at 7


def test_per_layer_recall_by_hand():
    # k=2 per layer: layer 0 selects {0, 1} (1 beats 2 on the tie), layer 1 selects {2, 3}
    # (3 beats 5 on the tie). Hits: none in layer 0, none in layer 1.
    result = recall_at_k(SCORES, PLANTED, 2)
    assert result == Recall(
        recall=0.0,
        hits=0,
        n_planted=3,
        selected=4,
        per_layer=True,
        k_per_layer=2,
        per_layer_hits=(0, 0),
        per_layer_planted=(2, 1),
        per_layer_selected=(2, 2),
        n_neurons=12,
        boundary_ties=2,  # layer 0: index 2 ties index 1; layer 1: index 5 ties index 3
    )
    # k=3: layer 0 selects {0, 1, 2} -> hit L0N2; layer 1 selects {2, 3, 5} -> hit L1N5.
    result = recall_at_k(SCORES, PLANTED, 3)
    assert (result.hits, result.per_layer_hits, result.boundary_ties) == (2, (1, 1), 0)
    assert result.recall == pytest.approx(2 / 3)
    assert result.chance == pytest.approx(3 / 6)  # k / d_mlp in every layer


def test_fractions_round_half_up_to_a_count():
    # 0.5 of 6 neurons = 3 per layer; 0.25 of 6 = 1.5 -> 2; 0.2 of 6 = 1.2 -> 1.
    assert recall_at_k(SCORES, PLANTED, 0.5) == recall_at_k(SCORES, PLANTED, 3)
    assert recall_at_k(SCORES, PLANTED, 0.25).k_per_layer == 2
    assert recall_at_k(SCORES, PLANTED, 0.2).k_per_layer == 1
    assert recall_at_k(SCORES, PLANTED, 1.0).recall == 1.0  # every neuron selected


def test_global_recall_by_hand():
    # Over all 12 neurons, descending: 9 (L1N2), 7 (L1N3), 7 (L1N5), 5 (L0N0), 3 (L0N1), 3 (L0N2), ...
    # Flattened row-major, so ties break toward the lower layer, then the lower index.
    result = recall_at_k(SCORES, PLANTED, 3, per_layer=False)
    assert (result.hits, result.per_layer_hits, result.per_layer_selected) == (1, (0, 1), (0, 3))
    assert result.k_per_layer is None and result.chance == pytest.approx(3 / 12)
    result = recall_at_k(SCORES, PLANTED, 5, per_layer=False)  # ... 5 (L0N0), 3 (L0N1); L0N2 ties out
    assert (result.hits, result.boundary_ties) == (1, 1)
    result = recall_at_k(SCORES, PLANTED, 6, per_layer=False)  # L0N2 now in
    assert (result.hits, result.per_layer_hits, result.boundary_ties) == (2, (1, 1), 0)
    assert recall_at_k(SCORES, PLANTED, 0.5, per_layer=False).selected == 6


def test_a_constant_locator_selects_the_first_neurons():
    flat = torch.zeros(2, 6)
    result = recall_at_k(flat, PLANTED, 3)
    assert result.hits == 1  # L0N0..2 and L1N0..2: only L0N2 of the planted
    assert result.boundary_ties == 6  # every neuron left out ties


def test_addresses_and_attribution_scores_read_the_same():
    addresses = [("neuron", 0, 2), ("neuron", 0, 4), "L1N5"]
    assert recall_at_k(SCORES, addresses, 3) == recall_at_k(SCORES, PLANTED, 3)
    # AttributionScores are ranked by importance: the ablate convention stores -importance.
    fingerprint = ModelFingerprint("gpt2", 2, 1, 6, 10, "0" * 64)
    metadata = ScoresMetadata("grad_x_act", "zero", "ablate", "all", "log_prob", fingerprint, 1, "k", 0.0, 0.0)
    ablate = AttributionScores(-SCORES, torch.zeros(2, 1), metadata)
    assert recall_at_k(ablate, PLANTED, 3) == recall_at_k(SCORES, PLANTED, 3)


@pytest.mark.parametrize(
    ("k", "per_layer", "message"),
    [
        (0, True, "k must be between 1 and 6"),
        (-1, True, "k must be between 1 and 6"),
        (7, True, "k must be between 1 and 6"),
        (13, False, "k must be between 1 and 12"),
        (0.0, True, "fractional k must be in"),
        (1.5, True, "fractional k must be in"),
        (float("nan"), True, "fractional k must be in"),
        (0.01, True, "selects no neuron"),
        (True, True, "k must be a number of neurons"),
        ("2", True, "k must be a number of neurons"),
    ],
)
def test_bad_k(k, per_layer, message):
    with pytest.raises(UsageError, match=message):
        recall_at_k(SCORES, PLANTED, k, per_layer=per_layer)


@pytest.mark.parametrize(
    ("scores", "planted", "message"),
    [
        (SCORES, torch.zeros(2, 5, dtype=torch.bool), r"planted has shape \(2, 5\); the scores have \(2, 6\)"),
        (SCORES, torch.zeros(2, 6, dtype=torch.bool), "planted is empty"),
        (SCORES, [], "planted is empty"),
        (SCORES, PLANTED.float(), "must be a boolean tensor"),
        (SCORES, [("head", 0, 1)], "planted holds neurons only"),
        (SCORES, [("neuron", 2, 0)], "outside the scores' shape"),
        (SCORES, [("neuron", 0, 6)], "outside the scores' shape"),
        (SCORES, "L0N1", "planted must be a boolean"),
        (SCORES[0], PLANTED, r"\[n_layers, d_mlp\] tensor, got shape \(6,\)"),
        (torch.full((2, 6), float("nan")), PLANTED, "must all be finite"),
        ([[1.0]], PLANTED, "scores must be AttributionScores, a Peeling or a"),
    ],
)
def test_bad_scores_or_planted(scores, planted, message):
    with pytest.raises(UsageError, match=message):
        recall_at_k(scores, planted, 2)


def test_every_message_is_one_line():
    for call in (
        lambda: recall_at_k(SCORES, PLANTED, 0),
        lambda: recall_at_k(SCORES, torch.zeros(3, 6, dtype=torch.bool), 1),
        lambda: recall_at_k(SCORES, [], 1),
    ):
        with pytest.raises(ValueError) as caught:  # UsageError is a ValueError
            call()
        assert "\n" not in str(caught.value)
