"""The guarded learned policy: an ONNX network over the shared encoder, and the artifact loader.

:func:`load_artifact` reads an artifact's card (:mod:`mixagent.agent.card`), checks it against its
network and probes the policy once on a synthetic history before handing out a factory
``(space, horizon, objective) -> policy``. Two kinds load:

* ``baseline``: the card names a built-in rule of :mod:`mixagent.agent.baselines` and its parameters
  (e.g. a tuned fixed target share), so a tuned baseline ships and hot-swaps like a learned policy;
* ``onnx``: a network ``obs -> action`` over a versioned encoder of
  :mod:`mixagent.trajectories.encoding`, run with onnxruntime (imported lazily; no torch);
* ``onnx`` over domain tokens (``dom-v1``, :mod:`mixagent.trajectories.tokens`): a network
  ``(tokens, run, mask, prior) -> weights`` that reads any domain space up to the card's
  ``max_domains`` (:class:`OnnxSetPolicy`).

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
from mixagent.agent.onnx_batch import OnnxBatcher
from mixagent.trajectories.contract import (
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Objective,
    Weights,
)
from mixagent.trajectories.encoding import (
    EncodeCache,
    action_size,
    action_to_weights,
    encode,
    observation_size,
)
from mixagent.trajectories.policy import MixingPolicy, PolicyFactory
from mixagent.trajectories.tokens import DOMAIN_FEATURES, RUN_FEATURES, encode_tokens

__all__ = [
    "DEFAULT_FALLBACK",
    "OBS_MARGIN",
    "GuardedDecision",
    "OnnxPolicy",
    "OnnxSetPolicy",
    "decide",
    "decide_async",
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


async def decide_async(policy: MixingPolicy, space: DomainSpace, history: History) -> GuardedDecision:
    """:func:`decide` for a caller on an event loop: a learned policy whose network runs batched
    (:class:`~mixagent.agent.onnx_batch.OnnxBatcher`) awaits it; any other decides at once. The
    decision is the one :func:`decide` gives."""
    method = getattr(policy, "decide_async", None)
    if method is not None:
        result: GuardedDecision = await method(space, history)
        return result
    return decide(policy, space, history)


def _first_feedback(space: DomainSpace) -> History:
    """A history holding only a start evaluation: every relative feature is 0 there, so it encodes
    exactly like any real run's start (the scores themselves never reach the observation)."""
    fb = Feedback(step=0, tokens_seen=0, field_scores=dict.fromkeys(space.fields, -1.0),
                  domain_losses=dict.fromkeys(space.names, 1.0))
    return History(space=space, feedback=[fb])


class TrainingRange:
    """Per feature, the range seen in training widened by :data:`OBS_MARGIN`; :meth:`problem` says
    which feature of an observation (a vector, or rows of one per domain) falls outside. With a
    ``clamp_band`` (the card's), :meth:`clamped` brings features up to that many range widths
    outside back to the widened range, and only farther ones are a problem."""

    def __init__(self, low: list[float], high: list[float], names: list[str] | None = None,
                 clamp_band: float | None = None):
        self.low, self.high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
        width = np.where(self.high > self.low, self.high - self.low, 0.0)
        pad = np.where(width > 0, OBS_MARGIN * width, 0.05)
        self._lo, self._hi = self.low - pad, self.high + pad
        band = pad + (clamp_band or 0.0) * width  # a feature constant in training gets no band
        self._outer_lo, self._outer_hi = self.low - band, self.high + band
        self.names = names

    def problem(self, x: np.ndarray, what: str = "observation", rows: tuple[str, ...] = ()) -> str | None:
        """Why ``x`` cannot be served (a feature beyond the clamp band, or beyond the widened range
        without one), or None."""
        if ((x >= self._outer_lo) & (x <= self._outer_hi)).all():  # the common case, without argwhere's cost
            return None
        bad = np.argwhere((x < self._outer_lo) | (x > self._outer_hi))
        first = tuple(int(i) for i in bad[0])
        k = first[-1]
        feature = self.names[k] if self.names else str(k)
        where = f" of domain {rows[first[0]]!r}" if rows and len(first) == 2 else ""
        return (f"{what} feature {feature}{where} = {x[first]:.4g} is outside the range seen in training "
                f"[{self.low[k]:.4g}, {self.high[k]:.4g}]" + (f" ({len(bad)} values)" if len(bad) > 1 else ""))

    def inside(self, x: np.ndarray) -> bool:
        """Every feature of ``x`` lies in the widened range (then there is no :meth:`problem` and
        :meth:`clamped` is ``x``): one test for the common case."""
        return bool(((x >= self._lo) & (x <= self._hi)).all())

    def clamped(self, x: np.ndarray) -> np.ndarray:
        """``x`` with every feature inside the clamp band brought to the widened range (``x`` itself
        when nothing is outside, the common case)."""
        if self.inside(x):
            return x
        return np.clip(x, self._lo, self._hi)


