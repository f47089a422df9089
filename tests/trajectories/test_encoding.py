import numpy as np
import pytest

from mixagent.trajectories import (
    OBS_BOUND,
    ActionSpec,
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Objective,
    Weights,
    action_to_weights,
    balanced_scores,
    encode,
    observation_layout,
    observation_size,
    relative_gains,
    stage_rewards,
    weights_to_action,
)

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["math", "proofs"]}, {"web": 3.0})


def make_history(scores: list[tuple[float, float]]) -> History:
    h = History(space=SPACE)
    for t, (s, g) in enumerate(scores):
        if t:
            h.record_weights(Weights.from_raw([1, 1, 1, t]))
        h.record_feedback(
            Feedback(step=10 * t, tokens_seen=100 * t, field_scores={"source": s, "target": g},
                     domain_losses={"web": -s, "code": -s, "math": -g, "proofs": -g})
        )
    return h


def test_field_action_maps_within_field_by_prior():
    spec = ActionSpec(level="field", beta=3.0, epsilon=0.0)
    w = action_to_weights(np.array([1.0, -1.0]), SPACE, spec).as_array()
    src = 1 / (1 + np.exp(-6.0))
    np.testing.assert_allclose([w[0] + w[1], w[2] + w[3]], [src, 1 - src], rtol=1e-6)
    assert w[0] / w[1] == pytest.approx(3.0)  # web:code prior 3:1
    assert w[2] == pytest.approx(w[3])


def test_epsilon_mixes_towards_prior_and_zero_action_is_field_prior():
    spec = ActionSpec(level="field", beta=3.0, epsilon=0.1)
    w = action_to_weights(np.zeros(2), SPACE, spec).as_array()
    fm = SPACE.field_matrix()
    np.testing.assert_allclose(fm @ w, 0.9 * 0.5 + 0.1 * SPACE.field_priors())


@pytest.mark.parametrize("level", ["field", "domain"])
def test_weights_to_action_inverts_action_to_weights(level):
    spec = ActionSpec(level=level, beta=3.0, epsilon=0.02)
    rng = np.random.default_rng(0)
    n = 2 if level == "field" else 4
    for _ in range(20):
        a = rng.uniform(-1, 1, n)
        w = action_to_weights(a, SPACE, spec)
        a2 = weights_to_action(w, SPACE, spec)
        np.testing.assert_allclose(action_to_weights(a2, SPACE, spec).as_array(), w.as_array(), atol=1e-5)


def test_unreachable_weights_are_clipped_to_the_box():
    spec = ActionSpec(level="field", beta=1.0, epsilon=0.02)
    a = weights_to_action(Weights.from_raw([0.0, 0.0, 1.0, 1.0]), SPACE, spec)
    assert a.min() >= -1 and a.max() <= 1
    assert a[1] == pytest.approx(1.0) and a[0] == pytest.approx(-1.0)


def test_unreachable_domain_mixtures_get_the_nearest_reachable_one():
    # Two large shares, two mid-sized ones, one vanishing: the logits span more than the box.
    space = DomainSpace.from_fields({"source": ["a", "b", "c"], "target": ["d", "e"]})
    spec = ActionSpec(level="domain", beta=3.0, epsilon=0.02)
    w = Weights.from_raw([0.45, 0.45, 0.05, 0.0498, 0.0002])
    near = action_to_weights(weights_to_action(w, space, spec), space, spec).as_array()
    # centring the logits (the old rule) clips the mid-sized shares up to the edge of the box
    q = np.maximum((w.as_array() - 0.02 * space.priors()) / 0.98, 1e-12)
    logits = np.log(q) / 3.0
    centred = np.clip(logits - (logits.max() + logits.min()) / 2, -1, 1)
    far = action_to_weights(centred, space, spec).as_array()
    assert np.abs(near - w.as_array()).sum() < 0.5 * np.abs(far - w.as_array()).sum()
    assert near[0] == pytest.approx(near[1]) and near[0] > near[2] > near[4]  # order is kept
    assert np.abs(near - w.as_array()).sum() < 0.05


