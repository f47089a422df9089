"""The Transformer reads its tokens by feature name: what each token holds is checked against the
history itself, so an encoder whose layout moved a feature (a new version) cannot silently feed the
network other numbers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mixagent.agent.networks import WindowTransformer, history_tokens  # noqa: E402
from mixagent.trajectories import ActionSpec, DomainSpace, Feedback, History, Objective, Weights  # noqa: E402
from mixagent.trajectories.encoding import GAIN_SCALE, WINDOW, encode, layout, relative_gains  # noqa: E402

SPACE = DomainSpace.from_fields({"source": ["a", "b"], "target": ["m"]})


def _history(stages: int) -> History:
    h = History(space=SPACE)
    rng = np.random.default_rng(0)
    for t in range(stages + 1):
        scores = {"source": -3 - 0.01 * t, "target": -5 + 0.05 * t}
        h.record_feedback(Feedback(step=t, tokens_seen=t, field_scores=scores,
                                   domain_losses=dict.fromkeys(SPACE.names, 3.0)))
        if t < stages:
            h.record_weights(Weights.from_raw(rng.dirichlet(np.ones(3))))
    return h


def test_tokens_hold_each_steps_gains_and_shares_newest_first():
    stages = WINDOW + 2
    h = _history(stages)
    obs = encode(h, 16, ActionSpec(), Objective(spread_penalty=0.3))
    tokens, context = history_tokens(torch.tensor(obs[None], dtype=torch.float32), n_fields=2)
    assert tokens.shape == (1, WINDOW + 1, 4)
    gains = relative_gains(h) * GAIN_SCALE
    field_shares = [SPACE.field_matrix() @ w.as_array() for w in h.weights]
    for i in range(WINDOW + 1):  # token i: i steps back
        np.testing.assert_allclose(tokens[0, i, :2].numpy(), gains[-1 - i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tokens[0, i, 2:].numpy(), field_shares[-1 - i], rtol=1e-5, atol=1e-6)
    rows = layout(2)
    # the context is every other feature, in the layout's order: the last change, progress, the objective slice
    assert context.shape[1] == sum(sl.stop - sl.start for name, sl in rows.items()
                                   if name not in ("gains", "past_gains", "last_shares", "past_shares"))
    np.testing.assert_allclose(context[0, 2].item(), stages / 16, rtol=1e-6)  # progress t/T after gain_change
    np.testing.assert_allclose(context[0, 3].item(), 0.3, rtol=1e-6)  # λ follows


def test_the_transformer_refuses_an_observation_of_another_layout():
    width = list(layout(2).values())[-1].stop
    WindowTransformer(width, 2, 16, 1, 2)
    with pytest.raises(ValueError, match=f"obs-v2 layout of 2 fields has {width} features, got {width + 3}"):
        WindowTransformer(width + 3, 2, 16, 1, 2)


def test_the_cards_objective_ranges_sit_at_the_layouts_objective_slice():
    from mixagent.agent.dataset import EncodedEpisodes
    from mixagent.agent.train import _observation_ranges
    from mixagent.trajectories.contract import ObjectiveRange

    h = _history(3)
    obs = np.stack([encode(h, 16, ActionSpec(), Objective(spread_penalty=lam)) for lam in (0.2, 0.4)])
    n = len(obs)
    episodes = EncodedEpisodes(obs.astype(np.float32), np.zeros((n, 2), np.float32), np.zeros(n, np.float32),
                               np.zeros(n, bool), np.zeros(n, int), [("r", Objective())])
    low, high = _observation_ranges(episodes, ObjectiveRange(spread_penalty_min=0.0, spread_penalty_max=0.9,
                                                             max_weight_ratio=2.0), n_fields=2)
    rows = layout(2)
    assert (low[rows["spread_penalty"].start], high[rows["spread_penalty"].start]) == (0.0, 0.9)
    weights = rows["field_weights"]
    assert low[weights][0] == pytest.approx(1 / 3) and high[weights][0] == pytest.approx(2 / 3)
    # every other feature keeps the range of the data
    gains = rows["gains"].start
    assert (low[gains], high[gains]) == (float(obs[:, gains].min()), float(obs[:, gains].max()))
