"""Wire types: one family per resource; input (``*Create``/``*In``), storage (``models``) and output
(``*Public``) never share a type. Inputs are strict (no ``false`` as a number, no ``"1"`` as an int),
forbid unknown fields, and carry their bounds in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from mixagent.trajectories.contract import Domain, DomainSpace

__all__ = [
    "Name",
    "DomainIn",
    "ObjectiveIn",
    "RunCreate",
    "RunCreated",
    "FeedbackIn",
    "DecisionPublic",
    "DecisionRecord",
    "RunPublic",
    "RunSummary",
    "RunsPublic",
    "RunsQuery",
    "TrajectoriesQuery",
    "PolicyPublic",
    "PoliciesPublic",
    "PolicyLoad",
    "ErrorItem",
    "ErrorPublic",
    "HealthPublic",
    "ReadyPublic",
    "MAX_DOMAINS",
    "MAX_FIELDS",
    "MAX_STEP",
]

MAX_DOMAINS = 256
MAX_FIELDS = 32
MAX_STEP = 2**53
"""Steps and token counts stay exact in every JSON client (JavaScript's safe integer range)."""

def _integral(value: object) -> object:
    """JSON Schema counts ``3.0`` as an integer; refuse what is not a number at all (bools, strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Input should be an integer, not {type(value).__name__}")
    return value


def Int(ge: int, le: int) -> Any:  # noqa: N802 - a type factory
    """An integer in ``[ge, le]``: ``3`` and ``3.0`` pass, ``3.5``, ``true`` and ``"3"`` do not."""
    return Annotated[int, Field(ge=ge, le=le, strict=False), BeforeValidator(_integral)]


Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e9, le=1e9)]
Share = Annotated[float, Field(ge=0, le=1)]
Id = Annotated[str, Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----- runs ------------------------------------------------------------------------------------
class DomainIn(_In):
    """A data domain: its name, its field (``source`` or a target field) and its prior share."""

    name: Name
    field: Name
    prior: Annotated[float, Field(gt=0, le=1e12, allow_inf_nan=False)] = 1.0


class ObjectiveIn(_In):
    """How the run's result is scored in the exported trajectory (see ``Objective``)."""

    spread_penalty: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.5
    field_weights: dict[Name, Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]] | None = Field(
        default=None, min_length=1, max_length=MAX_FIELDS
    )


class RunCreate(_In):
    """A new run: its domain space, budget and policy."""

    domains: list[DomainIn] = Field(min_length=1, max_length=MAX_DOMAINS)
    horizon: Int(1, 100_000) = Field(
        description="Number of decisions after the first feedback (the run takes horizon+1 feedbacks)."
    )
    interval: Int(1, 10**9) = Field(description="Optimizer steps per decision.")
    policy: Name | None = Field(default=None, description="Policy name; the service default when omitted.")
    policy_version: Name | None = Field(default=None, description="Pin a version; the current one when omitted.")
    objective: ObjectiveIn | None = None
    setting_name: Annotated[str, Field(min_length=1, max_length=128)] = "served"
    model: Annotated[str, Field(min_length=1, max_length=256)] = "unknown"
    seed: Int(0, MAX_STEP) = 0

    @model_validator(mode="after")
    def _unique_names(self) -> RunCreate:
        try:  # the contract's own checks (unique names), so they are stated once
            self.space()
        except ValidationError as e:
            raise ValueError(str(e.errors()[0]["msg"]).removeprefix("Value error, ")) from None
        fields = {d.field for d in self.domains}
        if len(fields) > MAX_FIELDS:
            raise ValueError(f"domains: {len(fields)} fields, at most {MAX_FIELDS}")
        if self.objective is not None and self.objective.field_weights is not None:
            unknown = sorted(set(self.objective.field_weights) - fields)
            if unknown:
                raise ValueError(f"objective.field_weights: unknown field(s) {unknown}; fields are {sorted(fields)}")
        return self

    def space(self) -> DomainSpace:
        return DomainSpace(domains=tuple(Domain(name=d.name, field=d.field, prior=d.prior) for d in self.domains))


