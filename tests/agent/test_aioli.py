"""Aioli (agent/aioli.py): the interaction matrix and the exponentiated update against hand-computed
examples, the probe budget, and a run in the env (accounting, its rule on its own log, determinism)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixagent.agent.aioli import AioliMethod, aioli_update, interaction_matrix, probe_mixtures
from mixagent.trajectories import ContractError, DomainSpace
from tests.agent.method_episode import run_method_episode

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 2.0})  # .5/.25/.25


def test_the_update_by_hand():
    p = np.array([0.5, 0.25, 0.25])
    a = np.array([[0.2, 0.0, 0.1],
                  [0.1, 0.3, 0.0],
                  [0.0, 0.1, 0.4]])  # column sums 0.3, 0.4, 0.5: training on proofs lowers the total loss most
    raw = np.array([0.5 * math.exp(0.2 * 0.3), 0.25 * math.exp(0.2 * 0.4), 0.25 * math.exp(0.2 * 0.5)])
    assert aioli_update(p, a, 0.2) == pytest.approx(raw / raw.sum())
    assert aioli_update(p, a, 0.2)[2] > aioli_update(p, a, 0.2)[1] > 0.25  # proofs gained most
    assert aioli_update(p, np.zeros((3, 3)), 0.2) == pytest.approx(p)


def test_the_interaction_matrix_unmixes_the_probe_mixtures():
    assert probe_mixtures(3, 0.8) == pytest.approx(np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]))
    a = np.array([[0.2, -0.05, 0.1], [0.1, 0.3, 0.0], [0.0, 0.1, 0.4]])
    # the linear law: probing j lowers domain i's loss by Σ_l A_il q_j[l], i.e. G = A·Q
    drops = a @ probe_mixtures(3, 0.8)
    assert interaction_matrix(drops, 0.8) == pytest.approx(a)
    assert interaction_matrix(a, 1.0) == pytest.approx(a)  # one-hot probes measure A directly


def test_the_probe_budget_and_bad_parameters_are_refused():
    m = AioliMethod()
    assert m.steps_for(30, 12) == (1, 18)  # math-tiny: one step per domain, the rest free
    assert m.steps_for(50, 4) == (4, 34)  # ⌊50/3⌋ = 16 probe steps over 4 domains
    assert m.steps_for(4, 4) == (1, 0)
    assert AioliMethod(probe_steps=2, rounds=2).steps_for(20, 3) == (2, 8)
    with pytest.raises(ContractError, match=r"a probe budget of 3 domains × 4 steps × 1 round\(s\) = 12 steps is "
                                            r"larger than the interval of 10 steps"):
        AioliMethod(probe_steps=4).check_interval(10, SPACE)
    for bad in ({"eta": 0}, {"probe_steps": 0}, {"rounds": 0}, {"one_hot": 0.5}, {"one_hot": 1.5},
                {"probe_rows": 2.0}):
        with pytest.raises(ContractError, match=next(iter(bad))):
            AioliMethod(**bad)


def test_aioli_in_the_env_takes_the_intervals_steps_and_moves_p_by_its_rule(tiny_setting, tiny_backend):
    from mixagent.env.mixing_env import DataMixingEnv

    s = tiny_setting.model_copy(update={"cpt": tiny_setting.cpt.model_copy(update={"interval": 6})})
    env = DataMixingEnv(s, backend=tiny_backend)
    interval, horizon = 6, s.cpt.horizon
    h, logs = run_method_episode(env, AioliMethod(eta=2.0), seed=5)
    assert [fb.step for fb in h.feedback] == [interval * t for t in range(horizon + 1)]
    assert [fb.tokens_seen for fb in h.feedback] == [interval * t * tiny_backend.tokens_per_step
                                                      for t in range(horizon + 1)]
    q = probe_mixtures(4, 1.0)
    for t, log in enumerate(logs):
        assert (log["probe_steps"], log["free_steps"]) == (1, 2)  # ⌊6/3⌋ = 2 < 4 domains: one step each
        p, new, a = (np.array(log[x]) for x in ("p", "next_p", "interaction"))
        assert new == pytest.approx(aioli_update(p, a, 2.0))
        # the interval's mixture: one step on each one-hot probe, two on the new p
        probes = np.maximum(q, 1e-4) / np.maximum(q, 1e-4).sum(axis=1, keepdims=True)
        assert np.array(h.weights[t].values) == pytest.approx((probes.sum(axis=0) + 2 * new) / interval, abs=1e-6)
        if t:
            assert log["p"] == logs[t - 1]["next_p"]
    assert np.abs(np.array(logs[0]["interaction"])).max() > 0
    h2, logs2 = run_method_episode(env, AioliMethod(eta=2.0), seed=5)
    assert h2 == h and logs2 == logs
