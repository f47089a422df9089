"""Wire types: one family per resource; input (``*Create``/``*In``), storage (``models``) and output
(``*Public``) never share a type. Inputs are strict (no ``false`` as a number, no ``"1"`` as an int),
forbid unknown fields, and carry their bounds in the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue

from mixagent.trajectories.bounds import ShareBounds
from mixagent.trajectories.contract import (
    MAX_DOMAINS,
    ContractError,
    Domain,
    DomainSpace,
    Name,
    Objective,
    format_validation_errors,
)

__all__ = [
    "Name",
    "DomainIn",
    "ObjectiveIn",
    "RunCreate",
    "IDEMPOTENCY_KEY_PATTERN",
    "RunCreated",
    "FeedbackIn",
    "DecisionPublic",
    "DecisionRecord",
    "ServedByPublic",
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
    "RunQuery",
    "MAX_DOMAINS",
    "MAX_FIELDS",
    "MAX_HORIZON",
    "MAX_RUN_VALUES",
    "MAX_PAGE",
    "MAX_STEP",
]

MAX_FIELDS = 32
MAX_HORIZON = 4096
"""Decisions of a run: a decision every 25 optimizer steps of a 100k-step run, with room to spare."""
MAX_RUN_VALUES = 2**18
"""``horizon × domains`` of a run (e.g. 1024 decisions × 256 domains, 4096 × 64): bounds the memory
one cached run takes (about 44 MB at the bound, :func:`mixagent.service.server.runs.estimate_bytes`)."""
MAX_QUERY_RUN_IDS = 192
"""``run_id`` parameters one query may repeat: 192 x ``run_id=<32 hex>&`` (40 bytes) is 7,680 bytes,
within the 8 KiB URL limit (``limits.MAX_URL_BYTES``) with room for the path."""
MAX_PAGE = 500
"""History entries in one ``GET /v1/runs/{id}`` answer (at 256 domains, about 8 MB)."""
MAX_STEP = 2**53
"""Steps and token counts stay exact in every JSON client (JavaScript's safe integer range)."""

def _integral(value: object) -> object:
    """JSON Schema counts ``3.0`` as an integer; refuse what is not a number at all (bools, strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"Input should be an integer, not {type(value).__name__}")
    return value


_INTEGRAL = BeforeValidator(_integral)
Step = Annotated[int, Field(ge=0, le=MAX_STEP, strict=False), _INTEGRAL]
"""A step, token count or seed in ``[0, 2^53]``: ``3`` and ``3.0`` pass, ``3.5``, ``true`` and ``"3"`` do not."""
Horizon = Annotated[int, Field(ge=1, le=MAX_HORIZON, strict=False), _INTEGRAL]
Interval = Annotated[int, Field(ge=1, le=10**9, strict=False), _INTEGRAL]


Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e9, le=1e9)]
Share = Annotated[float, Field(ge=0, le=1)]
Id = Annotated[str, Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]


class _ClosedKeys:
    """Say ``additionalProperties: false`` next to a dict's key pattern, so keys the server refuses
    are schema-invalid too (pydantic publishes the pattern alone)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["additionalProperties"] = False
        return schema


# ``{name: value}`` maps with 1 to N keys, each a :data:`Name`.
FieldWeights = Annotated[dict[Name, Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]],
                         Field(min_length=1, max_length=MAX_FIELDS), _ClosedKeys()]
FieldScores = Annotated[dict[Name, Finite], Field(min_length=1, max_length=MAX_FIELDS), _ClosedKeys()]
DomainLosses = Annotated[dict[Name, Finite], Field(min_length=1, max_length=MAX_DOMAINS), _ClosedKeys()]
InitialWeights = Annotated[dict[Name, Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]],
                           Field(min_length=1, max_length=MAX_DOMAINS), _ClosedKeys()]
IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
"""An ``Idempotency-Key`` header: 1-128 characters of ``A-Z a-z 0-9 _ . : -`` (a UUID fits)."""


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
    min_share: Annotated[float | None, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        default=None, description="The smallest share any decision of the run may give this domain (every "
        "policy's mixture is projected onto the bounds; bounds no mixture meets together are a 422).")
    max_share: Annotated[float | None, Field(ge=0, le=1, allow_inf_nan=False)] = Field(
        default=None, description="The largest share any decision of the run may give this domain.")


class ObjectiveIn(_In):
    """What the run optimises: the balanced score ``B = Σ_f c_f g_f − λ·spread_f g_f`` (see
    ``Objective``). A learned policy reads it (it chooses other mixtures for other objectives) and
    refuses one outside the range it was trained on (422 naming the range, e.g. λ in [0, 0.9]); the
    built-in rules ignore it. It is stored with the run and scores its exported trajectory."""

    spread_penalty: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.5
    field_weights: FieldWeights | None = Field(
        default=None, description="Weight of each field in the balanced score (default: equal)."
    )


class RunCreate(_In):
    """A new run: its domain space, budget and policy."""

    domains: list[DomainIn] = Field(min_length=1, max_length=MAX_DOMAINS)
    horizon: Horizon = Field(
        description="Number of decisions after the first feedback: it counts feedbacks, not optimizer "
        f"steps (the run takes horizon+1 feedbacks). horizon × domains is at most {MAX_RUN_VALUES}."
    )
    interval: Interval = Field(description="Optimizer steps per decision.")
    policy: Name | None = Field(default=None, description="Policy name; the service default when omitted.")
    policy_version: Name | None = Field(default=None, description="Pin a version; the current one when omitted.")
    objective: ObjectiveIn | None = None
    setting_name: Annotated[str, Field(min_length=1, max_length=128)] = "served"
    model: Annotated[str, Field(min_length=1, max_length=256)] = "unknown"
    seed: Step = 0
    initial_weights: InitialWeights | None = Field(
        default=None,
        description="The mixture the trainer has already trained on before creating the run (a trainer that "
        "started while the service was unreachable), domain name -> non-negative share (renormalised): it "
        "becomes the initial mixture, and served_by says `trainer`. Omitted: the policy's choice.")

    @model_validator(mode="after")
    def _check_run(self) -> RunCreate:
        try:  # the contract's own checks (unique names), so they are stated once
            space = self.space()
        except ValidationError as e:
            raise ValueError(format_validation_errors(e.errors(), root="domains")[0]) from None
        if self.horizon * len(self.domains) > MAX_RUN_VALUES:
            raise ValueError(
                f"horizon: {self.horizon} decisions x {len(self.domains)} domains = "
                f"{self.horizon * len(self.domains)} values; a run holds at most {MAX_RUN_VALUES} "
                "(horizon x domains)"
            )
        fields = {d.field for d in self.domains}
        if len(fields) > MAX_FIELDS:
            raise ValueError(f"domains: {len(fields)} fields, at most {MAX_FIELDS}")
        if self.objective is not None:
            Objective.model_validate(self.objective.model_dump()).check_fields(space.fields)
        try:
            self.bounds()
        except ContractError as e:
            raise ValueError(f"domains: {e}") from None
        if self.initial_weights is not None:
            missing = sorted(set(space.names) - set(self.initial_weights))
            unknown = sorted(set(self.initial_weights) - set(space.names))
            if missing or unknown:
                raise ValueError(f"initial_weights: missing {missing}, unknown {unknown} (the run's domains are "
                                 f"{list(space.names)})")
            if sum(self.initial_weights.values()) <= 0:
                raise ValueError("initial_weights: the shares sum to 0")
        return self

    def space(self) -> DomainSpace:
        return DomainSpace(domains=tuple(Domain(name=d.name, field=d.field, prior=d.prior) for d in self.domains))

    def bounds(self) -> ShareBounds | None:
        """The run's per-domain share bounds (None: none set); ContractError naming contradictory ones."""
        low = {d.name: d.min_share for d in self.domains if d.min_share is not None}
        high = {d.name: d.max_share for d in self.domains if d.max_share is not None}
        return ShareBounds(self.space(), low, high) if low or high else None


