"""The forgetting response and persistence of a policy, on committed domain-level runs: the numbers
the rules imply analytically, and the committed domain agent's measured on real states."""

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from mixagent.agent.baselines import LossSoftmaxPolicy, UniformPolicy
from mixagent.agent.forgetting_response import forgetting_response
from mixagent.agent.onnx_policy import load_artifact
from mixagent.trajectories.contract import ContractError, Domain, DomainSpace, History, Objective, Weights
from mixagent.trajectories.storage import FileStore

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "data" / "trajectories" / "math-tiny-domain"


@pytest.fixture(scope="module")
def histories() -> list[History]:
    store = FileStore(FOLDER)
    return [store.read(rid).trajectory.history for rid in sorted(store.list())[:2]]


class Copycat:
    """Continues the newest past mixture: persistence exactly 1, no response to losses."""

    name = "copycat"
    params: ClassVar[dict[str, object]] = {}

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(space.priors())

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        return history.weights[-1] if history.weights else self.initial_weights(space)


def test_loss_softmax_responds_as_its_formula_says_and_does_not_read_its_past(histories):
    tau, delta = 0.1, 1e-4
    resp, pers = forgetting_response(LossSoftmaxPolicy(temperature=tau), histories, delta=delta, stride=5)
    assert resp.refused == 0 and resp.matrix.shape[0] >= 4
    # w_k ∝ prior·exp(ℓ_k/(τ ℓ_k(0))): a relative rise δ of ℓ_k moves log w_k by (1 − w_k)·ℓ_k(t)/(τ ℓ_k(0))·δ
    h = histories[0]
    seven = History.model_construct(space=h.space, feedback=h.feedback[:7], weights=h.weights[:6])
    got, _ = forgetting_response(LossSoftmaxPolicy(temperature=tau), [seven], delta=delta)
    assert got.matrix.shape == (5, h.space.size)  # decisions 1..5; decision 0 has no rise to react to
    state = History.model_construct(space=h.space, feedback=h.feedback[:6], weights=h.weights[:5])  # decision 5's
    w = LossSoftmaxPolicy(temperature=tau).next_weights(h.space, state).as_array()
    ratio = np.array([state.feedback[-1].domain_losses[n] / state.feedback[0].domain_losses[n] for n in h.space.names])
    np.testing.assert_allclose(got.matrix[-1], (1 - w) * ratio / tau, rtol=2e-3)
    np.testing.assert_allclose(pers.matrix, 0.0, atol=1e-6)
    s = resp.summary()
    assert s["source"]["positive"] == 1.0 and s["source"]["negative"] == 0.0


def test_uniform_does_not_look_and_a_copycat_continues_exactly(histories):
    resp, pers = forgetting_response(UniformPolicy(), histories, stride=4)
    np.testing.assert_allclose(resp.matrix, 0.0, atol=1e-9)
    np.testing.assert_allclose(pers.matrix, 0.0, atol=1e-9)
    resp, pers = forgetting_response(Copycat(), histories, stride=4)
    np.testing.assert_allclose(resp.matrix, 0.0, atol=1e-9)
    np.testing.assert_allclose(pers.matrix, 1.0, atol=1e-3)


def test_the_domain_agent_on_real_states_reads_both_channels(histories):
    card, factory = load_artifact(ROOT / "bench" / "policies" / "agent-domain")
    h = histories[0]
    policy = factory(h.space, len(h.weights), card.objective_range.sample(np.random.default_rng(0), h.space.fields))
    resp, pers = forgetting_response(policy, histories, stride=3)
    m, p = resp.matrix, pers.matrix
    assert m.shape[0] + resp.refused == pers.matrix.shape[0] + pers.refused > 0
    assert np.isfinite(m).all() and np.isfinite(p).all()
    # a network that reads losses and its past mixtures: neither channel is dead
    assert np.abs(m).mean() > 0.01 and np.abs(p).mean() > 0.1


def test_bad_input_is_named(histories):
    with pytest.raises(ContractError, match="delta"):
        forgetting_response(UniformPolicy(), histories, delta=0.0)
    with pytest.raises(ContractError, match="stride"):
        forgetting_response(UniformPolicy(), histories, stride=0)
    with pytest.raises(ContractError, match="histories: none"):
        forgetting_response(UniformPolicy(), [])


def test_a_domain_whose_past_weight_cannot_move_is_refused_not_nan():
    """A past mixture with every other domain at the weight floor: raising the domain's weight moves
    nothing, so its persistence is undefined; the state is counted as refused, never a NaN."""
    from mixagent.trajectories import Feedback

    space = DomainSpace(domains=(Domain(name="a", field="source"), Domain(name="b", field="source"),
                                 Domain(name="c", field="target")))
    h = History(space=space)
    for t in range(4):
        h.record_feedback(Feedback(step=t, tokens_seen=10 * t, field_scores={"source": -3.0, "target": -4.0},
                                   domain_losses={"a": 3.0 + 0.01 * t, "b": 3.1, "c": 4.0 - 0.1 * t}))
        if t < 3:
            h.record_weights(Weights.from_raw([0.0, 0.0, 1.0]))
    resp, pers = forgetting_response(Copycat(), [h])
    assert pers.refused == 2 and pers.matrix.shape == (0, 3)  # decisions 1 and 2, both degenerate for c
    assert resp.refused == 0 and np.isfinite(resp.matrix).all()
    s = pers.summary()
    assert s["source"]["mean"] is None  # nothing measured, nothing invented


def test_prior_elasticity_is_zero_for_uniform_one_for_prior_and_measured_for_the_agent(histories):
    from mixagent.agent.baselines import PriorPolicy
    from mixagent.agent.forgetting_response import prior_elasticity

    h = histories[0]
    lam = Objective(spread_penalty=0.9)
    np.testing.assert_allclose(prior_elasticity(lambda s, n, o: UniformPolicy(), h, 16, lam, draws=5), 0.0, atol=1e-9)
    np.testing.assert_allclose(prior_elasticity(lambda s, n, o: PriorPolicy(), h, 16, lam, draws=5), 1.0, atol=1e-3)
    _, factory = load_artifact(ROOT / "bench" / "policies" / "agent-domain")
    el = prior_elasticity(factory, h, 16, lam, draws=8)
    assert np.isfinite(el).all() and np.median(el) > 1  # measured: 1.32, it exaggerates the priors it never saw
    with pytest.raises(ContractError, match="draws, sigma"):
        prior_elasticity(factory, h, 16, lam, draws=0)
    one = DomainSpace(domains=(Domain(name="a", field="source"), Domain(name="b", field="target")))
    with pytest.raises(ContractError, match="no field has two domains"):
        prior_elasticity(factory, History(space=one), 16, lam)
