"""Every baseline through the shared policy tester, plus a test of each rule's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from mixagent.agent.baselines import (
    BASELINES,
    FixedTargetSharePolicy,
    LossSoftmaxPolicy,
    PriorPolicy,
    UniformPolicy,
    build_baseline,
)
from mixagent.agent.online_rules import ADOPolicy, DoReMiPolicy, ODMPolicy, VelocitunePolicy
from mixagent.trajectories import ContractError, DomainSpace, Feedback, History
from tests.agent.policy_tester import SPACES, check_policy

CASES = [
    (UniformPolicy(), {}),
    (PriorPolicy(), {}),
    (FixedTargetSharePolicy(0.3), {"target_share": 0.3}),
    (LossSoftmaxPolicy(0.05), {"temperature": 0.05, "relative": True}),
    (LossSoftmaxPolicy(2.0, relative=False), {"temperature": 2.0, "relative": False}),
    (DoReMiPolicy(), {"eta": 1.0, "smoothing": 1e-3, "average": False}),
    (DoReMiPolicy(eta=5.0, average=True), {"eta": 5.0, "smoothing": 1e-3, "average": True}),
    (ODMPolicy(), {"reward_scale": 10.0}),
    (ADOPolicy(), {"smoothing": 0.2, "min_points": 3}),
    (VelocitunePolicy(), {"min_points": 3}),
]


@pytest.mark.parametrize(("policy", "params"), CASES, ids=[f"{p.name}-{i}" for i, (p, _) in enumerate(CASES)])
def test_policy_contract(policy, params, tmp_path):
    card = {"name": f"tuned-{policy.name}", "version": "1", "kind": "baseline", "rule": policy.name, "params": params}
    check_policy(policy, card, tmp_path)
    assert policy.params == params


def test_every_rule_is_registered():
    assert sorted(BASELINES) == ["ado", "doremi", "fixed-target-share", "loss-softmax", "odm", "prior", "uniform",
                                 "velocitune"]


SPACE = SPACES[0]  # web 5, code 2, books 1 (source); proofs 1 (target)


def test_uniform_and_prior_rules():
    assert UniformPolicy().initial_weights(SPACE).values == pytest.approx([0.25] * 4)
    assert PriorPolicy().initial_weights(SPACE).values == pytest.approx([5 / 9, 2 / 9, 1 / 9, 1 / 9])


def test_fixed_target_share_rule():
    w = FixedTargetSharePolicy(0.3).initial_weights(SPACE).values
    assert w == pytest.approx([0.7 * 5 / 8, 0.7 * 2 / 8, 0.7 * 1 / 8, 0.3])
    # two target fields split the target part by their prior mass
    space = SPACES[1]  # a (source); b, c (target); d (extra)
    assert FixedTargetSharePolicy(0.6).initial_weights(space).values == pytest.approx([0.4, 0.2, 0.2, 0.2])
    only_targets = DomainSpace.from_fields({"target": ["x", "y"]}, {"x": 3.0})
    assert FixedTargetSharePolicy(0.6).initial_weights(only_targets).values == pytest.approx([0.75, 0.25])
    with pytest.raises(ContractError, match="needs a target field"):
        FixedTargetSharePolicy().initial_weights(DomainSpace.from_fields({"source": ["a", "b"]}))
    for bad in (0.0, 1.0, -0.1, True, "0.5"):
        with pytest.raises(ContractError, match="target_share"):
            FixedTargetSharePolicy(bad)  # type: ignore[arg-type]


def test_loss_softmax_rule():
    space = DomainSpace.from_fields({"source": ["a", "b"], "target": ["c"]}, {"a": 2.0})
    h = History(space=space)
    assert LossSoftmaxPolicy().initial_weights(space).values == pytest.approx([0.5, 0.25, 0.25])
    h.record_feedback(Feedback(step=0, tokens_seen=0, field_scores={"source": -2, "target": -4},
                               domain_losses={"a": 2.0, "b": 1.0, "c": 4.0}))
    p = LossSoftmaxPolicy(temperature=0.1)
    # right after the first feedback every ratio is 1: the prior
    w0 = p.next_weights(space, h)
    assert w0.values == pytest.approx([0.5, 0.25, 0.25])
    h.record_weights(w0)
    h.record_feedback(Feedback(step=10, tokens_seen=100, field_scores={"source": -2, "target": -3},
                               domain_losses={"a": 2.2, "b": 1.0, "c": 3.2}))
    raw = np.array([2, 1, 1]) * np.exp(np.array([2.2 / 2.0, 1.0, 3.2 / 4.0]) / 0.1)
    expected = raw / raw.sum()
    assert p.next_weights(space, h).values == pytest.approx(expected.tolist())
    # the forgetting source domain (a: loss up 10%) gains share, the improving target (c) loses it
    assert expected[0] > 0.5 and expected[2] < 0.25
    # the floor keeps an overwhelmed domain observable
    w = LossSoftmaxPolicy(temperature=0.001).next_weights(space, h)
    assert min(w.values) == pytest.approx(1e-4)
    with pytest.raises(ContractError, match="temperature"):
        LossSoftmaxPolicy(0)
    with pytest.raises(ContractError, match="relative"):
        LossSoftmaxPolicy(0.1, relative="yes")  # type: ignore[arg-type]
    # the plain form of docs/methods.md: softmax(loss / T), no prior, no reference
    plain = LossSoftmaxPolicy(temperature=2.0, relative=False).next_weights(space, h)
    z = np.exp(np.array([2.2, 1.0, 3.2]) / 2.0)
    assert plain.values == pytest.approx((z / z.sum()).tolist())


def test_build_baseline_names_unknown_rules_and_parameters():
    assert build_baseline("fixed-target-share", {"target_share": 0.2}).params == {"target_share": 0.2}  # type: ignore[attr-defined]
    with pytest.raises(ContractError, match=r"unknown baseline 'nope'; known: \['ado', 'doremi', 'fixed-target-share'"):
        build_baseline("nope")
    with pytest.raises(ContractError, match=r"\['beta'\] are not parameters of 'loss-softmax' "
                                            r"\(it takes \['relative', 'temperature'\]\)"):
        build_baseline("loss-softmax", {"beta": 1})
