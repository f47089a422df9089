"""Observation, action and reward encodings over the raw :class:`History` (pure numpy, versioned).

One implementation serves the env, the offline dataset builder and the service, so a policy sees
the same features in training and in production. Artifacts record their encoder version
(:data:`ENCODER_VERSIONS`; new ones get :data:`ENCODER_VERSION`); an unknown version is refused.

Observation (field level, F fields, window W = :data:`WINDOW`), all clipped to ``[-OBS_BOUND, OBS_BOUND]``:

| slice            | meaning                                                             |
|------------------|---------------------------------------------------------------------|
| ``F``            | ``g_f``: relative improvement of field f's score since the start    |
| ``F``            | ``g_f(t) - g_f(t-1)``: the last stage's change (0 at t = 0)         |
| ``F``            | field shares of the mixture trained on last (field priors at t = 0) |
| ``1``            | progress ``t / T``                                                  |
| ``W·F``          | ``g_f`` at t-1 … t-W (0 before the start)                           |
| ``W·F``          | field shares of the W mixtures before the last (field priors before) |
| ``K`` (domain)   | per-domain relative loss change since the start (domain level only) |
| ``K`` (domain)   | per-domain share of the last mixture (domain level only)            |
| ``1`` (v2)       | ``λ``: the objective's spread penalty                               |
| ``F`` (v2)       | ``c_f``: the objective's normalised field weights                   |
| ``F`` (v2)       | ``∂B/∂g_f`` at the current gains: what one more unit of gain in field f |
|                  | is worth now, ``c_f - λ·c_f·(g_f - m)/s`` (``c_f`` while ``s = 0``)  |

``obs-v1`` is the table without the last three rows; ``obs-v2`` (the default) adds the *objective
slice*, so one policy serves any objective: the run's objective reaches the network as features,
and training relabels rewards under many objectives (``agent/dataset.py``).

``dom-v1`` (:mod:`mixagent.trajectories.tokens`) is the per-domain observation of the domain-set
agent: instead of one vector of fixed width, one token per domain, so one network reads any number
of domains. Per domain: whether it is a source domain, its relative loss change since the start and
over the last stage, ``log(K·w)`` of its share in the newest mixture and the W before it, its
field's share, gain, objective weight and ``∂B/∂g_f``; per run: progress, ``λ``, the mean and spread
of the field gains. Its table and the reasons for each choice (no number of domains, no prior) are
in that module.

``g_f(t) = (s_f(t) - s_f(0)) / |s_f(0)|`` with ``s_f`` the mean per-token log-likelihood, so the
features are scale-free across models and corpora. Gains are multiplied by :data:`GAIN_SCALE` so
that typical values are O(1).

Action maps (versioned like the observation; a card records its map, :data:`ACTION_MAPS`). Both give
``shares = (1-ε)·softmax(z) + ε·prior`` over the U units (fields, or domains at domain level):

| map         | action ``a``       | logits ``z``                     | who uses it                          |
|-------------|--------------------|----------------------------------|--------------------------------------|
| ``action-v1`` | ``[-1, 1]^U``    | ``β·a``                          | the env's Box, the schedules, old cards |
| ``action-v2`` | ``[-1, 1]^(U-1)`` | ``(0, 2β·a_1, …, 2β·a_{U-1})``  | new learned field-level policies      |

``action-v1`` is shift-invariant: its data use one direction of ``[-1, 1]^U`` (for two fields every
behaviour action lies on ``a_source = -a_target``), while an offline RL critic's penalty draws actions
uniformly over the whole box. ``action-v2`` pins the first unit's logit at 0, so the map is a bijection
between the open box and its image (the data fill the action space, and every action is a different
mixture), and scales the free logits by ``2β``: the largest log-ratio to the first unit is ``2β``, the
range of ``action-v1``'s logit differences. For two units the two maps have the same image, and every
behaviour mixture (projected onto ``action-v1``'s image by the schedules) has an exact ``action-v2``
action: none is clipped, and the committed data's extremes (constant shares 0 and 1) sit at ±1.
"""

from __future__ import annotations

import numpy as np

