"""The guarded learned policy: an ONNX network over the shared encoder, and the artifact loader.

:func:`load_artifact` reads an artifact's card (:mod:`mixagent.agent.card`), checks it against its
network and probes the policy once on a synthetic history before handing out a factory
``(space, horizon, objective) -> policy``. Two kinds load:

* ``baseline``: the card names a built-in rule of :mod:`mixagent.agent.baselines` and its parameters
  (e.g. a tuned fixed target share), so a tuned baseline ships and hot-swaps like a learned policy;
* ``onnx``: a network ``obs -> action`` over a versioned encoder of
  :mod:`mixagent.trajectories.encoding`, run with onnxruntime (imported lazily; no torch).

A learned policy knows where it was trained: the objectives it saw (a run asking for another one is
refused, the message names the range), the number of fields, and the range of every observation
feature in its training data. A decision whose observation falls outside those ranges, or a run
whose domain space it cannot read, is served by a named baseline instead (:class:`GuardedDecision`
says which and why), never refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixagent.agent.card import CARD_FILE, ArtifactError, PolicyCard, read_card
from mixagent.trajectories.contract import (
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Objective,
    Weights,
)
from mixagent.trajectories.encoding import action_size, action_to_weights, encode, observation_size
from mixagent.trajectories.policy import MixingPolicy, PolicyFactory

__all__ = [
    "DEFAULT_FALLBACK",
    "OBS_MARGIN",
    "GuardedDecision",
    "OnnxPolicy",
    "decide",
    "load_artifact",
    "probe_policy",
]

DEFAULT_FALLBACK = "uniform"
"""The baseline that serves a decision a learned policy cannot make (configurable)."""
OBS_MARGIN = 0.1
"""An observation feature may exceed its training range by this fraction of the range (or 0.05
where the range is a point) before the decision goes to the fallback."""


@dataclass(frozen=True)
class GuardedDecision:
    """A mixture and, when the learned policy could not make it, the baseline that did and why."""

    weights: Weights
    fallback: str | None = None
    """Name of the baseline that served this decision (None: the policy itself)."""
    reason: str | None = None


def decide(policy: MixingPolicy, space: DomainSpace, history: History) -> GuardedDecision:
    """The policy's decision after the newest feedback (before any: its initial mixture), with the
    fallback note of a guarded policy."""
    method = getattr(policy, "decide", None)
    if method is not None:
        result: GuardedDecision = method(space, history)
        return result
    if not history.feedback:
        return GuardedDecision(policy.initial_weights(space))
    return GuardedDecision(policy.next_weights(space, history))


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
        low, high = self.card.observation_low or [], self.card.observation_high or []  # set: _lo is not None
        return (f"observation feature {k} = {obs[k]:.4g} is outside the range seen in training "
                f"[{low[k]:.4g}, {high[k]:.4g}]"
                + (f" ({bad.size} features)" if bad.size > 1 else ""))

    def decide(self, space: DomainSpace, history: History) -> GuardedDecision:
        problem = self.card.space_problem(space)
        if problem is None:
            obs = self.observation(history if history.feedback else _first_feedback(space))
            problem = self._out_of_range(obs)
            if problem is None:
                return GuardedDecision(action_to_weights(self.act(obs), space, self.card.action))
        weights = (self.fallback.next_weights(space, history) if history.feedback
                   else self.fallback.initial_weights(space))
        return GuardedDecision(weights, fallback=self.fallback.name, reason=problem)

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

    def factory(space: DomainSpace, horizon: int, objective: Objective | None = None) -> MixingPolicy:
        objective = objective or Objective()
        if objectives is not None:
            objectives.check(objective, space, card.ref)
        return OnnxPolicy(session, card, horizon, objective, fallback)

    return factory


def load_artifact(folder: str | Path, fallback: str = DEFAULT_FALLBACK) -> tuple[PolicyCard, PolicyFactory]:
    """Read and check the artifact in ``folder``; return its card and a factory
    ``(space, horizon, objective) -> policy``. ``fallback`` names the baseline a learned policy hands a
    decision to when it cannot make it.

    Raises :class:`ArtifactError` (a message naming the file) for a missing or malformed card, an
    unknown encoder version, an unknown rule or parameter, a network whose input or output does not
    match the card, or a policy that fails on a synthetic history. The factory raises
    :class:`ContractError` for an objective outside the card's range on the run's space (the message
    names the range).
    """
    from mixagent.agent.baselines import build_baseline  # noqa: PLC0415

    folder = Path(folder)
    card_path = folder / CARD_FILE
    card = read_card(folder)
    if card.kind == "baseline":
        assert card.rule is not None
        try:
            policy = build_baseline(card.rule, card.params)
        except ContractError as e:
            raise ArtifactError(f"{card_path}: {e}") from None
        factory: PolicyFactory = lambda space, horizon, objective=None: policy  # noqa: E731
    else:
        try:
            fallback_policy = build_baseline(fallback)
        except ContractError as e:
            raise ArtifactError(f"fallback: {e}") from None
        factory = _load_onnx(folder, card, fallback_policy)
    try:
        space = _probe_space(card)
        probe_policy(factory(space, 8, Objective()), space)
    except Exception as e:  # any failure on a synthetic history means it must not be served
        raise ArtifactError(f"{card_path}: the policy fails on a synthetic history ({type(e).__name__}: {e})") from None
    return card, factory
