"""The card of a policy artifact: what a policy folder holds and where its policy was trained.

A policy *artifact* is a folder holding ``card.json`` (:class:`PolicyCard`) and, for learned
policies, a network that loads without unpickling (ONNX). The card says what kind of policy it is (a
built-in rule with tuned parameters, or a network over a versioned encoder), the action map, the
fields or domains it reads, the objectives (:class:`~mixagent.trajectories.contract.ObjectiveRange`)
and the range of every observation feature seen in training, and the data it was trained on.
Serving it is :mod:`mixagent.agent.onnx_policy`'s job.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixagent.agent.errors import ArtifactError
from mixagent.trajectories.contract import (
    SOURCE_FIELD,
    ActionSpec,
    ContractError,
    DomainSpace,
    Name,
    ObjectiveRange,
    format_validation_errors,
    stable_hash,
)
from mixagent.trajectories.encoding import ACTION_MAPS, ENCODER_VERSION, ENCODER_VERSIONS, LEGACY_ACTION_MAP
from mixagent.trajectories.tokens import TOKEN_ENCODER_VERSIONS

__all__ = ["CARD_FILE", "ArtifactError", "TrainingData", "WarmStart", "PolicyCard", "read_card", "artifact_digest"]

CARD_FILE = "card.json"

ParamValue = float | int | str | bool



class TrainingData(BaseModel):
    """One dataset folder a policy was trained on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str
    """The folder as given to ``mixagent agent train``."""
    setting_name: str
    """The setting its records were made with."""
    setting_hash: str
    """That setting's :meth:`~mixagent.env.setting.Setting.hash`."""
    trajectories: int
    """How many records it held."""
    content_hash: str
    """:func:`~mixagent.trajectories.contract.stable_hash` of the sorted record checksums."""


class WarmStart(BaseModel):
    """The behaviour-cloning policy an offline RL stage started from (its actor copied exactly before
    the first RL step), and how far the stage was let drift from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    algorithm: str
    """The start's learner and encoder, e.g. ``bc/mlp``."""
    policy_type: Literal["stochastic", "deterministic"]
    """The start's policy head (ReBRAC's actor is deterministic, CQL's and Cal-QL's stochastic)."""
    ref: str | None = None
    """The start artifact's ``name@version``; None: the start was trained in the same run."""
    digest: str | None = None
    """The start artifact's :func:`artifact_digest`; None: trained in the same run."""
    drift_bound: float | None = None
    """The bound on the mean |action − start's action| over training states; None: unbounded."""
    rl_steps: int = Field(ge=0)
    """RL gradient steps the shipped actor took after the start (fewer than asked when the bound stopped it)."""