from mixagent.trajectories.contract import (
    ActionSpec,
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Level,
    Objective,
    Weights,
)

__all__ = [
    "ENCODER_VERSION",
    "ENCODER_VERSIONS",
    "EncodeCache",
    "objective_features",
    "field_weight_vector",
    "OBS_BOUND",
    "WINDOW",
    "GAIN_SCALE",
    "action_size",
    "layout",
    "observation_layout",
    "observation_size",
    "relative_gains",
    "balanced_scores",
    "stage_rewards",
    "softmax",
    "ACTION_MAP",
    "ACTION_MAPS",
    "LEGACY_ACTION_MAP",
    "check_action_map",
    "field_shares_to_weights",
    "action_to_weights",
    "weights_to_action",
    "encode",
]

ENCODER_VERSION = "obs-v2"
ENCODER_VERSIONS = ("obs-v1", "obs-v2")
LEGACY_ACTION_MAP = "action-v1"
"""The map of the env's action Box, of the schedules' projection and of cards that name no map."""
ACTION_MAP = "action-v2"
"""The map new learned field-level policies are trained with (see the module docstring)."""
ACTION_MAPS = (LEGACY_ACTION_MAP, ACTION_MAP)
OBS_BOUND = 10.0
WINDOW = 4
GAIN_SCALE = 10.0


def check_action_map(action_map: str) -> None:
    """A :class:`ContractError` naming the known maps when ``action_map`` is not one of them."""
    if action_map not in ACTION_MAPS:
        raise ContractError(f"action_map: unknown action map {action_map!r} (known: {list(ACTION_MAPS)})")


def action_size(space: DomainSpace, spec: ActionSpec, action_map: str = LEGACY_ACTION_MAP) -> int:
    """Width of an action: one logit per unit (``action-v1``), or one fewer (``action-v2``)."""
    check_action_map(action_map)
    units = len(space.fields) if spec.level == "field" else space.size
    if action_map == LEGACY_ACTION_MAP:
        return units
    if units < 2:
        raise ContractError(f"action_map: {action_map} needs at least two {spec.level}s, the space has {units}")
    return units - 1


def _check_version(version: str) -> None:
    if version not in ENCODER_VERSIONS:
        raise ContractError(f"encoder_version: unknown encoder {version!r} (known: {list(ENCODER_VERSIONS)})")


def layout(n_fields: int, n_domains: int = 0, level: Level = "field",
           version: str = ENCODER_VERSION) -> dict[str, slice]:
    """Where each row of the module docstring's table sits in an observation over ``n_fields``
    fields (and, at domain level, ``n_domains`` domains), in order. The one place that counts
    features: the encoder, the card's observation ranges, the Transformer's tokens and the probes
    all read their slices from here."""
    _check_version(version)
    f, k = n_fields, n_domains
    sizes = {"gains": f, "gain_change": f, "last_shares": f, "progress": 1,
             "past_gains": WINDOW * f, "past_shares": WINDOW * f}
    if level == "domain":
        sizes |= {"domain_loss_change": k, "domain_last_shares": k}
    if version == "obs-v2":
        sizes |= {"spread_penalty": 1, "field_weights": f, "gain_values": f}
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = slice(start, start + n)
        start += n
    return out


def observation_layout(space: DomainSpace, spec: ActionSpec, version: str = ENCODER_VERSION) -> dict[str, slice]:
    """:func:`layout` of the observation of ``space`` at ``spec``'s level, so that a probe or a
    report can name features instead of counting them."""
    return layout(len(space.fields), space.size, spec.level, version)


def observation_size(space: DomainSpace, spec: ActionSpec, version: str = ENCODER_VERSION) -> int:
    return list(observation_layout(space, spec, version).values())[-1].stop


def relative_gains(history: History) -> np.ndarray:
    """``[len(feedback), F]``: each field's relative score improvement over ``feedback[0]``."""
    s = history.field_scores()
    if s.size == 0:
        return s.reshape(0, len(history.space.fields))
    base = s[0]
    return (s - base) / np.maximum(np.abs(base), 1e-8)


