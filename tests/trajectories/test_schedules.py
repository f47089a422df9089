import numpy as np
import pytest

from mixagent.trajectories import ActionSpec, ContractError, DomainSpace, History, Weights
from mixagent.trajectories.encoding import action_to_weights, weights_to_action
from mixagent.trajectories.policy import PolicyContext
from mixagent.trajectories.schedules import (
    BUILTIN_FAMILIES,
    CONSTANT_GRID,
    SCHEDULE_FAMILIES,
    StaticSchedule,
    build_policy,
    noisy_policy_family,
)
from mixagent.trajectories.schedules import draw_params as _draw_params


def draw_params(family, ctx, seed, index=0, level="field"):
    return _draw_params(SCHEDULE_FAMILIES[family], ctx, seed, index, level)


def build_schedule(family, params, ctx):
    return build_policy(SCHEDULE_FAMILIES[family], params, ctx)


SPACE = DomainSpace.from_fields(
    {"source": ["web", "code", "dict"], "target": ["coq", "maxima"]}, {"web": 3.0, "coq": 2.0}
)
CTX = PolicyContext(SPACE, 16, ActionSpec())


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


def test_schedules_are_open_loop_policies():
    from mixagent.trajectories import MixingPolicy

    for name, family in SCHEDULE_FAMILIES.items():
        policy = build_policy(family, _draw_params(family, CTX, 0), CTX)
        assert isinstance(policy, MixingPolicy) and policy.name == name
        assert policy.initial_weights(SPACE) == Weights.from_raw(policy.matrix[0])
    with pytest.raises(ContractError, match="past the horizon"):
        past = History(space=SPACE, feedback=[], weights=[]).model_copy(
            update={"weights": [Weights.from_raw(np.ones(5))]})
        StaticSchedule(np.ones((1, 5)) / 5).next_weights(SPACE, past)


class TargetHeavy:
    name = "target-heavy"

    """A tiny online policy: raises the target share after every stage in which the target score fell."""

    def initial_weights(self, space):
        return Weights.from_raw(space.priors())

    def next_weights(self, space, history):
        s = history.field_scores()
        share = 0.8 if s[-1, 1] < s[-2, 1] else 0.2
        return Weights.from_raw((space.field_matrix().T @ np.array([1 - share, share])) * space.priors())


def test_policies_plug_in_as_noisy_families():
    family = noisy_policy_family("noisy_test_target_heavy", lambda ctx, p: TargetHeavy())
    params = _draw_params(family, CTX, 11)
    schedule = build_policy(family, params, CTX)
    from mixagent.trajectories import Feedback

    h = History(space=SPACE)
    rng = np.random.default_rng(0)
    for t in range(4):
        h.record_feedback(Feedback(step=t, tokens_seen=t, field_scores={"source": -3.0, "target": -4.0 + rng.normal()},
                                   domain_losses={d: 3.0 for d in SPACE.names}))
        h.record_weights(schedule.next_weights(SPACE, h))
    w = h.weight_matrix()
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert not np.allclose(w[1], w[2]) or not np.allclose(w[2], w[3])
    again = build_policy(family, params, CTX)  # seeded: the same noise again
    h2 = History(space=SPACE, feedback=h.feedback[:1])
    np.testing.assert_allclose(again.next_weights(SPACE, h2).as_array(), w[0])


def test_static_dirichlet_is_one_constant_mixture_per_run_with_a_corner_every_eleventh():
    from mixagent.trajectories.schedules import CORNER_EVERY, STATIC_DIRICHLET

    def static(index, level="domain", seed=5):
        p = _draw_params(STATIC_DIRICHLET, CTX, seed, index, level)
        return p, build_policy(STATIC_DIRICHLET, p, CTX).matrix

    p, m = static(0)
    assert set(p) == {"level", "concentration", "seed"} and 0.1 <= p["concentration"] <= 10
    np.testing.assert_array_equal(m, np.tile(m[0], (16, 1)))  # constant over the run
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    # the concentration is the spread: a small one gives a peaked mixture, a large one nearly the priors
    peaked = build_policy(STATIC_DIRICHLET, {**p, "concentration": 0.1}, CTX).matrix[0]
    flat = build_policy(STATIC_DIRICHLET, {**p, "concentration": 10.0}, CTX).matrix[0]
    prior = SPACE.priors() / SPACE.priors().sum()
    assert np.abs(flat - prior).sum() < np.abs(peaked - prior).sum()
    # near-corners: k = 10, 21, ... put `mass` on unit (k // 11) mod n, the rest by the priors
    for k, unit in ((CORNER_EVERY - 1, 0), (2 * CORNER_EVERY - 1, 1), (6 * CORNER_EVERY - 1, 0)):
        p, m = static(k)
        assert set(p) == {"level", "corner", "mass"} and 0.6 <= p["mass"] <= 0.9
        assert int(np.argmax(m[0])) == unit and m[0, unit] == pytest.approx(p["mass"], abs=0.02)
        rest = np.delete(m[0], unit) / np.delete(prior, unit)
        np.testing.assert_allclose(rest, rest[0], rtol=0.05)  # the rest in prior proportion
    _, field = static(CORNER_EVERY - 1, level="field")  # at field level a corner is one field
    assert field[0, :3].sum() == pytest.approx(_draw_params(STATIC_DIRICHLET, CTX, 5, 10, "field")["mass"], abs=0.02)


def test_dirichlet_ramp_moves_from_one_mixture_to_another_within_fields():
    from mixagent.trajectories.schedules import DIRICHLET_RAMP

    p = _draw_params(DIRICHLET_RAMP, CTX, 11, 0, "domain")
    m = build_policy(DIRICHLET_RAMP, p, CTX).matrix
    assert m.shape == (16, SPACE.size) and {"concentration", "power", "seed"} <= set(p)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    assert np.abs(m[0] - m[-1]).sum() > 0.05  # it moves
    # it travels towards the last mixture (up to the projection onto the action map's image)
    to_end = np.abs(m - m[-1]).sum(axis=1)
    assert to_end[0] > to_end[8] > to_end[-1] == 0
    np.testing.assert_array_equal(m, build_policy(DIRICHLET_RAMP, p, CTX).matrix)