def _seen(space: DomainSpace, history: History) -> History:
    """The history a network reads: before any feedback, a start evaluation (:func:`_first_feedback`)."""
    return history if history.feedback else _first_feedback(space)


def _fallback_decision(fallback: MixingPolicy, space: DomainSpace, history: History, reason: str) -> GuardedDecision:
    weights = fallback.next_weights(space, history) if history.feedback else fallback.initial_weights(space)
    return GuardedDecision(weights, fallback=fallback.name, reason=reason)


class _GuardedNetwork:
    """What every learned policy shares: the card, the run's horizon and objective, the session and
    the guard. :meth:`decide` asks the card whether the space fits, then :meth:`_learned` for the
    network's mixture or the reason it cannot give one; either way the fallback fills in."""

    def __init__(self, session: Any, card: PolicyCard, horizon: int, objective: Objective,
                 fallback: MixingPolicy):
        self.name = card.name
        self.card = card
        self.horizon = horizon
        self.objective = objective
        self.fallback = fallback
        self._session = session

    def _learned(self, space: DomainSpace, history: History) -> Weights | str:
        raise NotImplementedError

    def decide(self, space: DomainSpace, history: History) -> GuardedDecision:
        problem = self.card.space_problem(space)
        return self._guarded(space, history, problem or self._learned(space, _seen(space, history)))

    async def decide_async(self, space: DomainSpace, history: History) -> GuardedDecision:
        """:meth:`decide` with the network call awaited (batched with concurrent decisions)."""
        problem = self.card.space_problem(space)
        return self._guarded(space, history, problem or await self._learned_async(space, _seen(space, history)))

    def _guarded(self, space: DomainSpace, history: History, got: Weights | str) -> GuardedDecision:
        """The network's mixture, or the fallback's with the reason the network could not decide."""
        if isinstance(got, Weights):
            return GuardedDecision(got)
        return _fallback_decision(self.fallback, space, history, got)

    async def _learned_async(self, space: DomainSpace, history: History) -> Weights | str:
        return self._learned(space, history)

    def initial_weights(self, space: DomainSpace) -> Weights:
        return self.decide(space, History(space=space)).weights

    def next_weights(self, space: DomainSpace, history: History) -> Weights:
        return self.decide(space, history).weights


class OnnxPolicy(_GuardedNetwork):
    """A learned policy exported to ONNX: ``action = net(encode(history, horizon, objective))``
    mapped to weights by ``(1-ε)·softmax(β·a) + ε·prior`` (the card's :class:`ActionSpec`).

    Guarded: a run whose space it cannot read, or an observation outside the card's training ranges
    (beyond :data:`OBS_MARGIN`, or beyond the card's ``clamp_band``, within which it is clamped),
    gets the ``fallback`` baseline's decision, marked in :meth:`decide`. The first mixture (before
    any feedback) is what the network chooses at the start of a run, whose observation does not
    depend on the scores."""

    def __init__(self, session: Any, card: PolicyCard, horizon: int, objective: Objective,
                 fallback: MixingPolicy, batcher: OnnxBatcher | None = None):
        super().__init__(session, card, horizon, objective, fallback)
        self._input = session.get_inputs()[0].name
        self._batcher = batcher or OnnxBatcher(session, self._input)
        self._rows = EncodeCache()
        """The run's observation rows already computed (a policy serves one run)."""
        self._range = (TrainingRange(card.observation_low, card.observation_high, clamp_band=card.clamp_band)
                       if card.observation_low is not None and card.observation_high is not None else None)

    def observation(self, history: History) -> np.ndarray:
        return encode(history, self.horizon, self.card.action, self.objective, self.card.encoder_version,
                      self._rows)

    def act(self, obs: np.ndarray) -> np.ndarray:
        (action,) = self._session.run(None, {self._input: obs[None, :].astype(np.float32)})[:1]
        return np.asarray(action, dtype=np.float64)[0]

    def _checked(self, obs: np.ndarray) -> tuple[np.ndarray, str | None]:
        """The observation (clamped into the training ranges within the card's clamp band) and,
        when it falls outside them, why."""
        if self._range is None or self._range.inside(obs):
            return obs, None
        problem = self._range.problem(obs)
        return (obs, problem) if problem else (self._range.clamped(obs).astype(obs.dtype, copy=False), None)

    def _learned(self, space: DomainSpace, history: History) -> Weights | str:
        return self.decide_observation(space, self.observation(history))

    def decide_observation(self, space: DomainSpace, obs: np.ndarray) -> Weights | str:
        """The mixture for an encoded observation of ``space``, guarded as a decision is (the reason
        when the guard refuses it): what :meth:`decide` computes after encoding, open to a probe that
        edits the observation (``bench/feedback_probe.py``)."""
        obs, problem = self._checked(obs)
        return problem or action_to_weights(self.act(obs), space, self.card.action, self.card.action_map)

    async def _learned_async(self, space: DomainSpace, history: History) -> Weights | str:
        obs, problem = self._checked(self.observation(history))
        if problem:
            return problem
        action = np.asarray(await self._batcher.run(obs), dtype=np.float64)
        return action_to_weights(action, space, self.card.action, self.card.action_map)


