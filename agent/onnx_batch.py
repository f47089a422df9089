"""Dynamic batching of one ONNX session's calls from concurrent coroutines.

A served decision of the bundled agent spent ~80 µs of its ~1.2 ms in ``session.run`` for one row,
on the event loop (bench/service_load.py, py-spy). Here the observations submitted while a batch
is in flight wait for the next one; each batch runs as one ``session.run`` in a worker thread, where
onnxruntime releases the GIL, so the loop keeps parsing and answering requests meanwhile and a
batch of 8 costs ~25 µs a row instead of ~80. The same rows give the same outputs alone or in any
batch for the vector networks shipped here (``tests/agent/test_onnx_batch.py`` checks it bit for
bit on the bundled agent); a network whose kernels break that would make a run's decisions depend
on its neighbours', so that test is the guard.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["OnnxBatcher"]

MAX_BATCH = 256
"""Rows in one ``session.run`` at most; more wait for the next batch."""
INLINE_ROWS = 1
"""A batch of at most this many rows runs on the event loop instead: handing it to the worker
thread and back costs two thread wake-ups, which on a busy machine (bench/service_load.py's paced
phase, other processes runnable) is milliseconds of latency for ~80 µs of work. Under load batches
grow, and those go to the thread."""


class OnnxBatcher:
    """``await run(x)`` for one input row ``x``; rows of concurrent callers share a ``session.run``."""

    def __init__(self, session: Any, input_name: str, max_batch: int = MAX_BATCH, inline_rows: int = INLINE_ROWS):
        self.session = session
        self.input_name = input_name
        self.max_batch = max_batch
        self.inline_rows = inline_rows
        self._queue: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._in_flight = False
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        """Batches run so far (with :attr:`rows`, the mean batch size)."""
        self.rows = 0
        self.inline = 0
        """Batches run on the event loop (at most :attr:`inline_rows` rows)."""

    async def run(self, x: np.ndarray) -> np.ndarray:
        """The network's first output for the row ``x`` (float32, shape ``[D]``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._queue.append((x, future))
        if not self._in_flight:
            self._in_flight = True
            loop.call_soon(self._dispatch, loop)
        return await future

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        rows = np.stack([x for x, _ in batch]).astype(np.float32, copy=False)
        if len(batch) <= self.inline_rows:
            self.inline += 1
            try:
                out = self._infer(rows)
            except Exception as e:
                self._deliver(loop, batch, None, e)
            else:
                self._deliver(loop, batch, out, None)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-batch")
        done = loop.run_in_executor(self._executor, self._infer, rows)
        done.add_done_callback(lambda f: self._settle(loop, batch, f))

    def _infer(self, rows: np.ndarray) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: rows})[:1]
        return np.asarray(out)

    def _settle(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]],
                done: asyncio.Future[np.ndarray]) -> None:
        error = done.exception()
        self._deliver(loop, batch, done.result() if error is None else None, error)

    def _deliver(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]],
                 out: np.ndarray | None, error: BaseException | None) -> None:
        if out is not None:
            self.batches += 1
            self.rows += len(batch)
        for i, (_, future) in enumerate(batch):
            if future.done():  # the caller was cancelled
                continue
            if error is not None:
                future.set_exception(error)
            elif out is not None:
                future.set_result(out[i])
        if self._queue:
            self._dispatch(loop)
        else:
            self._in_flight = False
