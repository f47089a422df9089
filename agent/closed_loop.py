"""The closed-loop behaviour: a policy artifact as served, with exploration around its own choices.

The ``closed_loop`` family of ``mixagent.policies`` (``pyproject.toml``), what a closed-loop round
(:mod:`mixagent.agent.iterate`) runs: the agent of an artifact folder, guard and fallback included,
for the run's objective, and on top

* **logit noise** on every mixture, ``softmax(log shares + N(0, σ²))`` per field, drawn from the
  record's ``seed`` (:class:`~mixagent.trajectories.schedules.NoisyPolicy`, projected onto the
  action map's image like every behaviour mixture);
* an optional **perturbed start**: for the first ``start_stages`` stages its own choices are
  replayed shifted by one logit offset per field (``start_offset``), so that when it takes over its
  past-mixture features hold its own mixtures displaced.

Parameters (a record's ``schedule_params``): ``artifact`` (the folder as run), ``artifact_digest``
(:func:`~mixagent.agent.card.artifact_digest`; a build whose folder has another digest is refused),
``behaviour`` (``name@version``), ``sigma``, ``seed``, ``start_stages``, ``start_offset``; none
given: the bundled agent (``agent/artifacts/agent``) without noise or perturbed start.
:func:`record_policy` rebuilds a record's behaviour from the copy its round folder keeps.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.card import CARD_FILE, artifact_digest
from mixagent.agent.onnx_policy import load_artifact
from mixagent.trajectories.contract import ContractError, DomainSpace, History, Trajectory, TrajectoryHeader, Weights
from mixagent.trajectories.encoding import field_shares_to_weights, softmax
from mixagent.trajectories.policy import MixingPolicy, PolicyContext, PolicyFamily
from mixagent.trajectories.replay import history_prefix
from mixagent.trajectories.schedules import NoisyPolicy

__all__ = ["FAMILY", "BEHAVIOUR_DIR", "ClosedLoopPolicy", "CLOSED_LOOP", "record_policy", "rebuilt_mixtures"]

FAMILY = "closed_loop"
"""The ``schedule`` of every closed-loop record (a ``mixagent.policies`` family)."""
BEHAVIOUR_DIR = "behaviour"
"""Where a round folder keeps its copy of the behaviour artifact."""


# ----- the behaviour: the served agent with exploration ---------------------------------------------


@dataclass
class _OffsetStart:
    """The agent, its field shares shifted by the logit offset ``offset`` for the first ``stages``."""

    agent: MixingPolicy
    space: DomainSpace
    stages: int
    offset: np.ndarray
    name: str = "agent"

    def initial_weights(self, space: DomainSpace) -> Weights:
        return self._shift(self.agent.initial_weights(space), 0)

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        return self._shift(self.agent.next_weights(space, history), len(history.weights))

    def _shift(self, w: Weights, t: int) -> Weights:
        if t >= self.stages:
            return w
        shares = self.space.field_matrix() @ w.as_array()
        return Weights.from_raw(field_shares_to_weights(self.space, softmax(np.log(np.maximum(shares, 1e-12))
                                                                            + self.offset)))


class ClosedLoopPolicy(NoisyPolicy):
    """The served agent of a behaviour artifact with exploration: a perturbed start (its own choices
    shifted by ``start_offset`` for ``start_stages`` stages), and logit noise ``N(0, σ²)`` drawn from
    ``seed`` on every mixture (:class:`~mixagent.trajectories.schedules.NoisyPolicy`, projected like
    every behaviour mixture)."""

    def __init__(self, agent: MixingPolicy, ctx: PolicyContext, sigma: float, seed: int, start_stages: int = 0,
                 start_offset: Sequence[float] = ()):
        offset = np.asarray(start_offset, dtype=np.float64) if start_stages else np.zeros(len(ctx.space.fields))
        if offset.shape != (len(ctx.space.fields),):
            raise ContractError(f"schedule_params.start_offset: one value per field ({len(ctx.space.fields)}), "
                                f"got {list(start_offset)}")
        super().__init__(_OffsetStart(agent, ctx.space, start_stages, offset), ctx, "field", sigma, seed)
        self.name = FAMILY


_AGENTS: dict[tuple[str, str], Any] = {}
"""Loaded behaviour artifacts by (folder, digest): a worker loads each once for all its episodes."""


def _bundled_agent() -> Path:
    return Path(str(importlib.resources.files("mixagent.agent") / "artifacts" / "agent"))


def _build(ctx: PolicyContext, params: dict[str, Any], folder: Path | None = None) -> MixingPolicy:
    """Without parameters: the bundled agent, no noise, no perturbed start."""
    path = Path(folder) if folder is not None else Path(str(params.get("artifact") or _bundled_agent()))
    want = params.get("artifact_digest")
    key = (str(path.resolve()), str(want))
    if key not in _AGENTS:
        if not (path / CARD_FILE).is_file():
            raise ContractError(f"schedule_params.artifact: {path} holds no policy card")
        got = artifact_digest(path)
        if want is not None and got != want:
            raise ContractError(f"schedule_params.artifact_digest: {path} has digest {got}, the record names {want} "
                                "(the behaviour artifact changed)")
        _AGENTS[key] = load_artifact(path)[1]
    agent = _AGENTS[key](ctx.space, ctx.horizon, ctx.objective)
    return ClosedLoopPolicy(agent, ctx, float(params.get("sigma", 0.0)), int(params.get("seed", 0)),
                            int(params.get("start_stages", 0)), params.get("start_offset", ()))


CLOSED_LOOP = PolicyFamily(FAMILY, _build, None, "a policy artifact as served, with logit noise and perturbed starts")
"""The ``closed_loop`` entry of ``mixagent.policies``: parameters name the artifact and its digest."""


def record_policy(folder: str | Path, header: TrajectoryHeader) -> MixingPolicy:
    """The behaviour of a closed-loop record of ``folder``, rebuilt from the folder's own copy of the
    artifact (checked against the header's digest) for the record's objective."""
    if header.schedule != FAMILY:
        raise ContractError(f"schedule: {header.trajectory_id} is a {header.schedule!r} record, not {FAMILY!r}")
    ctx = PolicyContext(header.space, header.horizon, header.action, header.objective)
    return _build(ctx, header.schedule_params, Path(folder) / BEHAVIOUR_DIR)


def rebuilt_mixtures(folder: str | Path, trajectory: Trajectory) -> np.ndarray:
    """``[T, K]``: the mixtures the record's behaviour chooses, stage by stage, on the record's own
    history (the noise drawn from its recorded seed); equal to the stored ones up to float numerics."""
    hd, h = trajectory.header, trajectory.history
    policy = record_policy(folder, hd)
    return np.stack([policy.next_weights(hd.space, history_prefix(h, t)).as_array() for t in range(len(h.weights))])
