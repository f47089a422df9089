"""The offline RL stage after behaviour cloning: CQL, Cal-QL or ReBRAC, started exactly at a BC actor
and kept within a bounded distance of it.

Three things the plain ``copy_policy_from`` of d3rlpy does not give, done here:

* **the same inputs**: an RL learner fits its own observation scaler on its own (larger) data, so
  the copied BC actor would see other standardised features and act differently from step 0. The
  RL learner takes its BC start's fitted scaler instead (:func:`warm_started` checks the two actors
  agree to 1e-5 before the first step);
* **the target actor**: TD3-style learners (ReBRAC) keep a target policy synced at construction; it is
  synced again after the copy, or the first critic targets come from a random actor;
* **a critic before the actor**: the copied actor meets a critic with random weights, whose action
  gradient would move it off BC in the first steps (every candidate of the first sweep left the 0.1
  bound within 100 steps); for ``critic_warmup_steps`` the actor's learning rate is 0, so the critic
  first learns the BC actor's values on the data, and only then does the actor move;
* **a drift bound**: after every epoch the mean |action − start's action| over training decision
  states is measured; past :attr:`~mixagent.agent.train.TrainConfig.drift_bound` training stops and
  the last actor within the bound is kept (:func:`fit_within_drift`).

The BC start is trained in the same run (:func:`train_bc_start`) or loaded from a BC artifact
(:func:`load_warm_start`, which refuses one whose action map, encoder, level or policy type differs,
naming both). Cal-QL's Monte-Carlo returns are d3rlpy's discounted rewards-to-go of each relabelled
episode (:func:`discounted_returns` computes the same sums for reports and tests).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from mixagent.agent.card import WarmStart, artifact_digest, read_card
from mixagent.agent.errors import ArtifactError, DatasetError
from mixagent.trajectories.encoding import ENCODER_VERSION

if TYPE_CHECKING:
    from mixagent.agent.dataset import EncodedEpisodes
    from mixagent.agent.train import Learner, TrainConfig
    from mixagent.trajectories.contract import ActionSpec

__all__ = ["RL_FROM_BC", "BCStart", "RLStageResult", "action_distance", "critic_initial_value",
           "discounted_returns", "fit_within_drift", "load_warm_start", "train_bc_start", "warm_started"]

log = logging.getLogger(__name__)

RL_FROM_BC: dict[str, Literal["cql", "calql", "rebrac"]] = {"bc+cql": "cql", "bc+calql": "calql",
                                                             "bc+rebrac": "rebrac"}
"""``--algo`` of an RL stage after BC -> its RL learner."""
START_POLICY: dict[str, Literal["stochastic", "deterministic"]] = {"cql": "stochastic", "calql": "stochastic",
                                                                  "rebrac": "deterministic"}
"""The BC policy head each RL learner's actor can start from (``copy_policy_from`` refuses to cross)."""
WARM_START_ATOL = 1e-5
LEARNER_FILE = "learner.d3"


@dataclass(frozen=True)
class BCStart:
    """A fitted d3rlpy BC learner and where it came from (``folder`` None: trained in this run)."""

    learner: Any
    policy_type: Literal["stochastic", "deterministic"]
    encoder: str
    folder: Path | None = None
    ref: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class RLStageResult:
    """The RL learner after the stage, what it started from, and what the drift bound did."""

    learner: Any
    start: BCStart
    steps_kept: int
    drift: float
    history: dict[str, float]

    def warm_start(self, drift_bound: float | None) -> WarmStart:
        return WarmStart(algorithm=f"bc/{self.start.encoder}", policy_type=self.start.policy_type,
                         ref=self.start.ref, digest=self.start.digest, drift_bound=drift_bound,
                         rl_steps=self.steps_kept)


def policy_type_of(learner: Any) -> Literal["stochastic", "deterministic"]:
    """``stochastic`` or ``deterministic``: the policy head of a d3rlpy BC learner."""
    kind = str(getattr(learner.config, "policy_type", ""))
    if kind not in ("stochastic", "deterministic"):
        raise DatasetError(f"warm start: {type(learner).__name__} is not a behaviour cloning learner")
    return "stochastic" if kind == "stochastic" else "deterministic"


