"""Train a mixing policy offline with d3rlpy: BC ("SFT"), CQL, IQL, TD3+BC, or an offline RL stage
(CQL, Cal-QL, ReBRAC) warm-started from behaviour cloning.

    mixagent agent train --data data/trajectories/math-tiny data/trajectories/code-tiny \\
        --algo bc+rebrac --out runs/policies/agent [--config train.yaml] [--warm-start runs/policies/bc-det]

One path from config to artifact (:func:`train`): load the dataset folders, split them by
trajectory into train and validation, relabel the training trajectories under objectives drawn
from :attr:`TrainConfig.objective_range` (``agent/dataset.py``), build the d3rlpy algorithm from
the config (:func:`make_algo`, the only place that does), fit it with a progress bar, score it on
the validation trajectories only (action error against the best validation runs, held-out TD
error, and Fitted Q Evaluation of the policy's return), and export it (``agent/export.py``).

``bc+cql`` is the Data Mixing Agent's recipe: behaviour cloning on the best trajectories under
each objective, then conservative Q-learning whose actor starts from the BC policy
(``copy_policy_from``) and whose conservative weight keeps it near the data. ``bc+calql`` and
``bc+rebrac`` are the same two stages with Cal-QL and ReBRAC (a deterministic actor, so its BC start
is deterministic too); the RL stage (``agent/rl_stage.py``) starts from BC exactly, and its drift
from BC is bounded (:attr:`TrainConfig.drift_bound`). ``+`` reads "then": the card's ``stage`` and
``warm_start`` say which stage made the network and what it started from.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixagent.agent.card import PolicyCard
from mixagent.agent.dataset import (
    DatasetError,
    EncodedEpisodes,
    TrainingRun,
    all_copies,
    best_copies,
    load_runs,
    policy_action_spec,
    split_runs,
    to_mdp_dataset,
)
from mixagent.agent.rl_stage import (
    RL_FROM_BC,
    RLStageResult,
    action_distance,
    critic_initial_value,
    fit_within_drift,
    load_warm_start,
    train_bc_start,
    warm_started,
)
from mixagent.trajectories.contract import Level, ObjectiveRange, format_validation_errors, stable_hash
from mixagent.trajectories.encoding import ENCODER_VERSION, action_size, layout

__all__ = ["Algo", "ALGOS", "TrainConfig", "TrainReport", "load_config", "make_algo", "refuse_evaluation_settings",
           "train"]

log = logging.getLogger(__name__)
DRIFT_ROWS = 2048
"""Training decision states (a seeded sample) the RL stage's drift from its BC start is measured on."""

Algo = Literal["bc", "cql", "bc+cql", "iql", "td3+bc", "bc+calql", "bc+rebrac"]
ALGOS: tuple[str, ...] = ("bc", "cql", "bc+cql", "iql", "td3+bc", "bc+calql", "bc+rebrac")
Learner = Literal["bc", "bc-deterministic", "cql", "calql", "rebrac", "iql", "td3+bc"]
"""What :func:`make_algo` builds: BC with a stochastic (tanh-Gaussian, CQL's actor) or a deterministic
(ReBRAC's actor) policy, or one offline RL learner."""


