"""The GC freezer's promise: a run that leaves the cache is freed by reference counting alone (it
holds no reference cycle), so freezing long-lived objects out of full collections leaks no runs."""

from __future__ import annotations

import gc
import weakref

from starlette.testclient import TestClient

from mixagent.service.server.gc_pauses import GcFreezer
from mixagent.service.server.main import create_app
from tests.service.conftest import auth, feedback_body, run_body


def test_a_run_leaving_the_cache_is_freed_without_the_cycle_collector(settings):
    with TestClient(create_app(settings.model_copy(update={"gc_freeze_s": 0}))) as c:
        store = c.app.state.store  # type: ignore[attr-defined]
        rid = c.post("/v1/runs", json=run_body(policy="loss-softmax"), headers=auth()).json()["run_id"]
        for step in (0, 10, 20):
            assert c.post(f"/v1/runs/{rid}/feedback", json=feedback_body(step), headers=auth()).status_code == 200
        state = store.get(owner=None, run_id=rid)
        assert len(state.decisions) == 3 and state.history is not None and state.decider is not None
        gone = weakref.ref(state)
        history = weakref.ref(state.history)
        del state
        gc.disable()
        try:
            store.forget(rid)
            assert gone() is None and history() is None  # freed at once, by reference counting
        finally:
            gc.enable()


def test_the_freezer_freezes_survivors_and_unfreezes_at_stop():
    gc.unfreeze()
    freezer = GcFreezer(every_s=3600).start()
    try:
        assert gc.get_freeze_count() > 0 and freezer.rounds == 1
    finally:
        freezer.stop()
    assert gc.get_freeze_count() == 0
