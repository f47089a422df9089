"""The online baselines as noisy behaviour families (agent/behaviour.py)."""

import numpy as np
import pytest

from mixagent.agent.baselines import build_baseline
from mixagent.agent.behaviour import BEHAVIOUR_BASELINES, BEHAVIOUR_FAMILIES
from mixagent.agent.registry import build_policy, draw_params, policy_families
from mixagent.trajectories import ActionSpec, DomainSpace, Feedback, History, Weights
from mixagent.trajectories.encoding import action_to_weights, weights_to_action
from mixagent.trajectories.policy import PolicyContext

SPACE = DomainSpace.from_fields(
    {"source": ["web", "code", "dict"], "target": ["coq", "maxima"]}, {"web": 3.0, "coq": 2.0}
)
CTX = PolicyContext(SPACE, 8, ActionSpec())
TARGET = np.array([0, 0, 0, 1, 1], dtype=bool)


def feedback(t: int, losses: dict[str, float]) -> Feedback:
    return Feedback(step=t, tokens_seen=t, field_scores={"source": -3.0, "target": -5.0}, domain_losses=losses)


def run(family: str, params: dict, stages: int = 4) -> np.ndarray:
    """Weights of ``stages`` decisions against a run whose target losses fall and source losses rise."""
    schedule = build_policy(family, params, CTX)
    h = History(space=SPACE)
    for t in range(stages):
        h.record_feedback(feedback(t, {d: (6.0 - 0.5 * t) if tgt else (3.0 + 0.1 * t)
                                       for d, tgt in zip(SPACE.names, TARGET, strict=True)}))
        h.record_weights(schedule.next_weights(SPACE, h))
    return h.weight_matrix()


def test_every_baseline_family_is_an_entry_point_and_draws_in_range():
    families = policy_families()
    for name, family in BEHAVIOUR_FAMILIES.items():
        assert families[name] is family  # found through the mixagent.policies entry points
    assert set(BEHAVIOUR_BASELINES) == set(BEHAVIOUR_FAMILIES)
    for family in BEHAVIOUR_BASELINES:
        draws = [draw_params(family, CTX, seed) for seed in range(200)]
        assert draws[7] == draw_params(family, CTX, 7)  # seeded
        sig = np.array([d["sigma"] for d in draws])
        assert 0.1 <= sig.min() and sig.max() <= 0.6
    shares = np.array([draw_params("noisy_fixed_target_share", CTX, s)["target_share"] for s in range(200)])
    assert 0.05 <= shares.min() < 0.2 and 0.8 < shares.max() <= 0.95
    temps = np.array([draw_params("noisy_loss_softmax_plain", CTX, s)["temperature"] for s in range(200)])
    assert 0.5 <= temps.min() < 0.7 and 3.5 < temps.max() <= 5.0
    assert 0.9 < np.median(temps) < 2.7  # log-uniform: the median is near sqrt(0.5 * 5) = 1.58


@pytest.mark.parametrize("level", ["field", "domain"])
@pytest.mark.parametrize("family", list(BEHAVIOUR_BASELINES))
def test_noisy_baselines_follow_their_rule_up_to_the_noise(family, level):
    params = {**draw_params(family, CTX, 3, level=level), "sigma": 0.0}
    w = run(family, params)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    spec = CTX.spec(level)
    for row in w:  # every mixture lies on the action image, so the behaviour action is exact
        a = weights_to_action(Weights.from_raw(row), SPACE, spec)
        np.testing.assert_allclose(action_to_weights(a, SPACE, spec).as_array(), row, atol=1e-9)
    b = BEHAVIOUR_BASELINES[family]
    rule_params = {k: v for k, v in params.items() if k not in ("sigma", "seed", "level")}
    policy = build_baseline(b.rule, {**b.fixed, **rule_params})
    expected = policy.initial_weights(SPACE).as_array()
    # a feasible mixture (every share above ε·prior) is its own projection: the rule's target share
    assert w[0][TARGET].sum() == pytest.approx(expected[TARGET].sum(), abs=1e-6)


def test_loss_softmax_behaviour_reacts_to_feedback_and_noise_is_seeded():
    # target losses fall, source losses rise: the relative rule shifts mass to the source field
    params = {**draw_params("noisy_loss_softmax", CTX, 0, level="domain"), "sigma": 0.0, "temperature": 0.1}
    w = run("noisy_loss_softmax", params, stages=5)
    assert w[0][TARGET].sum() > 0.3 and w[4][TARGET].sum() < w[0][TARGET].sum() - 0.2
    # the plain rule keeps pouring into the highest losses (the target field's)
    params = {**draw_params("noisy_loss_softmax_plain", CTX, 0, level="domain"), "sigma": 0.0, "temperature": 0.5}
    assert run("noisy_loss_softmax_plain", params, stages=2)[1][TARGET].sum() > 0.9
    noisy = draw_params("noisy_loss_softmax", CTX, 5, level="domain")
    a, b = run("noisy_loss_softmax", noisy), run("noisy_loss_softmax", noisy)
    np.testing.assert_array_equal(a, b)
    quiet = run("noisy_loss_softmax", {**noisy, "sigma": 0.0})
    assert np.abs(a - quiet).max() > 1e-3
