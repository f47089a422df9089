"""The data contract every part of mixagent speaks: domains, weights, feedback, history, trajectories.

These types are the only way mixing data crosses a boundary (env -> trajectories -> agent ->
service). They hold *raw* numbers only; observation and reward encodings live in
:mod:`mixagent.trajectories.encoding` so they can change without regenerating data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SCHEMA_VERSION",
    "WEIGHT_FLOOR",
    "MAX_DOMAINS",
    "SOURCE_FIELD",
    "REBUILD_ATOL",
    "Level",
    "NAME_PATTERN",
    "Name",
    "ContractError",
    "Domain",
    "DomainSpace",
    "Weights",
    "Feedback",
    "History",
    "Objective",
    "ObjectiveRange",
    "ActionSpec",
    "TrajectoryHeader",
    "Trajectory",
    "stable_hash",
    "format_validation_errors",
]

SCHEMA_VERSION: Literal[1] = 1
"""Version of the on-disk/wire form of these types; bump on any incompatible change."""

WEIGHT_FLOOR = 1e-4
"""Smallest share any domain may get: keeps every domain observable and log-weights finite."""

MAX_DOMAINS = 256
"""The most domains a served run may have (The Pile has 22, SlimPajama 7; 256 leaves room for
clustered corpora), and so the most the domain-level agent is made to serve."""

SOURCE_FIELD = "source"
"""The field a base model was pre-trained on; every other field is a target field."""

Level = Literal["field", "domain"]
"""Where a policy acts: one share per field (spread over a field's domains by their priors) or one
weight per domain."""

REBUILD_ATOL = 1e-12
"""How far a mixture rebuilt on another CPU may lie from the stored one (absolute, per domain).
numpy's vectorised kernels differ between instruction sets (AVX-512 vs AVX2: 1 ulp, 2.8e-17, measured
on a schedule's weights), so weights are equal across machines only up to a few ulps; 1e-12 is far
above that and far below any difference a mixing decision could make."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
NAME_PATTERN = r"^[A-Za-z0-9_.\-]+$"
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
"""A domain, field, policy or trajectory name: 1-64 letters, digits, ``_``, ``.``, ``-``."""


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class _SpaceArrays:
    """A space's derived arrays, computed once. Compared by identity, so a space that has them
    still equals (by its fields) one that does not yet."""

    __slots__ = ("field_matrix", "field_priors", "priors", "within_field")

    def __init__(self, space: DomainSpace):
        p = np.array([d.prior for d in space.domains], dtype=np.float64)
        self.priors = _read_only(p / p.sum())
        fields = space.fields
        m = np.zeros((len(fields), space.size))
        for k, d in enumerate(space.domains):
            m[fields.index(d.field), k] = 1.0
        self.field_matrix = _read_only(m)
        self.field_priors = _read_only(m @ self.priors)
        self.within_field = _read_only(self.priors / (m.T @ self.field_priors))
        """Each domain's share of its field's prior (what spreads a field's share over its domains)."""


class ContractError(ValueError):
    """Raised when data does not satisfy the contract; the message names the field and value."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_validation_errors(errors: Iterable[Any], *, root: str = "request") -> tuple[str, list[dict[str, Any]]]:
    """One readable line and a JSON-safe list from pydantic's ``ValidationError.errors()``.

    The line names each field by its dotted location (``root`` when it has none), gives pydantic's
    message without its ``Value error, `` prefix, and the value received, shortened:
    ``body.steps: Input should be a valid integer (got 'x')``. At most five errors are spelled out.
    The one formatter of validation errors in mixagent (records, settings, cards, training configs,
    HTTP 422 bodies).
    """
    items = []
    lines = []
    for e in errors:
        loc = [str(x) if not isinstance(x, int) else x for x in e.get("loc", ())]
        where = ".".join(str(x) for x in loc) or root
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx", {}) or {}
            msg = f"malformed JSON: {ctx.get('error', msg)}"
            line = f"{where}: {msg}"
        elif "input" in e and e.get("type") not in ("missing", "value_error"):
            line = f"{where}: {msg} (got {_short(e['input'])})"
        else:
            line = f"{where}: {msg}"
        lines.append(line)
        items.append({"loc": [str(x) for x in loc], "msg": msg, "type": str(e.get("type", ""))})
    return "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else ""), items


def stable_hash(obj: Any) -> str:
    """A short sha256 of the canonical JSON of ``obj``: identical content gives an identical hash."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_hash_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _hash_default(value: Any) -> str:
    if isinstance(value, set | frozenset):  # str() of a set depends on PYTHONHASHSEED
        raise TypeError(f"stable_hash: a set has no stable order, got {value!r}; use a sorted list")
    return str(value)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Domain(_Frozen):
    """One data domain: its name, the field it belongs to, and its default share."""

    name: Name
    field: Name
    prior: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0


class DomainSpace(_Frozen):
    """Ordered domains grouped into fields. Domains keep the order they are given in; ``fields``
    lists the ``source`` field first, then the target fields."""

    domains: tuple[Domain, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> DomainSpace:
        names = [d.name for d in self.domains]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"domains: duplicate domain name(s) {dup}")
        return self

    @classmethod
    def from_fields(
        cls, fields: Mapping[str, Sequence[str]], priors: Mapping[str, float] | None = None
    ) -> DomainSpace:
        """Build from ``{field: [domain, ...]}``; priors default to 1 (equal shares)."""
        priors = priors or {}
        return cls(
            domains=tuple(
                Domain(name=d, field=f, prior=float(priors.get(d, 1.0)))
                for f, ds in fields.items()
                for d in ds
            )
        )

    # A space is frozen, and every decision asks it for its names, fields and matrices (the encoder,
    # the action map, validation): each is computed once per space object and handed out read-only.

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """Field names in order of first appearance (the source field first when present)."""
        seen = list(dict.fromkeys(d.field for d in self.domains))
        if SOURCE_FIELD in seen:
            seen.remove(SOURCE_FIELD)
            seen.insert(0, SOURCE_FIELD)
        return tuple(seen)

    @property
    def size(self) -> int:
        return len(self.domains)

    def priors(self) -> np.ndarray:
        """Domain priors normalised to sum 1 (a read-only array)."""
        return self._arrays.priors

    def field_matrix(self) -> np.ndarray:
        """0/1 matrix ``M[f, k]``: domain k belongs to field f (so ``M @ w`` gives field shares; read-only)."""
        return self._arrays.field_matrix

    def field_priors(self) -> np.ndarray:
        """Field shares of the priors (a read-only array)."""
        return self._arrays.field_priors

    def within_field_priors(self) -> np.ndarray:
        """Each domain's prior divided by its field's (``priors / (M.T @ field_priors)``, read-only)."""
        return self._arrays.within_field

    @cached_property
    def _arrays(self) -> _SpaceArrays:
        return _SpaceArrays(self)

    def domains_of(self, field: str) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains if d.field == field)

    def hash(self) -> str:
        return stable_hash(self.model_dump())


