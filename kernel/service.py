"""One shape for what each domain hands to ``umec``: a :class:`Service`.

Every domain's service layer exposes ``build_service(config, bridges) -> Service``
(``attest.service.build``, ``admission.service.build``, ``mec_api.service.build``). ``umec``
maps its settings to the configs, wires the bridges between domains, and serves the result:

1. :meth:`Service.install` puts ``state`` on ``app.state`` (routes read it through
   :func:`kernel.appstate.app_state`), runs the ``on_install`` hooks (exception handlers the
   routers need) and includes the ``routers``;
2. :func:`running` (in the app's lifespan) awaits every service's ``on_start`` hooks, then
   starts each ``background`` job as a task; on the way out it cancels the jobs and awaits the
   ``on_close`` hooks, last service first.

``parts`` is what the composition root (and tests) may reach inside a service: the attestation
context, the token service. This module imports no domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, FastAPI

log = logging.getLogger("umec.service")

T = TypeVar("T")

# A long-running job: called once when the app starts, cancelled when it stops.
BackgroundJob = Callable[[], Coroutine[Any, Any, None]]
Hook = Callable[[], Awaitable[None]]


@dataclass
class Service(Generic[T]):
    name: str
    parts: T
    routers: list[APIRouter] = field(default_factory=list)
    state: dict[str, object] = field(default_factory=dict)   # app.state name → collaborator
    background: list[BackgroundJob] = field(default_factory=list)
    on_install: list[Callable[[FastAPI], None]] = field(default_factory=list)
    on_start: list[Hook] = field(default_factory=list)
    on_close: list[Hook] = field(default_factory=list)

    def install(self, app: FastAPI) -> None:
        """``state`` on ``app.state``, the install hooks, then the routers."""
        for name, value in self.state.items():
            setattr(app.state, name, value)
        for hook in self.on_install:
            hook(app)
        for router in self.routers:
            app.include_router(router)

    async def start(self) -> None:
        for hook in self.on_start:
            await hook()

    async def close(self) -> None:
        """Every close hook runs, whatever an earlier one raised (that is logged)."""
        for hook in self.on_close:
            try:
                await hook()
            except Exception as exc:  # closing the others matters more; say what failed
                log.warning("closing %s failed: %s: %s", self.name, type(exc).__name__, exc)


@contextlib.asynccontextmanager
async def running(services: Sequence[Service[Any]]) -> AsyncIterator[None]:
    """Start ``services`` and their background jobs; stop and close them on the way out."""
    started: list[Service[Any]] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for service in services:
            started.append(service)
            await service.start()
        tasks = [asyncio.create_task(job(), name=f"{service.name}-background")
                 for service in services for job in service.background]
        yield
    finally:
        for task in tasks:
            task.cancel()
        # A job that had already failed must not keep the services below from closing.
        for task, outcome in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True),
                                 strict=True):
            if isinstance(outcome, Exception):
                log.warning("background job %s had failed: %s: %s", task.get_name(),
                            type(outcome).__name__, outcome)
        for service in reversed(started):
            await service.close()
