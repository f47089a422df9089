"""The front door (issue 18, item 5; ``service/server/front_door.py``): a well-formed, authorised
feedback is answered before Starlette's stack, with the same bytes, status and metrics; every other
request is the stack's, so each refusal (401, 404, 409, 413, 414, 431, 422 naming the field and value)
is the one it gave before."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.routing import APIRoute

from mixagent.service.server.api import _decision_public
from mixagent.service.server.front_door import FEEDBACK_ROUTE
from mixagent.service.server.schemas import DecisionPublic, ServedByPublic
from tests.service.conftest import OTHER, TOKEN, auth, feedback_body, run_body


@pytest.fixture()
def slow_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths that reached the ordinary stack's handler of the feedback route."""
    calls: list[str] = []
    handle = APIRoute.handle

    async def spy(self: APIRoute, scope: Any, receive: Any, send: Any) -> None:
        if self.path == FEEDBACK_ROUTE:
            calls.append(scope["path"])
        await handle(self, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", spy)
    return calls


def _both(client: Any, app: Any, path: str, **kw: Any) -> tuple[Any, Any]:
    """The same request through the front door and through the ordinary stack only."""
    app.state.lean_feedback = True
    lean = client.post(path, **kw)
    app.state.lean_feedback = False
    try:
        slow = client.post(path, **kw)
    finally:
        app.state.lean_feedback = True
    return lean, slow


def test_a_trainers_feedback_takes_the_front_door_and_answers_the_same_bytes(client, app, slow_calls):
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    path = f"/v1/runs/{rid}/feedback"
    first = client.post(path, json=feedback_body(0), headers=auth())
    assert first.status_code == 200 and not first.json()["replayed"]
    assert slow_calls == []
    assert list(app.state.lean_callers) == [TOKEN]  # valid tokens only are remembered
    # a retry of the recorded step answers with the stored decision: byte for byte the same both ways
    lean, slow = _both(client, app, path, json=feedback_body(0), headers=auth())
    assert slow_calls == [path]
    assert lean.status_code == slow.status_code == 200
    assert lean.content == slow.content and lean.json()["replayed"]
    for h in ("content-type", "content-length"):
        assert lean.headers[h] == slow.headers[h]
    # both paths continue the same run, and the next decision comes after the first
    nxt = client.post(path, json=feedback_body(10, mixture_id=first.json()["decision_id"]), headers=auth())
    assert nxt.status_code == 200 and nxt.json()["t"] == 1
    app.state.lean_feedback = False
    try:
        last = client.post(path, json=feedback_body(20), headers=auth())
    finally:
        app.state.lean_feedback = True
    assert last.status_code == 200 and last.json()["t"] == 2
    assert client.get(f"/v1/runs/{rid}", headers=auth()).json()["decisions"] == 3


def _hostile(rid: str, other_rid: str) -> list[tuple[str, dict[str, Any]]]:
    path = f"/v1/runs/{rid}/feedback"
    good = json.dumps(feedback_body(0)).encode()
    ctype = {"Content-Type": "application/json"}
    return [
        (path, {"content": good, "headers": ctype}),  # no token
        (path, {"content": good, "headers": {**ctype, "Authorization": "Bearer nope"}}),
        (path, {"content": good, "headers": {**ctype, "Authorization": "Basic dG9rOng="}}),
        (path, {"content": good, "headers": {**ctype, "Authorization": "Bearer"}}),
        # a repeated header: the first counts (an invalid token, then a valid one)
        (path, {"content": good, "headers": [("Content-Type", "application/json"), ("Authorization", "Bearer nope"),
                                             ("Authorization", f"Bearer {TOKEN}")]}),
        (path, {"content": good, "headers": [("Content-Type", "text/plain"), ("Content-Type", "application/json"),
                                             ("Authorization", f"Bearer {TOKEN}")]}),
        (path, {"content": b"{not json", "headers": {**ctype}}),  # malformed JSON before auth, as FastAPI does
        (path, {"content": b"{not json", "headers": {**ctype, **auth()}}),
        (path, {"content": b"\xff\xfe{}", "headers": {**ctype, **auth()}}),  # not UTF-8
        (path, {"content": b"", "headers": {**ctype, **auth()}}),
        (path, {"content": b"[]", "headers": {**ctype, **auth()}}),
        (path, {"content": good, "headers": {"Content-Type": "text/plain", **auth()}}),
        (path, {"content": good, "headers": auth()}),  # no content type
        (path, {"json": {**feedback_body(0), "step": -1}, "headers": auth()}),
        (path, {"json": {**feedback_body(0), "step": "7"}, "headers": auth()}),
        (path, {"json": feedback_body(0, extra=1), "headers": auth()}),
        (path, {"json": {**feedback_body(0), "domain_losses": {"web": 1.0}}, "headers": auth()}),
        (path, {"json": feedback_body(0, field_scores={"source": "nan", "target": 1.0}), "headers": auth()}),
        (path, {"json": feedback_body(0, mixture_id="x" * 200), "headers": auth()}),
        (path, {"json": feedback_body(0, mixture_id="f" * 32), "headers": auth()}),  # no such mixture: 409
        (path, {"json": feedback_body(0), "headers": auth(OTHER)}),  # another token's run: 404
        (f"/v1/runs/{'a' * 65}/feedback", {"json": feedback_body(0), "headers": auth()}),
        (f"/v1/runs/{'a' * 32}/feedback", {"json": feedback_body(0), "headers": auth()}),  # no such run
        (f"/v1/runs/{other_rid}/feedback", {"json": feedback_body(5), "headers": auth()}),  # step goes back: 409
        # nested past the interpreter's recursion limit: json.loads raises RecursionError, the stack answers 422
        (path, {"content": b"[" * 1500 + b"]" * 1500, "headers": {**ctype, **auth()}}),
        # the limits the stack's middleware enforces: the front door leaves them to it
        (path, {"content": good + b" " * (300 * 1024), "headers": {**ctype, **auth()}}),  # 413
        (path + "?" + "q" * (9 * 1024), {"content": good, "headers": {**ctype, **auth()}}),  # 414
        (path, {"content": good, "headers": [*ctype.items(), *auth().items(),
                                             *((f"x-pad-{i}", "1") for i in range(70))]}),  # 431
    ]


def test_every_refusal_is_the_one_fastapi_gives(client, app):
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    other = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    assert client.post(f"/v1/runs/{other}/feedback", json=feedback_body(10), headers=auth()).status_code == 200
    for path, kw in _hostile(rid, other):
        lean, slow = _both(client, app, path, **kw)
        assert 400 <= lean.status_code < 500, (kw, lean.text)
        assert (lean.status_code, lean.content, lean.headers.get("www-authenticate")) == (
            slow.status_code, slow.content, slow.headers.get("www-authenticate")), kw
    # nothing was recorded on the run the hostile requests named
    assert client.get(f"/v1/runs/{rid}", headers=auth()).json()["decisions"] == 0


def test_a_json_content_type_with_parameters_is_served_by_fastapi(client, slow_calls):
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    path = f"/v1/runs/{rid}/feedback"
    r = client.post(path, content=json.dumps(feedback_body(0)).encode(),
                    headers={"Content-Type": "application/json; charset=utf-8", **auth()})
    assert r.status_code == 200 and slow_calls == [path]


def test_the_answer_built_without_validation_is_the_validated_one(client, app):
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    # a first feedback after step 0: its answer carries a warning
    client.post(f"/v1/runs/{rid}/feedback", json=feedback_body(3), headers=auth())
    store = app.state.store
    state = store.get(owner=None, run_id=rid)
    built = _decision_public(state, state.decisions[0], replayed=False)
    validated = DecisionPublic.model_validate(built.model_dump())
    assert built == validated and isinstance(built.served_by, ServedByPublic)
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.warnings and built.weights == dict(zip(state.space.names, state.decisions[0].weights.values,
                                                        strict=True))


def _counted(client: Any, status: int) -> float:
    """Requests of the feedback route with ``status`` in the app's request counter."""
    line = f'mixagent_http_requests_total{{method="POST",route="{FEEDBACK_ROUTE}",status="{status}"}} '
    for text in client.get("/metrics").text.splitlines():
        if text.startswith(line):
            return float(text[len(line):])
    return 0.0


def test_the_front_door_counts_its_answers_as_the_stack_does(client, app, slow_calls):
    rid = client.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
    path = f"/v1/runs/{rid}/feedback"
    for lean in (True, False):
        app.state.lean_feedback = lean
        try:
            before = {s: _counted(client, s) for s in (200, 404, 422)}
            assert client.post(path, json=feedback_body(0), headers=auth()).status_code == 200
            assert client.post(f"/v1/runs/{'a' * 32}/feedback", json=feedback_body(0),
                               headers=auth()).status_code == 404  # an error of the handler itself
            assert client.post(path, json={**feedback_body(0), "step": -1}, headers=auth()).status_code == 422
            after = {s: _counted(client, s) for s in (200, 404, 422)}
        finally:
            app.state.lean_feedback = True
        assert {s: after[s] - before[s] for s in after} == {200: 1, 404: 1, 422: 1}, lean
    # the front door answered the two well-formed ones; the 422 and the whole second round went to the stack
    assert slow_calls == [path, path, f"/v1/runs/{'a' * 32}/feedback", path]


def test_an_unexpected_error_is_answered_and_then_raised_both_ways(app, monkeypatch):
    from fastapi.testclient import TestClient

    store = app.state.store

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    async def broken_async(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    with TestClient(app) as strict, TestClient(app, raise_server_exceptions=False) as lenient:
        rid = strict.post("/v1/runs", json=run_body(), headers=auth()).json()["run_id"]
        monkeypatch.setattr(store, "post_feedback", broken)
        monkeypatch.setattr(store, "post_feedback_grouped", broken_async)
        path = f"/v1/runs/{rid}/feedback"
        answers = []
        for lean in (True, False):
            app.state.lean_feedback = lean
            try:
                with pytest.raises(RuntimeError, match="boom"):  # as Starlette's outermost layer re-raises it
                    strict.post(path, json=feedback_body(0), headers=auth())
                answers.append(lenient.post(path, json=feedback_body(0), headers=auth()))
            finally:
                app.state.lean_feedback = True
    assert [(a.status_code, a.content) for a in answers] == [(500, b'{"detail":"internal error (RuntimeError)"}')] * 2
