"""The ``MixingPolicy`` interface, policy artifacts (a folder with a JSON card) and their loader.

Everything that chooses a mixture implements :class:`MixingPolicy`; the env harness and the service
use nothing else. A policy *artifact* is a folder holding ``card.json`` (:class:`PolicyCard`) and,
for learned policies, a weights file that loads without unpickling (ONNX). Two kinds load today:

* ``baseline``: the card names a built-in rule of :mod:`mixagent.agent.baselines` and its parameters
  (e.g. a tuned fixed target share), so a tuned baseline ships and hot-swaps like a learned policy;
* ``onnx``: a network ``obs -> action`` over the versioned encoder of
  :mod:`mixagent.trajectories.encoding`, run with onnxruntime (imported lazily; no torch).

:func:`load_artifact` refuses an invalid folder with an :class:`ArtifactError` naming the file and the
problem, and probes the policy once on a synthetic history before handing it out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mixagent.trajectories.contract import (
    ActionSpec,
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Name,
    Objective,
    Weights,
)
from mixagent.trajectories.policy import MixingPolicy, PolicyFactory
from mixagent.trajectories.encoding import (
    ENCODER_VERSION,
    action_size,
    action_to_weights,
    encode,
    observation_size,
)

__all__ = [
    "MixingPolicy",
    "PolicyFactory",
    "PolicyCard",
    "ArtifactError",
    "CARD_FILE",
    "OnnxPolicy",
    "load_artifact",
    "probe_policy",
]

CARD_FILE = "card.json"

ParamValue = float | int | str | bool


class ArtifactError(ContractError):
    """A policy artifact that cannot be served; the message names the file and the problem."""


class PolicyCard(BaseModel):
    """``card.json`` of a policy artifact.

    ``fields`` pins the field names (in ``DomainSpace.fields`` order) a field-level learned policy
    was trained on; runs whose space has other fields are refused. ``domains`` does the same for a
    domain-level policy.
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
    training_data_hash: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> PolicyCard:
        if self.kind == "baseline" and self.rule is None:
            raise ValueError("rule: a baseline card must name a rule")
        if self.kind == "onnx":
            if self.model_file is None:
                raise ValueError("model_file: an onnx card must name its model file")
            if self.action.level == "field" and self.fields is None:
                raise ValueError("fields: a field-level onnx card must list the fields it was trained on")
            if self.action.level == "domain" and self.domains is None:
                raise ValueError("domains: a domain-level onnx card must list its domains")
        return self

    def check_space(self, space: DomainSpace) -> None:
        """Raise :class:`ContractError` when a run's domain space does not fit this policy."""
        if self.fields is not None and list(space.fields) != self.fields:
            raise ContractError(
                f"space: policy {self.name}@{self.version} was trained on fields {self.fields}, "
                f"the run's space has fields {list(space.fields)}"
            )
        if self.domains is not None and list(space.names) != self.domains:
            raise ContractError(
                f"space: policy {self.name}@{self.version} was trained on domains {self.domains}, "
                f"the run's space has domains {list(space.names)}"
            )


class OnnxPolicy:
    """A learned policy exported to ONNX: ``action = net(encode(history, horizon))`` mapped to
    weights by ``(1-ε)·softmax(β·a) + ε·prior`` (the card's :class:`ActionSpec`).

    The first mixture is the prior (the network has no feedback to act on yet)."""

    def __init__(self, session: Any, card: PolicyCard, horizon: int):
        self.name = card.name
        self.card = card
        self.horizon = horizon
        self._session = session
        self._input = session.get_inputs()[0].name

    def initial_weights(self, space: DomainSpace) -> Weights:
        return Weights.from_raw(space.priors())

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        obs = encode(history, self.horizon, self.card.action)[None, :]
        (action,) = self._session.run(None, {self._input: obs})[:1]
        return action_to_weights(np.asarray(action, dtype=np.float64)[0], space, self.card.action)


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


def _load_onnx(folder: Path, card: PolicyCard) -> PolicyFactory:
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
    n_obs, n_act = observation_size(space, card.action), action_size(space, card.action)
    if len(inputs) != 1 or inputs[0].shape[-1] != n_obs:
        got = [(i.name, i.shape) for i in inputs]
        raise ArtifactError(f"{path}: expected one input of width {n_obs} (encoder {ENCODER_VERSION}), got {got}")
    if not outputs or outputs[0].shape[-1] != n_act:
        got = [(o.name, o.shape) for o in outputs]
        raise ArtifactError(f"{path}: expected an action output of width {n_act}, got {got}")
    return lambda horizon, objective=None: OnnxPolicy(session, card, horizon)


def load_artifact(folder: str | Path) -> tuple[PolicyCard, PolicyFactory]:
    """Read and check the artifact in ``folder``; return its card and a per-horizon factory.

    Raises :class:`ArtifactError` (a message naming the file) for a missing or malformed card, an
    encoder version other than :data:`ENCODER_VERSION`, an unknown rule or parameter, an unloadable
    model, or a policy that fails on a synthetic history.
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
        errs = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'card'}: {x['msg']}" for x in e.errors())
        raise ArtifactError(f"{card_path}: invalid card: {errs}") from None
    if card.encoder_version != ENCODER_VERSION:
        raise ArtifactError(
            f"{card_path}: encoder_version {card.encoder_version!r} does not match this service's "
            f"{ENCODER_VERSION!r}"
        )
    if card.kind == "baseline":
        assert card.rule is not None
        try:
            policy = build_baseline(card.rule, card.params)
        except ContractError as e:
            raise ArtifactError(f"{card_path}: {e}") from None
        factory: PolicyFactory = lambda horizon, objective=None: policy  # noqa: E731
    else:
        factory = _load_onnx(folder, card)
    try:
        probe_policy(factory(8, Objective()), _probe_space(card))
    except Exception as e:  # any failure on a synthetic history means it must not be served
        raise ArtifactError(f"{card_path}: the policy fails on a synthetic history ({type(e).__name__}: {e})") from None
    return card, factory
