"""Share bounds: the projection meets them, keeps the policy's proportions, is the KL-closest
mixture in the box, and contradictory bounds are refused naming them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from mixagent.trajectories import DomainSpace, Weights
from mixagent.trajectories.bounds import ShareBounds
from mixagent.trajectories.contract import ContractError

SPACE = DomainSpace.from_fields({"source": ["web", "code", "books", "wiki"], "target": ["proofs", "papers"]})


def test_projection_meets_the_bounds_and_keeps_ratios_of_free_domains():
    b = ShareBounds(SPACE, low={"code": 0.2}, high={"web": 0.1, "proofs": 0.3})
    v = Weights.from_raw([0.5, 0.05, 0.1, 0.05, 0.2, 0.1])
    w = b.project(v).as_array()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert w[0] == pytest.approx(0.1) and w[1] == pytest.approx(0.2)
    assert w[4] <= 0.3 + 1e-12
    free = [2, 3, 5]
    np.testing.assert_allclose(w[free] / w[free].sum(), v.as_array()[free] / v.as_array()[free].sum(), rtol=1e-9)
    # a mixture that meets the bounds is returned unchanged
    inside = Weights.from_raw([0.1, 0.3, 0.2, 0.1, 0.2, 0.1])
    assert b.project(inside) == inside


def test_projection_is_the_kl_closest_mixture_in_the_box():
    rng = np.random.default_rng(0)
    for _ in range(5):
        low = dict(zip(SPACE.names, rng.uniform(0, 0.1, 6), strict=True))
        high = dict(zip(SPACE.names, rng.uniform(0.2, 0.5, 6), strict=True))
        b = ShareBounds(SPACE, low, high)
        v = Weights.from_raw(rng.dirichlet(np.full(6, 0.3)) + 1e-3)
        w = b.project(v).as_array()
        vv = v.as_array()
        res = minimize(lambda x, vv=vv: float(np.sum(x * np.log(x / vv))), x0=np.clip(vv, b.low, b.high),
                       bounds=list(zip(b.low, b.high, strict=True)), method="SLSQP",
                       constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}], options={"ftol": 1e-14})
        kl = float(np.sum(w * np.log(w / vv)))
        assert kl <= res.fun + 1e-8
        assert b.satisfied(Weights(values=tuple(w)))


@pytest.mark.parametrize(("low", "high", "message"), [
    ({"web": 0.6, "code": 0.5}, {}, r"minimum shares sum to 1.1 \(web 0.6, code 0.5\)"),
    ({}, dict.fromkeys(SPACE.names, 0.1), "they sum to 0.6"),
    ({"web": 0.4}, {"web": 0.3}, r"min_share of 'web' \(0.4\) exceeds its max_share \(0.3\)"),
    ({"nope": 0.1}, {}, r"min_share: unknown domain\(s\) \['nope'\]"),
    ({}, {"web": 1e-6}, "below the smallest share"),
    ({"web": float("nan")}, {}, "must be a share in"),
])
def test_contradictory_bounds_are_refused_naming_them(low, high, message):
    with pytest.raises(ContractError, match=message):
        ShareBounds(SPACE, low, high)


def test_bounds_round_trip_through_json():
    b = ShareBounds(SPACE, {"code": 0.2}, {"web": 0.3})
    again = ShareBounds.from_json(SPACE, b.to_json())
    assert again.min_share == {"code": 0.2} and again.max_share == {"web": 0.3}
    assert ShareBounds.from_json(SPACE, None).empty
