"""The RL-stage sweep's plan (bench/rl_stage_sweep.py): starts first, every RL candidate warm-started
from a start of its actor's type, and the unbounded point really unbounded (a config built with
``load_config`` drops None overrides, which once trained it under the default bound)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _sweep():
    spec = importlib.util.spec_from_file_location("rl_stage_sweep", REPO / "bench" / "rl_stage_sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_plan_trains_starts_first_and_matches_each_learner_to_its_start():
    from mixagent.agent.rl_stage import RL_FROM_BC, START_POLICY
    from mixagent.agent.train import TrainConfig

    sweep = _sweep()
    for scale in sweep.SCALES:
        plan = sweep.candidates(scale)
        names = list(plan)
        assert names[:2] == list(sweep.STARTS)
        for name, (algo, over) in plan.items():
            if algo == "bc":
                continue
            start_policy = sweep.STARTS[over["start"]]["bc_policy"]
            assert start_policy == START_POLICY[RL_FROM_BC[algo]], name
            fields = {k: v for k, v in over.items() if k in TrainConfig.model_fields}
            cfg = TrainConfig.model_validate(fields)
            assert cfg.drift_bound == (None if name.endswith("-unbounded") else over["drift_bound"]), name
        assert sum(n.endswith("-unbounded") for n in names) == 1