class Weights(_Frozen):
    """A mixture: one share per domain of a space, each finite and >= WEIGHT_FLOOR, summing to 1.

    Build with :meth:`from_raw`, which normalises once (this is the boundary); the constructor only
    checks.
    """

    values: tuple[FiniteFloat, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Weights:
        v = np.asarray(self.values)
        if (v < WEIGHT_FLOOR * (1 - 1e-6)).any():
            bad = int(np.argmin(v))
            raise ValueError(f"weights: values[{bad}]={v[bad]!r} is below the floor {WEIGHT_FLOOR}")
        if not math.isclose(float(v.sum()), 1.0, abs_tol=1e-6):
            raise ValueError(f"weights: values sum to {float(v.sum())!r}, not 1")
        return self

    @classmethod
    def from_raw(cls, raw: Sequence[float] | np.ndarray, floor: float = WEIGHT_FLOOR) -> Weights:
        """Normalise non-negative finite numbers into a mixture with every share >= ``floor``."""
        v = np.asarray(raw, dtype=np.float64).reshape(-1)
        if v.size == 0:
            raise ContractError("weights: empty vector")
        if not np.isfinite(v).all():
            raise ContractError(f"weights: non-finite value(s) in {v.tolist()}")
        if (v < 0).any() or v.sum() <= 0:
            raise ContractError(f"weights: need non-negative values with a positive sum, got {v.tolist()}")
        v = v / v.sum()
        if floor > 0:
            if floor * v.size >= 1:
                raise ContractError(f"weights: floor {floor} is too large for {v.size} domains")
            # Mix towards uniform just enough to lift the smallest share to the floor; this keeps
            # the sum at exactly 1 and the order of the shares.
            lo = v.min()
            if lo < floor:
                u = 1.0 / v.size
                a = (floor - lo) / (u - lo)
                v = (1 - a) * v + a * u
        values = tuple((v / v.sum()).tolist())
        if floor >= WEIGHT_FLOOR:
            # the constructor's checks hold by construction here (finite, normalised, >= the floor):
            # skipping them halves what the weights of a served decision cost
            return cls.model_construct(values=values)
        return cls(values=values)

    @classmethod
    def of(cls, space: DomainSpace, mapping: Mapping[str, float]) -> Weights:
        """Weights from ``{domain: share}``; every domain of the space must be named."""
        missing = [n for n in space.names if n not in mapping]
        extra = [n for n in mapping if n not in space.names]
        if missing or extra:
            raise ContractError(f"weights: missing domains {missing}, unknown domains {extra}")
        return cls.from_raw([mapping[n] for n in space.names])

    def as_array(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)

    def as_dict(self, space: DomainSpace) -> dict[str, float]:
        return dict(zip(space.names, self.values, strict=True))


class Feedback(_Frozen):
    """Held-out evaluation at a decision point.

    ``field_scores``: mean per-token log-likelihood (nats, higher is better) of each field's held-out
    continuations. ``domain_losses``: mean held-out cross-entropy (nats/token) per domain.
    """

    step: Annotated[int, Field(ge=0)]
    tokens_seen: Annotated[int, Field(ge=0)]
    field_scores: dict[Name, FiniteFloat]
    domain_losses: dict[Name, FiniteFloat]

    def check_space(self, space: DomainSpace) -> None:
        if set(self.field_scores) != set(space.fields):
            raise ContractError(
                f"feedback.field_scores: fields {sorted(self.field_scores)} do not match the "
                f"domain space's fields {sorted(space.fields)}"
            )
        if set(self.domain_losses) != set(space.names):
            raise ContractError(
                f"feedback.domain_losses: domains {sorted(self.domain_losses)} do not match the "
                f"domain space's domains {sorted(space.names)}"
            )


class History(BaseModel):
    """The raw record of one run: ``feedback[0]`` is the evaluation before any training;
    ``weights[i]`` is the mixture trained on between ``feedback[i]`` and ``feedback[i+1]``.

    So ``len(weights)`` is ``len(feedback) - 1`` between decisions, or ``len(feedback)`` while a
    stage is being trained.
    """

    model_config = ConfigDict(extra="forbid")

    space: DomainSpace
    feedback: list[Feedback] = Field(default_factory=list)
    weights: list[Weights] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> History:
        if len(self.weights) not in (len(self.feedback) - 1, len(self.feedback)) and self.feedback:
            raise ValueError(
                f"history: {len(self.weights)} weight vectors for {len(self.feedback)} feedbacks"
            )
        if not self.feedback and self.weights:
            raise ValueError("history: weights without any feedback")
        for i, w in enumerate(self.weights):
            self._check_weights(w, f"history.weights[{i}]")
        for i, fb in enumerate(self.feedback):
            try:
                fb.check_space(self.space)
            except ContractError as e:
                raise ValueError(f"history.feedback[{i}]: {e}") from None
        steps = [fb.step for fb in self.feedback]
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"history.feedback: steps must increase, got {steps}")
        return self

    def _check_weights(self, w: Weights, where: str) -> None:
        if len(w.values) != self.space.size:
            raise ContractError(f"{where}: {len(w.values)} values for {self.space.size} domains")

    @property
    def stages(self) -> int:
        """Number of completed stages (decisions whose result has been evaluated)."""
        return max(len(self.feedback) - 1, 0)

    def record_weights(self, w: Weights) -> None:
        """Record the mixture chosen for the next stage."""
        self._check_weights(w, "weights")
        if len(self.weights) != len(self.feedback) - 1:
            raise ContractError(
                f"history: cannot choose weights now ({len(self.weights)} weights for "
                f"{len(self.feedback)} feedbacks)"
            )
        self.weights.append(w)

    def record_feedback(self, fb: Feedback) -> None:
        """Record the evaluation that ends the current stage (or the initial evaluation)."""
        fb.check_space(self.space)
        if self.feedback and len(self.weights) != len(self.feedback):
            raise ContractError("history: feedback without weights for the stage it ends")
        if self.feedback and fb.step <= self.feedback[-1].step:
            raise ContractError(
                f"feedback.step: {fb.step} does not come after the previous step "
                f"{self.feedback[-1].step}"
            )
        self.feedback.append(fb)

    def field_scores(self) -> np.ndarray:
        """``[len(feedback), n_fields]`` array of field scores in ``space.fields`` order."""
        fields = self.space.fields
        return np.array([[fb.field_scores[f] for f in fields] for fb in self.feedback], dtype=float)

    def domain_losses(self) -> np.ndarray:
        names = self.space.names
        return np.array([[fb.domain_losses[n] for n in names] for fb in self.feedback], dtype=float)

    def weight_matrix(self) -> np.ndarray:
        return np.array([w.values for w in self.weights], dtype=float).reshape(-1, self.space.size)