def field_weight_vector(space: DomainSpace, objective: Objective) -> np.ndarray:
    """The objective's field weights ``c_f`` in ``space.fields`` order, normalised to sum 1."""
    return objective.weight_vector(space.fields)


def balanced_scores(history: History, objective: Objective) -> np.ndarray:
    """``B_t = m_t - λ·s_t`` for every feedback, with ``m_t = Σ_f c_f g_f(t)`` and
    ``s_t = sqrt(Σ_f c_f (g_f(t) - m_t)²)`` the ``c``-weighted mean and spread (equal weights: the
    plain mean and standard deviation); ``B_0 = 0``. A field of weight 0 counts in neither."""
    g = relative_gains(history)
    c = field_weight_vector(history.space, objective)
    mean = g @ c
    spread = np.sqrt(((g - mean[:, None]) ** 2) @ c)
    return mean - objective.spread_penalty * spread


def stage_rewards(history: History, objective: Objective) -> np.ndarray:
    """``r_t = B_{t+1} - B_t``, one per completed stage; they sum to the final balanced score."""
    return np.diff(balanced_scores(history, objective))


def softmax(x: np.ndarray) -> np.ndarray:
    """``exp(x - max x)`` normalised: the one softmax of the action map and the schedules."""
    z = np.exp(x - x.max())
    return z / z.sum()


def field_shares_to_weights(space: DomainSpace, shares: np.ndarray) -> np.ndarray:
    """Spread field shares (in ``space.fields`` order) over domains in proportion to the domain
    priors within each field; the result sums to ``shares.sum()``."""
    return (space.field_matrix().T @ shares) * space.within_field_priors()


_SHIFTS = 257
"""Shifts tried by :func:`weights_to_action` when the logits do not fit the action box."""


def _unit_priors(space: DomainSpace, spec: ActionSpec) -> np.ndarray:
    return space.field_priors() if spec.level == "field" else space.priors()


def _unit_logits(a: np.ndarray, spec: ActionSpec, action_map: str) -> np.ndarray:
    """The logits ``z`` of a (clipped) action under ``action_map`` (the module docstring's table)."""
    if action_map == LEGACY_ACTION_MAP:
        return spec.beta * a
    return np.concatenate([[0.0], 2.0 * spec.beta * a])


