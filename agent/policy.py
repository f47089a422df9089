"""Policy artifacts (a folder with a JSON card) and their loader; the guarded learned policy.

Everything that chooses a mixture implements :class:`~mixagent.trajectories.policy.MixingPolicy`
(re-exported here); the runner and the service use nothing else. A policy *artifact* is a folder
holding ``card.json`` (:class:`PolicyCard`) and, for learned policies, a network that loads without
unpickling (ONNX). Two kinds load:

* ``baseline``: the card names a built-in rule of :mod:`mixagent.agent.baselines` and its parameters
  (e.g. a tuned fixed target share), so a tuned baseline ships and hot-swaps like a learned policy;
* ``onnx``: a network ``obs -> action`` over a versioned encoder of
  :mod:`mixagent.trajectories.encoding`, run with onnxruntime (imported lazily; no torch).

A learned policy knows where it was trained (:class:`PolicyCard`): the objectives it saw
(:class:`ObjectiveRange`: a run asking for another one is refused, the message names the range),
the number of fields, and the range of every observation feature in its training data. A decision
whose observation falls outside those ranges, or a run whose domain space it cannot read, is served
by a named baseline instead (:class:`Decision` says which and why), never refused.

:func:`load_artifact` refuses an invalid folder with an :class:`ArtifactError` naming the file and the
problem, and probes the policy once on a synthetic history before handing it out.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixagent.trajectories.contract import (
    SOURCE_FIELD,
    ActionSpec,
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Name,
    Objective,
    Weights,
    format_validation_errors,
)
from mixagent.trajectories.encoding import (
    ENCODER_VERSION,
    ENCODER_VERSIONS,
    action_size,
    action_to_weights,
    encode,
    field_weight_vector,
    observation_size,
)
from mixagent.trajectories.policy import MixingPolicy, PolicyFactory

__all__ = [
    "MixingPolicy",
    "PolicyFactory",
    "PolicyCard",
    "ObjectiveRange",
    "TrainingData",
    "Decision",
    "ArtifactError",
    "CARD_FILE",
    "DEFAULT_FALLBACK",
    "OBS_MARGIN",
    "OnnxPolicy",
    "decide",
    "load_artifact",
    "probe_policy",
]

CARD_FILE = "card.json"
DEFAULT_FALLBACK = "uniform"
"""The baseline that serves a decision a learned policy cannot make (configurable)."""
OBS_MARGIN = 0.1
"""An observation feature may exceed its training range by this fraction of the range (or 0.05
where the range is a point) before the decision goes to the fallback."""

ParamValue = float | int | str | bool


class ArtifactError(ContractError):
    """A policy artifact that cannot be served; the message names the file and the problem."""


class ObjectiveRange(BaseModel):
    """The objectives a learned policy was trained for: spread penalty λ in
    ``[spread_penalty_min, spread_penalty_max]`` and field weights whose largest is at most
    ``max_weight_ratio`` times the smallest (every field keeps a weight, so target gains count)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spread_penalty_min: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    spread_penalty_max: float = Field(default=0.9, ge=0, allow_inf_nan=False)
    max_weight_ratio: float = Field(default=3.0, ge=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> ObjectiveRange:
        if self.spread_penalty_max < self.spread_penalty_min:
            raise ValueError("spread_penalty_max: below spread_penalty_min")
        return self

    def describe(self) -> str:
        return (f"spread_penalty in [{self.spread_penalty_min:g}, {self.spread_penalty_max:g}] and field "
                f"weights within a factor {self.max_weight_ratio:g} of each other")

    def check(self, objective: Objective, space: DomainSpace, policy: str = "the policy") -> None:
        """Raise :class:`ContractError` (naming the value and the range) for an objective outside."""
        lam = objective.spread_penalty
        if not self.spread_penalty_min - 1e-12 <= lam <= self.spread_penalty_max + 1e-12:
            raise ContractError(f"objective.spread_penalty: {lam:g} is outside the range {policy} was trained "
                                f"on ({self.describe()})")
        c = field_weight_vector(space, objective)
        ratio = float(c.max() / c.min()) if c.min() > 0 else math.inf
        if ratio > self.max_weight_ratio * (1 + 1e-9):
            raise ContractError(f"objective.field_weights: {objective.field_weights} puts {ratio:.3g}x more weight on "
                                f"one field than another, outside the range {policy} was trained on "
                                f"({self.describe()})")

    def sample(self, rng: np.random.Generator, fields: tuple[str, ...]) -> Objective:
        """An objective drawn uniformly from the range: λ uniform, log field weights uniform within
        ``±log(max_weight_ratio)/2`` (so every pair stays within the ratio)."""
        lam = float(rng.uniform(self.spread_penalty_min, self.spread_penalty_max))
        half = math.log(self.max_weight_ratio) / 2
        w = np.exp(rng.uniform(-half, half, len(fields)))
        w = w / w.sum()
        weights = {f: round(float(x), 4) for f, x in zip(fields, w, strict=True)}
        return Objective(spread_penalty=round(lam, 4), field_weights=weights)


class TrainingData(BaseModel):
    """One dataset folder a policy was trained on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str
    setting_name: str
    setting_hash: str
    trajectories: int
    content_hash: str
    """:func:`~mixagent.trajectories.contract.stable_hash` of the sorted record checksums."""


class PolicyCard(BaseModel):
    """``card.json`` of a policy artifact.

    ``fields`` names the fields (in ``DomainSpace.fields`` order) a field-level learned policy was
    trained on; it reads any space with as many fields and the source field first (names may
    differ). ``domains`` pins a domain-level policy's domains. ``observation_low``/``_high`` are the
    per-feature ranges seen in training, ``objective_range`` the objectives.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Name
    version: Name
    kind: Literal["baseline", "onnx"]
    description: str = ""
    rule: Name | None = None
    params: dict[Name, ParamValue] = Field(default_factory=dict, max_length=32)
    encoder_version: str = ENCODER_VERSION
    action: ActionSpec = Field(default_factory=ActionSpec)
    fields: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    domains: list[Name] | None = Field(default=None, min_length=1, max_length=1024)
    model_file: str | None = None
    algorithm: str | None = None
    objective_range: ObjectiveRange | None = None
    observation_low: list[float] | None = None
    observation_high: list[float] | None = None
    training_data: list[TrainingData] = Field(default_factory=list)
    training_data_hash: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: str = ""

    @model_validator(mode="after")
    def _check(self) -> PolicyCard:
        if self.kind == "baseline" and self.rule is None:
            raise ValueError("rule: a baseline card must name a rule")
        if self.encoder_version not in ENCODER_VERSIONS:
            raise ValueError(f"encoder_version: unknown encoder {self.encoder_version!r} "
                             f"(known: {list(ENCODER_VERSIONS)})")
        if self.kind == "onnx":
            if self.model_file is None:
                raise ValueError("model_file: an onnx card must name its model file")
            if self.action.level == "field" and self.fields is None:
                raise ValueError("fields: a field-level onnx card must list the fields it was trained on")
            if self.action.level == "domain" and self.domains is None:
                raise ValueError("domains: a domain-level onnx card must list its domains")
        if (self.observation_low is None) != (self.observation_high is None):
            raise ValueError("observation_high: give both observation_low and observation_high, or neither")
        if self.observation_low is not None and self.observation_high is not None:
            if len(self.observation_low) != len(self.observation_high):
                raise ValueError(f"observation_high: {len(self.observation_high)} values for "
                                 f"{len(self.observation_low)} in observation_low")
            if any(not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi)
                   for lo, hi in zip(self.observation_low, self.observation_high, strict=True)):
                raise ValueError("observation_low: every range needs finite low <= high")
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def space_problem(self, space: DomainSpace) -> str | None:
        """Why a run's domain space does not fit this policy, or None when it does."""
        if self.domains is not None:
            if list(space.names) != self.domains:
                return (f"policy {self.ref} was trained on domains {self.domains}, the run's space has domains "
                        f"{list(space.names)}")
            return None
        if self.fields is not None and self.kind == "onnx":
            if len(space.fields) != len(self.fields) or (SOURCE_FIELD in self.fields) != (SOURCE_FIELD in space.fields):
                return (f"policy {self.ref} reads {len(self.fields)} fields {self.fields}, the run's space has "
                        f"{len(space.fields)}: {list(space.fields)}")
        return None

    def check_space(self, space: DomainSpace) -> None:
        """Raise :class:`ContractError` when a run's domain space does not fit this policy."""
        problem = self.space_problem(space)
        if problem:
            raise ContractError(f"space: {problem}")


