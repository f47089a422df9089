"""Closed-loop rounds on the tiny synthetic setting: the agent drives two short runs with exploration,
its records name it and are rebuilt from its copy, the next agent trains on the union; bad rounds
are refused before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixagent.agent.card import artifact_digest, read_card
from mixagent.agent.closed_loop import BEHAVIOUR_DIR, FAMILY, rebuilt_mixtures, record_policy
from mixagent.agent.errors import RunnerError
from mixagent.agent.iterate import (
    ROUND_SEED,
    SELECT_SEED,
    IterateConfig,
    check_training_seed,
    iterate,
    round_folder,
)
from mixagent.agent.runner import RunnerConfig
from mixagent.trajectories import Objective
from mixagent.trajectories.contract import REBUILD_ATOL
from mixagent.trajectories.replay import history_prefix
from mixagent.trajectories.storage import FileStore

FAST = {"bc_steps": 40, "rl_steps": 20, "fqe_steps": 0, "relabel_copies": 2, "bc_objective_draws": 2,
        "steps_per_epoch": 20, "batch_size": 32, "hidden_units": [16, 16], "bc_max_roughness": 1.0,
        "validation_fraction": 0.3}


@pytest.fixture(scope="module")
def agent(tiny_dataset, tmp_path_factory) -> Path:
    from mixagent.agent.train import TrainConfig, train

    out = tmp_path_factory.mktemp("agent") / "agent"
    train([tiny_dataset], "bc", out, TrainConfig(**FAST), progress=False)
    return out


@pytest.fixture(scope="module")
def round_one(agent, tiny_dataset, tiny_setting, cache_dir, tmp_path_factory):
    from mixagent.agent.train import TrainConfig

    root = tmp_path_factory.mktemp("round")
    cfg = IterateConfig(agent=agent, round=1, n=2, data=(tiny_dataset,), data_root=root / "data", out=root / "r1",
                        select_seeds=2, select_objectives=(Objective(spread_penalty=0.5),),
                        runner=RunnerConfig(threads=1, cache_dir=cache_dir, progress=False))
    return cfg, iterate(cfg, [tiny_setting], TrainConfig(**FAST), progress=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_round_runs_the_agent_with_exploration_and_retrains_on_the_union(round_one, agent, tiny_setting):
    cfg, report = round_one
    folder = round_folder(cfg.data_root, 1, tiny_setting)
    assert report.folders == [folder] and folder.name == "closed-loop-r1-synthetic-tiny"
    stored = sorted(FileStore(folder).load_all(), key=lambda s: s.trajectory.header.seed)
    assert [s.trajectory.header.seed for s in stored] == [ROUND_SEED, ROUND_SEED + 1]
    card = read_card(agent)
    digest = artifact_digest(agent)
    assert artifact_digest(folder / BEHAVIOUR_DIR) == digest
    pinned = json.loads((folder / "generate.json").read_text())
    assert pinned["behaviour_digest"] == digest and pinned["families"] == [FAMILY]
    assert pinned["encoder_version"] == card.encoder_version and pinned["action_map"] == "action-v2"
    starts = []
    for s in stored:
        hd = s.trajectory.header
        assert hd.schedule == FAMILY and hd.schedule_params["artifact_digest"] == digest
        assert hd.schedule_params["behaviour"] == card.ref and 0.05 <= hd.schedule_params["sigma"] <= 0.3
        assert card.objective_range is not None
        card.objective_range.check(hd.objective, hd.space)
        starts.append(hd.schedule_params["start_stages"])
        # every mixture is rebuilt from the folder's copy of the artifact, the noise from the recorded seed
        np.testing.assert_allclose(rebuilt_mixtures(folder, s.trajectory), s.trajectory.history.weight_matrix(),
                                   rtol=0, atol=REBUILD_ATOL)
    assert starts[0] == 0 and 1 <= starts[1] <= tiny_setting.cpt.horizon // 2  # every other run starts perturbed
    # exploration: the agent alone (no noise, no offset) would have chosen other mixtures
    hd, h = stored[0].trajectory.header, stored[0].trajectory.history
    quiet = record_policy(folder, hd.model_copy(update={"schedule_params": {**hd.schedule_params, "sigma": 0.0}}))
    plain = np.stack([quiet.next_weights(hd.space, history_prefix(h, t)).as_array() for t in range(len(h.weights))])
    assert 1e-3 < np.abs(plain - h.weight_matrix()).max() < 0.5
    # the next agent trained on the base data and this round's folder
    assert report.train is not None
    trained_on = [d.folder for d in report.train.card.training_data]
    assert folder.name in trained_on and len(trained_on) == 2
    assert set(report.cpu_seconds) == {"rounds", "training", "selection"}
    assert all(v > 0 for v in report.cpu_seconds.values())
    logged = json.loads((cfg.out / "training.json").read_text())["closed_loop_round"]
    assert logged["behaviour_digest"] == digest and logged["cpu_seconds"]["selection"] > 0
    assert logged["runs"] == {tiny_setting.name: 2}
    # selection: both agents on the training setting's selection seeds, paired against the behaviour
    assert report.selection is not None
    results = json.loads((cfg.out / "selection" / "results.json").read_text())
    assert results["comparison_seed_list"] == [SELECT_SEED, SELECT_SEED + 1] and results["reference"] == "behaviour"
    selection_runs = FileStore(cfg.out / "selection" / "runs" / tiny_setting.name).load_all()
    assert sorted(s.trajectory.header.seed for s in selection_runs) == [SELECT_SEED] * 2 + [SELECT_SEED + 1] * 2
    # the round's log does not change the retrained agent's digest, which names its runs
    assert sum(s.path.name.startswith(f"retrained-{artifact_digest(cfg.out)[:8]}-") for s in selection_runs) == 2


def test_a_rerun_resumes_and_rewrites_nothing(round_one, tiny_setting):
    cfg, _ = round_one
    folder = round_folder(cfg.data_root, 1, tiny_setting)
    before = _snapshot(folder)
    again = iterate(IterateConfig(**{**cfg.__dict__, "out": None, "select_seeds": 0}), [tiny_setting], progress=False)
    assert again.runs[0].generated == 0 and again.runs[0].already_done == 2
    assert _snapshot(folder) == before


def _copy_agent(agent: Path, dest: Path, **card_update) -> Path:
    shutil.copytree(agent, dest)
    card = json.loads((dest / "card.json").read_text())
    (dest / "card.json").write_text(json.dumps({**card, **card_update}))
    return dest


def test_another_behaviour_encoder_or_level_is_refused_before_anything_is_written(round_one, agent, tiny_setting,
                                                                                 corpus_root, tmp_path):
    from mixagent.env.setting import load_setting
    from tests.conftest import tiny_setting_dict

    cfg, _ = round_one
    folder = round_folder(cfg.data_root, 1, tiny_setting)
    before = _snapshot(folder)
    other = _copy_agent(agent, tmp_path / "retrained", description="another network under the same name")
    with pytest.raises(RunnerError, match=r"behaviour_digest is '[0-9a-f]+' in this round folder but"):
        iterate(IterateConfig(**{**cfg.__dict__, "agent": other, "out": None}), [tiny_setting], progress=False)
    old_encoder = _copy_agent(agent, tmp_path / "obs1", encoder_version="obs-v1")
    with pytest.raises(RunnerError, match="reads encoder obs-v1, the training data are encoded with obs-v2"):
        iterate(IterateConfig(**{**cfg.__dict__, "agent": old_encoder, "out": None}), [tiny_setting], progress=False)
    domain = load_setting(tiny_setting_dict(corpus_root, action={"level": "domain"}))
    with pytest.raises(RunnerError, match=r"acts at level field .* setting synthetic-tiny at level domain"):
        iterate(IterateConfig(**{**cfg.__dict__, "out": None}), [domain], progress=False)
    with pytest.raises(RunnerError, match="is this round's own folder"):
        iterate(IterateConfig(**{**cfg.__dict__, "data": (*cfg.data, folder)}), [tiny_setting], progress=False)
    assert _snapshot(folder) == before
    assert not (tmp_path / "data").exists()


def test_records_of_another_setting_in_a_round_folder_are_refused(round_one, tiny_setting, tmp_path):
    cfg, _ = round_one
    src = round_folder(cfg.data_root, 1, tiny_setting)
    root = tmp_path / "data"
    folder = round_folder(root, 1, tiny_setting)
    shutil.copytree(src, folder)
    store = FileStore(folder)
    stored = store.read(store.list()[0])
    hd = stored.trajectory.header.model_copy(update={"setting_hash": "0" * 16, "trajectory_id": "foreign-run"})
    store.write(stored.trajectory.model_copy(update={"header": hd}), stored.meta)
    before = _snapshot(folder)
    with pytest.raises(RunnerError, match="a record of setting hash 0000000000000000, but this round's setting"):
        iterate(IterateConfig(**{**cfg.__dict__, "data_root": root, "out": None}), [tiny_setting], progress=False)
    assert _snapshot(folder) == before


def test_rounds_and_selection_use_training_seeds_only():
    for seed in (1000, 1009, 2000, 2002, 3000):
        with pytest.raises(RunnerError, match=r"lies in the .* seeds \d+\.\.\d+; closed-loop rounds and"):
            check_training_seed(seed)
    for seed in (0, ROUND_SEED, 2 * ROUND_SEED + 63, SELECT_SEED, SELECT_SEED + 9):
        check_training_seed(seed)
    with pytest.raises(RunnerError, match="--select-seeds: 0 \\(none\\) or at least 2"):
        IterateConfig(agent=Path("a"), round=1, n=2, data=(), select_seeds=1).check()
    with pytest.raises(RunnerError, match="--round: must be >= 1"):
        IterateConfig(agent=Path("a"), round=0, n=2, data=()).check()


def test_the_cli_refuses_a_bad_round_naming_the_option(tmp_path):
    from typer.testing import CliRunner

    from mixagent.agent.cli import agent_app

    result = CliRunner().invoke(agent_app, ["iterate", "--agent", str(tmp_path), "--round", "0", "--n", "2",
                                            "--data", str(tmp_path), "--setting", "math-tiny"])
    assert result.exit_code == 2 and "--round: must be >= 1, got 0" in result.output
    assert not any(tmp_path.iterdir())


def test_a_record_whose_behaviour_copy_changed_is_not_rebuilt(round_one, tiny_setting, tmp_path):
    from mixagent.trajectories import ContractError

    cfg, _ = round_one
    folder = tmp_path / "copy"
    shutil.copytree(round_folder(cfg.data_root, 1, tiny_setting), folder)
    _copy_agent(folder / BEHAVIOUR_DIR, tmp_path / "changed", description="retrained in place")
    shutil.rmtree(folder / BEHAVIOUR_DIR)
    shutil.copytree(tmp_path / "changed", folder / BEHAVIOUR_DIR)
    header = FileStore(folder).load_all()[0].trajectory.header
    with pytest.raises(ContractError, match=r"has digest [0-9a-f]+, the record names [0-9a-f]+ \(the behaviour"):
        record_policy(folder, header)