def action_to_weights(action: np.ndarray, space: DomainSpace, spec: ActionSpec,
                      action_map: str = LEGACY_ACTION_MAP) -> Weights:
    """Map an action in ``[-1, 1]^A`` to weights ``(1-ε)·softmax(z) + ε·prior`` with the logits ``z``
    of ``action_map`` (``action-v1``: ``β·a``; ``action-v2``: ``(0, 2β·a)``; see :class:`ActionSpec`
    and the module docstring). Values outside the box are clipped to it."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    n = action_size(space, spec, action_map)
    if a.shape != (n,):
        raise ContractError(f"action: expected {n} values ({spec.level} level, {action_map}), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ContractError(f"action: non-finite value(s) in {a.tolist()}")
    a = np.clip(a, -1.0, 1.0)
    shares = (1 - spec.epsilon) * softmax(_unit_logits(a, spec, action_map)) + spec.epsilon * _unit_priors(space, spec)
    return Weights.from_raw(field_shares_to_weights(space, shares) if spec.level == "field" else shares)


def weights_to_action(weights: Weights, space: DomainSpace, spec: ActionSpec,
                      action_map: str = LEGACY_ACTION_MAP) -> np.ndarray:
    """The action whose image under ``action_map`` is closest to ``weights`` (exact when reachable).

    Both maps first invert the ε-mixing, ``q = (w - ε·prior)/(1-ε)``.

    ``action-v2`` (float64): ``a_u = (log q_u - log q_1)/(2β)``, unique, clipped to the box when a
    log-ratio exceeds ``2β``; :func:`action_to_weights` inverts it to rounding error.

    ``action-v1`` (float32, the labels of every artifact trained before ``action-v2``): logits
    ``log(q)/β`` are unique up to a shift. When they span at most the box's width, centring them is
    exact. Otherwise some must be clipped, and which ones depends on the shift: the shift (on a grid
    of :data:`_SHIFTS` points between "the smallest at -1" and "the largest at +1") whose clipped
    image is nearest in L1 is taken. With two units every such shift gives ``[+1, -1]``; with more,
    centring would push mid-sized shares up to the box edge next to the largest ones. Behaviour data
    is thus labelled with the action that produces the nearest reachable mixture.
    """
    check_action_map(action_map)
    w = weights.as_array()
    if w.shape != (space.size,):
        raise ContractError(f"weights: {w.size} values for {space.size} domains")
    if spec.level == "field":
        w = space.field_matrix() @ w
    prior = _unit_priors(space, spec)
    q = (w - spec.epsilon * prior) / (1 - spec.epsilon)
    q = np.maximum(q, 1e-12)
    if action_map != LEGACY_ACTION_MAP:
        action_size(space, spec, action_map)  # refuses a single unit
        return np.clip((np.log(q[1:]) - np.log(q[0])) / (2.0 * spec.beta), -1.0, 1.0)
    logits = np.log(q) / spec.beta
    hi, lo = logits.max(), logits.min()
    if hi - lo <= 2.0:  # reachable: centre the logits in the box (softmax is shift-invariant)
        return np.clip(logits - (hi + lo) / 2, -1.0, 1.0).astype(np.float32)
    candidates = np.clip(logits[None, :] - np.linspace(lo + 1.0, hi - 1.0, _SHIFTS)[:, None], -1.0, 1.0)
    z = np.exp(spec.beta * (candidates - 1.0))
    images = (1 - spec.epsilon) * z / z.sum(axis=1, keepdims=True) + spec.epsilon * prior
    best = int(np.argmin(np.abs(images - w[None, :]).sum(axis=1)))
    return candidates[best].astype(np.float32)


def objective_features(gains: np.ndarray, space: DomainSpace, objective: Objective,
                       c: np.ndarray | None = None) -> np.ndarray:
    """The objective slice of ``obs-v2`` at relative gains ``gains`` (``[F]``, unscaled):
    ``[λ, c_1..c_F, ∂B/∂g_1..∂B/∂g_F]`` (``c``: :func:`field_weight_vector`, when already known)."""
    c = field_weight_vector(space, objective) if c is None else c
    lam = objective.spread_penalty
    m = float(gains @ c)
    s = float(np.sqrt(((gains - m) ** 2) @ c))
    grad = c - lam * c * (gains - m) / s if s > 1e-12 else c.copy()
    return np.concatenate([[lam], c, grad])


class EncodeCache:
    """The rows of one run's observations that never change once computed: the reference scores,
    each stage's gains, each mixture's field shares and the objective's field weights. A run's next
    observation reuses all but the newest (:func:`encode` with ``cache``), computing only what the
    new stage adds.

    Rows are keyed by stage and held with the feedback or mixture object they came from; a row is
    reused only while the history holds that very object (a history rebuilt, or a mixture replaced
    by the one the trainer says it trained on, computes it afresh), so an observation is bit for
    bit the one :func:`encode` gives without a cache. Rows that left the window are dropped."""

    __slots__ = ("_base", "_first", "_gains", "_scale", "_shares", "_weights")

    def __init__(self) -> None:
        self._weights: tuple[Objective, DomainSpace, np.ndarray] | None = None
        self._first: Feedback | None = None
        self._base = self._scale = np.zeros(0)
        self._gains: dict[int, tuple[Feedback, np.ndarray]] = {}
        self._shares: dict[int, tuple[Weights, np.ndarray, np.ndarray]] = {}

    def reference(self, first: Feedback, fields: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The start's field scores and their scale (``max(|s_f(0)|, 1e-8)``)."""
        if self._first is not first:
            base = np.array([first.field_scores[x] for x in fields], dtype=float)
            self._first, self._base, self._scale = first, base, np.maximum(np.abs(base), 1e-8)
            self._gains.clear()
        return self._base, self._scale

    def gains(self, i: int, fb: Feedback, fields: tuple[str, ...]) -> np.ndarray:
        """``g(i)·GAIN_SCALE`` of feedback ``fb`` at stage ``i`` (after :meth:`reference`)."""
        hit = self._gains.get(i)
        if hit is not None and hit[0] is fb:
            return hit[1]
        row = (np.array([fb.field_scores[x] for x in fields], dtype=float) - self._base) / self._scale * GAIN_SCALE
        self._gains[i] = (fb, row)
        return row

    def shares(self, i: int, w: Weights, fm: np.ndarray) -> np.ndarray:
        """The field shares ``fm @ w`` of mixture ``w`` (stage ``i``'s; ``fm`` the space's field matrix)."""
        hit = self._shares.get(i)
        if hit is not None and hit[0] is w and hit[1] is fm:
            return hit[2]
        row = fm @ w.as_array()
        self._shares[i] = (w, fm, row)
        return row

    def field_weights(self, space: DomainSpace, objective: Objective) -> np.ndarray:
        """:func:`field_weight_vector` of ``objective`` over ``space`` (kept while both are the same objects)."""
        hit = self._weights
        if hit is not None and hit[0] is objective and hit[1] is space:
            return hit[2]
        c = field_weight_vector(space, objective)
        self._weights = (objective, space, c)
        return c

    def keep_from(self, first: int) -> None:
        """Drop the rows of stages before ``first``."""
        for rows in (self._gains, self._shares):
            for i in [i for i in rows if i < first]:
                del rows[i]