@dataclass(frozen=True)
class Decision:
    """A mixture and, when the learned policy could not make it, the baseline that did and why."""

    weights: Weights
    fallback: str | None = None
    """Name of the baseline that served this decision (None: the policy itself)."""
    reason: str | None = None


def decide(policy: MixingPolicy, space: DomainSpace, history: History) -> Decision:
    """The policy's decision after the newest feedback (before any: its initial mixture), with the
    fallback note of a guarded policy."""
    method = getattr(policy, "decide", None)
    if method is not None:
        result: Decision = method(space, history)
        return result
    if not history.feedback:
        return Decision(policy.initial_weights(space))
    return Decision(policy.next_weights(space, history))


def _first_feedback(space: DomainSpace) -> History:
    """A history holding only a start evaluation: every relative feature is 0 there, so it encodes
    exactly like any real run's start (the scores themselves never reach the observation)."""
    fb = Feedback(step=0, tokens_seen=0, field_scores=dict.fromkeys(space.fields, -1.0),
                  domain_losses=dict.fromkeys(space.names, 1.0))
    return History(space=space, feedback=[fb])


class OnnxPolicy:
    """A learned policy exported to ONNX: ``action = net(encode(history, horizon, objective))``
    mapped to weights by ``(1-ε)·softmax(β·a) + ε·prior`` (the card's :class:`ActionSpec`).

    Guarded: a run whose space it cannot read, or an observation outside the card's training ranges
    (beyond :data:`OBS_MARGIN`), gets the ``fallback`` baseline's decision, marked in
    :meth:`decide`. The first mixture (before any feedback) is what the network chooses at the
    start of a run, whose observation does not depend on the scores."""

    def __init__(self, session: Any, card: PolicyCard, horizon: int, objective: Objective,
                 fallback: MixingPolicy):
        self.name = card.name
        self.card = card
        self.horizon = horizon
        self.objective = objective
        self.fallback = fallback
        self._session = session
        self._input = session.get_inputs()[0].name
        if card.observation_low is not None and card.observation_high is not None:
            lo, hi = np.asarray(card.observation_low), np.asarray(card.observation_high)
            pad = np.where(hi > lo, OBS_MARGIN * (hi - lo), 0.05)
            self._lo: np.ndarray | None = lo - pad
            self._hi: np.ndarray | None = hi + pad
        else:
            self._lo = self._hi = None

    def observation(self, history: History) -> np.ndarray:
        return encode(history, self.horizon, self.card.action, self.objective, self.card.encoder_version)

    def act(self, obs: np.ndarray) -> np.ndarray:
        (action,) = self._session.run(None, {self._input: obs[None, :].astype(np.float32)})[:1]
        return np.asarray(action, dtype=np.float64)[0]

    def _out_of_range(self, obs: np.ndarray) -> str | None:
        if self._lo is None or self._hi is None:
            return None
        bad = np.flatnonzero((obs < self._lo) | (obs > self._hi))
        if bad.size == 0:
            return None
        k = int(bad[0])
        return (f"observation feature {k} = {obs[k]:.4g} is outside the range seen in training "
                f"[{self.card.observation_low[k]:.4g}, {self.card.observation_high[k]:.4g}]"  # type: ignore[index]
                + (f" ({bad.size} features)" if bad.size > 1 else ""))

    def decide(self, space: DomainSpace, history: History) -> Decision:
        problem = self.card.space_problem(space)
        if problem is None:
            obs = self.observation(history if history.feedback else _first_feedback(space))
            problem = self._out_of_range(obs)
            if problem is None:
                return Decision(action_to_weights(self.act(obs), space, self.card.action))
        weights = (self.fallback.next_weights(space, history) if history.feedback
                   else self.fallback.initial_weights(space))
        return Decision(weights, fallback=self.fallback.name, reason=problem)

    def initial_weights(self, space: DomainSpace) -> Weights:
        return self.decide(space, History(space=space)).weights

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        return self.decide(space, history).weights


