"""Per-domain share bounds set at run creation: every decision of every policy meets them, the
history (what a learned policy observes) holds the projected mixtures, they survive a restart, and
contradictory bounds are a 422 naming them while runs already served go on."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from mixagent.service.server.main import create_app
from tests.service.conftest import DOMAINS, auth, feedback_body, run_body

BOUNDED = [{**DOMAINS[0], "max_share": 0.3}, {**DOMAINS[1], "min_share": 0.25}, DOMAINS[2]]


def _meets(weights: dict[str, float]) -> bool:
    return weights["web"] <= 0.3 + 1e-9 and weights["code"] >= 0.25 - 1e-9 and abs(sum(weights.values()) - 1) < 1e-9


@pytest.mark.parametrize("policy", ["uniform", "prior", "fixed-target-share", "loss-softmax"])
def test_every_decision_meets_the_bounds(client, policy):
    run = client.post("/v1/runs", json=run_body(domains=BOUNDED, policy=policy), headers=auth()).json()
    assert _meets(run["weights"]), run["weights"]
    decisions = [client.post(f"/v1/runs/{run['run_id']}/feedback", json=feedback_body(step), headers=auth()).json()
                 for step in (0, 10, 20, 30)]
    assert all(_meets(d["weights"]) for d in decisions)
    got = client.get(f"/v1/runs/{run['run_id']}", headers=auth()).json()
    assert [d.get("min_share") for d in got["domains"]] == [None, 0.25, None]
    assert [d.get("max_share") for d in got["domains"]] == [0.3, None, None]
    # the stored history (what a policy observes next) is the projected mixture, not the raw one
    assert [h["weights"] for h in got["history"]] == [d["weights"] for d in decisions]


def test_prior_projection_keeps_the_free_domains_ratio(client):
    # priors 3:1:1 -> web 0.6, code 0.2, proofs 0.2; web capped at 0.3, and code and proofs share the
    # rest 1:1 (0.35 each, which meets code's minimum 0.25)
    run = client.post("/v1/runs", json=run_body(domains=BOUNDED, policy="prior"), headers=auth()).json()
    assert run["weights"] == pytest.approx({"web": 0.3, "code": 0.35, "proofs": 0.35})
    low = [DOMAINS[0], {**DOMAINS[1], "min_share": 0.3}, DOMAINS[2]]
    run = client.post("/v1/runs", json=run_body(domains=low, policy="prior"), headers=auth()).json()
    assert run["weights"] == pytest.approx({"web": 0.525, "code": 0.3, "proofs": 0.175})  # web:proofs stays 3:1
    free = [{**DOMAINS[0], "max_share": 0.4}, DOMAINS[1], DOMAINS[2]]
    run = client.post("/v1/runs", json=run_body(domains=free, policy="prior"), headers=auth()).json()
    assert run["weights"] == pytest.approx({"web": 0.4, "code": 0.3, "proofs": 0.3})  # code:proofs stays 1:1


def test_bounds_survive_a_restart(settings):
    with TestClient(create_app(settings)) as c:
        rid = c.post("/v1/runs", json=run_body(domains=BOUNDED, policy="prior"), headers=auth()).json()["run_id"]
        c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(0), headers=auth())
    with TestClient(create_app(settings)) as c:
        d = c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(10), headers=auth()).json()
        assert _meets(d["weights"]) and d["weights"]["web"] == pytest.approx(0.3)


@pytest.mark.parametrize(("domains", "message"), [
    ([{**DOMAINS[0], "min_share": 0.7}, {**DOMAINS[1], "min_share": 0.5}, DOMAINS[2]],
     "the minimum shares sum to 1.2 (web 0.7, code 0.5)"),
    ([{**d, "max_share": 0.2} for d in DOMAINS], "they sum to 0.6"),
    ([{**DOMAINS[0], "min_share": 0.5, "max_share": 0.4}, DOMAINS[1], DOMAINS[2]],
     "min_share of 'web' (0.5) exceeds its max_share (0.4)"),
    ([{**DOMAINS[0], "max_share": 1.5}, DOMAINS[1], DOMAINS[2]], "domains.0.max_share"),
])
def test_contradictory_bounds_are_422_and_served_runs_go_on(client, domains, message):
    served = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    assert client.post(f"/v1/runs/{served}/feedback", json=feedback_body(0), headers=auth()).status_code == 200
    r = client.post("/v1/runs", json=run_body(domains=domains), headers=auth())
    assert r.status_code == 422 and message in r.json()["detail"], r.json()
    assert client.post(f"/v1/runs/{served}/feedback", json=feedback_body(10), headers=auth()).status_code == 200