def test_action_rejects_nan_and_wrong_shape():
    spec = ActionSpec()
    with pytest.raises(ContractError, match="expected 2 values"):
        action_to_weights(np.zeros(3), SPACE, spec)
    with pytest.raises(ContractError, match="non-finite"):
        action_to_weights(np.array([np.nan, 0.0]), SPACE, spec)


def test_balanced_score_and_rewards_telescope():
    h = make_history([(-4.0, -5.0), (-3.8, -4.0), (-3.9, -3.5)])
    g = relative_gains(h)
    np.testing.assert_allclose(g[1], [0.05, 0.2])
    b = balanced_scores(h, Objective(spread_penalty=0.5))
    assert b[0] == 0.0
    assert b[1] == pytest.approx(np.mean([0.05, 0.2]) - 0.5 * np.std([0.05, 0.2]))
    r = stage_rewards(h, Objective(spread_penalty=0.5))
    assert r.sum() == pytest.approx(b[-1])
    # field weights change the mean, the penalty the spread
    b2 = balanced_scores(h, Objective(spread_penalty=0.0, field_weights={"target": 1.0}))
    assert b2[1] == pytest.approx(0.2)
    with pytest.raises(ContractError, match="unknown field"):
        balanced_scores(h, Objective(field_weights={"law": 1.0}))


@pytest.mark.parametrize("level", ["field", "domain"])
def test_observation_layout(level):
    spec = ActionSpec(level=level)
    h = make_history([(-4.0, -5.0), (-3.8, -4.0), (-3.9, -3.5)])
    obs = encode(h, horizon=8, spec=spec)
    assert obs.shape == (observation_size(SPACE, spec),)
    assert obs.dtype == np.float32
    np.testing.assert_allclose(obs[:2], [0.025 * 10, 0.3 * 10], rtol=1e-5)  # gains ×10
    np.testing.assert_allclose(obs[2:4], [-0.25, 1.0], rtol=1e-5)  # last change of the gains
    np.testing.assert_allclose(obs[4:6], [0.4, 0.6], rtol=1e-5)  # field shares of the last mixture
    assert obs[6] == pytest.approx(2 / 8)  # progress
    # initial observation: zero gains, prior shares, progress 0
    o0 = encode(make_history([(-4.0, -5.0)]), 8, spec)
    assert o0[:4].tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(o0[4:6], SPACE.field_priors())
    # the named layout says the same, and covers every feature once, in order
    layout = observation_layout(SPACE, spec)
    assert (layout["gains"], layout["gain_change"], layout["last_shares"]) == (slice(0, 2), slice(2, 4), slice(4, 6))
    assert layout["progress"] == slice(6, 7) and layout["past_gains"] == slice(7, 15)
    assert ("domain_loss_change" in layout) == (level == "domain")
    stops = [sl.start for sl in layout.values()] + [observation_size(SPACE, spec)]
    assert stops[0] == 0 and all(sl.stop == nxt for sl, nxt in zip(layout.values(), stops[1:], strict=True))
    assert list(layout)[-3:] == ["spread_penalty", "field_weights", "gain_values"]
    assert "spread_penalty" not in observation_layout(SPACE, spec, "obs-v1")
    assert obs[layout["spread_penalty"]] == pytest.approx([0.5])  # the default objective


def test_observation_is_clipped():
    h = make_history([(-1.0, -1.0), (-1e-9, -5.0)])
    obs = encode(h, 4, ActionSpec())
    assert obs.max() <= OBS_BOUND and obs.min() >= -OBS_BOUND