class ServedByPublic(_Out):
    """Who made a decision. ``fallback`` is null when the run's policy did; otherwise it names the
    baseline (``MIXAGENT_FALLBACK_POLICY``, ``uniform`` by default) that served it because the
    learned policy could not, and ``reason`` says why: the run's domains do not fit the policy
    (e.g. three fields for a policy trained on two: every decision of the run), or this
    observation lies outside the ranges seen in training (this decision only)."""

    policy: str = Field(description="The run's policy and version, name@version.")
    fallback: str | None = Field(
        description="The baseline that served this decision instead; null: the policy itself; `trainer` (initial "
        "mixture only): the trainer's own initial_weights, given at creation.")
    reason: str | None = Field(description="Why the fallback served it; null when the policy did.")


class RunCreated(_Out):
    """The run's id and the mixture to train on until the first decision.

    These initial weights are the policy's choice before it has seen any evaluation (for the
    built-in policies: the domains' priors, or the fixed target share). The step-0 feedback (the
    evaluation before training) is the reference for every later one; its answer is the first
    decision, whose weights replace these."""

    run_id: str
    mixture_id: str = Field(
        description="Id of the initial mixture. Send it back as the step-0 feedback's mixture_id (or omit it "
        "there); after that, send the decision_id of the mixture you trained on.")
    weights: dict[str, float] = Field(
        description="The initial mixture (domain name -> share, summing to 1): what to train on if you train "
        "before the step-0 evaluation; most trainers evaluate at step 0 first and train on its answer.")
    policy: str
    policy_version: str
    served_by: ServedByPublic = Field(description="Who chose the initial mixture.")
    horizon: int
    interval: int
    created_at: float
    replayed: bool = Field(
        default=False,
        description="True when this answers a retry (same Idempotency-Key, same body): the run the first attempt "
        "created, not a new one.")


class FeedbackIn(_In):
    """The evaluation at optimizer step ``step``: per-field scores and per-domain held-out losses.

    ``field_scores`` must name exactly the run's fields, ``domain_losses`` exactly its domains.
    ``mixture_id`` is the mixture the trainer actually trained on since its previous feedback
    (omitted: the service assumes its own last decision).
    """

    step: Step = Field(description="Optimizer step of this evaluation; strictly increases.")
    tokens_seen: Step = Field(
        description="Training tokens since the start of the run; never decreases (409 otherwise).")
    field_scores: FieldScores = Field(
        description="Per field: the mean per-token log-likelihood of its held-out continuations, i.e. of the "
        "second half of each held-out window given the first half, averaged per domain and then over the "
        "field's domains (nats/token; higher is better).")
    domain_losses: DomainLosses = Field(
        description="Per domain: mean held-out cross-entropy (nats/token).")
    mixture_id: Id | None = Field(
        default=None,
        description="The mixture trained on since the previous feedback (a decision_id, or the run's initial "
        "mixture_id); omitted: the service's last decision.")


class DecisionPublic(_Out):
    """The mixture for the next stage: train on ``weights`` until the next evaluation, then send
    ``decision_id`` back as that feedback's ``mixture_id``."""

    run_id: str
    decision_id: str = Field(description="Id of this mixture (send it back as the next feedback's mixture_id).")
    step: int
    t: int = Field(description="Index of this feedback in the run (0 for the first).")
    weights: dict[str, float]
    policy: str
    policy_version: str
    served_by: ServedByPublic = Field(description="Who chose these weights (the same on a retry).")
    done: bool = Field(description="True once the run has received its horizon+1 feedbacks.")
    replayed: bool = Field(description="True when this answers a retry of an already recorded step.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What makes this run's history less useful without making it wrong (accepted, not an error): "
        "a first feedback after step 0 (it becomes the reference, so gains are not measured from the start), "
        "tokens_seen still 0 after step 0. Computed from the feedback: a retry answers with the same.")


