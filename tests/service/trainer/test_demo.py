"""``mixagent demo`` on the tiny generated setting: real CPT with the service in the loop."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")


def test_demo_runs_a_served_episode_against_uniform(tiny_setting_file, tiny_backend, tmp_path):
    from mixagent.cli import app
    from mixagent.trajectories import Trajectory

    out = tmp_path / "demo"
    res = CliRunner().invoke(app, ["demo", "--setting", str(tiny_setting_file), "--policy", "loss-softmax",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "per-field score" in res.output and "balanced B" in res.output
    # progress: one line per evaluation of each episode, saying who served the served one
    assert "  served: start evaluated; next target share 0.50, by loss-softmax@builtin (" in res.output
    assert "  served: stage 5/5 trained and evaluated; next target share" in res.output
    assert "  uniform: stage 5/5 trained and evaluated; next target share 0.50 (" in res.output
    result = json.loads((out / "demo.json").read_text())
    assert result["fields"] == ["source", "target"] and result["steps"] == 20  # 5 decisions x 4 steps
    # the served run trained on what the service decided: the prior after the first evaluation,
    # then shares that follow the losses (not uniform any more)
    shares = result["served_field_shares"]
    assert len(shares) == 5 and shares[0] == pytest.approx([0.5, 0.5])
    assert any(abs(row[0] - 0.5) > 0.01 for row in shares[1:])
    # real training moved the scores, and differently for the two mixtures
    assert result["served_final"] != result["start"] and result["served_final"] != result["uniform_final"]
    lines = (out / "served.jsonl").read_text().splitlines()
    traj = Trajectory.model_validate_json(lines[0])
    assert traj.header.schedule == "loss-softmax" and traj.history.stages == 5
    # one comparison figure (served vs uniform) and the served run alone
    assert (out / "demo.png").stat().st_size > 10_000 and (out / "served.png").stat().st_size > 10_000
    assert not (out / "weights.png").exists() and not (out / "uniform.png").exists()


def test_an_unknown_policy_is_refused_before_anything_is_loaded_or_written(tiny_setting_file, tmp_path):
    from mixagent.cli import app

    res = CliRunner().invoke(app, ["demo", "--policy", "nosuch", "--setting", str(tiny_setting_file),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo: --policy: unknown policy 'nosuch'; known: [")
    assert "loss-softmax" in lines[0]
    assert not (tmp_path / "out").exists()  # no folder, no demo.db


def test_the_default_policy_is_the_services_and_a_missing_setting_is_one_line(tmp_path, monkeypatch):
    from mixagent.cli import app
    from mixagent.service.server.main import open_store
    from tests.service.conftest import make_settings

    monkeypatch.delenv("MIXAGENT_DEFAULT_POLICY", raising=False)
    default = open_store(make_settings(tmp_path))[0].registry.default_name
    res = CliRunner().invoke(app, ["demo", "--setting", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()  # the setting is checked first: nothing is written
    assert lines == [f"demo: --setting: {tmp_path / 'none.yaml'}: cannot read setting (No such file or directory)"]
    assert not (tmp_path / "out").exists()
    from mixagent.service.trainer.demo import DemoError, run_demo

    with pytest.raises(DemoError, match="--setting: "):  # the same through the function
        run_demo(setting=str(tmp_path / "none.yaml"), out=tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and default
    help_text = CliRunner().invoke(app, ["demo", "--help"]).output
    assert "fixed-target-share" not in help_text and "bundled agent" in help_text


def test_without_the_train_extra_the_demo_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from mixagent.cli import app

    monkeypatch.setitem(sys.modules, "mixagent.env.mixing_env", None)
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and res.output.strip().endswith("pip install 'mixagent[all]'"), res.output
