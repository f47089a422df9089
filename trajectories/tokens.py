"""The per-domain observation (``dom-v1``): one token per domain and one run token, for policies that
serve any domain space (pure numpy, versioned like :mod:`mixagent.trajectories.encoding`).

A fixed-width observation ties a network to one number of domains. ``dom-v1`` describes each domain
by features that mean the same whatever the space (scale-free, relative to the start of the run and
to the space's size), so a network that treats the tokens as a set (the same weights for every
token, attention between them) is equivariant to the order of the domains and reads 2, 12 or 40
domains alike. Only the window is read, so a decision costs the same at every stage.

Domain token (``K`` rows, :data:`DOMAIN_FEATURES`; ``K·w`` is a share relative to uniform):

| feature            | meaning                                                                     |
|--------------------|-----------------------------------------------------------------------------|
| ``is_source``      | 1 for a domain of the source field, 0 for a target field's                  |
| ``loss_change``    | ``(ℓ_k(t) − ℓ_k(0)) / |ℓ_k(0)|`` × GAIN_SCALE: forgotten (> 0) or learned (< 0) |
| ``loss_last``      | the same over the last stage only (0 at t = 0)                              |
| ``share_0``…``share_W`` | ``log(K·w_k)`` of the newest mixture and the W before it (priors before the run) |
| ``field_share``    | ``log(F·s_f)``: the share of the domain's field in the newest mixture        |
| ``field_gain``     | ``g_f`` × GAIN_SCALE of the domain's field (its relative score gain)         |
| ``field_weight``   | ``F·c_f``: the objective's weight of the domain's field, relative to equal   |
| ``field_value``    | ``∂B/∂g_f``: what one more unit of the field's gain is worth now (× F)       |

Run token (:data:`RUN_FEATURES`): ``progress`` t/T, ``spread_penalty`` λ, ``mean_gain`` and
``gain_spread`` (the c-weighted mean and spread of the field gains, × GAIN_SCALE). The number of
domains is deliberately no feature: every share is relative to it, and a space larger than any seen
in training must not read as out of range. Nor is a domain's prior: every training setting so far
has equal priors, so a network could learn nothing from one, and the guard would send every space
with unequal priors to the fallback; the prior reaches the mixture only through its ``ε·prior``
floor. Everything is clipped to ``[-OBS_BOUND, OBS_BOUND]``.
"""

from __future__ import annotations

import numpy as np

from mixagent.trajectories.contract import SOURCE_FIELD, ContractError, History, Objective
from mixagent.trajectories.encoding import GAIN_SCALE, OBS_BOUND, WINDOW, objective_features

__all__ = ["TOKEN_ENCODER_VERSION", "TOKEN_ENCODER_VERSIONS", "DOMAIN_FEATURES", "RUN_FEATURES",
           "OWN_MIXTURE_FEATURES", "encode_tokens"]

TOKEN_ENCODER_VERSION = "dom-v1"
TOKEN_ENCODER_VERSIONS = ("dom-v1",)
DOMAIN_FEATURES: tuple[str, ...] = (
    "is_source", "loss_change", "loss_last",
    *(f"share_{i}" for i in range(WINDOW + 1)),
    "field_share", "field_gain", "field_weight", "field_value",
)
RUN_FEATURES: tuple[str, ...] = ("progress", "spread_penalty", "mean_gain", "gain_spread")
OWN_MIXTURE_FEATURES: tuple[str, ...] = tuple(f for f in DOMAIN_FEATURES
                                              if f.startswith("share_") or f == "field_share")
"""The token features that describe the policy's own past mixtures (the window and the field share)."""


def encode_tokens(history: History, horizon: int, objective: Objective | None = None,
                  version: str = TOKEN_ENCODER_VERSION) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [K, len(DOMAIN_FEATURES)], run [len(RUN_FEATURES)])`` after the latest feedback
    (see the module docstring), float32."""
    if version not in TOKEN_ENCODER_VERSIONS:
        raise ContractError(f"encoder_version: unknown token encoder {version!r} "
                            f"(known: {list(TOKEN_ENCODER_VERSIONS)})")
    if not history.feedback:
        raise ContractError("history: cannot encode a history without the initial feedback")
    if horizon < 1:
        raise ContractError(f"horizon: must be >= 1, got {horizon}")
    objective = objective or Objective()
    space = history.space
    k, fields = space.size, space.fields
    f = len(fields)
    fb, weights = history.feedback, history.weights
    t = len(fb) - 1
    names = space.names
    first = np.array([fb[0].domain_losses[n] for n in names], dtype=float)
    now = np.array([fb[t].domain_losses[n] for n in names], dtype=float)
    before = np.array([fb[t - 1].domain_losses[n] for n in names], dtype=float) if t > 0 else now
    scale = np.maximum(np.abs(first), 1e-8)
    loss_change = (now - first) / scale * GAIN_SCALE
    loss_last = (now - before) / scale * GAIN_SCALE
    prior = space.priors()

    def mixture(i: int) -> np.ndarray:  # the mixture trained i stages before the newest (priors before)
        j = min(len(weights), t) - 1 - i
        return weights[j].as_array() if j >= 0 else prior

    shares = [np.log(k * np.maximum(mixture(i), 1e-12)) for i in range(WINDOW + 1)]
    base = np.array([fb[0].field_scores[x] for x in fields], dtype=float)
    gains = (np.array([fb[t].field_scores[x] for x in fields], dtype=float) - base) / np.maximum(np.abs(base), 1e-8)
    obj = objective_features(gains, space, objective)  # [λ, c_1..c_F, ∂B/∂g_1..∂B/∂g_F]
    c, value = obj[1:1 + f], obj[1 + f:]
    m = space.field_matrix()
    of = np.argmax(m, axis=0)  # each domain's field index
    field_share = np.log(f * np.maximum(m @ mixture(0), 1e-12))
    is_source = np.array([d.field == SOURCE_FIELD for d in space.domains], dtype=float)
    tokens = np.column_stack([
        is_source, loss_change, loss_last, *shares,
        field_share[of], gains[of] * GAIN_SCALE, f * c[of], f * value[of],
    ])
    mean = float(gains @ c)
    spread = float(np.sqrt(((gains - mean) ** 2) @ c))
    run = np.array([t / horizon, objective.spread_penalty, mean * GAIN_SCALE, spread * GAIN_SCALE])
    return (np.clip(tokens, -OBS_BOUND, OBS_BOUND).astype(np.float32),
            np.clip(run, -OBS_BOUND, OBS_BOUND).astype(np.float32))
