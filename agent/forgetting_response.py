"""Does a policy replay what is being forgotten, and how much does it continue its own past?

The domain level's promise (issue 19) is a mixture that spends on a source domain while it is being
forgotten and less while it is not. Whether a policy does is a property of its decision rule and can
be measured without a rollout: take recorded states (histories from any dataset folder or run
store), change one domain at a time and ask the policy again. Two elasticities per domain ``k``:

- the **forgetting response** ``r_k = d log w_k / d(relative rise of k's newest held-out loss)``
  (the loss raised by ``delta``, as if forgotten a little more). ``r_k > 0``: it replays a domain
  that is being forgotten (relative loss-softmax does, by construction: ``r_k = (1 − w_k)/τ`` times
  the loss ratio); ``0``: it does not look (uniform, a constant); ``< 0``: it spends *less* on a
  domain the more it is forgotten (rich-get-richer).
- the **persistence** ``p_k = d log w_k / d log w_k(past)``: the domain's weight in every past
  mixture raised by ``1 + delta`` (renormalised). ``0``: it does not read its past; ``1``: it
  continues it (a behaviour-cloned copycat); ``> 1``: it amplifies it. A policy with persistence
  near 1 and a weak response drifts wherever small pushes take it: the unit root of a schedule.

And one of its first decision (:func:`prior_elasticity`): how the split within each field follows
the domains' priors when they are unequal (0: ignores them, 1: follows them, > 1: exaggerates them).

Only the newest feedback's domain loss moves; the field scores stay as recorded, so the response is
that of the per-domain channel alone. Decisions before the second feedback are skipped (a relative
rise against a start that moves with it is no rise). A state where a decision goes to the guard's
fallback, or where a domain's past weight cannot move (every other domain at the weight floor), is
counted as refused and left out. Two limits: a feature the guard clamps (within a card's clamp band)
moves no further, so the response there reads smaller; and persistence divides by the change of the
*newest* past mixture's log weight, exact for a policy that continues its newest mixture, a little
below 1 for one that continues an average over its window. The policy is asked of each prefix
independently, so it must decide from the history alone (every learned policy and every stateless
baseline does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mixagent.agent.onnx_policy import decide
from mixagent.trajectories.contract import ContractError, DomainSpace, History, Objective, Weights
from mixagent.trajectories.policy import MixingPolicy, PolicyFactory
from mixagent.trajectories.replay import history_prefix

__all__ = ["DELTA", "ForgettingResponse", "forgetting_response", "prior_elasticity"]

DELTA = 0.01
"""The default relative loss rise: 1%, the size of a source domain's drift over a whole run."""


@dataclass
class ForgettingResponse:
    """Per domain of one space, the responses measured at every state asked (rows: states)."""

    domains: list[str]
    fields: list[str]
    responses: list[np.ndarray] = field(default_factory=list)
    refused: int = 0

    @property
    def matrix(self) -> np.ndarray:
        return np.stack(self.responses) if self.responses else np.zeros((0, len(self.domains)))

    def summary(self) -> dict[str, object]:
        """Per field: the mean response over states and domains, and the share of (state, domain)
        cases with a positive one; per domain the mean."""
        m = self.matrix
        fields = np.array(self.fields)
        out: dict[str, object] = {"states": int(m.shape[0]), "refused": self.refused,
                                  "per_domain": dict(zip(self.domains, np.mean(m, axis=0).tolist(), strict=True))
                                  if len(m) else {}}
        for f in sorted(set(self.fields)):
            cols = m[:, fields == f]
            out[f] = {"mean": float(cols.mean()) if cols.size else None,
                      "positive": float((cols > 1e-9).mean()) if cols.size else None,
                      "negative": float((cols < -1e-9).mean()) if cols.size else None}
        return out


def _ask(policy: MixingPolicy, space: DomainSpace, h: History) -> np.ndarray | None:
    got = decide(policy, space, h)
    return None if got.fallback is not None else np.log(got.weights.as_array())


def _forgotten(h: History, name: str, delta: float) -> History:
    """``h`` with domain ``name``'s newest held-out loss raised by the relative ``delta``."""
    newest = h.feedback[-1]
    losses = dict(newest.domain_losses)
    losses[name] = losses[name] * (1 + delta) if losses[name] > 0 else losses[name] + delta
    return History.model_construct(space=h.space, weights=h.weights,
                                   feedback=[*h.feedback[:-1], newest.model_copy(update={"domain_losses": losses})])