class Objective(_Frozen):
    """What "better mixing" means: the balanced score ``B = sum_f c_f g_f - spread_penalty * std_f g_f``
    where ``g_f`` is field f's relative score improvement since the start and ``c_f`` the normalised
    field weights. Shared by every method compared in one evaluation."""

    spread_penalty: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.5
    """λ: how much the spread of the fields' gains costs (0: only their weighted mean counts)."""
    field_weights: dict[Name, Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None
    """``c_f`` per field, normalised to sum 1 (None: equal weights)."""

    def check_fields(self, fields: Sequence[str]) -> None:
        """Raise :class:`ContractError` when ``field_weights`` names a field not in ``fields``."""
        unknown = sorted(set(self.field_weights or {}) - set(fields))
        if unknown:
            raise ContractError(f"objective.field_weights: unknown field(s) {unknown} (the fields are {list(fields)})")

    def weight_vector(self, fields: Sequence[str]) -> np.ndarray:
        """The field weights ``c_f`` in ``fields`` order, normalised to sum 1 (equal without weights)."""
        if self.field_weights is None:
            c = np.ones(len(fields))
        else:
            self.check_fields(fields)
            c = np.array([self.field_weights.get(f, 0.0) for f in fields], dtype=float)
            if c.sum() <= 0:
                raise ContractError("objective.field_weights: no weight on any field of the space")
        return c / c.sum()


class ObjectiveRange(_Frozen):
    """The objectives a learned policy was trained for: spread penalty λ in
    ``[spread_penalty_min, spread_penalty_max]`` and field weights whose largest is at most
    ``max_weight_ratio`` times the smallest (every field keeps a weight, so target gains count)."""

    spread_penalty_min: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    """Smallest spread penalty λ trained on."""
    spread_penalty_max: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.9
    """Largest spread penalty λ trained on."""
    max_weight_ratio: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 3.0
    """Largest ratio between two fields' weights trained on (1: equal weights only)."""

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
        c = objective.weight_vector(space.fields)
        ratio = float(c.max() / c.min()) if c.min() > 0 else math.inf
        if ratio > self.max_weight_ratio * (1 + 1e-9):
            raise ContractError(f"objective.field_weights: {objective.field_weights} puts {ratio:.3g}x more weight on "
                                f"one field than another, outside the range {policy} was trained on "
                                f"({self.describe()})")

    def sample(self, rng: np.random.Generator, fields: Sequence[str]) -> Objective:
        """An objective drawn uniformly from the range: λ uniform, log field weights uniform within
        ``±log(max_weight_ratio)/2`` (so every pair stays within the ratio)."""
        lam = float(rng.uniform(self.spread_penalty_min, self.spread_penalty_max))
        half = math.log(self.max_weight_ratio) / 2
        w = np.exp(rng.uniform(-half, half, len(fields)))
        w = w / w.sum()
        weights = {f: round(float(x), 4) for f, x in zip(fields, w, strict=True)}
        return Objective(spread_penalty=round(lam, 4), field_weights=weights)


class ActionSpec(_Frozen):
    """How an action in ``[-1, 1]^A`` maps to weights: ``(1-epsilon)·softmax(beta·a) + epsilon·prior``.

    ``level="field"``: A = number of fields, domains within a field keep their prior proportions.
    ``level="domain"``: A = number of domains.
    """

    level: Level = "field"
    """One logit per field (spread over a field's domains by their priors) or one per domain."""
    beta: Annotated[float, Field(gt=0, le=20, allow_inf_nan=False)] = 3.0
    """Softmax temperature of the logits: the largest weight ratio is ``exp(2β)``."""
    epsilon: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.02
    """Share mixed in by the priors, so every domain keeps a floor."""


class TrajectoryHeader(_Frozen):
    """Everything needed to interpret and reproduce one trajectory."""

    schema_version: Literal[1] = SCHEMA_VERSION
    trajectory_id: Name
    setting_name: str
    setting_hash: str
    model: str
    space: DomainSpace
    objective: Objective
    action: ActionSpec
    horizon: Annotated[int, Field(ge=1)]
    interval: Annotated[int, Field(ge=1)]
    schedule: Name
    schedule_params: dict[str, Any] = Field(default_factory=dict)
    seed: int
    package_version: str

    @model_validator(mode="after")
    def _check(self) -> TrajectoryHeader:
        self.objective.check_fields(self.space.fields)
        return self


class Trajectory(BaseModel):
    """One finished (or in-progress) mixing run: header, raw history and wall times per stage."""

    model_config = ConfigDict(extra="forbid")

    header: TrajectoryHeader
    history: History
    stage_wall_s: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Trajectory:
        if self.history.space != self.header.space:
            raise ValueError("trajectory: history.space differs from header.space")
        if len(self.stage_wall_s) != self.history.stages:
            raise ValueError(
                f"trajectory.stage_wall_s: {len(self.stage_wall_s)} wall times for "
                f"{self.history.stages} stages"
            )
        return self
