"""The committed datasets (``data/trajectories/*``) stay readable and consistent with their
setting, their card and the schedule code that drew them."""

import json
from pathlib import Path

import numpy as np
import pytest

from mixagent.trajectories import History
from mixagent.trajectories.contract import REBUILD_ATOL
from mixagent.trajectories.environment import START_TOLERANCE, start_drift
from mixagent.trajectories.policy import PolicyContext
from mixagent.trajectories.stats import build_card, summarise
from mixagent.trajectories.storage import FileStore

DATA = Path(__file__).resolve().parents[2] / "data" / "trajectories"
DATASETS = sorted(p.parent for p in DATA.glob("*/records"))


def test_the_math_tiny_dataset_is_committed():
    assert DATA / "math-tiny" in DATASETS


@pytest.mark.parametrize("folder", DATASETS, ids=lambda p: p.name)
def test_dataset_matches_its_setting_and_card(folder):
    from mixagent.env.setting import CONFIGS_DIR, load_setting

    pinned = json.loads((folder / "generate.json").read_text())
    setting = load_setting(CONFIGS_DIR / f"{pinned['setting_name']}.yaml")
    assert pinned["setting_hash"] == setting.hash(), "the setting file changed under a committed dataset"
    stored = FileStore(folder).load_all()  # raises on any bad record, naming the file
    assert stored
    for s in stored:
        hd = s.trajectory.header
        assert hd.setting_hash == setting.hash() and hd.setting_name == setting.name
        assert hd.schedule in pinned["families"]
        assert s.trajectory.history.stages == setting.cpt.horizon >= 16
    card = json.loads((folder / "card.json").read_text())
    fresh = build_card([summarise(s) for s in stored])
    assert card["counts"] == fresh["counts"] and card["families"] == fresh["families"]
    assert card["environments"] == fresh["environments"]
    # one corpus and base model, up to the float numerics of the machines of several sittings
    assert all(e["start_drift"] <= START_TOLERANCE for e in fresh["environments"])
    corpora = {s.meta.provenance["corpus"] for s in stored if "corpus" in s.meta.provenance}
    assert len(corpora) <= 1, corpora


@pytest.mark.parametrize("folder", DATASETS, ids=lambda p: p.name)
def test_every_committed_mixture_is_rebuilt_from_its_header(folder):
    """The schedule code still produces the weights that were trained on, up to the float numerics of
    the CPU that stored them (``REBUILD_ATOL``: numpy's kernels differ by instruction set)."""
    from mixagent.agent.closed_loop import FAMILY, rebuilt_mixtures
    from mixagent.agent.registry import build_policy

    for s in FileStore(folder).load_all():
        hd, h = s.trajectory.header, s.trajectory.history
        if hd.schedule == FAMILY:  # a closed-loop round: the agent of the folder's behaviour copy, its noise seeded
            np.testing.assert_allclose(rebuilt_mixtures(folder, s.trajectory), h.weight_matrix(), rtol=0,
                                       atol=REBUILD_ATOL, err_msg=hd.trajectory_id)
            continue
        schedule = build_policy(hd.schedule, hd.schedule_params, PolicyContext(hd.space, hd.horizon, hd.action))
        for i, w in enumerate(h.weights):
            seen = History(space=hd.space, feedback=h.feedback[: i + 1], weights=h.weights[:i])
            np.testing.assert_allclose(schedule.next_weights(hd.space, seen).as_array(), w.as_array(),
                                       rtol=0, atol=REBUILD_ATOL, err_msg=hd.trajectory_id)


CLOSED_LOOP = [p for p in DATASETS if p.name.startswith("closed-loop-")]


@pytest.mark.parametrize("folder", CLOSED_LOOP, ids=lambda p: p.name)
def test_a_closed_loop_folder_names_its_behaviour_and_uses_training_seeds(folder):
    """Each record names the behaviour artifact and its digest, which the folder's own copy has; no run
    uses a benchmark seed."""
    from mixagent.agent.card import artifact_digest, read_card
    from mixagent.agent.closed_loop import BEHAVIOUR_DIR
    from mixagent.agent.iterate import check_training_seed

    pinned = json.loads((folder / "generate.json").read_text())
    assert artifact_digest(folder / BEHAVIOUR_DIR) == pinned["behaviour_digest"]
    assert read_card(folder / BEHAVIOUR_DIR).ref == pinned["behaviour"]
    for s in FileStore(folder).load_all():
        params = s.trajectory.header.schedule_params
        assert params["artifact_digest"] == pinned["behaviour_digest"] and params["behaviour"] == pinned["behaviour"]
        check_training_seed(s.trajectory.header.seed)


@pytest.mark.real
@pytest.mark.slow
def test_a_committed_trajectory_is_regenerated_bit_for_bit():
    """Same setting, schedule and seed on a rebuilt corpus and base (`MIXAGENT_REAL_HOME`, else a
    fresh cache: ~10 minutes) give the committed trajectory exactly: weights, every feedback value.
    Exactness holds between machines with the same float numerics: the trajectory checked is one
    that starts from this machine's base evaluation (skipped when no committed run shares it)."""
    import os

    from mixagent.agent.generate import make_plan
    from mixagent.agent.runner import EpisodeWorker
    from mixagent.env.setting import DEFAULT_SETTING, load_setting

    setting = load_setting(DEFAULT_SETTING)
    store = FileStore(DATA / "math-tiny")
    runner = EpisodeWorker(setting.model_dump(mode="json"), os.environ.get("MIXAGENT_REAL_HOME"), threads=1)
    runner.env.reset(seed=0)
    here = runner.env.history.feedback[0]
    stored = {s.trajectory.header.trajectory_id: s for s in store.load_all()}
    same = [it for it in make_plan(setting, n=len(stored) + 64)
            if it.run_id in stored and stored[it.run_id].trajectory.history.feedback[0] == here]
    if not same:
        provenance = runner.env.backend.provenance()
        first = next(iter(stored.values())).trajectory.history.feedback[0]
        drift = start_drift(here.domain_losses, first.domain_losses)
        pytest.skip(f"no committed trajectory was generated with this machine's numerics ({provenance['numerics']}; "
                    f"its base evaluation differs by {drift:.2g} nats)")
    item = same[0]
    again = runner.run(item)["trajectory"]
    committed = stored[item.run_id].trajectory.model_dump(mode="json")
    assert again["header"] == committed["header"]
    assert again["history"] == committed["history"]  # floats compared exactly
