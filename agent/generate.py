"""Generate a dataset of real mixing trajectories: behaviour schedules run by the one runner.

    mixagent trajectories generate --setting configs/math-tiny.yaml --n 256 --out data/trajectories/math-tiny
    mixagent trajectories generate ... --workers 2 --threads 1            # a local process pool
    mixagent trajectories generate ... --executor ray [--ray-address auto] # a Ray cluster

The plan is a deterministic list of :class:`~mixagent.agent.runner.Episode`: item i uses family
``families[i mod F]`` (round-robin, so every prefix of the plan covers the families evenly), seed
``SeedSequence([seed, i])``, and schedule parameters drawn from that seed; its trajectory id hashes
(setting hash, family, parameters, seed). A plan of N items is a prefix of the plan of N' > N
items, so ``--n`` can grow across sessions.

``generate.json`` pins the setting hash, families, seed and level of a folder: a rerun that
disagrees is refused rather than mixing two plans, and so is a folder holding records that are not
items of its plan. Resuming, parallel workers, Ray and the one-environment rule are the runner's
(``agent/runner.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.registry import draw_params, get_family, import_plugins
from mixagent.agent.runner import (
    Episode,
    RunnerConfig,
    RunnerError,
    RunReport,
    run_episodes,
)
from mixagent.env.setting import Setting
from mixagent.trajectories.contract import SCHEMA_VERSION, stable_hash
from mixagent.trajectories.policy import Level, PolicyContext
from mixagent.trajectories.schedules import BUILTIN_FAMILIES
from mixagent.trajectories.storage import FileStore, StoredTrajectory, read_json_object, write_json_atomic

__all__ = [
    "GenerateConfig",
    "GenerateError",
    "GenerateReport",
    "PlanItem",
    "make_plan",
    "trajectory_id",
    "generate",
]

GenerateError = RunnerError
"""Generation cannot start or go on (the message says why and names the file)."""
GenerateReport = RunReport
PlanItem = Episode
"""An item of a generation plan is an episode of the runner (its ``policy`` is the family)."""


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(RunnerConfig):
    """One generation run: the plan (fields pinned in ``generate.json`` are marked (pinned)) and how
    the runner executes it (the fields of :class:`~mixagent.agent.runner.RunnerConfig`)."""

    out: Path
    """Dataset folder (created; resumed when it exists)."""
    n: int
    """Number of trajectories the folder should hold from this plan (a prefix of the plan)."""
    families: tuple[str, ...] = BUILTIN_FAMILIES
    """Behaviour families (``mixagent.policies`` names), in round-robin order (pinned)."""
    seed: int = 0
    """Base seed of the plan (pinned)."""
    level: Level | None = None
    """Schedule level, ``field`` or ``domain``; None: the setting's action level (pinned)."""

    def runner(self) -> RunnerConfig:
        return RunnerConfig(**{f.name: getattr(self, f.name) for f in fields(RunnerConfig)})


def trajectory_id(setting_hash: str, family: str, params: dict[str, Any], seed: int) -> str:
    """``<family>-<hash>``, deterministic from (setting hash, schedule and its parameters, seed)."""
    h = stable_hash({"setting": setting_hash, "schedule": family, "params": params, "seed": seed})
    return f"{family}-{h[:12]}"


def make_plan(setting: Setting, *, n: int, families: Sequence[str] = BUILTIN_FAMILIES, seed: int = 0,
              level: Level | None = None) -> list[Episode]:
    """The first ``n`` items of the deterministic plan for ``setting`` (see the module docstring)."""
    if not families:
        raise GenerateError("families: at least one schedule family is needed")
    for f in families:
        if get_family(f).draw is None:
            raise GenerateError(f"families: {f!r} is a policy, not a behaviour family (it draws no parameters)")
    level = level or setting.action.level
    ctx = PolicyContext(setting.space, setting.cpt.horizon, setting.action, setting.objective)
    h = setting.hash()
    plan = []
    for i in range(n):
        family = families[i % len(families)]
        s = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        params = draw_params(family, ctx, s, index=i // len(families), level=level)
        plan.append(Episode(trajectory_id(h, family, params, s), family, params, s, index=i))
    return plan


def _pin(cfg: GenerateConfig, setting: Setting, store: FileStore, level: Level) -> None:
    """Write (or check against) ``generate.json`` and ``setting.json``."""
    pinned = {
        "schema_version": SCHEMA_VERSION,
        "setting_name": setting.name,
        "setting_hash": setting.hash(),
        "families": list(cfg.families),
        "seed": cfg.seed,
        "level": level,
    }
    path = store.root / "generate.json"
    if path.exists():
        old = read_json_object(path)
        for key, value in pinned.items():
            if old.get(key) != value:
                raise GenerateError(
                    f"{path}: {key} is {old.get(key)!r} in this folder but {value!r} in this run; "
                    "use another --out (a folder holds one plan)"
                )
    write_json_atomic(path, {**pinned, "n": cfg.n, "workers": cfg.workers, "threads": cfg.resolved_threads(),
                             "executor": cfg.executor, "plugins": list(cfg.plugins)})
    setting_path = store.root / "setting.json"
    if not setting_path.exists():
        write_json_atomic(setting_path, setting.model_dump(mode="json"))


def _check_plan_membership(
    cfg: GenerateConfig, setting: Setting, level: Level, store: FileStore, done: set[str]
) -> None:
    """Refuse a folder holding records that are not items of its plan (drawn by other code, a
    changed plugin or another numpy): resuming would silently mix two plans."""
    if not done:
        return
    # Workers finish out of order, so stored ids may lie a little past the first max(N, stored)
    # items; twice that plus 64 covers any resume history with up to 64 workers.
    reach = 2 * max(cfg.n, len(done)) + 64
    known = {it.run_id for it in make_plan(setting, n=reach, families=cfg.families, seed=cfg.seed, level=level)}
    foreign = sorted(done - known)
    if foreign:
        raise GenerateError(
            f"{store.path_of(foreign[0])}: not an item of this folder's plan (the first {reach} items of "
            f"families {list(cfg.families)}, seed {cfg.seed}, level {level}); {len(foreign)} such record(s). "
            "They were drawn by other code; move them out or use another --out"
        )


def generate(cfg: GenerateConfig, setting: Setting) -> RunReport:
    """Run (or resume) the plan of ``cfg`` for ``setting``; see the module docstring.

    A trajectory that raises is logged and left out (the next run retries it); the others go on,
    and a :class:`GenerateError` listing the failures ends the run."""
    if cfg.n < 0:
        raise GenerateError(f"--n: must be >= 0, got {cfg.n}")
    if cfg.seed < 0:
        raise GenerateError(f"--seed: must be >= 0, got {cfg.seed}")
    runner = cfg.runner()
    runner.check()
    level: Level = cfg.level or setting.action.level
    import_plugins(cfg.plugins)
    plan = make_plan(setting, n=cfg.n, families=cfg.families, seed=cfg.seed, level=level)  # checks families

    def check_folder(store: FileStore, stored: list[StoredTrajectory]) -> None:
        _pin(cfg, setting, store, level)
        _check_plan_membership(cfg, setting, level, store, {s.trajectory.header.trajectory_id for s in stored})

    return run_episodes(setting, plan, cfg.out, runner, check_folder=check_folder)