def train_bc_start(kind: str, episodes: EncodedEpisodes, cfg: TrainConfig, n_fields: int, n_actions: int,
                   progress: bool) -> BCStart:
    """The BC actor the RL learner ``kind`` starts from, trained on ``episodes`` (the best copies)."""
    from mixagent.agent.dataset import to_mdp_dataset  # noqa: PLC0415
    from mixagent.agent.train import fit_learner, make_algo  # noqa: PLC0415

    policy = START_POLICY[kind]
    bc = make_algo("bc" if policy == "stochastic" else "bc-deterministic", cfg, n_fields, n_actions)
    fit_learner(bc, to_mdp_dataset(episodes), cfg.bc_steps, cfg, {}, f"bc ({policy})", progress)
    return BCStart(bc, policy, cfg.encoder)


def load_warm_start(folder: str | Path, kind: str, cfg: TrainConfig, spec: ActionSpec, n_fields: int,
                    n_features: int) -> BCStart:
    """The BC learner of the artifact ``folder`` as the start of the RL learner ``kind``; a
    :class:`DatasetError` naming the artifact's value and this run's when they differ (action map,
    encoder, level, observation encoder, β/ε, number of fields, policy type)."""
    import d3rlpy  # noqa: PLC0415

    folder = Path(folder)
    try:
        card = read_card(folder)
    except ArtifactError as e:
        raise DatasetError(f"warm_start: {e}") from None
    where = f"warm_start: {folder}"
    level = "domain-set" if card.domain_set else card.action.level
    if level != "field":
        raise DatasetError(f"{where} is a {level}-level policy; this run trains a field-level one")
    if card.encoder_version != ENCODER_VERSION:
        raise DatasetError(f"{where} reads observations {card.encoder_version}; this run encodes {ENCODER_VERSION}")
    if card.action_map != cfg.action_map:
        raise DatasetError(f"{where} has action map {card.action_map}; this run trains {cfg.action_map}")
    encoder = (card.algorithm or "").rpartition("/")[2]
    if encoder != cfg.encoder:
        raise DatasetError(f"{where} has encoder {encoder or '(none)'}; this run's config has {cfg.encoder}")
    if (card.action.beta, card.action.epsilon) != (spec.beta, spec.epsilon):
        raise DatasetError(f"{where} maps actions with beta={card.action.beta}, epsilon={card.action.epsilon}; "
                           f"this run's data with beta={spec.beta}, epsilon={spec.epsilon}")
    if card.fields is None or len(card.fields) != n_fields:
        raise DatasetError(f"{where} reads fields {card.fields}; this run's data has {n_fields} fields")
    if card.stage == "offline-rl" or not (card.algorithm or "").startswith("bc/"):
        raise DatasetError(f"{where} was made by {card.algorithm} ({card.stage}); a warm start is a bc artifact")
    path = folder / LEARNER_FILE
    if not path.is_file():
        raise DatasetError(f"{where} has no {LEARNER_FILE} (the d3rlpy learner that `agent train` writes)")
    learner = d3rlpy.load_learnable(str(path))
    policy = policy_type_of(learner)
    want = START_POLICY[kind]
    if policy != want:
        raise DatasetError(f"{where} is a {policy} BC policy; {kind} starts from a {want} one "
                           f"(train it with bc_policy: {want})")
    if tuple(learner.impl.observation_shape) != (n_features,):
        raise DatasetError(f"{where} reads {learner.impl.observation_shape[0]} features; this run's observations "
                           f"have {n_features}")
    return BCStart(learner, policy, encoder, folder, card.ref, artifact_digest(folder))


def predict(learner: Any, observations: np.ndarray) -> np.ndarray:
    return np.asarray(learner.predict(observations.astype(np.float32)), dtype=np.float64)


def action_distance(learner: Any, start: Any, observations: np.ndarray) -> float:
    """Mean |a − a_start| (per action unit) of two learners on ``observations``."""
    return float(np.abs(predict(learner, observations) - predict(start, observations)).mean())


