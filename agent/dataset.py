"""From stored trajectories to offline-RL datasets: split, relabel, encode (d3rlpy ``MDPDataset``).

Order matters and is fixed here:

1. **load** every finished record of one or more dataset folders (several settings may be combined;
   they must share the number of fields and the action map);
2. **split by trajectory** into train and validation *before anything else*, per setting, seeded
   (a trajectory's relabelled copies never straddle the split);
3. **relabel**: each trajectory is replayed under several objectives drawn from an
   :class:`~mixagent.trajectories.contract.ObjectiveRange` (its own objective first), which changes both the
   rewards ``r_t = B_{t+1} - B_t`` and the objective slice of the observation (``obs-v2``); the
   raw records hold raw feedback, so relabelling needs no new runs;
4. **encode** with the one encoder (``trajectories/encoding.py``) and label actions with
   ``weights_to_action`` under the records' β and ε and the policy's action map version
   (``action-v2`` by default: ``F - 1`` free logits, :data:`~mixagent.trajectories.encoding.ACTION_MAP`;
   every :class:`EncodedEpisodes` says which map labelled it).

Each (trajectory, objective) copy is one episode of T decisions. Its final observation (after the
last stage) is kept as an extra row with a zero action so that the last decision still has a next
observation; that row carries the **timeout** flag (the budget ends; never a terminal) and is never
the start of a transition. For behaviour cloning, :func:`best_copies` keeps, per setting and per
drawn objective, the top fraction of the training trajectories by return under that objective.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.card import TrainingData
from mixagent.agent.errors import DatasetError
from mixagent.trajectories.contract import (
    SOURCE_FIELD,
    ActionSpec,
    ContractError,
    History,
    Objective,
    ObjectiveRange,
    Trajectory,
    stable_hash,
)
from mixagent.trajectories.encoding import (
    ACTION_MAP,
    ENCODER_VERSION,
    balanced_scores,
    check_action_map,
    encode,
    stage_rewards,
    weights_to_action,
)
from mixagent.trajectories.replay import replay
from mixagent.trajectories.storage import FileStore

__all__ = [
    "DatasetError",
    "TrainingRun",
    "EncodedEpisodes",
    "load_runs",
    "split_runs",
    "draw_objectives",
    "relabel",
    "best_copies",
    "to_mdp_dataset",
]



@dataclass(frozen=True)
class TrainingRun:
    """One stored trajectory and the folder (setting) it came from."""

    trajectory: Trajectory
    folder: str
    setting_hash: str
    checksum: str

    @property
    def run_id(self) -> str:
        return self.trajectory.header.trajectory_id


@dataclass(frozen=True)
class EncodedEpisodes:
    """Encoded episodes, one row per observation: T decisions plus the final observation per episode.

    ``episode[i]`` indexes ``sources`` (``(run_id, objective)`` of each episode); ``timeouts`` is True
    on each episode's final row, whose action is zero and never trained on; ``action_map`` is the
    map version the actions are labelled under."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    timeouts: np.ndarray
    episode: np.ndarray
    sources: list[tuple[str, Objective]]
    action_map: str = ACTION_MAP

    @property
    def n_episodes(self) -> int:
        return len(self.sources)

    @property
    def decision_rows(self) -> np.ndarray:
        """Rows that are decisions (every row but each episode's final observation)."""
        return ~self.timeouts

    def returns(self) -> np.ndarray:
        return np.bincount(self.episode, weights=self.rewards, minlength=self.n_episodes)

    @staticmethod
    def concat(parts: Sequence[EncodedEpisodes]) -> EncodedEpisodes:
        parts = [p for p in parts if p.n_episodes]
        if not parts:
            raise DatasetError("episodes: no trajectory selected (for behaviour cloning: none is smooth enough "
                               "under bc_max_roughness, or the setting has too few)")
        maps = sorted({p.action_map for p in parts})
        if len(maps) > 1:
            raise DatasetError(f"episodes: actions labelled under several action maps {maps}; one dataset has one")
        offsets = np.cumsum([0] + [p.n_episodes for p in parts[:-1]])
        return EncodedEpisodes(
            np.concatenate([p.observations for p in parts]),
            np.concatenate([p.actions for p in parts]),
            np.concatenate([p.rewards for p in parts]),
            np.concatenate([p.timeouts for p in parts]),
            np.concatenate([p.episode + o for p, o in zip(parts, offsets, strict=True)]),
            [s for p in parts for s in p.sources],
            maps[0],
        )


