"""The bundled agent (an ``action-v1`` card written before ``action-v2`` existed) is served unchanged.

``bundled_agent_decisions.json`` holds its decisions on committed trajectories (three of math-tiny,
one of code-tiny, at λ = 0, 0.5 and 0.9, every stage) recorded with the code before the action map
was versioned (commit e1464dc)."""

import json
from pathlib import Path

import numpy as np

from mixagent.agent.onnx_policy import decide, load_artifact
from mixagent.trajectories import History, Objective, Weights
from mixagent.trajectories.encoding import LEGACY_ACTION_MAP, field_shares_to_weights, softmax
from mixagent.trajectories.storage import FileStore

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((Path(__file__).parent / "bundled_agent_decisions.json").read_text())


def test_the_bundled_card_names_no_map_and_reads_as_action_v1():
    card_json = json.loads((ROOT / REFERENCE["artifact"] / "card.json").read_text())
    assert "action_map" not in card_json
    card, _ = load_artifact(ROOT / REFERENCE["artifact"])
    assert card.ref == REFERENCE["card"] and card.action_map == LEGACY_ACTION_MAP


def test_the_bundled_agent_decides_as_before_the_action_map_was_versioned():
    card, factory = load_artifact(ROOT / REFERENCE["artifact"])
    checked = 0
    for run in REFERENCE["runs"]:
        tr = FileStore(ROOT / "data" / "trajectories" / run["folder"]).read(run["record"]).trajectory
        space, h = tr.header.space, tr.history
        policy = factory(space, tr.header.horizon, Objective(spread_penalty=run["spread_penalty"]))
        for t, want in enumerate(run["decisions"]):
            seen = History(space=space, feedback=h.feedback[:t], weights=h.weights[: max(t - 1, 0)])
            got = decide(policy, space, seen)
            assert got.fallback == want["fallback"]
            # onnxruntime's float32 kernels may differ in the last bits between CPUs; the map is float64
            np.testing.assert_allclose(got.weights.as_array(), want["weights"], rtol=0, atol=1e-6)
            if t:  # and exactly the old formula on this machine's network output
                a = np.clip(policy.act(policy.observation(seen)), -1, 1)
                s = card.action
                shares = (1 - s.epsilon) * softmax(s.beta * a) + s.epsilon * space.field_priors()
                assert got.weights.values == Weights.from_raw(field_shares_to_weights(space, shares)).values
            checked += 1
    assert checked == 204


def test_an_edited_observation_is_guarded_as_a_decision_is():
    """``decide_observation`` (what a probe asks with edited features) answers as ``decide`` does:
    the same mixture for the run's own observation, the guard's reason beyond the training ranges."""
    card, factory = load_artifact(ROOT / REFERENCE["artifact"])
    run = REFERENCE["runs"][0]
    tr = FileStore(ROOT / "data" / "trajectories" / run["folder"]).read(run["record"]).trajectory
    space, h = tr.header.space, tr.history
    policy = factory(space, tr.header.horizon, Objective(spread_penalty=run["spread_penalty"]))
    seen = History(space=space, feedback=h.feedback[:3], weights=h.weights[:2])
    obs = policy.observation(seen)
    assert policy.decide_observation(space, obs).values == decide(policy, space, seen).weights.values
    far = obs.copy()
    far[0] = np.asarray(card.observation_high)[0] + 100 * (1 + abs(np.asarray(card.observation_high)[0]))
    reason = policy.decide_observation(space, far)
    assert isinstance(reason, str) and "range" in reason
