"""The versioned action maps: ``action-v2`` (F - 1 free logits) is a bijection onto its image that
the committed behaviour data fill without clipping; ``action-v1`` is unchanged."""

from pathlib import Path

import numpy as np
import pytest

from mixagent.trajectories import ActionSpec, ContractError, DomainSpace, Weights
from mixagent.trajectories.encoding import (
    ACTION_MAP,
    LEGACY_ACTION_MAP,
    action_size,
    action_to_weights,
    field_shares_to_weights,
    softmax,
    weights_to_action,
)
from mixagent.trajectories.storage import FileStore

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["math", "proofs"]}, {"web": 3.0})
THREE = DomainSpace.from_fields({"source": ["web"], "target": ["math"], "other": ["law", "med"]})
DATA = Path(__file__).resolve().parents[2] / "data" / "trajectories"


@pytest.mark.parametrize(("space", "level", "units"), [(SPACE, "field", 2), (THREE, "field", 3),
                                                       (SPACE, "domain", 4)])
def test_v2_has_one_free_logit_fewer_than_units_and_round_trips(space, level, units):
    spec = ActionSpec(level=level, beta=3.0, epsilon=0.02)
    assert action_size(space, spec, ACTION_MAP) == units - 1
    assert action_size(space, spec) == action_size(space, spec, LEGACY_ACTION_MAP) == units
    rng = np.random.default_rng(0)
    for a in [*rng.uniform(-1, 1, (200, units - 1)), np.ones(units - 1), -np.ones(units - 1)]:
        w = action_to_weights(a, space, spec, ACTION_MAP)
        back = weights_to_action(w, space, spec, ACTION_MAP)
        assert back.dtype == np.float64
        np.testing.assert_allclose(back, a, rtol=0, atol=1e-9)  # action -> weights -> action
        np.testing.assert_allclose(action_to_weights(back, space, spec, ACTION_MAP).as_array(), w.as_array(),
                                   rtol=0, atol=1e-9)  # weights -> action -> weights


def test_v2_is_one_to_one_where_v1_is_not():
    """v1 gives one mixture to every action on a line (a shift of the logits); v2 to none."""
    spec = ActionSpec(beta=3.0, epsilon=0.02)
    v1 = [action_to_weights(np.array([x - 0.5, x]), SPACE, spec).as_array() for x in (-0.4, 0.0, 0.5)]
    np.testing.assert_allclose(v1[0], v1[2], atol=1e-12)
    v2 = [action_to_weights(np.array([x]), SPACE, spec, ACTION_MAP).as_array() for x in (-0.4, 0.0, 0.5)]
    assert min(np.abs(v2[i] - v2[j]).max() for i in range(3) for j in range(i + 1, 3)) > 0.05


def test_v2_formula_and_the_same_image_as_v1_for_two_fields():
    spec = ActionSpec(beta=3.0, epsilon=0.02)
    a = np.array([0.3])
    shares = 0.98 * softmax(np.array([0.0, 6.0 * 0.3])) + 0.02 * SPACE.field_priors()
    np.testing.assert_allclose(action_to_weights(a, SPACE, spec, ACTION_MAP).as_array(),
                               field_shares_to_weights(SPACE, shares), rtol=0, atol=1e-15)
    # the corners of v1's box are v2's end points: both reach target shares exp(±2β) times the source's
    for x in (-1.0, 1.0):
        np.testing.assert_allclose(action_to_weights(np.array([-x, x]), SPACE, spec).as_array(),
                                   action_to_weights(np.array([x]), SPACE, spec, ACTION_MAP).as_array(), atol=1e-15)


def test_unreachable_mixtures_clip_to_the_nearest_edge():
    spec = ActionSpec(beta=1.0, epsilon=0.02)
    a = weights_to_action(Weights.from_raw([0.0, 0.0, 1.0, 1.0]), SPACE, spec, ACTION_MAP)
    assert a.tolist() == [1.0]


def test_unknown_map_and_wrong_width_are_refused_naming_them():
    spec = ActionSpec()
    with pytest.raises(ContractError, match=r"action_map: unknown action map 'action-v9'"):
        action_to_weights(np.zeros(1), SPACE, spec, "action-v9")
    with pytest.raises(ContractError, match=r"expected 1 values \(field level, action-v2\)"):
        action_to_weights(np.zeros(2), SPACE, spec, ACTION_MAP)
    with pytest.raises(ContractError, match="action-v2 needs at least two fields"):
        action_size(DomainSpace.from_fields({"source": ["a", "b"]}), spec, ACTION_MAP)


def _unclipped_actions(folder: Path) -> np.ndarray:
    """The action-v2 of every committed mixture before clipping: ``(log q_target - log q_source)/(2β)``."""
    out = []
    for s in FileStore(folder).load_all():
        hd = s.trajectory.header
        f = hd.space.field_matrix() @ s.trajectory.history.weight_matrix().T
        q = (f - hd.action.epsilon * hd.space.field_priors()[:, None]) / (1 - hd.action.epsilon)
        out.append((np.log(q[1]) - np.log(q[0])) / (2 * hd.action.beta))
    return np.concatenate(out)


@pytest.mark.parametrize("name", ["math-tiny", "code-tiny"])
def test_committed_behaviour_actions_fill_the_v2_box_without_clipping(name):
    """Every committed field-level mixture has an exact action-v2 action (its image is reproduced) and
    the data reach the box's edges: the constant shares 0 and 1 sit at ±1, nothing lies beyond."""
    folder = DATA / name
    for s in FileStore(folder).load_all()[:24]:
        hd = s.trajectory.header
        for w in s.trajectory.history.weights:
            a = weights_to_action(w, hd.space, hd.action, ACTION_MAP)
            np.testing.assert_allclose(action_to_weights(a, hd.space, hd.action, ACTION_MAP).as_array(), w.as_array(),
                                       rtol=0, atol=1e-9)
    a = _unclipped_actions(folder)
    assert len(a) >= 2048
    assert np.abs(a).max() <= 1 + 1e-9  # nothing clipped (measured: 0 of 4,096 math-tiny, 0 of 2,048 code-tiny)
    at_edge = float((np.abs(a) >= 1 - 1e-6).mean())
    assert 0.0 < at_edge < 0.1  # exactly at ±1 (measured: 7.5% of math-tiny, 6.8% of code-tiny)
    assert np.quantile(a, 0.1) < -0.4 and np.quantile(a, 0.9) > 0.3  # spread over the box, not on a line