class PolicyCard(BaseModel):
    """``card.json`` of a policy artifact.

    ``fields`` names the fields (in ``DomainSpace.fields`` order) a field-level learned policy was
    trained on; it reads any space with as many fields and the source field first (names may
    differ). ``domains`` pins a domain-level policy's domains. ``observation_low``/``_high`` are the
    per-feature ranges seen in training, ``objective_range`` the objectives.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: Name
    """The policy's name, as runs ask for it (``"agent"``)."""
    version: Name
    """Its version; the service serves the newest loaded one unless a run pins another."""
    kind: Literal["baseline", "onnx", "mixture"]
    """``baseline``: a built-in rule with tuned ``params``; ``onnx``: a learned network in ``model_file``;
    ``mixture``: one static mixture per objective over ``domains``, chosen offline (``model_file``
    names the ``mixtures.json`` table, :mod:`mixagent.agent.static_mixture`)."""
    description: str = ""
    """One line for people (the service's policy list shows it)."""
    rule: Name | None = None
    """The :mod:`~mixagent.agent.baselines` rule of a ``baseline`` card."""
    params: dict[Name, ParamValue] = Field(default_factory=dict, max_length=32)
    """The rule's constructor arguments (a ``baseline`` card)."""
    encoder_version: str = ENCODER_VERSION
    """The observation encoder the network reads (``trajectories/encoding.py``); the service refuses an unknown one."""
    action: ActionSpec = Field(default_factory=ActionSpec)
    """The action map ``(1-ε)·softmax(β·a) + ε·prior`` and its level (field or domain)."""
    action_map: str = LEGACY_ACTION_MAP
    """How the network's action becomes logits (``trajectories/encoding.py``): ``action-v1`` (one logit
    per unit; every card written before ``action-v2`` existed, so a card that names none) or
    ``action-v2`` (one fewer, the first unit's logit pinned at 0)."""
    fields: list[Name] | None = Field(default=None, min_length=1, max_length=64)
    """The fields a field-level network was trained on, in ``DomainSpace.fields`` order."""
    domains: list[Name] | None = Field(default=None, min_length=1, max_length=1024)
    """The domains a fixed domain-level network was trained on (it serves exactly those)."""
    model_file: str | None = None
    """The network's file inside the artifact folder (ONNX; never a pickle)."""
    algorithm: str | None = None
    """How the network was trained, e.g. ``bc/transformer`` (the learner and its encoder)."""
    objective_range: ObjectiveRange | None = None
    """The objectives it was trained for; a run asking for another is refused, naming the range."""
    observation_low: list[float] | None = None
    """Per observation feature, the smallest value seen in training (the out-of-range guard)."""
    observation_high: list[float] | None = None
    """Per observation feature, the largest value seen in training."""
    token_low: list[float] | None = None
    """A domain-set card (``dom-v1``): per domain-token feature (not per domain), the smallest value
    seen in training."""
    token_high: list[float] | None = None
    """A domain-set card: per domain-token feature, the largest value seen in training."""
    run_low: list[float] | None = None
    """A domain-set card: per run-token feature, the smallest value seen in training."""
    run_high: list[float] | None = None
    """A domain-set card: per run-token feature, the largest value seen in training."""
    max_domains: int | None = Field(default=None, ge=1, le=4096)
    """A domain-set card serves any space of up to this many domains (a larger one goes to the fallback)."""
    clamp_band: float | None = Field(default=None, ge=0, le=100)
    """What the guard does with a feature outside its training range. None (every card written before
    it existed): past the range widened by ``OBS_MARGIN`` the decision goes to the fallback. A number
    ``b``: a feature up to ``b`` range widths outside is clamped to the widened range and the network
    decides; only a farther one goes to the fallback. On a setting no training run resembles, a run
    that learns faster than any training run (a larger gain, a steeper loss drop) is the edge of the
    network's experience, not nonsense: clamping serves it; a gross excursion (broken feedback,
    other units) still falls back."""
    stage: Literal["bc", "offline-rl"] | None = None
    """Which training stage made the network: ``bc`` (behaviour cloning) or ``offline-rl`` (an offline RL
    learner; ``warm_start`` names its BC start when it had one). None: a card written before this field."""
    warm_start: WarmStart | None = None
    """The BC start of an ``offline-rl`` network trained from one (``--algo bc+cql|bc+calql|bc+rebrac``)."""
    training_data: list[TrainingData] = Field(default_factory=list)
    """The dataset folders it was trained on."""
    training_data_hash: str | None = None
    """One hash over the training folders' content hashes."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Training figures (losses, seconds per stage), namespaced like ``loss/bc`` or ``seconds/train``."""
    created_at: str = ""
    """When the artifact was written (ISO 8601, UTC)."""

    @model_validator(mode="after")
    def _check(self) -> PolicyCard:
        if self.warm_start is not None and self.stage != "offline-rl":
            raise ValueError(f"warm_start: only an offline-rl stage has a warm start, this card's stage is "
                             f"{self.stage!r}")
        if self.kind == "baseline" and self.rule is None:
            raise ValueError("rule: a baseline card must name a rule")
        known = (*ENCODER_VERSIONS, *TOKEN_ENCODER_VERSIONS)
        if self.encoder_version not in known:
            raise ValueError(f"encoder_version: unknown encoder {self.encoder_version!r} (known: {list(known)})")
        if self.action_map not in ACTION_MAPS:
            raise ValueError(f"action_map: unknown action map {self.action_map!r} (known: {list(ACTION_MAPS)})")
        if self.action_map != LEGACY_ACTION_MAP and self.domain_set:
            raise ValueError(f"action_map: a domain-set card (dom-v1) outputs its mixture itself; it has no "
                             f"{self.action_map}")
        if self.kind in ("onnx", "mixture") and self.model_file is None:
            raise ValueError(f"model_file: an {self.kind} card must name its model file")
        if self.kind == "mixture" and self.domains is None:
            raise ValueError("domains: a mixture card must list the domains its mixtures are over")
        if self.kind == "onnx" and self.domain_set:
            if self.action.level != "domain":
                raise ValueError("action: a domain-set card (dom-v1) acts at domain level")
            if self.max_domains is None:
                raise ValueError("max_domains: a domain-set card says how many domains it serves at most")
            for low, high, what in ((self.token_low, self.token_high, "token"), (self.run_low, self.run_high, "run")):
                if (low is None) != (high is None) or (low is not None and high is not None and len(low) != len(high)):
                    raise ValueError(f"{what}_high: give {what}_low and {what}_high of one length, or neither")
        elif self.kind == "onnx":
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

    @property
    def domain_set(self) -> bool:
        """A network over per-domain tokens (``dom-v1``) that serves any domain space up to ``max_domains``."""
        return self.encoder_version in TOKEN_ENCODER_VERSIONS

    def space_problem(self, space: DomainSpace) -> str | None:
        """Why a run's domain space does not fit this policy, or None when it does."""
        if self.domain_set:
            if self.max_domains is not None and space.size > self.max_domains:
                return (f"policy {self.ref} serves spaces of up to {self.max_domains} domains, the run's space has "
                        f"{space.size}")
            if SOURCE_FIELD not in space.fields:
                return f"policy {self.ref} needs a '{SOURCE_FIELD}' field, the run's space has {list(space.fields)}"
            return None
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


def read_card(folder: str | Path) -> PolicyCard:
    """The card of the artifact in ``folder``; :class:`ArtifactError` naming the file when it is
    missing, not JSON or not a valid card."""
    card_path = Path(folder) / CARD_FILE
    if not card_path.is_file():
        raise ArtifactError(f"{card_path}: no policy card (an artifact folder holds {CARD_FILE})")
    try:
        text = card_path.read_text()
        json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{card_path}: not valid JSON ({e})") from None
    except RecursionError:  # json gives up on deep nesting this way, not with a JSONDecodeError
        raise ArtifactError(f"{card_path}: not a policy card (JSON nested too deeply to read)") from None
    try:
        return PolicyCard.model_validate_json(text)
    except RecursionError:
        raise ArtifactError(f"{card_path}: not a policy card (JSON nested too deeply to read)") from None
    except ValidationError as e:
        problems = format_validation_errors(e.errors(), root="card")[0]
        raise ArtifactError(f"{card_path}: invalid card: {problems}") from None


def artifact_digest(folder: str | Path) -> str:
    """What identifies an artifact's policy: a hash over its card and network files (``.json`` and
    ``.onnx``, not ``training.json``), so a copy has its original's digest and a retrained network another."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in (".json", ".onnx") and p.name != "training.json")
    return stable_hash({p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in files})