def _favoured(h: History, k: int, delta: float) -> tuple[History, float]:
    """``h`` with domain ``k`` given ``1 + delta`` times its weight in every past mixture (renormalised),
    and the change of its log share in the newest one."""
    past = [w.as_array() for w in h.weights]
    moved = []
    for w in past:
        v = w.copy()
        v[k] *= 1 + delta
        moved.append(Weights.from_raw(v / v.sum()))
    step = float(np.log(moved[-1].as_array()[k]) - np.log(past[-1][k]))
    return History.model_construct(space=h.space, weights=moved, feedback=h.feedback), step


def forgetting_response(policy: MixingPolicy, histories: Iterable[History], delta: float = DELTA,
                        stride: int = 1) -> tuple[ForgettingResponse, ForgettingResponse]:
    """At every ``stride``-th decision (from the second feedback on) of every history in
    ``histories`` (all of one domain space), per domain: the **forgetting response** (above) and the
    **persistence** ``d log w_k / d log w_k(past)``, the elasticity of the decision to the domain's
    own share in the past mixtures (each past mixture's weight of ``k`` times ``1 + delta``,
    renormalised). Persistence 0: the policy does not read its past; 1: it continues it; above 1 it
    amplifies it, and a schedule drifts to a corner unless the forgetting response pulls it back."""
    if not (np.isfinite(delta) and delta > 0):
        raise ContractError(f"delta: must be a positive finite relative change, got {delta!r}")
    if stride < 1:
        raise ContractError(f"stride: must be >= 1, got {stride}")
    response: ForgettingResponse | None = None
    persistence: ForgettingResponse | None = None
    for h in histories:
        space = h.space
        names = list(space.names)
        if response is None or persistence is None:
            response = ForgettingResponse(names, [d.field for d in space.domains])
            persistence = ForgettingResponse(names, [d.field for d in space.domains])
        elif names != response.domains:
            raise ContractError(f"histories: domains {names} differ from {response.domains}; one space per response")
        for t in range(1, len(h.feedback) - (len(h.feedback) > len(h.weights)), stride):
            state = history_prefix(h, t)
            base = _ask(policy, space, state)
            if base is None:
                response.refused += 1
                persistence.refused += 1
                continue
            rows = np.empty((2, len(names)))
            refused = [False, False]
            for k, name in enumerate(names):
                got = _ask(policy, space, _forgotten(state, name, delta))
                refused[0] |= got is None
                rows[0, k] = np.nan if got is None else (got[k] - base[k]) / delta
                favoured, step = _favoured(state, k, delta)
                got = None if abs(step) < 1e-3 * delta else _ask(policy, space, favoured)  # every other domain floored
                refused[1] |= got is None
                rows[1, k] = np.nan if got is None else (got[k] - base[k]) / step
            for out, row, no in ((response, rows[0], refused[0]), (persistence, rows[1], refused[1])):
                if no or not np.isfinite(row).all():
                    out.refused += 1
                else:
                    out.responses.append(row)
    if response is None or persistence is None:
        raise ContractError("histories: none given")
    return response, persistence


def prior_elasticity(factory: PolicyFactory, history: History, horizon: int, objective: Objective,
                     draws: int = 20, sigma: float = 0.5, seed: int = 0) -> np.ndarray:
    """How a policy's first decision follows unequal priors: per draw of priors (log-normal with
    ``sigma``, on the domains of ``history``'s space), the slope of ``log w_k`` on ``log prior_k``, both
    centred within each field (fields of one domain carry no split), for the mixture decided right
    after ``history``'s first feedback. ``0``: it ignores the priors (uniform); ``1``: it follows them
    (``prior``); ``> 1``: it exaggerates them. Every training setting so far has equal priors, so a
    learned policy meets unequal ones only when it is served. A draw whose decision goes to the
    fallback is NaN."""
    if draws < 1 or not (np.isfinite(sigma) and sigma > 0):
        raise ContractError(f"draws, sigma: need draws >= 1 and sigma > 0, got {draws}, {sigma}")
    rng = np.random.default_rng(seed)
    base = history.space
    fields = np.array([d.field for d in base.domains])
    split = [fields == f for f in base.fields if (fields == f).sum() > 1]
    if not split:
        raise ContractError("history: no field has two domains; there is no split for priors to move")
    out = np.full(draws, np.nan)
    for i in range(draws):
        prior = rng.lognormal(0.0, sigma, size=base.size)
        space = DomainSpace(domains=tuple(d.model_copy(update={"prior": float(p)})
                                          for d, p in zip(base.domains, prior, strict=True)))
        got = decide(factory(space, horizon, objective),
                     space, History.model_construct(space=space, feedback=history.feedback[:1], weights=[]))
        if got.fallback is not None:
            continue
        w = np.log(got.weights.as_array())
        x = np.concatenate([np.log(prior[m]) - np.log(prior[m]).mean() for m in split])
        y = np.concatenate([w[m] - w[m].mean() for m in split])
        out[i] = float(x @ y / (x @ x))
    return out