class OnnxSetPolicy(_GuardedNetwork):
    """A domain-level policy over per-domain tokens (``dom-v1``): ``weights = net(tokens, run, mask,
    prior)``, the network computing ``(1-ε)·softmax(z) + ε·prior`` itself, so that the service and
    the trainer share one definition of the mixture (:mod:`mixagent.agent.set_policy`).

    One artifact serves every space of up to ``card.max_domains`` domains with a source field; a
    larger space, or a token or run feature outside the card's training ranges (beyond
    :data:`OBS_MARGIN`, or beyond the card's ``clamp_band``, within which it is clamped), gets the
    ``fallback`` baseline's decision, marked in :meth:`decide`."""

    def __init__(self, session: Any, card: PolicyCard, horizon: int, objective: Objective,
                 fallback: MixingPolicy):
        super().__init__(session, card, horizon, objective, fallback)
        self._tokens = (TrainingRange(card.token_low, card.token_high, list(DOMAIN_FEATURES), card.clamp_band)
                        if card.token_low is not None and card.token_high is not None else None)
        self._run = (TrainingRange(card.run_low, card.run_high, list(RUN_FEATURES), card.clamp_band)
                     if card.run_low is not None and card.run_high is not None else None)

    def weights(self, tokens: np.ndarray, run: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """The network's mixture for one observation (``tokens [K, D]``, ``run [R]``)."""
        feeds = {"tokens": tokens[None].astype(np.float32), "run": run[None].astype(np.float32),
                 "mask": np.ones((1, tokens.shape[0]), np.float32), "prior": prior[None].astype(np.float32)}
        (w,) = self._session.run(None, feeds)[:1]
        return np.asarray(w, dtype=np.float64)[0]

    def _learned(self, space: DomainSpace, history: History) -> Weights | str:
        tokens, run = encode_tokens(history, self.horizon, self.objective, self.card.encoder_version)
        return self.decide_tokens(space, tokens, run)

    def decide_tokens(self, space: DomainSpace, tokens: np.ndarray, run: np.ndarray) -> Weights | str:
        """The network's mixture for an encoded observation of ``space``, guarded as a decision is (the
        reason when the guard refuses it): what :meth:`decide` computes after encoding, open to a
        probe that edits the tokens (``bench/feedback_probe.py``)."""
        problem = ((self._tokens.problem(tokens, "token", space.names) if self._tokens is not None else None)
                   or (self._run.problem(run, "run") if self._run is not None else None))
        if problem is not None:
            return problem
        if self._tokens is not None:
            tokens = self._tokens.clamped(tokens)
        if self._run is not None:
            run = self._run.clamped(run)
        w = self.weights(tokens, run, space.priors())
        if not (np.isfinite(w).all() and w.min() >= 0 and w.sum() > 0):
            return "the network returned a mixture that is not finite and non-negative"
        return Weights.from_raw(w)


def _probe_space(card: PolicyCard) -> DomainSpace:
    if card.kind == "mixture" and card.domains is not None:  # its own domains, in two fields
        half = max(1, len(card.domains) - 2)
        return DomainSpace.from_fields({"source": card.domains[:half], "target": card.domains[half:]}
                                       if len(card.domains) > 1 else {"source": card.domains})
    if card.domain_set:  # any space: three source domains and two target ones
        return DomainSpace.from_fields({"source": ["source_a", "source_b", "source_c"],
                                        "target": ["target_a", "target_b"]})
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


def _model_path(folder: Path, card: PolicyCard) -> Path:
    assert card.model_file is not None  # the card's validator: onnx and mixture cards name one
    path = (folder / card.model_file).resolve()
    if folder.resolve() not in path.parents:
        raise ArtifactError(f"{folder / CARD_FILE}: model_file {card.model_file!r} lies outside the artifact")
    if not path.is_file():
        raise ArtifactError(f"{path}: model file named by the card does not exist")
    return path


def _load_mixture(folder: Path, card: PolicyCard) -> PolicyFactory:
    from mixagent.agent.static_mixture import StaticMixturePolicy, read_mixture_table  # noqa: PLC0415

    path = _model_path(folder, card)
    try:
        table = read_mixture_table(path)
    except ContractError as e:
        raise ArtifactError(str(e)) from None
    if table.domains != card.domains:
        raise ArtifactError(f"{path}: the table is over domains {table.domains}, the card names {card.domains}")

    def factory(space: DomainSpace, horizon: int, objective: Objective | None = None) -> MixingPolicy:
        objective = objective or Objective()
        if card.objective_range is not None:
            card.objective_range.check(objective, space, card.ref)
        return StaticMixturePolicy(card.name, table, objective)

    return factory


def _load_onnx(folder: Path, card: PolicyCard, fallback: MixingPolicy) -> PolicyFactory:
    path = _model_path(folder, card)
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
    if card.domain_set:
        _check_set_io(path, folder, card, session)
    else:
        _check_vector_io(path, folder, card, session)
    objectives = card.objective_range
    # one batcher per session: the runs it serves share its batches
    batcher = None if card.domain_set else OnnxBatcher(session, session.get_inputs()[0].name)

    def factory(space: DomainSpace, horizon: int, objective: Objective | None = None) -> MixingPolicy:
        objective = objective or Objective()
        if objectives is not None:
            objectives.check(objective, space, card.ref)
        if card.domain_set:
            return OnnxSetPolicy(session, card, horizon, objective, fallback)
        return OnnxPolicy(session, card, horizon, objective, fallback, batcher)

    return factory


def _check_vector_io(path: Path, folder: Path, card: PolicyCard, session: Any) -> None:
    inputs, outputs = session.get_inputs(), session.get_outputs()
    space = _probe_space(card)
    n_obs = observation_size(space, card.action, card.encoder_version)
    n_act = action_size(space, card.action, card.action_map)
    if len(inputs) != 1 or inputs[0].shape[-1] != n_obs:
        got = [(i.name, i.shape) for i in inputs]
        raise ArtifactError(f"{path}: expected one input of width {n_obs} (encoder {card.encoder_version}, "
                            f"{len(space.fields)} fields), got {got}: the card does not match the network")
    if not outputs or outputs[0].shape[-1] != n_act:
        got = [(o.name, o.shape) for o in outputs]
        raise ArtifactError(f"{path}: expected an action output of width {n_act} ({card.action_map}), got {got}")
    if card.observation_low is not None and len(card.observation_low) != n_obs:
        raise ArtifactError(f"{folder / CARD_FILE}: observation_low has {len(card.observation_low)} values, the "
                            f"network reads {n_obs} features")


def _check_set_io(path: Path, folder: Path, card: PolicyCard, session: Any) -> None:
    inputs = {i.name: i.shape for i in session.get_inputs()}
    want = {"tokens": len(DOMAIN_FEATURES), "run": len(RUN_FEATURES), "mask": None, "prior": None}
    if set(inputs) != set(want) or any(n is not None and inputs[k][-1] != n for k, n in want.items()):
        raise ArtifactError(f"{path}: expected inputs tokens [1, K, {len(DOMAIN_FEATURES)}], run "
                            f"[1, {len(RUN_FEATURES)}], mask [1, K] and prior [1, K] (encoder "
                            f"{card.encoder_version}), got {inputs}: the card does not match the network")
    for low, what, n in ((card.token_low, "token_low", len(DOMAIN_FEATURES)),
                         (card.run_low, "run_low", len(RUN_FEATURES))):
        if low is not None and len(low) != n:
            raise ArtifactError(f"{folder / CARD_FILE}: {what} has {len(low)} values, the network reads {n} features")


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
    factory: PolicyFactory
    if card.kind == "mixture":
        factory = _load_mixture(folder, card)
    elif card.kind == "baseline":
        assert card.rule is not None
        try:
            policy = build_baseline(card.rule, card.params)
        except ContractError as e:
            raise ArtifactError(f"{card_path}: {e}") from None
        factory = lambda space, horizon, objective=None: policy  # noqa: E731
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