def encode(history: History, horizon: int, spec: ActionSpec, objective: Objective | None = None,
           version: str = ENCODER_VERSION, cache: EncodeCache | None = None) -> np.ndarray:
    """The observation after the latest feedback (see the module docstring for the layout);
    ``objective`` (default ``Objective()``) fills the objective slice of ``obs-v2``. With a ``cache``
    (one per run), the rows an earlier call computed are reused: the same numbers, less work."""
    _check_version(version)
    if not history.feedback:
        raise ContractError("history: cannot encode a history without the initial feedback")
    if horizon < 1:
        raise ContractError(f"horizon: must be >= 1, got {horizon}")
    space = history.space
    f = len(space.fields)
    t = len(history.feedback) - 1
    # Only the window is read (the start, the newest W+1 feedbacks and W+1 mixtures), so a decision
    # costs the same at stage 4000 as at stage 10; row by row these are the numbers
    # relative_gains(history) and the full list of field shares would give (elementwise maths).
    fields = space.fields
    fb = history.feedback
    rows = cache if cache is not None else EncodeCache()
    rows.reference(fb[0], fields)
    g = {i: rows.gains(i, fb[i], fields) for i in range(max(t - WINDOW, 0), t + 1)}
    fm = space.field_matrix()
    prior_shares = space.field_priors()
    weights = history.weights
    if cache is not None:
        cache.keep_from(t - WINDOW - 1)

    def gain_at(i: int) -> np.ndarray:
        return g[i] if i >= 0 else np.zeros(f)

    def shares_at(i: int) -> np.ndarray:
        return rows.shares(i, weights[i], fm) if 0 <= i < min(len(weights), t) else prior_shares

    parts = [
        g[t],
        g[t] - gain_at(t - 1) if t > 0 else np.zeros(f),
        shares_at(t - 1),
        np.array([t / horizon]),
    ]
    parts += [gain_at(t - k) for k in range(1, WINDOW + 1)]
    parts += [shares_at(t - 1 - k) for k in range(1, WINDOW + 1)]
    if spec.level == "domain":
        names = space.names
        first = np.array([fb[0].domain_losses[n] for n in names], dtype=float)
        now = np.array([fb[t].domain_losses[n] for n in names], dtype=float)
        rel = (now - first) / np.maximum(np.abs(first), 1e-8) * GAIN_SCALE
        last = weights[t - 1].as_array() if t > 0 else space.priors()
        parts += [rel, last]
    if version == "obs-v2":
        objective = objective or Objective()
        parts.append(objective_features(g[t] / GAIN_SCALE, space, objective, rows.field_weights(space, objective)))
    obs = np.concatenate(parts)
    return np.clip(obs, -OBS_BOUND, OBS_BOUND).astype(np.float32)
