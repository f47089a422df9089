"""Group commit: the decision rows of concurrent feedbacks written in one transaction.

On SQLite the service answers feedback on the event loop (``RunStore.inline``). One transaction per
decision cost about as much as the rest of the handler (BEGIN, a single-row INSERT through
SQLAlchemy, COMMIT: ~0.2 ms of the ~1.2 ms a feedback cost at saturation, bench/service_load.py).
Here every row submitted during one turn of the event loop waits for one flush, scheduled with
``call_soon``, that inserts them all with one ``executemany`` in one transaction; each waiter is
answered only after that commit, so an acknowledged decision survives ``kill -9`` as before.

A batch that violates a unique key (another process wrote one of those decisions meanwhile) is
written again row by row, so only the colliding row's waiter gets the ``IntegrityError`` and the
rest land.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from sqlalchemy import Engine, Insert
from sqlalchemy.exc import IntegrityError

__all__ = ["GroupCommit"]


class GroupCommit:
    """Rows of one INSERT statement, committed together once per event-loop turn."""

    def __init__(self, engine: Engine, statement: Insert, write_lock: threading.Lock | None = None):
        self.engine = engine
        self.statement = statement
        self.write_lock = write_lock
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._scheduled = False
        self.batches = 0
        """Transactions flushed so far (with :attr:`rows`, the mean batch size)."""
        self.rows = 0

    def submit(self, row: dict[str, Any]) -> asyncio.Future[None]:
        """Queue ``row``; the future is done once it is committed (or holds the error that stopped it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((row, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        self._commit(batch)

    def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        try:
            with self.write_lock or contextlib.nullcontext(), self.engine.begin() as conn:
                conn.execute(self.statement, [row for row, _ in batch])
        except IntegrityError as e:
            if len(batch) > 1:  # find the colliding row: the others land
                for one in batch:
                    self._commit([one])
                return
            _fail(batch, e)
            return
        except BaseException as e:
            _fail(batch, e)
            return
        self.batches += 1
        self.rows += len(batch)
        for _, future in batch:
            if not future.done():  # a cancelled waiter's row is committed all the same
                future.set_result(None)


def _fail(batch: list[tuple[dict[str, Any], asyncio.Future[None]]], error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