def load_runs(folders: Sequence[str | Path]) -> tuple[list[TrainingRun], list[TrainingData]]:
    """Every finished record of ``folders`` (a :class:`DatasetError` names a folder without any),
    with one :class:`TrainingData` entry per folder for the policy card."""
    runs: list[TrainingRun] = []
    data: list[TrainingData] = []
    if not folders:
        raise DatasetError("--data: at least one dataset folder is needed")
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise DatasetError(f"--data: {folder}: no such folder")
        stored = FileStore(path).load_all()
        if not stored:
            raise DatasetError(f"--data: {folder}: no finished trajectories")
        hashes = {s.trajectory.header.setting_hash for s in stored}
        if len(hashes) != 1:
            raise DatasetError(f"--data: {folder}: records of {len(hashes)} settings ({sorted(hashes)}); "
                               "a folder is one setting")
        setting_hash = hashes.pop()
        runs += [TrainingRun(s.trajectory, str(path), setting_hash, s.sha256) for s in stored]
        data.append(TrainingData(folder=path.name, setting_name=stored[0].trajectory.header.setting_name,
                                 setting_hash=setting_hash, trajectories=len(stored),
                                 content_hash=stable_hash(sorted(s.sha256 for s in stored))))
    for r in runs:
        if r.trajectory.history.stages < 1:
            raise DatasetError(f"--data: {r.folder}/{r.run_id} has no completed stage")
    return runs, data


def _check_compatible(runs: Sequence[TrainingRun]) -> None:
    first = runs[0].trajectory.header
    for r in runs[1:]:
        hd = r.trajectory.header
        if len(hd.space.fields) != len(first.space.fields):
            raise DatasetError(f"--data: {r.folder} has {len(hd.space.fields)} fields, {runs[0].folder} has "
                               f"{len(first.space.fields)}; one field-level policy reads one number of fields")
        if (hd.action.beta, hd.action.epsilon) != (first.action.beta, first.action.epsilon):
            raise DatasetError(f"--data: {r.folder} maps actions with beta={hd.action.beta}, "
                               f"epsilon={hd.action.epsilon}; "
                               f"{runs[0].folder} with beta={first.action.beta}, epsilon={first.action.epsilon}")


def policy_action_spec(runs: Sequence[TrainingRun]) -> ActionSpec:
    """The field-level action map of the training data (its β and ε); a :class:`DatasetError` when
    the folders cannot train one field-level policy (other numbers of fields, other action maps)."""
    _check_compatible(runs)
    return runs[0].trajectory.header.action.model_copy(update={"level": "field"})


def split_runs(runs: Sequence[TrainingRun], validation_fraction: float,
               seed: int) -> tuple[list[TrainingRun], list[TrainingRun]]:
    """Split by trajectory, per setting: a seeded shuffle, then ``round(n·fraction)`` (at least one
    when a setting has two or more trajectories and the fraction is positive) go to validation."""
    if not 0.0 <= validation_fraction < 1.0:
        raise DatasetError(f"validation_fraction: must be in [0, 1), got {validation_fraction}")
    train: list[TrainingRun] = []
    val: list[TrainingRun] = []
    for setting_hash in sorted({r.setting_hash for r in runs}):
        group = sorted((r for r in runs if r.setting_hash == setting_hash), key=lambda r: r.run_id)
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(setting_hash[:8], 16)]))
        order = rng.permutation(len(group))
        k = round(len(group) * validation_fraction)
        if validation_fraction > 0 and len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        val += [group[i] for i in order[:k]]
        train += [group[i] for i in order[k:]]
    return train, val


def draw_objectives(run: TrainingRun, copies: int, objective_range: ObjectiveRange, rng: np.random.Generator,
                    include_own: bool = True) -> list[Objective]:
    """``copies`` objectives for one run: its own (when in range and ``include_own``), then draws."""
    fields = run.trajectory.header.space.fields
    out: list[Objective] = []
    own = run.trajectory.header.objective
    if include_own and copies > 0:
        try:
            objective_range.check(own, run.trajectory.header.space)
            out.append(own)
        except ContractError:
            pass
    while len(out) < copies:
        out.append(objective_range.sample(rng, fields))
    return out


def _encode_at(history: History, *, horizon: int, spec: ActionSpec, objective: Objective, version: str) -> np.ndarray:
    return encode(history, horizon, spec, objective, version)


