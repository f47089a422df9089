"""Training under the versioned action map: ``action-v2`` by default (F - 1 actions, CQL's bounds of
that size, recorded in the card and served), ``action-v1`` on request; a card's map is checked
against its network."""

from __future__ import annotations

import json
import shutil
import typing

import numpy as np
import pytest

from mixagent.agent.card import ArtifactError, PolicyCard
from mixagent.agent.dataset import DatasetError, all_copies, load_runs, policy_action_spec, relabel
from mixagent.agent.onnx_policy import load_artifact
from mixagent.trajectories import Objective
from mixagent.trajectories.contract import ObjectiveRange
from mixagent.trajectories.encoding import ACTION_MAP, ACTION_MAPS, LEGACY_ACTION_MAP, action_to_weights

FAST = {"bc_steps": 40, "rl_steps": 20, "fqe_steps": 0, "relabel_copies": 2, "bc_objective_draws": 2,
        "steps_per_epoch": 20, "batch_size": 32, "hidden_units": [16, 16], "bc_max_roughness": 1.0,
        "critic_warmup_steps": 0}


def test_dataset_labels_f_minus_one_actions_that_rebuild_the_mixtures(tiny_dataset):
    runs, _ = load_runs([tiny_dataset])
    spec = policy_action_spec(runs)
    rng = np.random.default_rng(0)
    v2 = all_copies(runs, 2, ObjectiveRange(), rng, spec)
    v1 = all_copies(runs, 2, ObjectiveRange(), np.random.default_rng(0), spec, action_map=LEGACY_ACTION_MAP)
    assert v2.action_map == ACTION_MAP and v1.action_map == LEGACY_ACTION_MAP
    assert v2.actions.shape[1] == 1 and v1.actions.shape[1] == 2
    np.testing.assert_array_equal(v2.observations, v1.observations)
    run = runs[0]
    hd, h = run.trajectory.header, run.trajectory.history
    ep = relabel(run, [Objective()], spec)
    for t, w in enumerate(h.weights):  # float32 labels: the mixture back to float32 rounding
        np.testing.assert_allclose(action_to_weights(ep.actions[t], hd.space, spec, ACTION_MAP).as_array(),
                                   w.as_array(), atol=1e-5)
    with pytest.raises(DatasetError, match="action_map: unknown action map 'action-v7'"):
        relabel(run, [Objective()], spec, action_map="action-v7")


@pytest.mark.parametrize(("action_map", "width"), [(ACTION_MAP, 1), (LEGACY_ACTION_MAP, 2)])
def test_cql_trains_on_the_maps_action_size_and_the_card_records_the_map(tiny_dataset, tmp_path, action_map, width):
    from mixagent.agent.train import TrainConfig, make_algo, train

    assert typing.get_args(TrainConfig.model_fields["action_map"].annotation) == ACTION_MAPS
    assert TrainConfig().action_map == ACTION_MAP
    cfg = TrainConfig(**FAST, validation_fraction=0.3, action_map=action_map)
    out = tmp_path / "cql"
    train([tiny_dataset], "bc+cql", out, cfg, progress=False)
    card = json.loads((out / "card.json").read_text())
    assert card["action_map"] == action_map
    card_obj, _ = load_artifact(out)
    assert card_obj.action_map == action_map
    import onnxruntime as ort

    assert ort.InferenceSession(str(out / "policy.onnx")).get_outputs()[0].shape[-1] == width
    algo = make_algo("cql", cfg, 2, width)
    scaler = algo.config.action_scaler
    assert scaler.minimum.shape == scaler.maximum.shape == (width,)
    np.testing.assert_array_equal(scaler.minimum, -1.0)


def test_a_card_whose_map_does_not_fit_its_network_is_refused(tiny_dataset, tmp_path):
    from mixagent.agent.train import TrainConfig, train

    out = tmp_path / "bc"
    train([tiny_dataset], "bc", out, TrainConfig(**FAST, validation_fraction=0.3), progress=False)
    wrong = tmp_path / "wrong"
    shutil.copytree(out, wrong)
    card = json.loads((wrong / "card.json").read_text())
    (wrong / "card.json").write_text(json.dumps({**card, "action_map": LEGACY_ACTION_MAP}))
    with pytest.raises(ArtifactError, match=r"expected an action output of width 2 \(action-v1\)"):
        load_artifact(wrong)
    with pytest.raises(ValueError, match="action_map: unknown action map 'v3'"):
        PolicyCard.model_validate({**card, "action_map": "v3"})
