"""Dynamic batching of the agent's network (issue 18, item 5): concurrent calls share a
``session.run`` and each gets bit for bit what it would alone, and a failing batch answers every
caller with the error."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mixagent.agent.onnx_batch import OnnxBatcher
from mixagent.agent.onnx_policy import decide, decide_async, load_artifact
from mixagent.service.server.registry import bundled_dir
from mixagent.trajectories.contract import Domain, DomainSpace, Feedback, History, Objective


def _bundled():
    root = bundled_dir()
    assert root is not None
    return load_artifact(root / "agent")


def _session():
    import onnxruntime as ort

    root = bundled_dir()
    assert root is not None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(root / "agent" / "policy.onnx"), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def test_rows_in_a_batch_get_what_they_get_alone():
    session = _session()
    name = session.get_inputs()[0].name
    width = int(session.get_inputs()[0].shape[-1])
    rows = np.random.default_rng(0).normal(0, 1, (40, width)).astype(np.float32)
    alone = [session.run(None, {name: r[None]})[0][0] for r in rows]
    batcher = OnnxBatcher(session, name, max_batch=16)

    async def together():
        return await asyncio.gather(*(batcher.run(r) for r in rows))

    got = asyncio.run(together())
    assert all(np.array_equal(a, g) for a, g in zip(alone, got, strict=True))
    # 40 rows in batches of at most 16: 16, 16, 8
    assert (batcher.rows, batcher.batches) == (40, 3)


def test_the_policy_decides_the_same_awaited_as_called():
    _, factory = _bundled()
    space = DomainSpace(domains=[Domain(name=f"s{i}", field="source") for i in range(4)]
                        + [Domain(name="t0", field="target"), Domain(name="t1", field="target")])
    histories = []
    for k in range(6):
        h = History(space=space)
        for step in range(k + 1):
            h.record_feedback(Feedback(step=step * 10, tokens_seen=step * 1000,
                                       field_scores={"source": -2.0 - 1e-3 * step * k, "target": -3.0 + 2e-3 * step},
                                       domain_losses={n: 2.0 + 1e-3 * step for n in space.names}))
            if step < k:
                h.record_weights(decide(factory(space, 8, Objective()), space, h).weights)
        histories.append(h)
    policies = [factory(space, 8, Objective(spread_penalty=0.5)) for _ in histories]
    sync = [decide(p, space, h) for p, h in zip(policies, histories, strict=True)]

    async def awaited():
        return await asyncio.gather(*(decide_async(p, space, h) for p, h in zip(policies, histories, strict=True)))

    assert asyncio.run(awaited()) == sync
    assert all(d.fallback is None for d in sync)


class _Broken:
    def run(self, outputs, feeds):
        raise RuntimeError("onnxruntime failed")


@pytest.mark.parametrize("n", [1, 7])
def test_a_failing_batch_answers_every_caller(n):
    batcher = OnnxBatcher(_Broken(), "obs")

    async def calls():
        return await asyncio.gather(*(batcher.run(np.zeros(3, np.float32)) for _ in range(n)),
                                    return_exceptions=True)

    results = asyncio.run(calls())
    assert len(results) == n and all(isinstance(r, RuntimeError) for r in results)
    assert batcher.batches == 0


def test_a_lone_row_runs_on_the_loop_and_gets_what_the_thread_gives():
    """A batch of one runs on the event loop (no thread hand-off on a quiet server); larger ones go
    to the thread; both give the row what it gets alone."""
    session = _session()
    name = session.get_inputs()[0].name
    width = int(session.get_inputs()[0].shape[-1])
    rows = np.random.default_rng(1).normal(0, 1, (5, width)).astype(np.float32)
    alone = [session.run(None, {name: r[None]})[0][0] for r in rows]
    batcher = OnnxBatcher(session, name)

    async def one_at_a_time():
        return [await batcher.run(r) for r in rows]

    got = asyncio.run(one_at_a_time())
    assert all(np.array_equal(a, g) for a, g in zip(alone, got, strict=True))
    assert (batcher.inline, batcher.batches, batcher._executor) == (5, 5, None)
    threaded = OnnxBatcher(session, name, inline_rows=0)

    async def together():
        return await asyncio.gather(*(threaded.run(r) for r in rows))

    assert all(np.array_equal(a, g) for a, g in zip(alone, asyncio.run(together()), strict=True))
    assert (threaded.inline, threaded.batches) == (0, 1)
