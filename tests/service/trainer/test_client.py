"""The trainer-side client against a real server on loopback: the loop, retries that resend the same
step, typed errors, and training on through an outage."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from mixagent.service.trainer.client import (
    AuthError,
    MixingClient,
    MixingRun,
    RequestRejected,
    RunNotFound,
    ServiceUnavailable,
    StepConflict,
)
from mixagent.trajectories import DomainSpace, Feedback
from tests.service.conftest import OTHER, TOKEN, feedback_body, free_port

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs"]}, {"web": 3.0})


def fb(step: int, **kw) -> Feedback:  # type: ignore[no-untyped-def]
    return Feedback(**feedback_body(step, **kw))


class LoseFirstAnswer(httpx.BaseTransport):
    """Forwards every request; for the first feedback post, drops the answer after the server has
    processed it (what a timeout on a slow network looks like), then serves 503 once."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.feedback_attempts = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/feedback"):
            self.feedback_attempts += 1
            if self.feedback_attempts == 1:
                self.inner.handle_request(request).read()
                raise httpx.ReadTimeout("answer lost", request=request)
            if self.feedback_attempts == 2:
                return httpx.Response(503, json={"detail": "busy"})
        return self.inner.handle_request(request)


def test_the_loop_through_the_client(server):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=10, policy="loss-softmax", setting_name="unit")
        assert run.weights_array() == pytest.approx([0.6, 0.2, 0.2])
        first_mixture = run.mixture_id
        for step in (0, 10, 20):
            run.report(fb(step))
        assert run.done and run.mixture_id != first_mixture
        stored = client.get_run(run.run_id)
        assert [h["step"] for h in stored["history"]] == [0, 10, 20]
        assert stored["history"][-1]["weights"] == run.weights
        assert stored["history"][1]["trained_on"] == stored["history"][0]["decision_id"]
        assert {p["name"] for p in client.policies()} >= {"uniform", "loss-softmax"}
        assert len(client.export_trajectories([run.run_id])) == 1


def test_retries_resend_the_same_step_and_get_the_stored_decision(server):
    transport = LoseFirstAnswer()
    with MixingClient(server.url, TOKEN, transport=transport, backoff_s=0.01) as client:
        run = client.start_run(SPACE, horizon=3, interval=10)
        d = client.post_feedback(run.run_id, fb(0))
        assert transport.feedback_attempts == 3
        assert d.replayed  # the first attempt was recorded; its answer was lost
        assert client.get_run(run.run_id)["history"][0]["decision_id"] == d.decision_id
        assert client.get_run(run.run_id)["decisions"] == 1


def test_rejections_raise_typed_errors(server):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=3, interval=10)
        client.post_feedback(run.run_id, fb(10))
        with pytest.raises(StepConflict, match="does not come after the last recorded step 10"):
            client.post_feedback(run.run_id, fb(5))
        with pytest.raises(RequestRejected) as e:
            client.create_run(SPACE, horizon=0, interval=1)
        assert e.value.status == 422 and "body.horizon" in e.value.detail
    with MixingClient(server.url, OTHER) as other, pytest.raises(RunNotFound):
        other.get_run(run.run_id)
    with MixingClient(server.url, "wrong") as bad, pytest.raises(AuthError):
        bad.policies()


