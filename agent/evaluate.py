"""The evaluation harness: plans and runs policies x settings x objectives on paired seeds.

What is compared (the policy catalogue, seeds, ``EvaluationConfig``) is :mod:`mixagent.agent.catalogue`;
the statistics, tables and plots of the outcome are :mod:`mixagent.agent.report`. This module plans
the runs of each setting, runs them with the one runner and hands the finished runs to the report.

    mixagent agent evaluate --policies default agent/artifacts/agent --settings math-tiny docs-tiny \\
        --objectives spread_penalty=0.5 spread_penalty=0.2 --seeds 5 --selection-seeds 3 \\
        --workers 2 --out runs/eval

Every policy runs in the real env (:mod:`mixagent.agent.runner`, the same loop that generates the
training data) on the same seeds: comparison seed i is ``COMPARE_SEED + i`` for every policy, so
differences are paired. Baselines, hand schedules and the fixed-share grid ignore the objective:
each runs once per seed and is scored under every objective (the raw feedback is stored). A
learned policy reads the objective, so it runs once per (objective, seed). Open-loop policies whose
mixtures coincide (e.g. ``uniform`` and ``prior`` when all priors are equal) share one run.

The best grid point is chosen on *selection* seeds (``SELECT_SEED + j``) that no comparison uses:
the hindsight maximum over 11 noisy means is biased upward. The best hand schedule is the
hindsight best on the comparison seeds (which favours the hand schedules, not the agent).

Outputs in ``--out``: ``runs/<setting>/`` (every run as a trajectory record; resumable),
``report.md`` (per setting and objective: final per-field gains, B mean ± 95% interval, paired
differences with 95% intervals against the reference, the best hand schedule and the selected grid
point, learned policies against each other, and whether each learned policy meets the goals),
``results.json``, and plots
(``plots/<setting>-shares.png``: target share over time per policy; ``plots/<setting>-<objective>-scores.png``:
B over time).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.catalogue import EvaluationConfig, PolicySpec, SettingPlan, objective_key
from mixagent.agent.registry import build_policy
from mixagent.agent.report import best_grid_point, plot_results, summarise_setting, write_report
from mixagent.agent.runner import EpisodeSpec, FolderPin, RunnerError, run_episodes
from mixagent.env.setting import Setting
from mixagent.trajectories.contract import Objective, Trajectory, stable_hash
from mixagent.trajectories.policy import PolicyContext
from mixagent.trajectories.schedules import StaticSchedule
from mixagent.trajectories.storage import FileStore, write_json_atomic

__all__ = [
    "plan_setting",
    "learned_run_id",
    "selected_grid_points",
    "evaluate",
]


def _folder_pin() -> FolderPin:
    """An evaluation folder holds the runs of one setting (any number of reports share them)."""
    return FolderPin("evaluation.json")


def _open_loop_signature(spec: PolicySpec, ctx: PolicyContext) -> str | None:
    """A hash of the whole schedule of an open-loop policy (None for feedback-driven ones)."""
    from mixagent.agent.baselines import FixedTargetSharePolicy, PriorPolicy, UniformPolicy  # noqa: PLC0415

    policy = build_policy(spec.policy, spec.params, ctx)
    if isinstance(policy, StaticSchedule):
        matrix = policy.matrix
    elif isinstance(policy, UniformPolicy | PriorPolicy | FixedTargetSharePolicy):
        matrix = np.tile(policy.initial_weights(ctx.space).as_array(), (ctx.horizon, 1))
    else:
        return None
    return stable_hash(np.round(matrix, 9).tolist())


def learned_run_id(spec: PolicySpec, objective: Objective, seed: int, digest: str | None = None) -> str:
    """The run of a learned policy at ``objective`` and ``seed`` (its artifact's digest in the name, so a
    retrained network never reuses another's runs); ``digest`` saves rehashing the artifact per seed."""
    return f"{spec.label}-{(digest or spec.digest())[:8]}-{stable_hash(objective_key(objective))[:6]}-s{seed}"


def plan_setting(setting: Setting, cfg: EvaluationConfig,
                 compared_grid: Collection[str] | None = None) -> SettingPlan:
    """Every (policy, objective, seed) run of ``setting``. Grid points run on the selection seeds and,
    when ``compared_grid`` is given, on the comparison seeds only if named in it."""
    ctx = PolicyContext(setting.space, setting.cpt.horizon, setting.action, setting.objective)
    compare = cfg.compare_seeds
    select = cfg.select_seeds
    episodes: dict[str, EpisodeSpec] = {}
    runs: dict[tuple[str, str | None, int], str] = {}
    for spec in cfg.policies:
        if spec.group == "grid":
            seeds = select + (compare if compared_grid is None or spec.label in compared_grid else [])
        else:
            seeds = compare
        if spec.learned:
            digest = spec.digest()
            for o in cfg.objectives if spec.fixed_objective is None else (spec.fixed_objective,):
                ok = objective_key(o)
                for seed in seeds:
                    rid = learned_run_id(spec, o, seed, digest)
                    episodes.setdefault(rid, EpisodeSpec(rid, "artifact", {"artifact_digest": digest, "objective": ok},
                                                     seed, index=len(episodes), label=spec.label, objective=o,
                                                     artifact=spec.artifact))
                    runs[(spec.label, ok if spec.per_objective else None, seed)] = rid
            continue
        signature = _open_loop_signature(spec, ctx)
        key = f"static-{signature[:12]}" if signature else f"{spec.label}-{spec.digest()[:8]}"
        for seed in seeds:
            rid = f"{key}-s{seed}"
            episodes.setdefault(rid, EpisodeSpec(rid, spec.policy, {"level": "field", **spec.params}, seed,
                                             index=len(episodes), label=spec.label))
            runs[(spec.label, None, seed)] = rid
    return SettingPlan(_cells_first(episodes.values(), cfg), runs)


def _cells_first(episodes: Collection[EpisodeSpec], cfg: EvaluationConfig) -> list[EpisodeSpec]:
    """The run order: the policies that ignore the objective first (every cell needs them), then per
    objective seed by seed, every policy of a seed together, so that an interrupted evaluation holds
    complete paired seeds of whole cells, not all of one policy and none of the next."""
    order = {objective_key(o): i for i, o in enumerate(cfg.objectives)}
    policy = {spec.label: i for i, spec in enumerate(cfg.policies)}

    def key(e: EpisodeSpec) -> tuple[int, int, int, int]:
        ok = e.params.get("objective") if e.policy == "artifact" else None
        return (0 if ok is None else 1 + order.get(ok, len(order)), e.seed, policy.get(e.label or e.policy, 0), e.index)

    return [replace(e, index=i) for i, e in enumerate(sorted(episodes, key=key))]


def selected_grid_points(cfg: EvaluationConfig, plan: SettingPlan, store: FileStore) -> set[str]:
    """The grid point with the best mean on the selection seeds, for each objective (the ones the
    comparison seeds then run)."""
    select = cfg.select_seeds
    grid = [p for p in cfg.policies if p.group == "grid"]
    held = set(store.list()) if store.records.is_dir() else set()
    runs: dict[str, list[Trajectory]] = {}
    for p in grid:  # each record read once, scored under every objective
        rids = [plan.runs[(p.label, None, s)] for s in select]
        missing = [r for r in rids if r not in held]
        if missing:
            raise RunnerError(f"{store.root}: selection run {missing[0]} is missing; run the evaluation to make it")
        runs[p.label] = [store.read(r).trajectory for r in rids]
    return {best_grid_point(runs, o)[0] for o in cfg.objectives} if runs else set()


def evaluate(cfg: EvaluationConfig, *, run: bool = True, allow_missing: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) every setting's episodes, then write ``results.json``, ``report.md`` and the
    plots. ``run=False`` only reports on what the folders hold: missing runs are an error, unless
    ``allow_missing``, which reports the policies whose runs are all there and lists the rest as
    ``incomplete`` (an interrupted benchmark's interim report)."""
    cfg.check()
    cfg.out.mkdir(parents=True, exist_ok=True)
    results = []
    for setting in cfg.settings:
        folder = cfg.out / "runs" / setting.name
        compared_grid = None
        if cfg.grid_compare == "selected":  # phase 1: the grid on the selection seeds only
            first = plan_setting(setting, cfg, compared_grid=())
            if run:
                run_episodes(setting, first.episodes, folder, cfg.runner, pin=_folder_pin(),
                             desc=f"evaluate {setting.name} (selection)")
            try:
                compared_grid = selected_grid_points(cfg, first, FileStore(folder))
            except RunnerError:
                if not allow_missing:
                    raise
                compared_grid = set()  # the grid's selection runs are not all made yet
        plan = plan_setting(setting, cfg, compared_grid)
        if run:
            run_episodes(setting, plan.episodes, folder, cfg.runner, pin=_folder_pin(),
                         desc=f"evaluate {setting.name}")
        store = FileStore(folder)
        held = set(store.list()) if store.records.is_dir() else set()
        missing = [e.run_id for e in plan.episodes if e.run_id not in held]
        if missing and not allow_missing:
            raise RunnerError(f"{folder}: {len(missing)} run(s) of this evaluation are missing (e.g. {missing[0]}); "
                              "run the evaluation to make them")
        if missing:
            plan = SettingPlan([e for e in plan.episodes if e.run_id in held],
                               {k: rid for k, rid in plan.runs.items() if rid in held})
        stored = {e.run_id: store.read(e.run_id) for e in plan.episodes}
        summary = summarise_setting(setting, cfg, plan, {k: st.trajectory for k, st in stored.items()},
                                    {k: st.meta for k, st in stored.items()})
        summary["rollout_seconds"] = sum(st.meta.wall_s for st in stored.values())  # the runs this report uses
        results.append(summary)
    report_dir = cfg.reports
    report_dir.mkdir(parents=True, exist_ok=True)
    command = cfg.command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    write_json_atomic(report_dir / "results.json", {
        "command": command, "seeds": cfg.seeds, "selection_seeds": cfg.selection_seeds,
        "comparison_seed_list": cfg.compare_seeds, "selection_seed_list": cfg.select_seeds,
        "reference": cfg.reference, "settings": results})
    write_report(results, cfg, report_dir / "report.md")
    plot_results(results, report_dir / "plots")
    return results
