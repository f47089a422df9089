"""AirRep-guided weighting (agent/airrep.py, agent/airrep_encoder.py, agent/airrep_probes.py): the update
rule and AirRep's group score against hand-computed examples, the refusals, and on the tiny setting the
whole path: real probes from the base, an encoder trained on them, and an episode through the hook
(accounting, its rule on its own log, determinism)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mixagent.agent.airrep import AirRepMethod, airrep_weights, bundled_encoder_path, standardise
from mixagent.agent.airrep_encoder import AirRepEncoder, group_scores, standardised_targets
from mixagent.agent.airrep_probes import draw_subsets
from mixagent.agent.registry import TRAINER_SIDE_METHODS, trainer_side_refusal
from mixagent.trajectories import WEIGHT_FLOOR, ContractError, DomainSpace, Objective
from tests.agent.method_episode import run_method_episode

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 2.0})  # .5/.25/.25


def test_the_update_rule_by_hand():
    prior = np.array([0.5, 0.25, 0.25])
    infl = np.array([1.0, 2.0, 3.0])  # mean 2, population sd sqrt(2/3): z = (−1.2247, 0, +1.2247)
    z = math.sqrt(1.5)
    raw = np.array([0.5 * math.exp(-z), 0.25, 0.25 * math.exp(z)])
    assert standardise(infl) == pytest.approx([-z, 0.0, z])
    assert airrep_weights(prior, infl, 1.0) == pytest.approx(raw / raw.sum())
    raw2 = np.array([0.5 * math.exp(-2 * z), 0.25, 0.25 * math.exp(2 * z)])
    assert airrep_weights(prior, 10 * infl - 7, 2.0) == pytest.approx(raw2 / raw2.sum())  # z is scale-free
    assert airrep_weights(prior, np.full(3, 0.3), 5.0) == pytest.approx(prior)  # equal influence: the priors
    assert airrep_weights(prior, infl, 0.0) == pytest.approx(prior)


def test_the_group_score_is_airreps_attention_pooling_by_hand():
    infl = np.array([[1.0, -2.0, 0.5]])
    members = np.array([[True, True, False], [False, False, True], [True, True, True]])
    e, e2, eh = math.e, math.e ** 2, math.exp(0.5)
    want = [(e * 1 + e2 * -2) / (e + e2), 0.5, (e * 1 + e2 * -2 + eh * 0.5) / (e + e2 + eh)]
    assert group_scores(infl, members)[:, 0] == pytest.approx(want)
    # AirRep's targets: each query standardised over the subsets
    drops = np.array([[0.1, 3.0], [0.3, 1.0], [0.2, 2.0]])
    assert standardised_targets(drops) == pytest.approx(
        np.array([[-1, 1], [1, -1], [0, 0]]) * math.sqrt(1.5))


def test_subsets_are_seeded_distinct_and_a_prefix_of_a_longer_draw():
    a = draw_subsets(12, 40, seed=3)
    assert a == draw_subsets(12, 40, seed=3) and a[:10] == draw_subsets(12, 10, seed=3)
    assert len(set(a)) == 40 and all(1 <= len(s) <= 11 and list(s) == sorted(set(s)) for s in a)
    assert a != draw_subsets(12, 40, seed=4)
    with pytest.raises(ContractError, match=r"n: 8 distinct subsets of sizes 1 … 1 out of 3 domains do not exist"):
        draw_subsets(3, 8, seed=0, max_size=1)


def test_the_probe_budget_bad_parameters_and_the_service_are_refused(tmp_path):
    with pytest.raises(ContractError, match=r"rows: a probe budget of 3 domains × 20 windows = 60 windows is larger "
                                            r"than the interval of 10 steps × 4 windows = 40 training windows"):
        AirRepMethod(rows=20).check_interval(10, SPACE, 4)
    AirRepMethod(rows=20).check_interval(10, SPACE, 6)  # 60 ≤ 60
    for bad in ({"beta": -1.0}, {"beta": math.inf}, {"rows": 0}, {"rows": 2.0}, {"encoder": 3}):
        with pytest.raises(ContractError, match=next(iter(bad))):
            AirRepMethod(**bad)
    (tmp_path / "x.json").write_text('{"format": "something-else"}')
    with pytest.raises(ContractError, match="is not an AirRep encoder"):
        _ = AirRepMethod(encoder=str(tmp_path / "x.json")).encoder
    assert "airrep" in TRAINER_SIDE_METHODS
    assert "'airrep' is a trainer-side method" in trainer_side_refusal("airrep")
    assert "hidden states of the model under CPT" in trainer_side_refusal("airrep")


def test_an_encoder_refuses_a_model_or_corpus_it_was_not_trained_over():
    from types import SimpleNamespace

    enc = AirRepEncoder(np.zeros(4), np.ones(4), np.eye(4)[:, :2], np.eye(4)[:, :2],
                        {"setting": "s", "vocab_size": 50, "corpus_digest": "abc"})
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=4, vocab_size=50))
    enc.check_model(model, "abc")
    enc.check_model(model)  # no digest to compare: sizes only
    with pytest.raises(ContractError, match=r"on corpus abc; this run.s corpus is xyz \(another corpus"):
        enc.check_model(model, "xyz")
    with pytest.raises(ContractError, match=r"hidden size 4, vocabulary 50\); the model under CPT has hidden size 8 "
                                            r"and vocabulary 50"):
        enc.check_model(SimpleNamespace(config=SimpleNamespace(hidden_size=8, vocab_size=50)))


def test_the_bundled_encoder_is_math_tinys_and_another_model_is_refused_before_any_step(tiny_setting, tiny_backend):
    from mixagent.env.mixing_env import DataMixingEnv

    enc = AirRepEncoder.load(bundled_encoder_path())
    assert enc.card["setting"] == "math-tiny" and enc.hidden_size == 128 and enc.card["vocab_size"] == 2048
    env = DataMixingEnv(tiny_setting, backend=tiny_backend)
    env.reset(seed=1)
    with pytest.raises(ContractError, match=r"hidden size 128, vocabulary 2048\); the model under CPT has hidden "
                                            r"size 32 and vocabulary 300"):
        env.step_method(AirRepMethod())
    assert tiny_backend.step == 0  # refused before the model took a step


def test_probes_encoder_and_an_episode_on_the_tiny_setting(tiny_setting, tiny_backend, tmp_path):
    from mixagent.agent.airrep_encoder import TrainSpec, domain_features, spearman, train_encoder
    from mixagent.agent.airrep_probes import collect_probes, read_probes
    from mixagent.env.mixing_env import DataMixingEnv

    space = tiny_setting.space
    path = tmp_path / "probes.jsonl"
    probes = list(collect_probes(tiny_backend, path, 6, seed=0, steps=2, progress=False))
    assert [p["index"] for p in probes] == list(range(6)) and len(read_probes(path)) == 7  # header + 6
    for p in probes:
        assert len(p["field_drop"]) == 2 and len(p["domain_drop"]) == 4 and p["cpu_s"] > 0
        w = np.array(p["weights"])
        assert w.sum() == pytest.approx(1.0) and set(np.array(space.names)[w > 0]) == set(p["subset"])
    # resumable: a longer plan keeps the first probes and measures them identically
    more = list(collect_probes(tiny_backend, path, 8, seed=0, steps=2, progress=False))
    assert more[:6] == probes and len(more) == 8
    with pytest.raises(ContractError, match="holds probes of another plan"):
        list(collect_probes(tiny_backend, path, 8, seed=1, steps=2, progress=False))
    tiny_backend.reset(0)
    batches = [tiny_backend.sampler.sample(np.eye(4)[k], 4, np.random.default_rng(k)) for k in range(4)]
    x = domain_features(tiny_backend.model, batches)
    members = np.array([[n in p["subset"] for n in space.names] for p in more])
    fdrop = np.array([p["field_drop"] for p in more])
    ddrop = np.array([p["domain_drop"] for p in more])
    spec = TrainSpec(dim=4, epochs=60)
    card = {"setting": tiny_setting.name, "vocab_size": 300, "corpus_digest": tiny_backend.provenance()["corpus"]}
    enc, curve = train_encoder(space, x, x, members, fdrop, ddrop, spec, card)
    assert curve[-1] < curve[0]  # the ranking loss goes down on its training subsets
    pred = group_scores(enc.field_influence(space, x), members)
    assert np.mean([spearman(pred[:, f], fdrop[:, f]) for f in range(2)]) > 0
    enc2, _ = train_encoder(space, x, x, members, fdrop, ddrop, spec, card)
    assert np.array_equal(enc2.w_data, enc.w_data)  # seeded
    enc.save(tmp_path / "enc.json")
    loaded = AirRepEncoder.load(tmp_path / "enc.json")
    assert loaded.influence(x, x) == pytest.approx(enc.influence(x, x), rel=1e-5, abs=1e-7)

    # the method through the hook: all steps of the interval on α, α by its rule from its logged influences
    env = DataMixingEnv(tiny_setting, backend=tiny_backend)
    interval, horizon = tiny_setting.cpt.interval, tiny_setting.cpt.horizon
    method = AirRepMethod(beta=2.0, rows=2, encoder=str(tmp_path / "enc.json"))
    h, logs = run_method_episode(env, method, seed=7)
    assert [fb.step for fb in h.feedback] == [interval * t for t in range(horizon + 1)]
    assert [fb.tokens_seen for fb in h.feedback] == [interval * t * tiny_backend.tokens_per_step
                                                      for t in range(horizon + 1)]
    c = Objective(spread_penalty=0.5).weight_vector(space.fields)
    for t, log in enumerate(logs):
        a, infl, alpha = (np.array(log[k]) for k in ("field_influence", "influence", "alpha"))
        assert a.shape == (2, 4) and log["field_weights"] == pytest.approx(c)
        assert infl == pytest.approx(c @ a)
        assert alpha == pytest.approx(airrep_weights(space.priors(), infl, 2.0), abs=WEIGHT_FLOOR)
        assert np.array(h.weights[t].values) == pytest.approx(alpha)  # one mixture for the whole interval
    assert len({tuple(np.round(log["alpha"], 6)) for log in logs}) > 1  # recomputed from the current model
    h2, logs2 = run_method_episode(env, AirRepMethod(beta=2.0, rows=2, encoder=str(tmp_path / "enc.json")), seed=7)
    assert h2 == h and logs2 == logs
    # another objective weights the fields differently
    env.reset(seed=7)
    *_, info = env.step_method(method, Objective(spread_penalty=0.5, field_weights={"source": 3.0, "target": 1.0}))
    assert info["method"]["field_weights"] == pytest.approx([0.75, 0.25])
    assert info["method"]["influence"] == pytest.approx(np.array([0.75, 0.25]) @ np.array(
        info["method"]["field_influence"]))
