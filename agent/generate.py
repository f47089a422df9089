"""Generate a dataset of real mixing trajectories: behaviour schedules run by the one runner.

    mixagent trajectories generate --setting configs/math-tiny.yaml --n 256 --out data/trajectories/math-tiny
    mixagent trajectories generate ... --workers 2 --threads 1            # a local process pool
    mixagent trajectories generate ... --executor ray [--ray-address auto] # a Ray cluster

The plan is a deterministic list of :class:`~mixagent.agent.runner.EpisodeSpec`: item i uses family
``families[i mod F]`` (round-robin, so every prefix of the plan covers the families evenly), seed
``SeedSequence([seed, i])``, and schedule parameters drawn from that seed; its trajectory id hashes
(setting hash, family, parameters, seed). A plan of N items is a prefix of the plan of N' > N
items, so ``--n`` can grow across sessions. With a ``pool`` (``env/pools.py``), item i also
trains on a data pool, its caps drawn from the item's seed (or fixed), and its id hashes them too;
without one, plans, ids and records are exactly those of a plan that never heard of pools.

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

from mixagent.agent.registry import draw_params, get_family
from mixagent.agent.runner import (
    EpisodeSpec,
    FolderPin,
    RunnerConfig,
    RunnerError,
    RunReport,
    run_episodes,
)
from mixagent.env.pools import POOL_PARAM, PoolSpec
from mixagent.env.setting import Setting
from mixagent.trajectories.contract import SCHEMA_VERSION, stable_hash
from mixagent.trajectories.policy import Level, PolicyContext
from mixagent.trajectories.schedules import BUILTIN_FAMILIES
from mixagent.trajectories.storage import FileStore

__all__ = [
    "GenerateConfig",
    "make_plan",
    "trajectory_id",
    "generate",
]



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
    pool: PoolSpec | None = None
    """Per-run data pools (drawn or fixed caps per domain); None: the full train split (pinned)."""

    def runner(self) -> RunnerConfig:
        return RunnerConfig(**{f.name: getattr(self, f.name) for f in fields(RunnerConfig)})


def trajectory_id(setting_hash: str, family: str, params: dict[str, Any], seed: int) -> str:
    """``<family>-<hash>``, deterministic from (setting hash, schedule and its parameters, seed)."""
    h = stable_hash({"setting": setting_hash, "schedule": family, "params": params, "seed": seed})
    return f"{family}-{h[:12]}"


def make_plan(setting: Setting, *, n: int, families: Sequence[str] = BUILTIN_FAMILIES, seed: int = 0,
              level: Level | None = None, pool: PoolSpec | None = None) -> list[EpisodeSpec]:
    """The first ``n`` items of the deterministic plan for ``setting`` (see the module docstring)."""
    if not families:
        raise RunnerError("families: at least one schedule family is needed")
    for f in families:
        if get_family(f).draw is None:
            raise RunnerError(f"families: {f!r} is a policy, not a behaviour family (it draws no parameters)")
    level = level or setting.action.level
    ctx = PolicyContext(setting.space, setting.cpt.horizon, setting.action, setting.objective)
    h = setting.hash()
    plan = []
    for i in range(n):
        family = families[i % len(families)]
        s = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        params = draw_params(family, ctx, s, index=i // len(families), level=level)
        if pool is None:
            plan.append(EpisodeSpec(trajectory_id(h, family, params, s), family, params, s, index=i))
            continue
        caps = pool.caps_for(setting.space.names, s)
        plan.append(EpisodeSpec(trajectory_id(h, family, {**params, POOL_PARAM: caps}, s), family, params, s,
                                index=i, pool=caps))
    return plan


def generate(cfg: GenerateConfig, setting: Setting) -> RunReport:
    """Run (or resume) the plan of ``cfg`` for ``setting``; see the module docstring.

    A trajectory that raises is logged and left out (the next run retries it); the others go on,
    and a :class:`RunnerError` listing the failures ends the run."""
    if cfg.n < 0:
        raise RunnerError(f"--n: must be >= 0, got {cfg.n}")
    if cfg.seed < 0:
        raise RunnerError(f"--seed: must be >= 0, got {cfg.seed}")
    runner = cfg.runner()
    runner.check()
    level: Level = cfg.level or setting.action.level
    plan = make_plan(setting, n=cfg.n, families=cfg.families, seed=cfg.seed, level=level,
                     pool=cfg.pool)  # checks families and the pool
    # Workers finish out of order, so stored ids may lie a little past the first max(N, stored) items;
    # twice that plus 64 covers any resume history with up to 64 workers.
    held = len(FileStore(cfg.out).list()) if (Path(cfg.out) / "records").is_dir() else 0
    reach = 2 * max(cfg.n, held) + 64
    admitted = frozenset(it.run_id for it in make_plan(setting, n=reach, families=cfg.families, seed=cfg.seed,
                                                        level=level, pool=cfg.pool))
    pin = FolderPin(
        "generate.json",
        pinned={"schema_version": SCHEMA_VERSION, "families": list(cfg.families), "seed": cfg.seed, "level": level,
                **({} if cfg.pool is None else {POOL_PARAM: cfg.pool.pinned()})},
        info={"n": cfg.n, "workers": cfg.workers, "threads": cfg.resolved_threads(), "executor": cfg.executor},
        admitted=admitted,
        admitted_what=f"this folder's plan (the first {reach} items of families {list(cfg.families)}, seed {cfg.seed}, "
                      f"level {level})",
    )
    return run_episodes(setting, plan, cfg.out, runner, pin=pin)