def warm_started(kind: Learner, cfg: TrainConfig, start: BCStart, dataset: Any, n_fields: int, n_actions: int,
                 check_obs: np.ndarray) -> Any:
    """The RL learner ``kind``, built on ``dataset`` with its BC start's observation scaler, its actor
    (and a TD3-style target actor) copied from the start; a :class:`DatasetError` if the copy does not
    act like the start on ``check_obs`` (1e-5)."""
    from d3rlpy.torch_utility import hard_sync  # noqa: PLC0415

    from mixagent.agent.train import make_algo  # noqa: PLC0415

    scaler = copy.deepcopy(start.learner.config.observation_scaler)
    learner = make_algo(kind, cfg, n_fields, n_actions, observation_scaler=scaler)
    learner.build_with_dataset(dataset)
    learner.copy_policy_from(start.learner)
    target = getattr(learner.impl.modules, "targ_policy", None)
    if target is not None:
        hard_sync(target, learner.impl.policy)
    gap = float(np.abs(predict(learner, check_obs) - predict(start.learner, check_obs)).max())
    if gap > WARM_START_ATOL:
        raise DatasetError(f"warm start: the {kind} actor differs from its BC start by {gap:.2g} after the copy")
    return learner


def _set_actor_lr(learner: Any, lr: float) -> None:
    for group in learner.impl.modules.actor_optim.optim.param_groups:
        group["lr"] = lr


def fit_within_drift(learner: Any, start: BCStart, dataset: Any, cfg: TrainConfig, drift_obs: np.ndarray,
                     evaluators: dict[str, Any], desc: str, progress: bool) -> RLStageResult:
    """Fit ``learner``'s critic alone for ``cfg.critic_warmup_steps``, then critic and actor for
    ``cfg.rl_steps``, in epochs of ``cfg.steps_per_epoch``; after each epoch of the second phase
    measure the actor's mean action distance to the start on ``drift_obs`` and stop at the first
    epoch past ``cfg.drift_bound``, restoring the last actor within it."""
    from d3rlpy.logging import NoopAdapterFactory  # noqa: PLC0415

    bound = cfg.drift_bound
    kept = copy.deepcopy(learner.impl.policy.state_dict())
    steps_kept, drift, history = 0, 0.0, {}
    per_epoch = min(cfg.steps_per_epoch, cfg.rl_steps)
    warmup = -(-cfg.critic_warmup_steps // per_epoch) * per_epoch  # whole epochs
    if warmup:
        _set_actor_lr(learner, 0.0)  # Adam's step is lr-scaled: the actor stays exactly where it is
    for epoch, metrics in learner.fitter(dataset, n_steps=warmup + cfg.rl_steps, n_steps_per_epoch=per_epoch,
                                         evaluators=evaluators, logger_adapter=NoopAdapterFactory(),
                                         show_progress=progress, experiment_name=desc):
        done = epoch * per_epoch - warmup
        if done <= 0:
            if done == 0:
                _set_actor_lr(learner, cfg.actor_learning_rate)
            continue
        now = action_distance(learner, start.learner, drift_obs)
        log.info("%s epoch %d: drift %.4f, %s", desc, epoch, now, {k: round(float(v), 5) for k, v in metrics.items()})
        if bound is not None and now > bound:
            log.info("%s: drift %.4f past the bound %g after %d actor steps; keeping the actor of step %d", desc,
                     now, bound, done, steps_kept)
            learner.impl.policy.load_state_dict(kept)
            break
        history = {k: float(v) for k, v in metrics.items()}
        steps_kept, drift = done, now
        if bound is not None:
            kept = copy.deepcopy(learner.impl.policy.state_dict())
    return RLStageResult(learner, start, steps_kept, drift, history)


def critic_initial_value(learner: Any, episodes: EncodedEpisodes, reward_scale: float) -> float:
    """The learner's own critic at the episodes' first states and its actor's actions there,
    Q(s_0, π(s_0)), in B units (a critic-based estimate of the policy's return)."""
    starts = np.flatnonzero(np.r_[True, episodes.episode[1:] != episodes.episode[:-1]])
    obs = episodes.observations[starts]
    return float(np.mean(learner.predict_value(obs, learner.predict(obs)))) / reward_scale


def discounted_returns(episodes: EncodedEpisodes, gamma: float) -> np.ndarray:
    """Per row, the Monte-Carlo return Σ_k γ^k r_{t+k} to the end of its episode (the final timeout
    row's reward is 0): what Cal-QL floors its conservative penalty at."""
    out = np.zeros(len(episodes.rewards))
    for e in range(episodes.n_episodes):
        rows = np.flatnonzero(episodes.episode == e)
        acc = 0.0
        for i in rows[::-1]:
            acc = float(episodes.rewards[i]) + gamma * acc
            out[i] = acc
    return out
