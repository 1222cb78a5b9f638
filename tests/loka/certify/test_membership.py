"""Min-K%++ by hand, and the token statistics it reads against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from loka.base.errors import UsageError
from loka.evaluation.attacks.membership import min_k_plus_plus, token_statistics
from loka.scoring.metrics import text_token_log_probs


def test_min_k_plus_plus_on_a_three_token_example():
    # tokens: (log p, mu, sigma) = (-1, -2, 0.5) -> z = 2; (-3, -2, 1) -> z = -1; (-2, -1, 0.25) -> z = -4
    lp, mu, sd = [-1.0, -3.0, -2.0], [-2.0, -2.0, -1.0], [0.5, 1.0, 0.25]
    assert min_k_plus_plus(lp, mu, sd, k=0.4) == pytest.approx(-4.0)  # int(3 * 0.4) = 1 lowest
    assert min_k_plus_plus(lp, mu, sd, k=0.7) == pytest.approx((-4.0 - 1.0) / 2)  # 2 lowest
    assert min_k_plus_plus(lp, mu, sd, k=1.0) == pytest.approx((2.0 - 1.0 - 4.0) / 3)
    assert min_k_plus_plus([-1.0], [-1.0], [0.0], k=0.2) == 0.0  # a certain position scores 0
    with pytest.raises(UsageError):
        min_k_plus_plus([], [], [], k=0.5)


def test_token_statistics_match_the_log_probs_and_the_next_token_moments(tiny_testbed):
    from loka.models import load_model, logits

    model = load_model(tiny_testbed.model_dir)
    facts = tiny_testbed.forget
    stats = token_statistics(model, None, facts, batch_size=7)
    expected = text_token_log_probs(model, facts)
    assert len(stats) == len(facts)
    for (lp, _, _), ref in zip(stats, expected, strict=True):
        np.testing.assert_allclose(lp, ref.double().numpy(), atol=1e-5)
    # the moments of one position, computed by hand from the full distribution
    fact = facts[0]
    ids = model.tokenizer(model.tokenizer.bos_token + fact.text, return_tensors="pt").input_ids
    with torch.no_grad():
        log_p = logits(model, ids)[0, 0].double().log_softmax(-1)
    p = log_p.exp()
    mu = float((p * log_p).sum())
    sigma = math.sqrt(float((p * (log_p - mu) ** 2).sum()))
    assert stats[0][1][0] == pytest.approx(mu, abs=1e-4) and stats[0][2][0] == pytest.approx(sigma, abs=1e-4)
