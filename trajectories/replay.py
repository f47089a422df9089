"""Replay a raw history into (observation, action, reward) sequences with encoders passed in.

Stored trajectories are raw; the offline dataset is whatever encoding a learner chooses today.
:func:`replay` walks the history decision by decision: before decision t the encoder sees the
history up to ``feedback[t]`` (t mixtures), the action is the encoding of ``weights[t]``, and the
reward of stage t comes from the reward function over the whole history. The last transition is a
timeout (the budget ends), never a terminal. Building a d3rlpy dataset from these arrays is the
agent's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mixagent.trajectories.contract import ContractError, History, Trajectory, Weights
from mixagent.trajectories.encoding import encode, stage_rewards, weights_to_action

__all__ = ["Transitions", "replay", "replay_trajectory", "history_prefix"]

Encoder = Callable[[History], np.ndarray]
ActionEncoder = Callable[[Weights], np.ndarray]
RewardFn = Callable[[History], np.ndarray]


@dataclass(frozen=True)
class Transitions:
    """T decisions of one history: ``observations[t]`` before decision t, ``actions[t]``,
    ``rewards[t]``, ``next_observations[t]`` after stage t; ``timeouts[-1]`` is True."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)


def history_prefix(history: History, t: int) -> History:
    """The history as it was right after ``feedback[t]`` (before decision t), without re-validating."""
    return History.model_construct(
        space=history.space, feedback=list(history.feedback[: t + 1]), weights=list(history.weights[:t])
    )


def replay(history: History, encoder: Encoder, action: ActionEncoder, reward: RewardFn) -> Transitions:
    """Turn a finished ``history`` (``len(weights) == len(feedback) - 1``) into transitions."""
    n = history.stages
    if n < 1 or len(history.weights) != n:
        raise ContractError(
            f"history: replay needs completed stages, got {len(history.weights)} weights for "
            f"{len(history.feedback)} feedbacks"
        )
    obs = np.stack([np.asarray(encoder(history_prefix(history, t)), dtype=np.float32) for t in range(n + 1)])
    acts = np.stack([np.asarray(action(w), dtype=np.float32) for w in history.weights])
    rew = np.asarray(reward(history), dtype=np.float32).reshape(-1)
    if rew.shape != (n,):
        raise ContractError(f"reward: expected {n} rewards (one per stage), got shape {rew.shape}")
    timeouts = np.zeros(n, dtype=bool)
    timeouts[-1] = True
    return Transitions(obs[:-1], acts, rew, obs[1:], np.zeros(n, dtype=bool), timeouts)


def replay_trajectory(trajectory: Trajectory, encoder: Encoder | None = None) -> Transitions:
    """:func:`replay` with the header's action map and objective; ``encoder`` defaults to
    :func:`~mixagent.trajectories.encoding.encode` at the header's horizon, action level and objective."""
    hd = trajectory.header
    enc = encoder or (lambda h: encode(h, hd.horizon, hd.action, hd.objective))
    return replay(
        trajectory.history,
        enc,
        lambda w: weights_to_action(w, hd.space, hd.action),
        lambda h: stage_rewards(h, hd.objective),
    )
