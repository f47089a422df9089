"""A trainer-side method (TANDEM) needs the trainer's model: the service refuses it by name, clearly,
instead of calling it unknown or serving something else."""

from __future__ import annotations

import pytest

from mixagent.agent.registry import TRAINER_SIDE_METHODS
from mixagent.service.server.registry import PolicyRegistry
from mixagent.trajectories import ContractError
from tests.service.conftest import auth, run_body


def test_the_registry_refuses_a_trainer_side_method_saying_why():
    for name in TRAINER_SIDE_METHODS:
        with pytest.raises(ContractError, match=f"policy: '{name}' is a trainer-side method: .* so it needs the "
                                                "trainer's model"):
            PolicyRegistry().get(name)


def test_a_run_asking_for_tandem_is_a_422_that_says_it_needs_the_trainers_model(client):
    r = client.post("/v1/runs", json=run_body(policy="tandem"), headers=auth())
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "'tandem' is a trainer-side method" in detail and "needs the trainer's model" in detail
    assert "unknown policy" not in detail