class TrainConfig(BaseModel):
    """Everything one training run depends on (``--config`` YAML/JSON overrides these defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = Field(default="agent", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    """Policy name in the card (what runs ask for)."""
    version: str = Field(default="v1", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    """Policy version in the card."""
    seed: int = Field(default=0, ge=0)
    """Seeds the split, the objective draws, d3rlpy and torch."""
    threads: int = Field(default=1, ge=1)
    """torch intra-op threads."""
    validation_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    """Share of each setting's trajectories held out (split by trajectory, before relabelling)."""
    objective_range: ObjectiveRange = Field(default_factory=lambda: ObjectiveRange(max_weight_ratio=2.0))
    """Objectives the policy is trained for (and the service accepts): spread penalty range and the
    largest ratio between two field weights."""
    relabel_copies: int = Field(default=16, ge=1, le=256)
    """Offline RL data: objectives each training trajectory is relabelled under (its own first)."""
    bc_objective_draws: int = Field(default=64, ge=1)
    """Behaviour cloning data: objectives drawn per setting; under each, the best trajectories."""
    bc_top_fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    """Behaviour cloning data: the top share of a setting's trajectories by return under each draw."""
    bc_max_roughness: float = Field(default=0.07, gt=0.0)
    """Behaviour cloning imitates only trajectories whose target share moves by at most this much
    per stage on average (constants, ramps, switches, slow walks): the per-stage jumps of random
    schedules carry nothing to copy, and noise between stages lowers B."""
    bc_history_noise: float = Field(default=0.0, ge=0.0)
    """Domain level only: the standard deviation of Gaussian noise added, in training batches, to the
    tokens' own-mixture features (``share_*``, ``field_share``: log shares relative to uniform). A
    behaviour-cloned network that sees its past mixtures exactly learns to continue them (persistence
    near 1, ``bench/forgetting_response.py``); noise there makes the rest of the observation carry the
    decision. 0 (default) trains as before."""
    level: Level = "field"
    """``field``: a d3rlpy policy over the fixed-width ``obs-v*`` observation of one number of fields;
    ``domain``: the domain-set network over ``dom-v1`` tokens (``agent/set_policy.py``, behaviour
    cloning only), one artifact for any domain space. ``encoder`` and ``hidden_units`` are ignored there."""
    action_map: Literal["action-v1", "action-v2"] = "action-v2"
    """How the field-level policy's action becomes a mixture (``trajectories/encoding.py``):
    ``action-v2`` (default) has ``F - 1`` free logits scaled by ``2β``, so behaviour data fill the
    action box that CQL's penalty samples; ``action-v1`` (``F`` shift-invariant logits, data on one
    line) reproduces policies trained before it. Recorded in the card."""
    encoder: Literal["mlp", "transformer"] = "mlp"
    """Network: d3rlpy's MLP, or a 2-layer Transformer over the windowed history (agent/networks.py)."""
    hidden_units: tuple[int, ...] = (128, 128)
    """MLP hidden layers."""
    transformer_d_model: int = Field(default=64, ge=8)
    """Transformer token width."""
    transformer_layers: int = Field(default=2, ge=1)
    """Transformer blocks."""
    batch_size: int = Field(default=256, ge=8)
    """Mini-batch size of every algorithm."""
    bc_steps: int = Field(default=4000, ge=1)
    """Gradient steps of behaviour cloning (``bc``, and the BC stage of ``bc+cql``)."""
    bc_learning_rate: float = Field(default=1e-3, gt=0)
    """Learning rate of behaviour cloning."""
    bc_policy: Literal["stochastic", "deterministic"] = "stochastic"
    """Plain ``bc``'s policy: ``stochastic`` (tanh-Gaussian, the warm start of ``bc+cql``/``bc+calql``)
    or ``deterministic`` (the warm start of ``bc+rebrac``). A ``bc+…`` run picks its RL actor's type itself."""
    rl_steps: int = Field(default=6000, ge=1)
    """Gradient steps of the offline RL algorithm (``cql``, ``bc+cql``'s CQL stage, ``iql``, ``td3+bc``)."""
    gamma: float = Field(default=0.99, gt=0.0, le=1.0)
    """Discount factor (a run has 16 decisions; returns telescope to the final balanced score)."""
    reward_scale: float = Field(default=100.0, gt=0)
    """Rewards (stage changes of B, ~1e-3) are multiplied by this for the critics."""
    actor_learning_rate: float = Field(default=1e-4, gt=0)
    """Actor learning rate (CQL, IQL, TD3+BC)."""
    critic_learning_rate: float = Field(default=3e-4, gt=0)
    """Critic learning rate (CQL, IQL, TD3+BC)."""
    conservative_weight: float = Field(default=5.0, ge=0)
    """CQL's weight of the conservative penalty (d3rlpy's default is 5.0)."""
    cql_alpha_learning_rate: float = Field(default=0.0, ge=0)
    """CQL's Lagrangian learning rate (0: a fixed conservative weight)."""
    iql_expectile: float = Field(default=0.7, gt=0.5, lt=1.0)
    """IQL's expectile."""
    iql_weight_temp: float = Field(default=3.0, gt=0)
    """IQL's inverse temperature of the advantage weights."""
    td3bc_alpha: float = Field(default=2.5, gt=0)
    """TD3+BC's trade-off between Q maximisation and behaviour cloning."""
    rebrac_actor_beta: float = Field(default=0.001, ge=0)
    """ReBRAC's actor penalty β1 on (a_data − π(s))² beside the normalised Q term (d3rlpy: 0.001;
    TD3+BC's α = 2.5 is β1 = 0.4)."""
    rebrac_critic_beta: float = Field(default=0.01, ge=0)
    """ReBRAC's critic penalty β2 on (a' − a'_data)² in the TD target (d3rlpy: 0.01)."""
    drift_bound: float | None = Field(default=0.1, gt=0)
    """RL stage after BC: the largest mean |action − BC start's action| (action units, over training
    decision states) its actor may reach; training stops at the first epoch past it and keeps the
    last actor within it (the BC start itself when the first epoch already drifts too far). None: unbounded."""
    critic_warmup_steps: int = Field(default=1000, ge=0)
    """RL stage after BC: gradient steps in which only the critic learns (the actor's learning rate is
    0) before ``rl_steps`` of both, so that the actor copied from BC first meets a trained critic."""
    warm_start: str | None = None
    """RL stage after BC: a BC artifact folder (``learner.d3`` + card, same action map, encoder and
    level) to start from; None trains the BC start in the same run."""
    fqe_steps: int = Field(default=3000, ge=0)
    """Fitted Q Evaluation steps on the validation trajectories (0: skip)."""
    steps_per_epoch: int = Field(default=1000, ge=1)
    """Gradient steps between evaluations (d3rlpy trains nothing when n_steps < n_steps_per_epoch)."""

    @model_validator(mode="after")
    def _noise_needs_tokens(self) -> TrainConfig:
        if self.bc_history_noise > 0 and self.level != "domain":
            raise ValueError(f"bc_history_noise: {self.bc_history_noise} perturbs the domain-set tokens; it needs "
                             f"level: domain (got level: {self.level})")
        return self