def test_observation_windows_hold_the_right_past_steps():
    # 7 feedbacks (t = 6): gains at t-1..t-4, shares of the mixtures before the last one
    scores = [(-4.0, -5.0 + 0.1 * t) for t in range(7)]
    h = make_history(scores)
    spec = ActionSpec()
    obs = encode(h, horizon=8, spec=spec)
    g = relative_gains(h) * 10
    f = 2
    gains_window = obs[3 * f + 1 : 3 * f + 1 + 4 * f].reshape(4, f)
    np.testing.assert_allclose(gains_window, g[[5, 4, 3, 2]], rtol=1e-5)
    fm = SPACE.field_matrix()
    shares = [fm @ w.as_array() for w in h.weights]  # weights[i] trained between feedback i and i+1
    np.testing.assert_allclose(obs[2 * f : 3 * f], shares[5], rtol=1e-5)  # the last mixture
    share_window = obs[3 * f + 1 + 4 * f : 3 * f + 1 + 8 * f].reshape(4, f)
    np.testing.assert_allclose(share_window, [shares[4], shares[3], shares[2], shares[1]], rtol=1e-5)
    # two steps in: the windows reach back before the start (zeros / priors)
    o2 = encode(make_history(scores[:3]), 8, spec)
    gw = o2[3 * f + 1 : 3 * f + 1 + 4 * f].reshape(4, f)
    np.testing.assert_allclose(gw[1], 0.0)  # g(0) = 0
    np.testing.assert_allclose(gw[2:], 0.0)  # before the start
    sw = o2[3 * f + 1 + 4 * f : 3 * f + 1 + 8 * f].reshape(4, f)
    np.testing.assert_allclose(sw[1:], np.tile(SPACE.field_priors(), (3, 1)), rtol=1e-6)


def test_weighted_objective_ignores_zero_weight_fields_in_the_spread():
    h = make_history([(-4.0, -5.0), (-3.0, -5.0)])
    b = balanced_scores(h, Objective(spread_penalty=1.0, field_weights={"source": 1.0}))
    assert b[1] == pytest.approx(0.25)  # only the source gain, no spread penalty from the target


def test_obs_v2_appends_the_objective_slice_and_obs_v1_is_the_rest():
    from mixagent.trajectories.encoding import ENCODER_VERSIONS, objective_features, observation_size

    h = make_history([(-4.0, -5.0), (-4.2, -4.0), (-4.4, -3.5)])  # source falls, target rises
    spec = ActionSpec()
    v1 = encode(h, 8, spec, version="obs-v1")
    f = 2
    assert ENCODER_VERSIONS == ("obs-v1", "obs-v2")
    objectives = (Objective(), Objective(spread_penalty=0.0),
                  Objective(spread_penalty=0.9, field_weights={"source": 3, "target": 1}))
    for objective in objectives:
        v2 = encode(h, 8, spec, objective)
        assert v2.shape == (observation_size(SPACE, spec),) == (len(v1) + 2 * f + 1,)
        np.testing.assert_array_equal(v2[: len(v1)], v1)
        lam, c, grad = v2[len(v1)], v2[len(v1) + 1 : len(v1) + 1 + f], v2[len(v1) + 1 + f :]
        assert lam == pytest.approx(objective.spread_penalty)
        assert c.sum() == pytest.approx(1.0)
        # the gradient is dB/dg: a finite difference of the balanced score agrees
        g = relative_gains(h)[-1]
        for k in range(f):
            def b(x, c=c, objective=objective):
                m = x @ c
                return m - objective.spread_penalty * np.sqrt(((x - m) ** 2) @ c)
            e = np.eye(f)[k] * 1e-6
            assert grad[k] == pytest.approx((b(g + e) - b(g - e)) / 2e-6, abs=1e-4)
    # target ahead of source: the spread penalty moves worth from the target field to the source
    slice_ = objective_features(np.array([-0.1, 0.3]), SPACE, Objective(spread_penalty=0.5))
    np.testing.assert_allclose(slice_, [0.5, 0.5, 0.5, 0.75, 0.25])
    # before any gain the slice is the weights themselves
    np.testing.assert_allclose(objective_features(np.zeros(2), SPACE, Objective()), [0.5, 0.5, 0.5, 0.5, 0.5])
    with pytest.raises(ContractError, match="unknown encoder 'obs-v9'"):
        encode(h, 8, spec, version="obs-v9")


