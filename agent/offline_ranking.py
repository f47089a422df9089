"""Rank RL-stage candidates without a rollout, on the validation trajectories of the training folders.

Real selection rollouts are expensive, so they go to at most a few candidates; this module picks
them. Every validation trajectory of a setting is relabelled under the *same* objectives (drawn per
setting, seeded), so that under each objective the trajectories of a setting compete on one scale.
For a policy, per (setting, objective):

* **nearest-behaviour return** (the ranking score): the mean return of the ``k`` validation
  trajectories whose own actions the policy is closest to (mean |π(s_t) − a_t| along the
  trajectory's states). No critic is asked anything, so a Q-function's extrapolation cannot inflate
  it: it credits a policy for acting like the trajectories that did well under that objective;
* **distance to the best**: the same action distance to the trajectory with the highest return;
* **drift from BC**: mean |π(s) − π_BC(s)| over all validation decision states;
* **critic value**: the candidate's own critic, Q(s_0, π(s_0)) at the validation start states (RL
  learners only; optimistic where the critic extrapolates, so reported, not ranked on).

FQE's estimate (``val/fqe_return`` of the card) is reported beside them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.dataset import (
    EncodedEpisodes,
    TrainingRun,
    load_runs,
    policy_action_spec,
    relabel,
    split_runs,
)
from mixagent.agent.errors import DatasetError
from mixagent.agent.rl_stage import critic_initial_value
from mixagent.trajectories.contract import ObjectiveRange

__all__ = ["ValidationSet", "validation_set", "offline_scores"]


@dataclass(frozen=True)
class ValidationSet:
    """Validation trajectories relabelled under shared objectives: ``groups[e]`` is episode ``e``'s
    (setting, objective) group, within which trajectories are compared."""

    episodes: EncodedEpisodes
    groups: np.ndarray
    runs: int
    objectives_per_setting: int


def validation_set(data: Sequence[str | Path], validation_fraction: float, seed: int, objectives: int,
                   objective_range: ObjectiveRange, action_map: str) -> ValidationSet:
    """The held-out split of ``data`` (:func:`~mixagent.agent.dataset.split_runs` with the training
    run's fraction and seed), every run under the same ``objectives`` draws of its setting."""
    runs, _ = load_runs(data)
    _, val = split_runs(runs, validation_fraction, seed)
    if not val:
        raise DatasetError("validation_fraction: no validation trajectory to rank candidates on")
    spec = policy_action_spec(runs)
    parts: list[EncodedEpisodes] = []
    groups: list[int] = []
    by_setting: dict[str, list[TrainingRun]] = {}
    for r in val:
        by_setting.setdefault(r.setting_hash, []).append(r)
    for s, setting_hash in enumerate(sorted(by_setting)):
        group = sorted(by_setting[setting_hash], key=lambda r: r.run_id)
        rng = np.random.default_rng(np.random.SeedSequence([seed, s, 7]))
        drawn = [objective_range.sample(rng, group[0].trajectory.header.space.fields) for _ in range(objectives)]
        for r in group:
            parts.append(relabel(r, drawn, spec, action_map=action_map))
            groups += [s * objectives + j for j in range(objectives)]
    return ValidationSet(EncodedEpisodes.concat(parts), np.array(groups), len(val), objectives)


def offline_scores(learner: Any, bc_start: Any, val: ValidationSet, k: int, reward_scale: float,
                   critic: bool) -> dict[str, float]:
    """The offline readings of one candidate (see the module docstring); ``bc_start`` None: no drift;
    ``critic``: the learner has a Q-function to read."""
    ep = val.episodes
    rows = ep.decision_rows
    obs = ep.observations[rows]
    actions = np.asarray(learner.predict(obs), dtype=np.float64)
    gap = np.abs(actions - ep.actions[rows]).mean(axis=1)
    per_episode = np.bincount(ep.episode[rows], weights=gap, minlength=ep.n_episodes) / np.bincount(
        ep.episode[rows], minlength=ep.n_episodes)
    returns = ep.returns()
    nearest, to_best, best, mean = [], [], [], []
    for g in np.unique(val.groups):
        members = np.flatnonzero(val.groups == g)
        order = members[np.argsort(per_episode[members], kind="stable")]
        nearest.append(returns[order[:k]].mean())
        top = members[np.argmax(returns[members])]
        to_best.append(per_episode[top])
        best.append(returns[top])
        mean.append(returns[members].mean())
    out = {"nearest_behaviour_return": float(np.mean(nearest)), "action_distance_best": float(np.mean(to_best)),
           "behaviour_best_return": float(np.mean(best)), "behaviour_mean_return": float(np.mean(mean))}
    if bc_start is not None:
        out["drift_from_bc"] = float(np.abs(actions - np.asarray(bc_start.predict(obs))).mean())
    if critic:
        out["critic_value"] = critic_initial_value(learner, ep, reward_scale)
    return out