def load_config(path: str | Path | None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML/JSON file, then ``overrides``; errors name the field and value."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise DatasetError(f"--config: {path}: cannot read ({e})") from None
        if not isinstance(loaded, dict):
            raise DatasetError(f"--config: {path}: expected a mapping of TrainConfig fields")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        raise DatasetError(f"--config: {format_validation_errors(e.errors(), root='config')[0]}") from None


class TrainReport(BaseModel):
    """What a training run measured (also in the card's ``metrics`` and ``training.json``)."""

    algo: str
    config: TrainConfig
    train_trajectories: int
    validation_trajectories: int
    train_transitions: int
    seconds: dict[str, float]
    metrics: dict[str, float]
    card: PolicyCard


# ----- ALGO LOGIC: the one place d3rlpy algorithms are configured -----------------------------------


def _encoder(cfg: TrainConfig, n_fields: int) -> Any:
    if cfg.encoder == "transformer":
        from mixagent.agent.networks import WindowTransformerEncoderFactory  # noqa: PLC0415

        return WindowTransformerEncoderFactory(n_fields=n_fields, d_model=cfg.transformer_d_model,
                                               n_layers=cfg.transformer_layers)
    from d3rlpy.models.encoders import VectorEncoderFactory  # noqa: PLC0415

    return VectorEncoderFactory(hidden_units=list(cfg.hidden_units))


def make_algo(kind: Learner, cfg: TrainConfig, n_fields: int, n_actions: int, observation_scaler: Any = None) -> Any:
    """The d3rlpy algorithm ``kind`` for ``cfg`` (observations standardised, ``n_actions`` actions in
    [-1, 1]: the action size of ``cfg.action_map``, which the action scaler's bounds follow).
    ``observation_scaler``: a fitted scaler to use as it is (an RL stage takes its BC start's, so
    that the copied actor sees the same inputs); None fits one on the training data."""
    import d3rlpy  # noqa: PLC0415
    from d3rlpy.preprocessing import (  # noqa: PLC0415
        MinMaxActionScaler,
        MultiplyRewardScaler,
        StandardObservationScaler,
    )

    common: dict[str, Any] = {
        "batch_size": cfg.batch_size,
        "observation_scaler": observation_scaler or StandardObservationScaler(),
        "action_scaler": MinMaxActionScaler(minimum=-np.ones(n_actions), maximum=np.ones(n_actions)),
    }
    encoder = _encoder(cfg, n_fields)
    if kind in ("bc", "bc-deterministic"):
        # "bc": a Gaussian (tanh-squashed) policy, the actor type of CQL, so BC can warm-start it;
        # "bc-deterministic": ReBRAC's actor type (copy_policy_from refuses to cross the two)
        return d3rlpy.algos.BCConfig(learning_rate=cfg.bc_learning_rate, encoder_factory=encoder,
                                     policy_type="stochastic" if kind == "bc" else "deterministic",
                                     **common).create()
    rl: dict[str, Any] = {
        **common,
        "gamma": cfg.gamma,
        "reward_scaler": MultiplyRewardScaler(cfg.reward_scale),
        "actor_encoder_factory": encoder,
        "critic_encoder_factory": _encoder(cfg, n_fields),
        "actor_learning_rate": cfg.actor_learning_rate,
        "critic_learning_rate": cfg.critic_learning_rate,
    }
    if kind == "cql":
        return d3rlpy.algos.CQLConfig(conservative_weight=cfg.conservative_weight,
                                      alpha_learning_rate=cfg.cql_alpha_learning_rate, **rl).create()
    if kind == "calql":  # CQL whose penalty is floored at the behaviour's Monte-Carlo return
        return d3rlpy.algos.CalQLConfig(conservative_weight=cfg.conservative_weight,
                                        alpha_learning_rate=cfg.cql_alpha_learning_rate, **rl).create()
    if kind == "rebrac":
        return d3rlpy.algos.ReBRACConfig(actor_beta=cfg.rebrac_actor_beta, critic_beta=cfg.rebrac_critic_beta,
                                         **rl).create()
    if kind == "iql":
        return d3rlpy.algos.IQLConfig(expectile=cfg.iql_expectile, weight_temp=cfg.iql_weight_temp, **rl).create()
    return d3rlpy.algos.TD3PlusBCConfig(alpha=cfg.td3bc_alpha, **rl).create()


# ----- TRY NOT TO MODIFY: plumbing ----------------------------------------------------------------


def quiet_d3rlpy() -> None:
    """``import d3rlpy`` configures structlog to print every event: keep its warnings only."""
    import structlog  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def fit_learner(algo: Any, dataset: Any, steps: int, cfg: TrainConfig, evaluators: dict[str, Any], desc: str,
         progress: bool) -> dict[str, float]:
    """Fit ``algo`` for ``steps`` gradient steps (epochs of ``cfg.steps_per_epoch``); its last epoch's metrics."""
    from d3rlpy.logging import NoopAdapterFactory  # noqa: PLC0415

    history: dict[str, float] = {}
    per_epoch = min(cfg.steps_per_epoch, steps)
    for epoch, metrics in algo.fitter(dataset, n_steps=steps, n_steps_per_epoch=per_epoch, evaluators=evaluators,
                                      logger_adapter=NoopAdapterFactory(), show_progress=progress,
                                      experiment_name=desc):
        history = {k: float(v) for k, v in metrics.items()}
        log.info("%s epoch %d: %s", desc, epoch, {k: round(v, 5) for k, v in history.items()})
    return history


def _mean_action_error(algo: Any, episodes: EncodedEpisodes) -> float:
    rows = episodes.decision_rows
    pred = algo.predict(episodes.observations[rows])
    return float(np.abs(pred - episodes.actions[rows]).mean())


def _fqe_value(algo: Any, val: EncodedEpisodes, cfg: TrainConfig, progress: bool) -> float:
    """Fitted Q Evaluation on the validation episodes: the policy's estimated return (final balanced
    score, in B units) from the validation start states."""
    import d3rlpy  # noqa: PLC0415
    from d3rlpy.logging import NoopAdapterFactory  # noqa: PLC0415
    from d3rlpy.metrics import InitialStateValueEstimationEvaluator  # noqa: PLC0415
    from d3rlpy.preprocessing import MultiplyRewardScaler, StandardObservationScaler  # noqa: PLC0415

    n_actions = val.actions.shape[1]
    from d3rlpy.preprocessing import MinMaxActionScaler  # noqa: PLC0415

    fqe = d3rlpy.ope.FQE(algo=algo, config=d3rlpy.ope.FQEConfig(
        learning_rate=1e-4, gamma=cfg.gamma, batch_size=cfg.batch_size,
        observation_scaler=StandardObservationScaler(), reward_scaler=MultiplyRewardScaler(cfg.reward_scale),
        action_scaler=MinMaxActionScaler(minimum=-np.ones(n_actions), maximum=np.ones(n_actions))))
    dataset = to_mdp_dataset(val)
    fqe.fit(dataset, n_steps=cfg.fqe_steps, n_steps_per_epoch=cfg.fqe_steps, logger_adapter=NoopAdapterFactory(),
            show_progress=progress)
    value = InitialStateValueEstimationEvaluator()(fqe, dataset)
    return float(value) / cfg.reward_scale


def _observation_ranges(episodes: EncodedEpisodes, objectives: ObjectiveRange,
                        n_fields: int) -> tuple[list[float], list[float]]:
    """Per-feature ranges of the training observations (all training trajectories, relabelled),
    with the objective slice's λ and field weights widened to the whole trained objective range
    (their positions from :func:`~mixagent.trajectories.encoding.layout`)."""
    low, high = episodes.observations.min(axis=0).astype(float), episodes.observations.max(axis=0).astype(float)
    rows = layout(n_fields, version=ENCODER_VERSION)
    if list(rows.values())[-1].stop != len(low):
        raise DatasetError(f"observations: {len(low)} features, but the {ENCODER_VERSION} layout of {n_fields} "
                           f"fields has {list(rows.values())[-1].stop}")
    r = objectives.max_weight_ratio
    low[rows["spread_penalty"]] = objectives.spread_penalty_min
    high[rows["spread_penalty"]] = objectives.spread_penalty_max
    low[rows["field_weights"]] = 1 / (1 + (n_fields - 1) * r)
    high[rows["field_weights"]] = r / (r + n_fields - 1)
    return [float(x) for x in low], [float(x) for x in high]


def refuse_evaluation_settings(runs: Sequence[TrainingRun]) -> None:
    """No agent trains on the benchmark suite's settings (:data:`mixagent.agent.suite.SUITE_SETTINGS`):
    their runs exist only to judge methods (and as a searcher's priced proxy runs, which RegMix fits
    on), so a folder of them among the training data is refused, naming it."""
    from mixagent.agent.suite import SUITE_SETTINGS  # noqa: PLC0415 - the suite module imports the harness

    bad = sorted({r.trajectory.header.setting_name for r in runs} & set(SUITE_SETTINGS))
    if bad:
        folders = sorted({r.folder for r in runs if r.trajectory.header.setting_name in bad})
        raise DatasetError(f"--data: {', '.join(folders)} holds runs of {', '.join(bad)}, an evaluation-only suite "
                           f"setting (agent/suite.py): no agent trains on it")


def train(data: Sequence[str | Path], algo_name: str, out: str | Path, cfg: TrainConfig | None = None,
          progress: bool = True) -> TrainReport:
    """Train ``algo_name`` on the dataset folders ``data`` and write the policy artifact to ``out``
    (``card.json``, ``policy.onnx``, ``training.json`` and the d3rlpy learner ``learner.d3``); at
    ``cfg.level == "domain"`` the domain-set agent (:func:`~mixagent.agent.set_policy.train_set_policy`)."""
    cfg = cfg or TrainConfig()
    if algo_name not in ALGOS:
        raise DatasetError(f"--algo: must be one of {list(ALGOS)}, got {algo_name!r}")
    if cfg.warm_start is not None and algo_name not in RL_FROM_BC:
        raise DatasetError(f"--warm-start: only an RL stage after BC ({', '.join(RL_FROM_BC)}) starts from a BC "
                           f"artifact, got --algo {algo_name}")
    if cfg.level == "domain":  # plain torch: d3rlpy is not even imported
        if algo_name != "bc":
            raise DatasetError(f"--algo: the domain-level agent trains by behaviour cloning ('bc') only, got "
                               f"{algo_name!r}")
        from mixagent.agent.set_policy import train_set_policy  # noqa: PLC0415

        return train_set_policy(data, out, cfg, progress)
    import d3rlpy  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from mixagent.agent.export import write_artifact  # noqa: PLC0415

    quiet_d3rlpy()
    out = Path(out)
    t_all = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    d3rlpy.seed(cfg.seed)
    runs, training_data = load_runs(data)
    refuse_evaluation_settings(runs)
    train_runs, val_runs = split_runs(runs, cfg.validation_fraction, cfg.seed)
    if not train_runs:
        raise DatasetError("--data: no training trajectories after the validation split")
    spec = policy_action_spec(runs)
    fields = list(runs[0].trajectory.header.space.fields)
    n_f = len(fields)
    n_a = action_size(runs[0].trajectory.header.space, spec, cfg.action_map)
    amap = cfg.action_map
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
    seconds: dict[str, float] = {}
    metrics: dict[str, float] = {}

    t0 = time.perf_counter()
    bc_train = best_copies(train_runs, cfg.bc_objective_draws, cfg.bc_top_fraction, cfg.objective_range, rng, spec,
                           max_roughness=cfg.bc_max_roughness, action_map=amap)
    bc_val = None
    if val_runs:
        try:
            bc_val = best_copies(val_runs, max(cfg.bc_objective_draws // 4, 1), cfg.bc_top_fraction,
                                 cfg.objective_range, rng, spec, max_roughness=cfg.bc_max_roughness,
                                 action_map=amap)
        except DatasetError:  # no smooth validation trajectory: the action error is not measured
            bc_val = None
    # drawn for every algorithm (and in this order), so that all candidates trained with one seed are
    # validated on the same relabelled validation set and their FQE returns compare
    rl_train = all_copies(train_runs, cfg.relabel_copies, cfg.objective_range, rng, spec, action_map=amap)
    rl_val = (all_copies(val_runs, max(cfg.relabel_copies // 4, 1), cfg.objective_range, rng, spec, action_map=amap)
              if val_runs else None)
    seconds["dataset"] = time.perf_counter() - t0

    from d3rlpy.metrics import TDErrorEvaluator  # noqa: PLC0415

    learner: Any
    stage: RLStageResult | None = None
    evaluators = {"val_td_error": TDErrorEvaluator(episodes=to_mdp_dataset(rl_val).episodes)} if rl_val else {}
    if algo_name == "bc":
        t0 = time.perf_counter()
        learner = make_algo("bc" if cfg.bc_policy == "stochastic" else "bc-deterministic", cfg, n_f, n_a)
        fit_learner(learner, to_mdp_dataset(bc_train), cfg.bc_steps, cfg, {}, "bc", progress)
        seconds["bc"] = time.perf_counter() - t0
    elif algo_name in RL_FROM_BC:  # BC, then the RL learner from exactly that actor (agent/rl_stage.py)
        kind = RL_FROM_BC[algo_name]
        t0 = time.perf_counter()
        if cfg.warm_start is not None:
            start = load_warm_start(cfg.warm_start, kind, cfg, spec, n_f, rl_train.observations.shape[1])
        else:
            start = train_bc_start(kind, bc_train, cfg, n_f, n_a, progress)
            seconds["bc"] = time.perf_counter() - t0
        dataset = to_mdp_dataset(rl_train)
        train_states = rl_train.observations[rl_train.decision_rows]
        drift_obs = train_states[np.random.default_rng(cfg.seed).permutation(len(train_states))[:DRIFT_ROWS]]
        learner = warm_started(kind, cfg, start, dataset, n_f, n_a, drift_obs)
        t0 = time.perf_counter()
        stage = fit_within_drift(learner, start, dataset, cfg, drift_obs, evaluators, kind, progress)
        seconds[kind] = time.perf_counter() - t0
        metrics |= {"rl/steps_kept": float(stage.steps_kept), "rl/drift_train": stage.drift}
        if "val_td_error" in stage.history:
            metrics["val/td_error"] = stage.history["val_td_error"] / cfg.reward_scale**2
        if rl_val is not None:
            val_states = rl_val.observations[rl_val.decision_rows]
            metrics["val/action_distance_bc"] = action_distance(learner, start.learner, val_states)
            metrics["val/critic_initial_value"] = critic_initial_value(learner, rl_val, cfg.reward_scale)
    else:
        learner = make_algo(algo_name, cfg, n_f, n_a)  # type: ignore[arg-type]  # cql, iql or td3+bc: checked above
        dataset = to_mdp_dataset(rl_train)
        learner.build_with_dataset(dataset)
        t0 = time.perf_counter()
        last = fit_learner(learner, dataset, cfg.rl_steps, cfg, evaluators, algo_name, progress)
        seconds[algo_name] = time.perf_counter() - t0
        if "val_td_error" in last:
            metrics["val/td_error"] = last["val_td_error"] / cfg.reward_scale**2
    metrics["train/action_error_best"] = _mean_action_error(learner, bc_train)
    if bc_val is not None:
        metrics["val/action_error_best"] = _mean_action_error(learner, bc_val)
    if rl_val is not None and cfg.fqe_steps > 0:
        t0 = time.perf_counter()
        metrics["val/fqe_return"] = _fqe_value(learner, rl_val, cfg, progress)
        metrics["val/behaviour_return"] = float(rl_val.returns().mean())
        seconds["fqe"] = time.perf_counter() - t0

    low, high = _observation_ranges(rl_train, cfg.objective_range, n_f)
    card = PolicyCard(
        name=cfg.name, version=cfg.version, kind="onnx",
        description=f"{algo_name} ({cfg.encoder}) on {', '.join(d.setting_name for d in training_data)}",
        encoder_version=ENCODER_VERSION, action=spec, action_map=amap, fields=fields, model_file="policy.onnx",
        algorithm=f"{algo_name}/{cfg.encoder}", objective_range=cfg.objective_range,
        stage="bc" if algo_name == "bc" else "offline-rl",
        warm_start=stage.warm_start(cfg.drift_bound) if stage is not None else None,
        observation_low=low, observation_high=high,
        training_data=training_data,
        training_data_hash=stable_hash([d.content_hash for d in training_data]),
        metrics={**metrics, **{f"seconds/{k}": v for k, v in seconds.items()}},
    )
    check_obs = (rl_val or bc_val or bc_train).observations[:512]
    out.mkdir(parents=True, exist_ok=True)
    card = write_artifact(learner, out, card, check_obs)
    learner.save(str(out / "learner.d3"))
    seconds["total"] = time.perf_counter() - t_all
    report = TrainReport(algo=algo_name, config=cfg, train_trajectories=len(train_runs),
                         validation_trajectories=len(val_runs),
                         train_transitions=int((rl_train or bc_train).decision_rows.sum()),
                         seconds=seconds, metrics=metrics, card=card)
    (out / "training.json").write_text(json.dumps({
        **report.model_dump(mode="json", exclude={"card"}),
        "split": {"train": sorted(r.run_id for r in train_runs), "validation": sorted(r.run_id for r in val_runs)},
    }, indent=1, sort_keys=True) + "\n")
    return report