def _probe_space(card: PolicyCard) -> DomainSpace:
    if card.domains is not None:
        fields = card.fields or ["source"]
        return DomainSpace.from_fields({fields[0]: card.domains})
    fields = card.fields or ["source", "target"]
    return DomainSpace.from_fields({f: [f"{f}_a", f"{f}_b"] for f in fields})


def probe_policy(policy: MixingPolicy, space: DomainSpace, stages: int = 3) -> None:
    """Run ``policy`` over a short synthetic history of ``space``; raise if it misbehaves."""
    w = policy.initial_weights(space)
    if len(w.values) != space.size:
        raise ContractError(f"initial_weights: {len(w.values)} values for {space.size} domains")
    history = History(space=space)
    for t in range(stages + 1):
        history.record_feedback(
            Feedback(
                step=t * 10,
                tokens_seen=t * 1000,
                field_scores={f: -3.0 + 0.1 * t * (i + 1) for i, f in enumerate(space.fields)},
                domain_losses={d: 3.0 - 0.05 * t * (k % 3) for k, d in enumerate(space.names)},
            )
        )
        w = policy.next_weights(space, history)
        if len(w.values) != space.size:
            raise ContractError(f"next_weights: {len(w.values)} values for {space.size} domains")
        history.record_weights(w)


