"""Periodic background work, the same way for every domain: deadline checks, Kubernetes re-sync,
pod reconcile, key reload, the MEC 011 liveness sweep.

A :class:`PeriodicTask` runs ``work`` every ``every`` seconds until it is cancelled. Each round:

1. **Wait** ``every`` seconds (before the first round only when ``delay_first``).
2. **Lease**: with a ``lease``, run only while holding it (one replica of many does the work).
3. **Work**: synchronous work runs in a worker thread (database calls must not block the event
   loop); a coroutine function is awaited.
4. **Survive**: a failed round is logged with the task's name and the next round runs. Only
   cancellation stops the task (``CancelledError`` is a ``BaseException`` and passes through).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("umec.background")


class Lease(Protocol):
    """Exclusive right to run a job for a while; :class:`kernel.lease.SqlLease` is the real one."""

    def acquire(self) -> bool: ...


@dataclass
class PeriodicTask:
    name: str
    every: float
    work: Callable[[], object] | Callable[[], Awaitable[object]]
    lease: Lease | None = None
    delay_first: bool = False

    async def run_once(self) -> bool:
        """One round of steps 2–3; True when the work ran. Errors propagate."""
        if self.lease is not None and not await asyncio.to_thread(self.lease.acquire):
            return False
        if inspect.iscoroutinefunction(self.work):
            await self.work()
        else:
            await asyncio.to_thread(self.work)
        return True

    async def run(self) -> None:
        """Forever: steps 1–4, until cancelled."""
        if self.delay_first:
            await asyncio.sleep(self.every)
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # step 4: keep going whatever one round hit; say why
                log.warning("%s failed: %s: %s", self.name, type(exc).__name__, exc,
                            exc_info=exc)
            await asyncio.sleep(self.every)
