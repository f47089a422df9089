"""The committed math-tiny dataset stays readable and consistent with the frozen setting."""

import json
from pathlib import Path

import pytest

from mixagent.trajectories.stats import build_card, summarise
from mixagent.trajectories.storage import FileStore

DATASET = Path(__file__).resolve().parents[2] / "data" / "trajectories" / "math-tiny"


@pytest.mark.skipif(not (DATASET / "records").is_dir(), reason="no committed math-tiny dataset")
def test_math_tiny_dataset_matches_the_frozen_setting_and_its_card():
    from mixagent.env.setting import DEFAULT_SETTING, load_setting

    setting = load_setting(DEFAULT_SETTING)
    stored = FileStore(DATASET).load_all()  # raises on any bad record, naming the file
    assert stored
    for s in stored:
        hd = s.trajectory.header
        assert hd.setting_hash == setting.hash() and hd.setting_name == setting.name
        assert s.trajectory.history.stages == setting.cpt.horizon >= 16
    card = json.loads((DATASET / "card.json").read_text())
    fresh = build_card([summarise(s) for s in stored])
    assert card["counts"] == fresh["counts"] and card["families"] == fresh["families"]
    assert json.loads((DATASET / "generate.json").read_text())["setting_hash"] == setting.hash()
    # one base model: every run starts from the same evaluation
    first = stored[0].trajectory.history.feedback[0]
    assert all(s.trajectory.history.feedback[0] == first for s in stored)


@pytest.mark.skipif(not (DATASET / "records").is_dir(), reason="no committed math-tiny dataset")
def test_every_committed_mixture_is_rebuilt_from_its_header():
    """The schedule code still produces exactly the weights that were trained on (bit for bit)."""
    import numpy as np

    from mixagent.trajectories import History
    from mixagent.trajectories.schedules import ScheduleContext, build_schedule

    for s in FileStore(DATASET).load_all():
        hd, h = s.trajectory.header, s.trajectory.history
        schedule = build_schedule(hd.schedule, hd.schedule_params, ScheduleContext(hd.space, hd.horizon, hd.action))
        for i, w in enumerate(h.weights):
            seen = History(space=hd.space, feedback=h.feedback[: i + 1], weights=h.weights[:i])
            np.testing.assert_array_equal(schedule.next_weights(seen).as_array(), w.as_array(), err_msg=hd.trajectory_id)
