"""``DataMixingEnv``: a gymnasium environment in which every step is real continual pre-training."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from mixagent.env.backend import CPTBackend, TokenSampler, resolve_device
from mixagent.env.base import build_backend
from mixagent.env.pools import cap_arrays
from mixagent.env.setting import Setting, load_setting
from mixagent.trajectories.contract import ContractError, History, Objective, Weights
from mixagent.trajectories.encoding import (
    OBS_BOUND,
    action_size,
    action_to_weights,
    balanced_scores,
    encode,
    observation_size,
)

if TYPE_CHECKING:
    from mixagent.env.trainer_side import TrainerSideMethod

__all__ = ["DataMixingEnv"]


class DataMixingEnv(gym.Env[np.ndarray, np.ndarray]):
    """Choose the domain mixture of a continual pre-training run, one interval at a time.

    ## Description
    A causal LM (the setting's base checkpoint, pre-trained on the *source* field) is continually
    pre-trained towards the *target* field(s). At each decision the agent picks domain weights; the
    model then trains ``cpt.interval`` AdamW steps on batches whose rows are drawn from the domains
    by those weights, and is evaluated on fixed held-out windows of every domain.

    ## Action Space
    ``Box(-1, 1, (A,), float32)``, A = number of fields (``action.level: field``, the default) or of
    domains (``action.level: domain``). The action maps to weights
    ``w = (1-ε)·softmax(β·a) + ε·prior`` (β = ``action.beta``, ε = ``action.epsilon``); at field level
    each field's share is split over its domains by their priors. :meth:`step_weights` takes a
    weight vector directly (behaviour schedules use it); :meth:`step_method` lets a trainer-side
    method (TANDEM, Aioli: ``env/trainer_side.py``) act inside the interval instead.

    ## Observation Space
    ``Box(-10, 10, (n,), float32)``: :func:`mixagent.trajectories.encoding.encode` of the raw
    history: per-field relative score gains since the start and their last change, the field shares
    of recent mixtures, progress t/T, a window of past steps and the objective (the table is in
    that module).

    ## Rewards
    ``r_t = B_{t+1} - B_t``, the change of the balanced score
    ``B = mean_f g_f - λ·std_f g_f`` (``objective``), so the return is the final balanced score.

    ## Starting State
    ``reset`` restores the base weights from memory (no disk read), a fresh optimizer, and evaluates
    once: that feedback is the reference every gain is measured against. ``options={"pool": caps}``
    trains the episode on a data pool (:mod:`mixagent.env.pools`: each domain's train split cut to
    the fraction ``caps[name]``, evaluation unchanged); without it the full train split is used.
    :attr:`pool` holds the caps in use (None: the full split).

    ## Episode End
    Never terminates; truncates after ``cpt.horizon`` decisions (the token budget is spent).

    ## Info
    ``t``, ``feedback`` (raw :class:`~mixagent.trajectories.contract.Feedback`), ``weights``,
    ``balanced_score``, ``train_loss``: deterministic for a seed. Wall times are not, so they live
    in :attr:`last_stage_seconds` (``{"train": s, "eval": s}``), not in ``info``. Under
    :meth:`step_method`, ``info["method"]`` is the method's log of the decision and
    :attr:`last_method_seconds` the model's and the method's CPU and wall seconds.
    :attr:`history` holds the raw history of the episode.

    ## Arguments
    ``setting``: a :class:`Setting`, a path to a YAML/TOML setting, or None for the default
    (``configs/math-tiny.yaml``). ``backend``: an existing :class:`CPTBackend` to reuse (several
    envs may not share one concurrently; it stays where it was placed, while a backend built here is
    placed on the setting's ``runtime.device``). ``cache_dir``: overrides ``$MIXAGENT_HOME``.

    ## Version History
    * v0: initial version (encoder ``obs-v1``); observations are now ``obs-v2`` (``obs-v1`` plus
      the objective slice: the setting's λ, field weights and ``∂B/∂g_f``).
    """

    # gymnasium.Env declares ``metadata`` as a plain attribute, so ClassVar would clash with it under
    # mypy; it is only read (check_env, wrappers), never mutated.
    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        setting: Setting | str | Path | None = None,
        backend: CPTBackend | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = False,
    ):
        super().__init__()
        self.setting = load_setting(setting)
        self.space = self.setting.space
        if backend is None:
            resolve_device(self.setting.runtime)  # a device this machine lacks is refused before any build
            backend, self.model_description = build_backend(
                self.setting, Path(cache_dir) if cache_dir else None, progress=progress
            )
            backend.place(self.setting.runtime)  # the setting's device (a CPU run: nothing moves)
        else:
            self.model_description = type(backend.model).__name__
        self.backend = backend
        self.horizon = self.setting.cpt.horizon
        a = action_size(self.space, self.setting.action)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(a,), dtype=np.float32)
        n = observation_size(self.space, self.setting.action)
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(n,), dtype=np.float32)
        self._history: History | None = None
        self._t = 0
        self.last_stage_seconds: dict[str, float] = {"train": 0.0, "eval": 0.0}
        self.last_method_seconds: dict[str, float] = {}
        self.pool: dict[str, float] | None = None
        self._full_sampler = backend.sampler

    # ----- gymnasium API -------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._use_pool((options or {}).get("pool"))
        self.backend.reset(int(self.np_random.integers(2**62)))
        t0 = time.perf_counter()
        feedback = self.backend.evaluate()
        self._history = History(space=self.space, feedback=[feedback])
        self._t = 0
        self.last_stage_seconds = {"train": 0.0, "eval": time.perf_counter() - t0}
        return self._get_obs(), self._get_info(train_loss=float("nan"), balanced=0.0)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        # ContractError is a ValueError; its message names the shape or the non-finite values.
        return self.step_weights(action_to_weights(action, self.space, self.setting.action))

    def step_weights(self, weights: Weights | np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Train one interval on ``weights`` (a :class:`Weights` or K raw shares) and evaluate."""
        self._check_running()
        if not isinstance(weights, Weights):
            raw = np.asarray(weights, dtype=np.float64)
            if raw.shape != (self.space.size,):
                raise ValueError(f"weights: expected {self.space.size} values, got shape {raw.shape}")
            try:
                weights = Weights.from_raw(raw)
            except ContractError as e:
                raise ValueError(str(e)) from None
        if len(weights.values) != self.space.size:
            raise ValueError(f"weights: expected {self.space.size} values, got {len(weights.values)}")
        chosen = weights

        def train() -> tuple[Weights, float, dict[str, Any]]:
            return chosen, self.backend.train(chosen.as_array(), self.setting.cpt.interval), {}

        return self._stage(train)

    def step_method(self, method: TrainerSideMethod,
                    objective: Objective | None = None) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Train one interval under a trainer-side ``method`` (``env/trainer_side.py``), which acts
        inside it through the backend's hook, and evaluate. The model takes exactly the interval's
        steps; the stage's weights are the interval's effective mixture; ``info["method"]`` is the
        method's log of the decision and :attr:`last_method_seconds` its overhead. The validation
        sample is weighted by ``objective`` (default: the setting's). Before the first interval of
        an episode the env calls ``method.reset(space)``."""
        self._check_running()
        if self._t == 0:
            method.reset(self.space)

        def train() -> tuple[Weights, float, dict[str, Any]]:
            report = self.backend.train_method(method, self.setting.cpt.interval, objective or self.setting.objective,
                                               t=self._t, horizon=self.horizon)
            self.last_method_seconds = report.seconds
            return report.weights, report.train_loss, {"method": report.log}

        return self._stage(train)

    def _check_running(self) -> None:
        if self._history is None:
            raise RuntimeError("DataMixingEnv: call reset() before step()")
        if self._t >= self.horizon:
            raise RuntimeError("DataMixingEnv: the episode is truncated; call reset()")

    def _stage(self, train: Callable[[], tuple[Weights, float, dict[str, Any]]],
               ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Train one interval (``train`` returns the weights trained on, the training loss and extra
        info), evaluate, record the stage."""
        assert self._history is not None
        t0 = time.perf_counter()
        try:
            weights, train_loss, extra = train()
            t1 = time.perf_counter()
            feedback = self.backend.evaluate()
        except BaseException:
            # The model is part-trained and the stage has no feedback: only reset() can go on.
            self._history = None
            raise
        t2 = time.perf_counter()
        self._history.record_weights(weights)
        self._history.record_feedback(feedback)
        self._t += 1
        b = balanced_scores(self._history, self.setting.objective)
        truncated = self._t >= self.horizon
        self.last_stage_seconds = {"train": t1 - t0, "eval": t2 - t1}
        info = self._get_info(train_loss=train_loss, balanced=float(b[-1])) | extra
        return self._get_obs(), float(b[-1] - b[-2]), False, truncated, info

    # ----- helpers -------------------------------------------------------------------------------
    def _use_pool(self, caps: dict[str, float] | None) -> None:
        """Point the backend's sampler at the pool ``caps`` (None: the full train split)."""
        if caps is None:
            if self.pool is not None:
                self.backend.sampler = self._full_sampler
            self.pool = None
            return
        full = self._full_sampler
        names = list(self.space.names)
        arrays = {n: full.tokens[o : o + s + full.seq_len] for n, o, s in zip(names, full.offsets, full.spans,
                                                                                strict=True)}
        pooled = cap_arrays(arrays, caps, full.seq_len + 1)
        self.backend.sampler = TokenSampler([pooled[n] for n in names], full.seq_len, names, device=full.device)
        self.pool = {n: float(caps.get(n, 1.0)) for n in names}

    @property
    def history(self) -> History:
        """The raw history of the current episode (a copy: the env keeps appending to its own)."""
        if self._history is None:
            raise RuntimeError("DataMixingEnv: no episode yet; call reset()")
        return self._history.model_copy(deep=True)

    def _get_obs(self) -> np.ndarray:
        assert self._history is not None
        return encode(self._history, self.horizon, self.setting.action, self.setting.objective)

    def _get_info(self, *, train_loss: float, balanced: float) -> dict[str, Any]:
        assert self._history is not None
        return {
            "t": self._t,
            "feedback": self._history.feedback[-1].model_dump(),
            "weights": self._history.weights[-1].as_dict(self.space) if self._history.weights else None,
            "balanced_score": balanced,
            "train_loss": train_loss,
        }
