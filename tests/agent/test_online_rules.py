"""The online rules' updates against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixagent.agent.online_rules import DoReMiPolicy, ODMPolicy
from mixagent.trajectories import ContractError, DomainSpace, Feedback, History, Weights

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 2.0})  # prior .5/.25/.25


def _history(losses: list[list[float]], steps: list[int]) -> History:
    h = History(space=SPACE)
    for t, (ls, step) in enumerate(zip(losses, steps, strict=True)):
        h.record_feedback(Feedback(step=step, tokens_seen=100 * step, field_scores={"source": -3.0, "target": -4.0},
                                   domain_losses=dict(zip(SPACE.names, ls, strict=True))))
        if t < len(losses) - 1:
            h.record_weights(Weights.from_raw([1 / 3, 1 / 3, 1 / 3]))
    return h


def test_doremi_moves_weight_to_the_domains_whose_loss_rose():
    h = _history([[2.0, 1.5, 4.0], [2.5, 1.4, 3.0], [2.2, 1.6, 3.5]], [0, 10, 20])
    p = DoReMiPolicy(eta=1.0, smoothing=0.0)
    # stage 1: excess (0.5, 0, 0): alpha ∝ (.5e^.5, .25, .25); stage 2: excess (0.2, 0.1, 0)
    a1 = np.array([0.5 * math.exp(0.5), 0.25, 0.25])
    a1 /= a1.sum()
    a2 = a1 * np.exp([0.2, 0.1, 0.0])
    a2 /= a2.sum()
    assert p.next_weights(SPACE, h).values == pytest.approx(a2)
    assert DoReMiPolicy(eta=1.0, smoothing=0.0, average=True).next_weights(SPACE, h).values == pytest.approx(
        (np.array([0.5, 0.25, 0.25]) + a1 + a2) / 3)
    smoothed = DoReMiPolicy(eta=1.0, smoothing=0.3).alphas(SPACE, _history([[2.0, 1.5, 4.0], [2.5, 1.4, 3.0]], [0, 10]))
    assert smoothed[1] == pytest.approx(0.7 * a1 + 0.1)
    assert p.initial_weights(SPACE).values == pytest.approx([0.5, 0.25, 0.25])
    with pytest.raises(ContractError, match="smoothing: must be in"):
        DoReMiPolicy(smoothing=1.0)


def test_odm_explores_uniformly_then_exploits_the_cumulative_reward():
    k = 3
    assert ODMPolicy.epsilon(k, 1) == pytest.approx(1 / 3)  # sqrt(ln 3 / 3) > 1/3
    t = 400
    eps = math.sqrt(math.log(3) / (3 * t))
    assert ODMPolicy.epsilon(k, t) == pytest.approx(eps)
    h = _history([[2.0, 1.5, 4.0], [2.5, 1.4, 3.0], [2.2, 1.6, 3.5]], [0, 10, t])
    # R = 10*(2.5,1.4,3.0)/10 + 390*(2.2,1.6,3.5)/10; w ∝ exp(eps(10) * R) with eps(10) = 1/3 (sqrt(ln3/30) > 1/3? no)
    reward = 10 * np.array([2.5, 1.4, 3.0]) / 10 + 390 * np.array([2.2, 1.6, 3.5]) / 10
    eps_prev = min(1 / 3, math.sqrt(math.log(3) / (3 * 10)))
    w = np.exp(eps_prev * reward - (eps_prev * reward).max())
    w /= w.sum()
    want = (1 - 3 * eps) * w + eps
    got = ODMPolicy().next_weights(SPACE, h).values
    assert got == pytest.approx(want) and np.argmax(got) == 2  # the highest loss, proofs, gets the most
    # a short run of few steps stays uniform: exploration first
    short = _history([[2.0, 1.5, 4.0], [2.5, 1.4, 3.0]], [0, 3])
    assert ODMPolicy().next_weights(SPACE, short).values == pytest.approx([1 / 3] * 3)