class DecisionRecord(_Out):
    step: int
    tokens_seen: int
    field_scores: dict[str, float]
    domain_losses: dict[str, float]
    trained_on: str | None = Field(description="Mixture id the trainer reported training on, if any.")
    decision_id: str
    weights: dict[str, float]
    served_by: ServedByPublic
    received_at: float


class DomainPublic(_Out):
    name: str
    field: str
    prior: float
    min_share: float | None = None
    max_share: float | None = None


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
    """A run with one page of its history: the initial mixture and decisions ``offset`` to
    ``offset + len(history) - 1`` in order (``decisions`` counts them all)."""

    domains: list[DomainPublic]
    setting_name: str
    model: str
    seed: int
    initial_mixture_id: str
    initial_weights: dict[str, float]
    initial_served_by: ServedByPublic
    offset: int = Field(description="Index (t) of the first history entry of this page.")
    next_offset: int | None = Field(description="The offset of the next page; null on the last page.")
    history: list[DecisionRecord]


class _Query(BaseModel):
    """Query strings are text: lax parsing of numbers, but unknown parameters are refused."""

    model_config = ConfigDict(extra="forbid")


class RunsQuery(_Query):
    limit: Annotated[int, Field(ge=1, le=1000)] = 100
    offset: Annotated[int, Field(ge=0, le=2**31)] = 0


class RunQuery(_Query):
    """One page of a run's history."""

    offset: Annotated[int, Field(ge=0, le=MAX_HORIZON + 1, description="First history entry (t).")] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="History entries at most.")] = 100


class TrajectoriesQuery(_Query):
    run_id: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=MAX_QUERY_RUN_IDS,
        description=f"Only these runs (at most {MAX_QUERY_RUN_IDS}: what fits the 8 KiB URL limit)."
    )
    finished_only: bool = Field(default=False, description="Skip runs that still expect feedback.")


class RunsPublic(_Out):
    data: list[RunSummary]
    count: int


# ----- policies --------------------------------------------------------------------------------
class PolicyPublic(_Out):
    name: str
    version: str
    kind: Literal["builtin", "baseline", "onnx", "mixture"]
    rule: str | None
    params: dict[str, float | int | str | bool]
    description: str
    current: bool = Field(description="New runs naming this policy without a version get this one (on every "
                          "replica: the shared database says which version is current).")
    default: bool = Field(description="Runs that name no policy get this one.")
    bundled: bool = Field(description="Shipped inside the package (agent/artifacts).")
    encoder_version: str | None
    objective_range: str | None = Field(description="The objectives a learned policy was trained on; others are a 422.")
    fallback: str | None = Field(description="The baseline serving what this learned policy cannot (onnx only).")
    loaded_at: float


class PoliciesPublic(_Out):
    data: list[PolicyPublic]
    count: int
    errors: list[str] = Field(default_factory=list, description="Artifacts recorded in the database (loaded "
                              "through another replica or before a restart) that this replica cannot read.")


MAX_PATH_PART_BYTES = 255
"""A file name's limit on Linux and macOS (``NAME_MAX``)."""


class PolicyLoad(_In):
    """An artifact folder to load, relative to the service's ``policy_dir``."""

    path: Annotated[str, Field(
        min_length=1, max_length=1024, json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f]+$"},
        description="Folder relative to policy_dir: no control characters, each part at most 255 bytes.")]

    @field_validator("path")
    @classmethod
    def _a_plain_relative_path(cls, path: str) -> str:
        bad = sorted({f"U+{ord(c):04X}" for c in path if ord(c) < 0x20 or ord(c) == 0x7F})
        if bad:
            raise ValueError(f"control character(s) {bad} in {path!r}")
        for part in path.replace("\\", "/").split("/"):
            if len(part.encode()) > MAX_PATH_PART_BYTES:
                raise ValueError(
                    f"the part {part[:40]!r}... is {len(part.encode())} bytes; a file name has at most "
                    f"{MAX_PATH_PART_BYTES}")
        return path


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
