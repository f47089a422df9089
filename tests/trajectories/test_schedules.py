import numpy as np
import pytest

from mixagent.trajectories import ActionSpec, ContractError, DomainSpace, History, Weights
from mixagent.trajectories.encoding import action_to_weights, weights_to_action
from mixagent.trajectories.schedules import (
    BUILTIN_FAMILIES,
    CONSTANT_GRID,
    ScheduleContext,
    ScheduleFamily,
    StaticSchedule,
    build_schedule,
    draw_params,
    families,
    register_family,
    register_policy_family,
)

SPACE = DomainSpace.from_fields(
    {"source": ["web", "code", "dict"], "target": ["coq", "maxima"]}, {"web": 3.0, "coq": 2.0}
)
CTX = ScheduleContext(SPACE, 16, ActionSpec())


def matrix(family, seed=0, index=0, level="field"):
    s = build_schedule(family, draw_params(family, CTX, seed, index, level), CTX)
    assert isinstance(s, StaticSchedule)
    return s.matrix


def target_share(m):
    return m[:, 3:].sum(axis=1)


def test_builtin_families_cover_the_issue():
    assert set(BUILTIN_FAMILIES) == {
        "constant", "uniform_share", "dirichlet", "logit_walk", "ramp_up", "ramp_down",
        "switch_target_first", "switch_replay_first", "cycle",
    }


@pytest.mark.parametrize("level", ["field", "domain"])
@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_every_family_gives_valid_reachable_seeded_mixtures(family, level):
    m = matrix(family, seed=3, level=level)
    assert m.shape == (16, SPACE.size)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    spec = ActionSpec(level=level)
    for row in m:  # every mixture is in the image of the action map: its action labels it exactly
        w = Weights.from_raw(row)
        back = action_to_weights(weights_to_action(w, SPACE, spec), SPACE, spec).as_array()
        np.testing.assert_allclose(back, row, atol=1e-5)
    np.testing.assert_array_equal(m, matrix(family, seed=3, level=level))
    params = draw_params(family, CTX, 3, 0, level)
    assert params["level"] == level
    if level == "domain" and family != "dirichlet" and family != "logit_walk":
        assert len(params["split"]) == SPACE.size


def test_field_level_keeps_priors_within_fields_and_domain_level_does_not():
    field = matrix("constant", index=4)
    np.testing.assert_allclose(field[0, 0] / field[0, 1], 3.0)  # web:code = 3:1 priors
    np.testing.assert_allclose(target_share(field), 0.4, atol=1e-6)
    dom = matrix("constant", index=4, level="domain")
    np.testing.assert_allclose(target_share(dom), 0.4, atol=1e-3)
    assert abs(dom[0, 0] / dom[0, 1] - 3.0) > 1e-3


def test_constant_walks_the_grid_and_random_families_vary_per_seed():
    shares = [round(float(target_share(matrix("constant", index=k))[0]), 2) for k in range(11)]
    lo, hi = shares[0], shares[-1]
    assert lo < 0.02 and hi > 0.98 and shares[1:-1] == list(CONSTANT_GRID[1:-1])
    for fam in ("uniform_share", "dirichlet", "logit_walk"):
        m = matrix(fam)
        assert np.ptp(target_share(m)) > 0.05
        assert not np.allclose(m, matrix(fam, seed=1))


def test_ramps_are_monotone_and_switches_switch():
    assert (np.diff(target_share(matrix("ramp_up", seed=5))) > 0).all()
    assert (np.diff(target_share(matrix("ramp_down", seed=5))) < 0).all()
    for fam, sign in (("switch_target_first", -1), ("switch_replay_first", 1)):
        s = target_share(matrix(fam, seed=7))
        jumps = np.flatnonzero(np.abs(np.diff(s)) > 1e-9)
        assert len(jumps) == 1 and np.sign(np.diff(s)[jumps[0]]) == sign
        p = draw_params(fam, CTX, 7)
        assert jumps[0] + 1 == p["at"]


def test_cycles_repeat_with_their_period():
    for seed in range(5):
        p = draw_params("cycle", CTX, seed)
        s = target_share(matrix("cycle", seed=seed))
        np.testing.assert_allclose(s[p["period"]:], s[: 16 - p["period"]], atol=1e-9)
        assert np.ptp(s) > 0.1


def test_registry_is_open_and_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_family(ScheduleFamily("constant", lambda c, r, k: {}, lambda c, p: StaticSchedule(np.ones((1, 1)))))
    with pytest.raises(ContractError, match="unknown family 'nope'"):
        draw_params("nope", CTX, 0)


class TargetHeavy:
    """A tiny online policy: raises the target share after every stage in which the target score fell."""

    def initial_weights(self, space):
        return Weights.from_raw(space.priors())

    def next_weights(self, space, history):
        s = history.field_scores()
        share = 0.8 if s[-1, 1] < s[-2, 1] else 0.2
        return Weights.from_raw((space.field_matrix().T @ np.array([1 - share, share])) * space.priors())


def test_policies_plug_in_as_noisy_families():
    name = "noisy_test_target_heavy"
    if name not in families():
        register_policy_family(name, lambda ctx, p: TargetHeavy())
    params = draw_params(name, CTX, 11)
    schedule = build_schedule(name, params, CTX)
    from mixagent.trajectories import Feedback

    h = History(space=SPACE)
    rng = np.random.default_rng(0)
    for t in range(4):
        h.record_feedback(Feedback(step=t, tokens_seen=t, field_scores={"source": -3.0, "target": -4.0 + rng.normal()},
                                   domain_losses={d: 3.0 for d in SPACE.names}))
        h.record_weights(schedule.next_weights(h))
    w = h.weight_matrix()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert not np.allclose(w[1], w[2]) or not np.allclose(w[2], w[3])
    again = build_schedule(name, params, CTX)  # seeded: the same noise again
    h2 = History(space=SPACE, feedback=h.feedback[:1])
    np.testing.assert_allclose(again.next_weights(h2).as_array(), w[0])
