"""One read for many callers: :class:`CoalescedRead`.

An anonymous route that reads the database on every call (the revocation feed) lets anyone
multiply database work by calling it in a loop. Caching its answer for a while would break what
the caller relies on: that the answer holds everything committed before it asked. Coalescing
keeps that promise and bounds the work: callers share a read **that starts after they call**, so
at most one read runs at a time and at most one more is waiting, however many callers there
are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class CoalescedRead(Generic[T]):
    """``await get()`` returns the result of a call of ``read`` (run in a thread) that started
    after ``get`` was called; concurrent callers share it. A failed read fails every caller
    that shares it, and the next caller starts afresh."""

    def __init__(self, read: Callable[[], T]) -> None:
        self.read = read
        self.reads = 0                                  # reads started (for tests and metrics)
        self._waiting: asyncio.Future[T] | None = None  # the read that starts next
        self._runner: asyncio.Task[None] | None = None

    async def get(self) -> T:
        if self._waiting is None:
            self._waiting = asyncio.get_running_loop().create_future()
        waiting = self._waiting
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return await asyncio.shield(waiting)

    async def _run(self) -> None:
        while self._waiting is not None:
            # Callers from here on wait for the next read: this one may miss their commits.
            started, self._waiting = self._waiting, None
            self.reads += 1
            try:
                started.set_result(await asyncio.to_thread(self.read))
            except Exception as e:  # every sharer gets the error; the next read is fresh
                started.set_exception(e)
