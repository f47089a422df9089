"""Group commit and batched inference (issue 18, item 5): the decision rows of concurrent feedbacks
share a transaction and the agent's network calls one batch; each is answered only once committed
and equals the decision made alone; a run's retry waits for its own write, and a batch with one
colliding row still lands the others."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.exc import IntegrityError

from mixagent.service.server import main as server_main
from mixagent.service.server import registry
from mixagent.service.server.group_commit import GroupCommit
from mixagent.service.server.main import open_store
from mixagent.service.server.models import Base, DecisionRow
from mixagent.service.server.runs import _INSERT_DECISION
from mixagent.service.server.schemas import FeedbackIn, RunCreate
from tests.service.conftest import make_settings

DOMAINS = [{"name": f"d{i}", "field": "target" if i < 2 else "source"} for i in range(6)]


def _feedback(step: int) -> FeedbackIn:
    return FeedbackIn.model_validate_json(json.dumps({
        "step": step, "tokens_seen": step * 1000,
        "field_scores": {"source": -2.0 - step * 1e-3, "target": -3.0 + step * 1e-3},
        "domain_losses": {d["name"]: 2.0 + 1e-3 * ((step * 7 + i) % 13) for i, d in enumerate(DOMAINS)},
    }))


def _runs(store, n: int, policy: str = "loss-softmax") -> list[str]:
    req = RunCreate.model_validate({"domains": DOMAINS, "horizon": 20, "interval": 10, "policy": policy})
    return [store.create_run(owner="o", req=req)[0].id for _ in range(n)]


@pytest.mark.parametrize("policy", ["loss-softmax", "agent"])
def test_concurrent_feedbacks_share_transactions_and_equal_one_at_a_time(tmp_path, monkeypatch, policy):
    if policy == "agent":  # the shipped agent (the suite's isolation hides it)
        monkeypatch.setattr(server_main, "bundled_dir", registry.bundled_dir)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    grouped, _ = open_store(make_settings(tmp_path / "a"))
    single, _ = open_store(make_settings(tmp_path / "b"))
    assert grouped.inline
    a, b = _runs(grouped, 8, policy), _runs(single, 8, policy)

    async def trainers() -> list[list[tuple[float, ...]]]:
        async def one(run_id: str) -> list[tuple[float, ...]]:
            out = []
            for step in range(6):
                _, d, replayed = await grouped.post_feedback_grouped(owner="o", run_id=run_id, fb=_feedback(step))
                assert not replayed
                out.append(d.weights.values)
            return out
        return list(await asyncio.gather(*(one(r) for r in a)))

    got = asyncio.run(trainers())
    want = [[single.post_feedback(owner="o", run_id=r, fb=_feedback(s))[1].weights.values for s in range(6)]
            for r in b]
    assert got == want
    # 48 decisions in 6 transactions: the 8 runs' feedbacks of one round share one
    assert grouped.group.rows == 48
    assert grouped.group.batches == 6
    if policy == "agent":  # the agent's network ran once per round for the 8 runs
        decider = grouped.get(owner="o", run_id=a[0]).decider
        assert decider is not None and decider.name == "agent"
        batcher = decider._batcher
        assert (batcher.rows, batcher.batches) == (48, 6)
    for run_id in a:  # every acknowledged decision is in the database, read back cold
        assert len(grouped.read(owner="o", run_id=run_id).decisions) == 6


def test_a_retry_during_the_write_waits_for_it_and_is_a_replay(tmp_path):
    store, _ = open_store(make_settings(tmp_path))
    (run_id,) = _runs(store, 1)

    async def twice():
        return await asyncio.gather(*(store.post_feedback_grouped(owner="o", run_id=run_id, fb=_feedback(0))
                                      for _ in range(2)))

    (_, first, r1), (_, second, r2) = asyncio.run(twice())
    assert (r1, r2) == (False, True)
    assert first.decision_id == second.decision_id
    assert len(store.read(owner="o", run_id=run_id).decisions) == 1


def test_a_colliding_row_fails_alone_and_the_rest_of_its_batch_lands(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'g.db'}")
    Base.metadata.create_all(engine)
    group = GroupCommit(engine, _INSERT_DECISION)

    def row(seq: int, decision_id: str) -> dict:
        return {"run_id": "r", "seq": seq, "step": seq, "decision_id": decision_id, "payload_hash": "h",
                "feedback_json": "{}", "mixture_id": None, "weights_json": "[1.0]", "created_at": 0.0,
                "served_by_json": "{}"}

    async def batch():
        futures = [group.submit(row(0, "a" * 32)), group.submit(row(0, "b" * 32)), group.submit(row(1, "c" * 32))]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(batch())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IntegrityError)
    with engine.connect() as conn:
        ids = sorted(conn.scalars(select(DecisionRow.decision_id)).all())
    assert ids == ["a" * 32, "c" * 32]


@pytest.mark.parametrize("n", [1, 5])
def test_every_waiter_is_answered_when_the_database_fails(tmp_path, n):
    engine = create_engine(f"sqlite:///{tmp_path / 'none.db'}")  # no tables: every insert fails
    group = GroupCommit(engine, _INSERT_DECISION)

    async def batch():
        futures = [group.submit({"run_id": "r", "seq": i}) for i in range(n)]
        return await asyncio.gather(*futures, return_exceptions=True)

    results = asyncio.run(batch())
    assert len(results) == n and all(isinstance(r, Exception) for r in results)
    assert group.batches == 0