class RunCreated(_Out):
    """The run's id and the mixture to train on until the first decision."""

    run_id: str
    mixture_id: str = Field(description="Id of the initial mixture (send it back as feedback.mixture_id).")
    weights: dict[str, float]
    policy: str
    policy_version: str
    horizon: int
    interval: int
    created_at: float


class FeedbackIn(_In):
    """The evaluation at optimizer step ``step``: per-field scores and per-domain held-out losses.

    ``field_scores`` must name exactly the run's fields, ``domain_losses`` exactly its domains.
    ``mixture_id`` is the mixture the trainer actually trained on since its previous feedback
    (omitted: the service assumes its own last decision).
    """

    step: Int(0, MAX_STEP)
    tokens_seen: Int(0, MAX_STEP)
    field_scores: dict[Name, Finite] = Field(min_length=1, max_length=MAX_FIELDS)
    domain_losses: dict[Name, Finite] = Field(min_length=1, max_length=MAX_DOMAINS)
    mixture_id: Id | None = None


class DecisionPublic(_Out):
    """The mixture for the next stage."""

    run_id: str
    decision_id: str = Field(description="Id of this mixture (send it back as the next feedback's mixture_id).")
    step: int
    t: int = Field(description="Index of this feedback in the run (0 for the first).")
    weights: dict[str, float]
    policy: str
    policy_version: str
    done: bool = Field(description="True once the run has received its horizon+1 feedbacks.")
    replayed: bool = Field(description="True when this answers a retry of an already recorded step.")


class DecisionRecord(_Out):
    step: int
    tokens_seen: int
    field_scores: dict[str, float]
    domain_losses: dict[str, float]
    trained_on: str | None = Field(description="Mixture id the trainer reported training on, if any.")
    decision_id: str
    weights: dict[str, float]
    received_at: float


class DomainPublic(_Out):
    name: str
    field: str
    prior: float


class RunSummary(_Out):
    run_id: str
    created_at: float
    policy: str
    policy_version: str
    horizon: int
    interval: int
    decisions: int
    done: bool


class RunPublic(RunSummary):
    """A run with its full history: the initial mixture and every decision in order."""

    domains: list[DomainPublic]
    setting_name: str
    model: str
    seed: int
    initial_mixture_id: str
    initial_weights: dict[str, float]
    history: list[DecisionRecord]


class _Query(BaseModel):
    """Query strings are text: lax parsing of numbers, but unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")


class RunsQuery(_Query):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    offset: Annotated[int, Field(ge=0, le=2**31)] = 0


class TrajectoriesQuery(_Query):
    run_id: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=1000, description="Only these runs."
    )
    finished_only: bool = Field(default=False, description="Skip runs that still expect feedback.")


class RunsPublic(_Out):
    data: list[RunSummary]
    count: int


# ----- policies --------------------------------------------------------------------------------
class PolicyPublic(_Out):
    name: str
    version: str
    kind: Literal["builtin", "baseline", "onnx"]
    rule: str | None
    params: dict[str, float | int | str | bool]
    description: str
    current: bool = Field(description="New runs naming this policy without a version get this one.")
    default: bool = Field(description="Runs that name no policy get this one.")
    encoder_version: str | None
    loaded_at: float


class PoliciesPublic(_Out):
    data: list[PolicyPublic]
    count: int


class PolicyLoad(_In):
    """An artifact folder to load, relative to the service's ``policy_dir``."""

    path: Annotated[str, Field(min_length=1, max_length=1024)]


# ----- ops & errors ----------------------------------------------------------------------------
class ErrorItem(_Out):
    loc: list[str]
    msg: str
    type: str


class ErrorPublic(_Out):
    detail: str = Field(description="What was wrong, naming the field and the value.")
    errors: list[ErrorItem] | None = None


class HealthPublic(_Out):
    status: Literal["ok"]


class ReadyPublic(_Out):
    status: Literal["ready", "not ready"]
    default_policy: str
    policy_loaded: bool
    database: bool
    detail: str