def _full_history_encode(history, horizon, spec, objective, version):  # type: ignore[no-untyped-def]
    """The encoder as it was before it read only the window: every stage's gains and shares."""
    from mixagent.trajectories.encoding import GAIN_SCALE, OBS_BOUND, WINDOW, objective_features, relative_gains

    space = history.space
    f = len(space.fields)
    t = len(history.feedback) - 1
    g = relative_gains(history) * GAIN_SCALE
    fm = space.field_matrix()
    field_shares = [fm @ w.as_array() for w in history.weights[:t]]

    def gain_at(i):  # type: ignore[no-untyped-def]
        return g[i] if i >= 0 else np.zeros(f)

    def shares_at(i):  # type: ignore[no-untyped-def]
        return field_shares[i] if 0 <= i < len(field_shares) else space.field_priors()

    parts = [g[t], g[t] - gain_at(t - 1) if t > 0 else np.zeros(f), shares_at(t - 1), np.array([t / horizon])]
    parts += [gain_at(t - k) for k in range(1, WINDOW + 1)]
    parts += [shares_at(t - 1 - k) for k in range(1, WINDOW + 1)]
    if spec.level == "domain":
        losses = history.domain_losses()
        rel = (losses[t] - losses[0]) / np.maximum(np.abs(losses[0]), 1e-8) * GAIN_SCALE
        parts += [rel, history.weights[t - 1].as_array() if t > 0 else space.priors()]
    if version == "obs-v2":
        parts.append(objective_features(g[t] / GAIN_SCALE, space, objective))
    return np.clip(np.concatenate(parts), -OBS_BOUND, OBS_BOUND).astype(np.float32)


@pytest.mark.parametrize("version", ["obs-v1", "obs-v2"])
@pytest.mark.parametrize("level", ["field", "domain"])
def test_the_window_encoder_gives_the_full_history_encoders_numbers(level, version):
    """The encoder reads only the window (so a decision's cost does not grow with the run), and gives
    exactly what reading every stage gave, at every stage of a long run."""
    space = DomainSpace.from_fields({"source": ["a", "b", "c"], "math": ["m"], "code": ["k", "j"]},
                                    {"a": 2.0, "k": 0.5})
    rng = np.random.default_rng(7)
    h = History(space=space)
    spec = ActionSpec(level=level)
    objective = Objective(spread_penalty=0.3, field_weights={"source": 1.0, "math": 2.0, "code": 1.5})
    for t in range(40):
        h.record_feedback(Feedback(step=t, tokens_seen=t,
                                   field_scores={f: float(-3 + rng.normal(0, 0.1) + 0.01 * t) for f in space.fields},
                                   domain_losses={d: float(2 + rng.normal(0, 0.1)) for d in space.names}))
        for horizon in (16, 64):
            np.testing.assert_array_equal(encode(h, horizon, spec, objective, version),
                                          _full_history_encode(h, horizon, spec, objective, version))
        h.record_weights(Weights.from_raw(rng.dirichlet(np.ones(space.size))))


@pytest.mark.parametrize("version", ["obs-v1", "obs-v2"])
@pytest.mark.parametrize("level", ["field", "domain"])
def test_a_runs_encode_cache_gives_the_uncached_numbers(level, version):
    """One cache per run, as the served policy keeps it: every stage's observation equals the
    uncached one bit for bit, also when the newest mixture is replaced by the one the trainer says
    it trained on, when the history is rebuilt from new objects, and when the run restarts."""
    from mixagent.trajectories.encoding import EncodeCache

    space = DomainSpace.from_fields({"source": ["a", "b", "c"], "math": ["m"], "code": ["k", "j"]},
                                    {"a": 2.0, "k": 0.5})
    rng = np.random.default_rng(11)
    spec = ActionSpec(level=level)
    objective = Objective(spread_penalty=0.3, field_weights={"source": 1.0, "math": 2.0, "code": 1.5})
    cache = EncodeCache()
    h = History(space=space)
    for t in range(30):
        h.record_feedback(Feedback(step=t, tokens_seen=t,
                                   field_scores={f: float(-3 + rng.normal(0, 0.1) + 0.01 * t) for f in space.fields},
                                   domain_losses={d: float(2 + rng.normal(0, 0.1)) for d in space.names}))
        if t % 7 == 3 and h.weights:  # the trainer trained on another mixture than the last served
            h.weights[-1] = Weights.from_raw(rng.dirichlet(np.ones(space.size)))
        if t == 17:  # the run was read back from the database: equal content, new objects
            h = History.model_validate(h.model_dump())
        if t == 23:  # another run on the same cache: a new start
            h = History(space=space, feedback=[h.feedback[-1]])
        np.testing.assert_array_equal(encode(h, 32, spec, objective, version, cache),
                                      encode(h, 32, spec, objective, version))
        h.record_weights(Weights.from_raw(rng.dirichlet(np.ones(space.size))))
