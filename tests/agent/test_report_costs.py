"""The cost column of the evaluation report: per method, the proxy runs it needed, their CPU-hours,
its fit seconds and whether those runs came from the evaluated setting."""

from __future__ import annotations

import json

import pytest

from mixagent.agent.catalogue import BASELINE_POLICIES, GRID_POINTS, EvaluationConfig, PolicySpec, SettingPlan
from mixagent.agent.report import method_costs, write_report
from mixagent.agent.runner import write_card
from mixagent.trajectories.contract import Objective
from mixagent.trajectories.stats import summarise
from mixagent.trajectories.storage import FileStore, RecordMeta
from tests.agent.planted_pools import planted_folder

pytest.importorskip("econml")


def test_each_method_is_priced(tiny_setting, tiny_dataset, tmp_path, monkeypatch):
    from mixagent.agent.causalmix import fit_causalmix

    data = tmp_path / "pools"
    planted_folder(data, tiny_setting, 40)  # each planted record took 2.0 s of wall time on one thread
    store = FileStore(data)
    write_card(store, {s.trajectory.header.trajectory_id: summarise(s) for s in store.load_all()})
    card = fit_causalmix([data], tmp_path / "cm", min_runs=40, objectives=(Objective(spread_penalty=0.5),))
    monkeypatch.chdir(tmp_path)  # a card names its folders as given (here: pools); the report looks there
    causalmix = PolicySpec("causalmix", "artifact", {}, "learned", artifact=str(tmp_path / "cm"))
    grid = GRID_POINTS[:2]
    cfg = EvaluationConfig(out=tmp_path / "eval", policies=(BASELINE_POLICIES[0], *grid, causalmix),
                           settings=(tiny_setting,), seeds=1, selection_seeds=2)
    sweep = FileStore(tiny_dataset).load_all()[:4]  # stand-ins for the grid's four selection runs
    runs = {(p.label, None, s): f"r{i}-{s}" for i, p in enumerate(grid) for s in cfg.select_seeds}
    trajectories = {rid: st.trajectory for rid, st in zip(runs.values(), sweep, strict=True)}
    costs = method_costs(tiny_setting, cfg, SettingPlan([], runs), trajectories)
    assert costs["uniform"] == {"proxy_runs": 0, "cpu_hours": 0.0, "fit_seconds": 0.0, "from_evaluated_setting": None,
                                "in_run_cpu_s_per_decision": None, "needs_trainer_model": False}
    wall = sum(sum(st.trajectory.stage_wall_s) for st in sweep)
    for p in grid:
        assert costs[p.label] == {"proxy_runs": 4, "cpu_hours": pytest.approx(wall / 3600), "fit_seconds": 0.0,
                                  "from_evaluated_setting": "yes", "in_run_cpu_s_per_decision": None,
                                  "needs_trainer_model": False}
    c = costs["causalmix"]
    assert c["proxy_runs"] == 40 and c["cpu_hours"] == pytest.approx(40 * 2.0 / 3600)
    assert c["fit_seconds"] == pytest.approx(card.metrics["seconds/fit"]) and c["from_evaluated_setting"] == "yes"
    other = tiny_setting.model_copy(update={"seed": 1})  # another setting hash: its runs are not this one's
    assert method_costs(other, cfg, SettingPlan([], runs), trajectories)["causalmix"]["from_evaluated_setting"] == "no"
    text = write_report([{"setting": tiny_setting.name, "objectives": {}, "costs": costs}], cfg, tmp_path / "r.md")
    assert "| causalmix | 40 | 0.02 | " in text and "| uniform | 0 | 0.00 | 0 | — | — | no |" in text
    json.dumps(costs)  # the results file holds it


def test_a_trainer_side_method_is_priced_by_its_overhead_per_decision(tiny_setting, tmp_path):
    tandem = PolicySpec("tandem", "tandem", {}, "baseline")  # as agent/catalogue.py declares it
    cfg = EvaluationConfig(out=tmp_path / "eval", policies=(BASELINE_POLICIES[0], tandem), settings=(tiny_setting,),
                           seeds=3, selection_seeds=0)
    runs = {("tandem", None, s): f"t{s}" for s in cfg.compare_seeds} | {("uniform", None, s): f"u{s}"
                                                                          for s in cfg.compare_seeds}
    metas = {f"t{s}": RecordMeta(method={"name": "tandem", "overhead_cpu_s_per_decision": x})
             for s, x in zip(cfg.compare_seeds, (0.4, 0.1, 0.3), strict=True)}
    metas |= {f"u{s}": RecordMeta() for s in cfg.compare_seeds}
    costs = method_costs(tiny_setting, cfg, SettingPlan([], runs), {}, metas)
    assert costs["tandem"]["in_run_cpu_s_per_decision"] == pytest.approx(0.3)  # the median of its runs
    assert costs["tandem"]["needs_trainer_model"] is True
    assert costs["uniform"]["in_run_cpu_s_per_decision"] is None and costs["uniform"]["needs_trainer_model"] is False
    text = write_report([{"setting": tiny_setting.name, "objectives": {}, "costs": costs}], cfg, tmp_path / "r.md")
    assert "| tandem | 0 | 0.00 | 0 | — | 0.30 | yes |" in text
