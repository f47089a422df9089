"""Any replica or worker continues any run (issue 18, point 1): each process caches the runs it
serves, so a feedback naming a mixture another process minted, or arriving after another process
wrote decisions, must read the database before it is answered. Tested with the stock
``MixingClient`` (which always sends ``mixture_id``) through a real round-robin proxy: over two
``mixagent serve`` replicas on one PostgreSQL, and over ``serve --workers 4`` on SQLite. Every run
finishes, nothing is answered 409, and the decisions equal those of a single process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mixagent.service.trainer.client import MixingClient
from mixagent.trajectories.contract import DomainSpace, Feedback
from tests.service.conftest import TOKEN
from tests.service.proxy import RoundRobinProxy
from tests.service.replica import Replica

SPACE = DomainSpace.from_fields({"source": ["web", "code"], "target": ["proofs", "algebra"]}, {"web": 3.0})
HORIZON = 6


def feedback(run: int, t: int, weights: dict[str, float]) -> Feedback:
    """An evaluation that depends on what was trained on, so each decision depends on the last."""
    return Feedback(
        step=10 * t, tokens_seen=40960 * t,
        field_scores={"source": -2.0 - 0.01 * t + 0.02 * weights["web"], "target": -4.0 + 0.15 * t * weights["proofs"]},
        domain_losses={d: 3.0 + 0.01 * run - 0.2 * t * weights[d] + 0.05 * t for d in SPACE.names},
    )


def drive(url: str, runs: int) -> list[list[list[float]]]:
    """``runs`` whole runs of the stock client against ``url``: every mixture each was served."""
    out = []
    with MixingClient(url, token=TOKEN) as client:
        for r in range(runs):
            run = client.start_run(SPACE, horizon=HORIZON, interval=10, policy="loss-softmax", offline_start=False)
            served = [[run.weights[d] for d in SPACE.names]]
            for t in range(HORIZON + 1):
                w = run.report(feedback(r, t, run.weights))  # raises StepConflict on a 409
                served.append([w[d] for d in SPACE.names])
            assert run.close() and run.done and not run.missed, (r, run.missed)
            out.append(served)
    return out


@pytest.fixture()
def reference(tmp_path: Path) -> Iterator[list[list[list[float]]]]:
    """The same runs against one single-process server."""
    one = Replica("single", f"sqlite:///{tmp_path / 'single.db'}", tmp_path, tmp_path)
    try:
        one.wait()
        yield drive(one.url, 4)
    finally:
        one.stop()


def test_two_replicas_on_postgresql_behind_a_round_robin_proxy(pg_url, tmp_path, reference):
    a = Replica("a", pg_url, tmp_path, tmp_path)
    b = Replica("b", pg_url, tmp_path, tmp_path)
    try:
        a.wait()
        b.wait()
        with RoundRobinProxy([a.url, b.url]) as proxy:
            served = drive(proxy.url, 4)
            assert {proxy.sent[0], proxy.sent[1]} == {a.url, b.url}  # requests really alternated
    finally:
        a.stop()
        b.stop()
    assert served == reference


def test_serve_with_four_workers_on_sqlite(tmp_path, reference):
    many = Replica("workers", f"sqlite:///{tmp_path / 'w.db'}", tmp_path, tmp_path, workers=4)
    try:
        many.wait()
        with RoundRobinProxy([many.url]) as proxy:  # a fresh connection per request: any worker takes it
            served = drive(proxy.url, 4)
    finally:
        many.stop()
    assert served == reference
