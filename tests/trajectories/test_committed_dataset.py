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
