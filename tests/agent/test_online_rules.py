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


def test_the_power_law_fit_recovers_a_curve_and_ado_follows_the_fastest_improver():
    from mixagent.agent.online_rules import ALPHA_GRID, ADOPolicy, fit_power_law

    a = float(ALPHA_GRID[40])  # on the grid, so the fit is exact
    x = np.array([0.25, 0.5, 0.75, 1.0])
    eps, beta, alpha = fit_power_law(x, 1.0 + 2.0 * x ** -a)
    assert (eps, beta, alpha) == pytest.approx((1.0, 2.0, a), rel=1e-6)
    # web improves along 1 + 2·x^-a, code is flat, proofs along 2 + 1·x^-a: rates 2a, 0, a
    losses = [[3.0, 3.0, 3.0]] + [[1 + 2 * v ** -a, 1.5, 2 + v ** -a] for v in x]
    h = _history(losses, [0, 10, 20, 30, 40])  # tokens 0, 1000, ..., 4000: x = n / 4000 as above
    rates = ADOPolicy().rates(SPACE, h)
    assert rates == pytest.approx([2 * a, 0.0, a], abs=1e-6)
    want = 0.8 * np.array([2 / 3, 0.0, 1 / 3]) + 0.2 * np.array([0.5, 0.25, 0.25])
    assert ADOPolicy().next_weights(SPACE, h).values == pytest.approx(want, abs=1e-6)
    # before three fitted points (the start is not on the curve): the prior
    assert ADOPolicy().next_weights(SPACE, _history(losses[:3], [0, 10, 20])).values == pytest.approx(
        [0.5, 0.25, 0.25])
    with pytest.raises(ContractError, match="min_points: must be an integer >= 3"):
        ADOPolicy(min_points=2)


def test_velocitune_upweights_the_domains_furthest_from_their_fitted_target():
    from mixagent.agent.online_rules import ALPHA_GRID, VelocitunePolicy

    a = float(ALPHA_GRID[40])
    x = np.array([0.25, 0.5, 0.75, 1.0])
    # web on 1 + 2·x^-a (target 1), code on 1.5 + 0·x (flat: start 1.6, target 1.5 → velocity 0),
    # proofs on 2 + x^-a (target 2); start losses 4.0, 1.6, 3.5
    losses = [[4.0, 1.6, 3.5]] + [[1 + 2 * v ** -a, 1.5, 2 + v ** -a] for v in x]
    h = _history(losses, [0, 10, 20, 30, 40])
    p = VelocitunePolicy()
    v3 = p.velocities(SPACE, h, 3)  # fitted on the first three points (tokens 1000..3000, x = n/3000)
    v4 = p.velocities(SPACE, h, 4)
    assert p.velocities(SPACE, h, 2) is None
    # (ℓ_now − ε)/(ℓ_0 − ε), ℓ_now at x = 1: web (3 − 1)/(4 − 1), proofs (3 − 2)/(3.5 − 2)
    assert v4 == pytest.approx([2 / 3, 0.0, 2 / 3], abs=1e-6)
    w = np.array([0.5, 0.25, 0.25]) * np.exp(v3)
    w = w / w.sum() * np.exp(v4)
    assert p.next_weights(SPACE, h).values == pytest.approx(w / w.sum(), abs=1e-6)
