"""The trainer-side client against a real server on loopback: the loop, retries that resend the same
step, typed errors, and training on through an outage."""

from __future__ import annotations

import logging

import httpx
import pytest

from mixagent.service.trainer.client import (
    AuthError,
    MixingClient,
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


def test_an_unreachable_service_keeps_the_last_weights_and_logs_it(server, caplog):
    with MixingClient(server.url, TOKEN) as client:
        run = client.start_run(SPACE, horizon=4, interval=10, policy="loss-softmax")
        w0 = run.report(fb(0))
    dead = f"http://127.0.0.1:{free_port()}"
    run.client = MixingClient(dead, TOKEN, retries=2, backoff_s=0.01, timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="mixagent.service.trainer.client"):
        assert run.report(fb(10)) == w0
    assert run.missed == [10]
    assert "unreachable at step 10" in caplog.text and "keeping the last weights" in caplog.text
    with pytest.raises(ServiceUnavailable, match="no answer after 3 attempts"):
        run.client.policies()
    # back online: the next report says it trained on the old mixture all along
    run.client = MixingClient(server.url, TOKEN)
    run.report(fb(20, t=2))
    history = run.client.get_run(run.run_id)["history"]
    assert [h["step"] for h in history] == [0, 20]
    assert history[1]["trained_on"] == history[0]["decision_id"]
