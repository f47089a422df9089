import math

import numpy as np
import pytest
from pydantic import ValidationError

from mixagent.trajectories import (
    WEIGHT_FLOOR,
    ContractError,
    DomainSpace,
    Feedback,
    History,
    Weights,
)

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["math"]}, {"web": 2.0})


def fb(step: int, src: float = -3.0, tgt: float = -4.0) -> Feedback:
    return Feedback(
        step=step,
        tokens_seen=step * 10,
        field_scores={"source": src, "target": tgt},
        domain_losses={"web": 3.0, "code": 2.5, "math": 4.0},
    )


def test_space_orders_fields_source_first_and_normalises_priors():
    space = DomainSpace.from_fields({"target": ["math"], "source": ["web", "code"]}, {"web": 2.0})
    assert space.fields == ("source", "target")
    np.testing.assert_allclose(space.priors(), [0.25, 0.5, 0.25])
    np.testing.assert_allclose(space.field_priors(), [0.75, 0.25])  # domains keep their order (math first)
    assert space.domains_of("source") == ("web", "code")


def test_space_rejects_duplicates_and_bad_priors():
    with pytest.raises(ValidationError, match="duplicate domain name"):
        DomainSpace.from_fields({"source": ["a"], "target": ["a"]})
    with pytest.raises(ValidationError, match="prior"):
        DomainSpace.from_fields({"source": ["a"], "target": ["b"]}, {"a": 0.0})


def test_weights_from_raw_normalises_once_and_respects_floor():
    w = Weights.from_raw([1.0, 0.0, 3.0])
    v = w.as_array()
    assert math.isclose(v.sum(), 1.0, abs_tol=1e-12)
    assert v.min() >= WEIGHT_FLOOR * (1 - 1e-9)
    assert v[2] > v[0] > v[1]  # order is kept
    np.testing.assert_allclose(Weights.from_raw([2, 2, 4]).values, [0.25, 0.25, 0.5])


@pytest.mark.parametrize(
    "raw, msg", [([1.0, float("nan")], "non-finite"), ([-1.0, 2.0], "non-negative"), ([], "empty")]
)
def test_weights_from_raw_rejects_bad_input(raw, msg):
    with pytest.raises(ContractError, match=msg):
        Weights.from_raw(raw)


def test_weights_constructor_checks_sum_and_floor():
    with pytest.raises(ValidationError, match="sum"):
        Weights(values=(0.5, 0.6))
    with pytest.raises(ValidationError, match="below the floor"):
        Weights(values=(1.0, 0.0))
    with pytest.raises(ValidationError):
        Weights(values=(float("inf"), 0.5))


def test_weights_of_mapping_names_missing_and_unknown_domains():
    with pytest.raises(ContractError, match=r"missing domains \['math'\], unknown domains \['law'\]"):
        Weights.of(SPACE, {"web": 1, "code": 1, "law": 1})
    assert Weights.of(SPACE, {"web": 1, "code": 1, "math": 2}).as_dict(SPACE)["math"] == pytest.approx(0.5)


def test_feedback_rejects_nan_and_negative_step():
    with pytest.raises(ValidationError):
        fb(0, src=float("nan"))
    with pytest.raises(ValidationError):
        fb(-1)


def test_history_invariants_and_appends():
    h = History(space=SPACE, feedback=[fb(0)])
    with pytest.raises(ContractError, match="feedback without weights"):
        h.record_feedback(fb(10))
    h.record_weights(Weights.from_raw([1, 1, 1]))
    with pytest.raises(ContractError, match="cannot choose weights now"):
        h.record_weights(Weights.from_raw([1, 1, 1]))
    with pytest.raises(ContractError, match="does not come after"):
        h.record_feedback(fb(0))
    h.record_feedback(fb(10, src=-2.9))
    assert h.stages == 1
    assert h.field_scores().shape == (2, 2)
    with pytest.raises(ContractError, match="2 values for 3 domains"):
        h.record_weights(Weights.from_raw([1, 1]))
    bad = fb(20).model_copy(update={"domain_losses": {"web": 1.0}})
    h.record_weights(Weights.from_raw([1, 1, 1]))
    with pytest.raises(ContractError, match="domain_losses"):
        h.record_feedback(bad)
    # round trip through JSON keeps everything
    again = History.model_validate_json(h.model_dump_json())
    assert again == h


def test_history_validation_on_load_names_the_problem():
    with pytest.raises(ValidationError, match="steps must increase"):
        History(space=SPACE, feedback=[fb(5), fb(5)], weights=[Weights.from_raw([1, 1, 1])])
    with pytest.raises(ValidationError, match=r"history.feedback\[0\]"):
        History(space=SPACE, feedback=[fb(0).model_copy(update={"field_scores": {"source": 1.0}})])


def test_stable_hash_is_order_free_for_mappings_and_refuses_sets():
    from mixagent.trajectories.contract import stable_hash

    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": [1, 2]}) != stable_hash({"a": [2, 1]})
    with pytest.raises(TypeError, match="a set has no stable order"):
        stable_hash({"families": {"constant", "cycle"}})


@pytest.mark.parametrize("seed", range(20))
def test_from_raw_weights_pass_the_checks_it_skips(seed):
    """from_raw builds without re-running the constructor's checks: its output must pass them
    (extreme inputs too: a share far below the floor, one dominant share, many domains)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    raw = rng.random(n) ** float(rng.choice([1.0, 8.0, 40.0])) * 10.0 ** float(rng.uniform(-6, 6))
    if n > 1 and seed % 3 == 0:
        raw[0] = 0.0
    w = Weights.from_raw(raw)
    assert Weights.model_validate(w.model_dump()) == w
    assert isinstance(w.values, tuple) and all(type(v) is float for v in w.values)
    assert min(w.values) >= WEIGHT_FLOOR * (1 - 1e-9) and math.isclose(sum(w.values), 1.0, abs_tol=1e-9)


def test_within_field_priors_spread_each_fields_share_by_the_domain_priors():
    m, p = SPACE.field_matrix(), SPACE.priors()
    assert np.array_equal(SPACE.within_field_priors(), p / (m.T @ (m @ p)))
    assert np.allclose(m @ SPACE.within_field_priors(), 1.0)