def _load_onnx(folder: Path, card: PolicyCard, fallback: MixingPolicy) -> PolicyFactory:
    assert card.model_file is not None
    path = (folder / card.model_file).resolve()
    if folder.resolve() not in path.parents:
        raise ArtifactError(f"{folder / CARD_FILE}: model_file {card.model_file!r} lies outside the artifact")
    if not path.is_file():
        raise ArtifactError(f"{path}: model file named by the card does not exist")
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - service extra missing
        raise ArtifactError(f"{path}: onnxruntime is not installed (pip install mixagent[service])") from e
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own untyped errors for corrupt models
        raise ArtifactError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    space = _probe_space(card)
    n_obs = observation_size(space, card.action, card.encoder_version)
    n_act = action_size(space, card.action)
    if len(inputs) != 1 or inputs[0].shape[-1] != n_obs:
        got = [(i.name, i.shape) for i in inputs]
        raise ArtifactError(f"{path}: expected one input of width {n_obs} (encoder {card.encoder_version}, "
                            f"{len(space.fields)} fields), got {got}: the card does not match the network")
    if not outputs or outputs[0].shape[-1] != n_act:
        got = [(o.name, o.shape) for o in outputs]
        raise ArtifactError(f"{path}: expected an action output of width {n_act}, got {got}")
    if card.observation_low is not None and len(card.observation_low) != n_obs:
        raise ArtifactError(f"{folder / CARD_FILE}: observation_low has {len(card.observation_low)} values, the "
                            f"network reads {n_obs} features")
    objectives = card.objective_range

    def factory(horizon: int, objective: Objective | None = None) -> MixingPolicy:
        objective = objective or Objective()
        if objectives is not None:
            objectives.check(objective, _objective_space(card, objective), card.ref)
        return OnnxPolicy(session, card, horizon, objective, fallback)

    return factory


def _objective_space(card: PolicyCard, objective: Objective) -> DomainSpace:
    """A space whose fields are the ones the objective's field weights name (for the range check)."""
    fields = list(objective.field_weights or {}) or list(card.fields or [])
    if SOURCE_FIELD not in fields:
        fields = [SOURCE_FIELD, *fields]
    return DomainSpace.from_fields({f: [f"{f}_d"] for f in fields})


def load_artifact(folder: str | Path, fallback: str = DEFAULT_FALLBACK) -> tuple[PolicyCard, PolicyFactory]:
    """Read and check the artifact in ``folder``; return its card and a factory
    ``(horizon, objective) -> policy``. ``fallback`` names the baseline a learned policy hands a
    decision to when it cannot make it.

    Raises :class:`ArtifactError` (a message naming the file) for a missing or malformed card, an
    unknown encoder version, an unknown rule or parameter, a network whose input or output does not
    match the card, or a policy that fails on a synthetic history. The factory raises
    :class:`ContractError` for an objective outside the card's range (the message names the range).
    """
    from mixagent.agent.baselines import build_baseline  # noqa: PLC0415

    folder = Path(folder)
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise ArtifactError(f"{card_path}: no policy card (an artifact folder holds {CARD_FILE})")
    try:
        text = card_path.read_text()
        json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{card_path}: not valid JSON ({e})") from None
    try:
        card = PolicyCard.model_validate_json(text)
    except ValidationError as e:
        problems = format_validation_errors(e.errors(), root="card")[0]
        raise ArtifactError(f"{card_path}: invalid card: {problems}") from None
    if card.kind == "baseline":
        assert card.rule is not None
        try:
            policy = build_baseline(card.rule, card.params)
        except ContractError as e:
            raise ArtifactError(f"{card_path}: {e}") from None
        factory: PolicyFactory = lambda horizon, objective=None: policy  # noqa: E731
    else:
        try:
            fallback_policy = build_baseline(fallback)
        except ContractError as e:
            raise ArtifactError(f"fallback: {e}") from None
        factory = _load_onnx(folder, card, fallback_policy)
    try:
        probe_policy(factory(8, Objective()), _probe_space(card))
    except Exception as e:  # any failure on a synthetic history means it must not be served
        raise ArtifactError(f"{card_path}: the policy fails on a synthetic history ({type(e).__name__}: {e})") from None
    return card, factory
