"""Property-based tests over the OpenAPI schema (schemathesis): no 5xx, every response matches
the schema, invalid input is rejected. Every operation runs with a valid token, in positive and
negative generation; the feedback route also runs against a real run, so generated bodies reach the
run's rules and not only its 404.

(schemathesis' pytest plugin does not run under pytest 9 yet, so each operation's strategy is driven
with hypothesis directly.)"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.testclient import TestClient

from mixagent.service.server.main import create_app
from tests.service.conftest import auth, make_settings, run_body

APP = create_app(make_settings(Path(tempfile.mkdtemp(prefix="mixagent-schemathesis-"))))
# Schema-invalid input may be refused by a size limit before validation (1001 run ids in a query
# string are over the 8 KiB URL limit): 413, 414 and 431 count as rejections too.
REJECTIONS = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413", "414", "431"]
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}})
SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", APP, config=CONFIG)
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}
# Schema-valid input may still break a run's rules (an unknown policy name, domains that are not the
# run's, a step already recorded): those are documented 4xx answers, so the "schema-valid data must
# be accepted" check is off. Every other check runs: no 5xx, status codes, content types, headers and
# bodies conform to the schema, and schema-invalid data is rejected.
EXCLUDED = [positive_data_acceptance]
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.fixture(scope="module")
def run_id() -> str:
    with TestClient(APP) as c:
        return str(c.post("/v1/runs", json=run_body(horizon=1000), headers=auth()).json()["run_id"])


def test_every_route_is_in_the_schema():
    assert set(OPERATIONS) == {
        "POST /v1/runs", "GET /v1/runs", "GET /v1/runs/{run_id}", "POST /v1/runs/{run_id}/feedback",
        "GET /v1/policies", "POST /v1/policies/load", "GET /v1/trajectories",
        "GET /healthz", "GET /readyz", "GET /metrics",
    }


def _call(case) -> None:  # type: ignore[no-untyped-def]
    """Send with a valid token, unless the case deliberately broke the headers (then it must be
    refused as it is: 401)."""
    broken = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
    case.call_and_validate(headers=None if broken else auth(), excluded_checks=EXCLUDED)


def _takes_input(op) -> bool:  # type: ignore[no-untyped-def]
    return any(len(x) for x in (op.path_parameters, op.query, op.body))


CASES = [(label, GenerationMode.POSITIVE) for label in sorted(OPERATIONS)] + [
    (label, GenerationMode.NEGATIVE) for label, op in sorted(OPERATIONS.items()) if _takes_input(op)
]


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{lbl}-{m.value}" for lbl, m in CASES])
def test_operation_conforms_to_its_schema(label, mode):
    @given(case=OPERATIONS[label].as_strategy(generation_mode=mode))
    @EXAMPLES
    def check(case):  # type: ignore[no-untyped-def]
        _call(case)

    check()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_feedback_on_a_real_run_conforms(run_id, mode):
    op = OPERATIONS["POST /v1/runs/{run_id}/feedback"]

    @given(case=op.as_strategy(generation_mode=mode, path_parameters={"run_id": run_id}))
    @EXAMPLES
    def check(case):  # type: ignore[no-untyped-def]
        _call(case)

    check()