class LoseFirstCreation(httpx.BaseTransport):
    """Forwards every request; drops the answer to the first run creation after the server has
    created the run (a read timeout on a slow network)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.creations = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/v1/runs":
            self.creations += 1
            if self.creations == 1:
                self.inner.handle_request(request).read()
                raise httpx.ReadTimeout("answer lost", request=request)
        return self.inner.handle_request(request)


def test_a_lost_answer_to_run_creation_does_not_create_a_second_run(server):
    transport = LoseFirstCreation()
    with MixingClient(server.url, TOKEN, transport=transport, backoff_s=0.01) as client:
        run = client.start_run(SPACE, horizon=2, interval=10, policy="loss-softmax")
        assert transport.creations == 2  # the retry, with the same Idempotency-Key
        listed = client._request("GET", "/v1/runs").json()
        assert listed["count"] == 1 and listed["data"][0]["run_id"] == run.run_id
        run.report(fb(0))
        assert client.get_run(run.run_id)["decisions"] == 1
        # the same key with another body is refused, not merged
        client.create_run(SPACE, horizon=2, interval=10, idempotency_key="k-1")
        with pytest.raises(StepConflict, match="Idempotency-Key: 'k-1' was used for another run creation"):
            client.create_run(SPACE, horizon=3, interval=10, idempotency_key="k-1")
        run.close()


def test_a_dead_service_costs_the_loop_almost_nothing_and_gets_the_backlog_later(server, caplog):
    """Before: each unanswered report blocked 2.5-2.9 s (the client's retries). Now the first report
    after the service died waits for one failed attempt, later ones at most one immediate retry; the
    feedbacks are delivered in order once the service answers, each naming the mixture trained on."""
    client = MixingClient(server.url, TOKEN)
    run = client.start_run(SPACE, horizon=6, interval=10, policy="loss-softmax")
    w0 = run.report(fb(0))
    d0 = run.mixture_id
    dead = f"http://127.0.0.1:{free_port()}"
    run.client = MixingClient(dead, TOKEN)  # the default retries and backoff: what made each report cost seconds
    with caplog.at_level(logging.WARNING, logger="mixagent.service.trainer.client"):
        t0 = time.perf_counter()
        blocked = []
        for step in (10, 20, 30):
            t = time.perf_counter()
            assert run.report(fb(step, t=step // 10)) == w0
            blocked.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    print(f"reports to a dead service blocked {[round(b * 1000, 1) for b in blocked]} ms")
    assert max(blocked) < 0.5 and total < 1.0, blocked
    assert run.missed == [10, 20, 30] and run.mixture_id == d0
    assert "unreachable at step 10" in caplog.text and "keeping the last weights" in caplog.text
    with pytest.raises(ServiceUnavailable, match="no answer after 5 attempts"):
        MixingClient(dead, TOKEN, backoff_s=0.01).policies()
    # back online: the backlog goes out first, in order, each saying it trained on d0 all along
    run.client = MixingClient(server.url, TOKEN)
    w = run.report(fb(40, t=4))
    assert run.flush(10)
    history = run.client.get_run(run.run_id)["history"]
    assert [h["step"] for h in history] == [0, 10, 20, 30, 40]
    assert [h["trained_on"] for h in history[1:]] == [d0] * 4
    assert w in (w0, history[-1]["weights"])  # the decision for step 40 if it came within the probe
    run.close()


def test_a_run_starts_before_the_service_answers_and_attaches_when_it_does(app):
    from mixagent.service.trainer.demo import BackgroundServer

    port = free_port()
    with MixingClient(f"http://127.0.0.1:{port}", TOKEN, backoff_s=0.01, max_backoff_s=0.05) as client:
        t = time.perf_counter()
        run = client.start_run(SPACE, horizon=4, interval=10, policy="loss-softmax")
        assert not run.attached and run.weights == pytest.approx({"web": 0.6, "code": 0.2, "proofs": 0.2})
        assert run.report(fb(0)) == run.weights and run.report(fb(10)) == run.weights
        assert time.perf_counter() - t < 5  # the retries of start_run, then nothing
        with BackgroundServer(app, port=port):
            run.report(fb(20, t=2))
            assert run.flush(10) and run.attached
            stored = client.get_run(run.run_id)
            listed = client._request("GET", "/v1/runs").json()
        run.close()
    assert listed["count"] == 1  # one run, created once
    assert stored["initial_weights"] == pytest.approx({"web": 0.6, "code": 0.2, "proofs": 0.2})  # the priors
    assert stored["initial_served_by"]["fallback"] == "trainer"
    assert [h["step"] for h in stored["history"]] == [0, 10, 20]
    # the stages before the service answered trained on the priors: the history says so
    assert [h["trained_on"] for h in stored["history"][1:]] == [stored["initial_mixture_id"]] * 2


def test_a_finished_run_ends_gracefully_on_the_trainer_side(server, caplog):
    """horizon counts decisions: horizon 1 takes 2 feedbacks. Reports past it are not sent (and a 409
    'done' from the service, e.g. when another process finished the run, ends the run too)."""
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=1, interval=10, policy="loss-softmax")
        run.report(fb(0))
        last = run.report(fb(10))
        assert run.done
        with caplog.at_level(logging.WARNING, logger="mixagent.service.trainer.client"):
            assert run.report(fb(20)) == last and run.report(fb(30)) == last
        assert caplog.text.count("is done") == 1 and "horizon counts decisions" in caplog.text
        assert client.get_run(run.run_id)["decisions"] == 2
        other = MixingRun(client, SPACE, {"run_id": run.run_id, "policy": run.policy,
                                          "policy_version": run.policy_version,
                                          "mixture_id": run.initial_mixture_id, "weights": last})
        assert other.report(fb(40)) == last and other.done  # the service's 409 'done'
        run.close()
        other.close()


def test_a_rejected_feedback_is_raised_at_the_report(server):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=3, interval=10)
        run.report(fb(10))
        with pytest.raises(StepConflict, match="does not come after the last recorded step 10"):
            run.report(fb(5))
        run.report(fb(20))  # the run goes on
        assert [h["step"] for h in client.get_run(run.run_id)["history"]] == [10, 20]
        run.close()


def test_share_bounds_reach_the_service_through_the_client(server):
    from mixagent.trajectories.bounds import ShareBounds

    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=10, policy="loss-softmax",
                               bounds=ShareBounds(SPACE, low={"proofs": 0.3}, high={"web": 0.5}))
        assert run.weights_array() == pytest.approx([0.5, 0.2, 0.3])  # priors 0.6/0.2/0.2 projected
        for step in (0, 10, 20):
            run.report(fb(step))
            assert run.weights["web"] <= 0.5 + 1e-9 and run.weights["proofs"] >= 0.3 - 1e-9
        assert client.get_run(run.run_id)["domains"][0]["max_share"] == 0.5


def test_a_run_started_offline_trains_on_the_priors_projected_onto_its_bounds():
    from mixagent.trajectories.bounds import ShareBounds

    with MixingClient(f"http://127.0.0.1:{free_port()}", TOKEN, backoff_s=0.01, max_backoff_s=0.05) as client:
        run = client.start_run(SPACE, horizon=2, interval=10, bounds=ShareBounds(SPACE, high={"web": 0.4}))
        assert not run.attached and run.weights == pytest.approx({"web": 0.4, "code": 0.3, "proofs": 0.3})
        run.close()


def test_runs_plot_draws_a_run_from_the_service(server, tmp_path):
    from typer.testing import CliRunner

    from mixagent.cli import app

    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=2, interval=10, policy="loss-softmax")
        for step in (0, 10, 20):
            run.report(fb(step))
        run.flush(10)
    runner = CliRunner()
    out = tmp_path / "run.png"
    r = runner.invoke(app, ["runs", "plot", run.run_id, "--url", server.url, "--token", TOKEN, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"2 stages of run {run.run_id}" in r.output and out.stat().st_size > 10_000
    r = runner.invoke(app, ["runs", "plot", "0" * 32, "--url", server.url, "--token", TOKEN])
    assert r.exit_code == 2 and "runs plot: 404: run_id: no run '000" in r.output
    with MixingClient(server.url, TOKEN) as client:
        fresh = client.create_run(SPACE, horizon=2, interval=10)["run_id"]
    r = runner.invoke(app, ["runs", "plot", fresh, "--url", server.url, "--token", TOKEN])
    assert r.exit_code == 2 and "no trajectory to draw yet" in r.output, r.output
    r = runner.invoke(app, ["runs", "plot", run.run_id, "--url", server.url, "--token", "nope"])
    assert r.exit_code == 2 and "runs plot: 401" in r.output