def relabel(run: TrainingRun, objectives: Sequence[Objective], spec: ActionSpec,
            encoder_version: str = ENCODER_VERSION, action_map: str = ACTION_MAP) -> EncodedEpisodes:
    """The episodes of ``run`` under each of ``objectives`` (see the module docstring): each is the
    run's :func:`~mixagent.trajectories.replay.replay` under that objective, its actions labelled
    under ``action_map``, plus its final observation as a zero-action timeout row."""
    try:
        check_action_map(action_map)
    except ContractError as err:
        raise DatasetError(str(err)) from None
    hd, h = run.trajectory.header, run.trajectory.history
    obs, actions, rew, timeouts, episode = [], [], [], [], []
    for e, objective in enumerate(objectives):
        tr = replay(h, partial(_encode_at, horizon=hd.horizon, spec=spec, objective=objective, version=encoder_version),
                    partial(weights_to_action, space=hd.space, spec=spec, action_map=action_map),
                    partial(stage_rewards, objective=objective))
        obs.append(np.concatenate([tr.observations, tr.next_observations[-1:]]))
        actions.append(np.concatenate([tr.actions, np.zeros((1, tr.actions.shape[1]), np.float32)]))
        rew.append(np.concatenate([tr.rewards, [0.0]]).astype(np.float32))
        timeouts.append(np.concatenate([np.zeros(len(tr), bool), [True]]))
        episode.append(np.full(len(tr) + 1, e))
    return EncodedEpisodes(
        np.concatenate(obs).astype(np.float32),
        np.concatenate(actions).astype(np.float32),
        np.concatenate(rew),
        np.concatenate(timeouts),
        np.concatenate(episode),
        [(run.run_id, o) for o in objectives],
        action_map,
    )


def final_score(run: TrainingRun, objective: Objective) -> float:
    return float(balanced_scores(run.trajectory.history, objective)[-1])


def roughness(run: TrainingRun) -> float:
    """Mean absolute change of the target share between consecutive stages (0 for a constant)."""
    h = run.trajectory.history
    rows = [i for i, f in enumerate(h.space.fields) if f != SOURCE_FIELD]
    shares = (h.space.field_matrix() @ h.weight_matrix().T)[rows].sum(axis=0)
    return float(np.abs(np.diff(shares)).mean()) if len(shares) > 1 else 0.0


def best_copies(runs: Sequence[TrainingRun], draws: int, top_fraction: float, objective_range: ObjectiveRange,
                rng: np.random.Generator, spec: ActionSpec, encoder_version: str = ENCODER_VERSION,
                max_roughness: float = math.inf, action_map: str = ACTION_MAP) -> EncodedEpisodes:
    """Behaviour cloning data: per setting, ``draws`` objectives; under each, the top
    ``top_fraction`` of that setting's smooth ``runs`` (:func:`roughness` at most ``max_roughness``)
    by final balanced score (at least one), relabelled with that objective. The paper's "SFT on
    good trajectories", for any objective; a noisy schedule's stage-to-stage jumps are not imitated."""
    if not 0.0 < top_fraction <= 1.0:
        raise DatasetError(f"bc_top_fraction: must be in (0, 1], got {top_fraction}")
    parts: list[EncodedEpisodes] = []
    for setting_hash in sorted({r.setting_hash for r in runs}):
        group = [r for r in runs if r.setting_hash == setting_hash and roughness(r) <= max_roughness]
        if not group:  # nothing smooth enough in this setting (the caller decides if that is fatal)
            continue
        fields = group[0].trajectory.header.space.fields
        k = max(1, round(len(group) * top_fraction))
        chosen: dict[str, list[Objective]] = {}
        for _ in range(draws):
            objective = objective_range.sample(rng, fields)
            scores = np.array([final_score(r, objective) for r in group])
            for i in np.argsort(-scores, kind="stable")[:k]:
                chosen.setdefault(group[i].run_id, []).append(objective)
        by_id = {r.run_id: r for r in group}
        parts += [relabel(by_id[rid], objs, spec, encoder_version, action_map) for rid, objs in sorted(chosen.items())]
    return EncodedEpisodes.concat(parts)


def all_copies(runs: Sequence[TrainingRun], copies: int, objective_range: ObjectiveRange, rng: np.random.Generator,
               spec: ActionSpec, encoder_version: str = ENCODER_VERSION,
               action_map: str = ACTION_MAP) -> EncodedEpisodes:
    """Every run relabelled under ``copies`` objectives (offline RL data)."""
    return EncodedEpisodes.concat([relabel(r, draw_objectives(r, copies, objective_range, rng), spec, encoder_version,
                                           action_map) for r in runs])


def to_mdp_dataset(episodes: EncodedEpisodes) -> Any:
    """A d3rlpy ``MDPDataset`` (budget ends as timeouts, no terminals)."""
    from d3rlpy.constants import ActionSpace  # noqa: PLC0415
    from d3rlpy.dataset import MDPDataset  # noqa: PLC0415

    return MDPDataset(
        observations=episodes.observations,
        actions=episodes.actions,
        rewards=episodes.rewards.reshape(-1, 1),
        terminals=np.zeros(len(episodes.rewards), dtype=np.float32),
        timeouts=episodes.timeouts.astype(np.float32),
        # explicit: d3rlpy guesses "discrete" when every action happens to be a whole number (a
        # dataset of box-corner actions, e.g. the grid's end points)
        action_space=ActionSpace.CONTINUOUS,
        action_size=episodes.actions.shape[1],
    )
